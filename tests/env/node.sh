#!/usr/bin/env bash
# Starts the local node agent (baton-node) against the running control plane, in the
# background, and waits until its Node is Ready. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
KUBECONFIG_OUT="$BATON_RUN/kubeconfig"
pidfile="$BATON_RUN/pids/baton-node.pid"
cargo build -q -p baton-node
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  log "starting the local node agent (log: $BATON_RUN/logs/baton-node.log)"
  # Baton's own image runs the operator built from this checkout (tests/env/images.yaml).
  BATON_OPERATOR_BIN_DIR=${BATON_OPERATOR_BIN_DIR:-$REPO_DIR/target/debug} \
  BATON_CACHE="$BATON_CACHE" BATON_SERVERS="$BATON_SERVERS" BATON_IMAGES="$BATON_IMAGES" BATON_REPO="$REPO_DIR" KUBECONFIG="$KUBECONFIG_OUT" \
    setsid target/debug/baton-node --images tests/env/images.yaml --state-dir "$BATON_RUN/node" \
    --podnet "$PODNET" >"$BATON_RUN/logs/baton-node.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
fi
"$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_OUT" wait --for=condition=Ready node/baton-local --timeout=60s >/dev/null
log "node baton-local Ready"
