#!/usr/bin/env bash
# Stops everything up.sh started (by pid, each process group), and removes etcd's tmpfs data and
# the local node's volumes.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
APISERVER_PORT=${BATON_APISERVER_PORT:-16443}
ETCD_DATA=${BATON_ETCD_DATA:-/dev/shm/baton-etcd-$APISERVER_PORT}
PIDS="$BATON_RUN/pids"

stop() { # name
  local f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 ($pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Reverse start order: consumers first, etcd last.
for name in baton-operator baton-node kube-controller-manager kube-apiserver etcd; do stop "$name"; done
# Container processes carry BATON_NODE=<state dir> in their environment; none may outlive the node.
for f in /proc/[0-9]*/environ; do
  if grep -qzx "BATON_NODE=$BATON_RUN/node" "$f" 2>/dev/null; then
    pid=${f#/proc/}; pid=${pid%/environ}
    log "killing leftover container process $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
done
rm -rf "$ETCD_DATA"
# The members' volumes belong to claims that went with etcd's data: without this, every run
# would leave its databases' files behind (gigabytes after a few test runs). The containers'
# logs stay for a failed run to be read.
rm -rf "$BATON_RUN/node/volumes" "$BATON_RUN/node/pods"
log "local environment stopped"
