#!/usr/bin/env bash
# Restarts the running kube-apiserver of the local control plane (etcd and everything else keep
# running) and waits until it is ready again: the API server fault of the crash suite.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pidfile="$BATON_RUN/pids/kube-apiserver.pid"
pid=$(cat "$pidfile")
gone() { ! kill -0 "$pid" 2>/dev/null; }
# A graceful stop first (it drains watches for a while), then a hard one.
kill "$pid"
for _ in $(seq 1 50); do gone && break; sleep 0.1; done
gone || kill -9 "$pid"
until gone; do sleep 0.1; done
# up.sh starts only what is not running, here the API server, with the same flags and certs.
bash "$ENV_DIR/up.sh" >/dev/null
