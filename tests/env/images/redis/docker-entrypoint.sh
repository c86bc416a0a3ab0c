#!/bin/sh
# Stands in for the official redis image's entrypoint: that image builds Redis with protected
# mode off (a container is reached from other pods, never from loopback).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
