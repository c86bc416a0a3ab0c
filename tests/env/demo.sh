#!/usr/bin/env bash
# `make demo` (`make demo-postgres`: demo.sh postgresql): set up everything (idempotently), start the local environment with the operator,
# and run the demo program (tests/env/demo.rs). The environment stays up; `make down` stops it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
bash "$ENV_DIR/setup.sh"
bash "$ENV_DIR/up.sh" >/dev/null
bash "$ENV_DIR/node.sh"
bash "$ENV_DIR/operator.sh" >/dev/null
cargo build -q -p baton-e2e --example demo
KUBECONFIG="$BATON_RUN/kubeconfig" target/debug/examples/demo "$@"
echo
echo "The environment is still up: export KUBECONFIG=$BATON_RUN/kubeconfig; kubectl get dbi -n baton-demo"
echo "Stop it with: make down"
