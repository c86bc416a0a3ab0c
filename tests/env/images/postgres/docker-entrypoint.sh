#!/bin/sh
# Stands in for the official postgres image's entrypoint: on first start, initialise PGDATA with
# POSTGRES_USER / POSTGRES_PASSWORD and password auth from any address; then run the server.
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ]; then
  : "${PGDATA:=/var/lib/postgresql/data}"
  export PGDATA
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
      echo "error: POSTGRES_PASSWORD is not set (the postgres image requires it)" >&2
      exit 1
    fi
    pw=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
    initdb -D "$PGDATA" --username="${POSTGRES_USER:-postgres}" --pwfile="$pw" \
      --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    printf 'host all all all scram-sha-256\nhost replication all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\nunix_socket_directories = '%s'\n" "$PGDATA" >>"$PGDATA/postgresql.conf"
  fi
fi
exec "$@"
