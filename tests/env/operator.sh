#!/usr/bin/env bash
# Part of `make up`: installs the CRDs and the example catalog, then runs the operator (built
# from this checkout) in the background against the local control plane. Prints the kubeconfig.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
KUBECONFIG_OUT="$BATON_RUN/kubeconfig"
kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

cargo build -q -p baton --bin baton
target/debug/baton crds | kubectl apply --server-side --field-manager=baton-env -f - >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl apply -f examples/catalog.yaml >/dev/null

pidfile="$BATON_RUN/pids/baton-operator.pid"
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  log "starting the operator (log: $BATON_RUN/logs/baton-operator.log)"
  KUBECONFIG="$KUBECONFIG_OUT" setsid target/debug/baton run --listen 127.0.0.1:18080 \
    --lease-namespace default >"$BATON_RUN/logs/baton-operator.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
fi
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS http://127.0.0.1:18080/readyz >/dev/null || { log "operator not ready"; tail -20 "$BATON_RUN/logs/baton-operator.log"; exit 1; }
log "operator ready: http://127.0.0.1:18080/metrics"
echo "export KUBECONFIG=$KUBECONFIG_OUT"
