#!/usr/bin/env bash
# `make test`: lint, then every test against a fresh local control plane of its own (separate
# ports and state from `make up`), stopped again at the end whatever happens.
# `test.sh crash` (`make crash-test`): the same environment, every crash point of the
# crash-anywhere suite instead of a sample, and nothing else.
set -euo pipefail
mode=${1:-all}
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

bash "$ENV_DIR/setup.sh"
if [ "$mode" = all ]; then
  log "cargo fmt --check"
  cargo fmt --all --check
  log "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -q --features baton/test-hooks -- -D warnings
fi
bash "$ENV_DIR/build-control-plane.sh"
if [ "$mode" = all ]; then
  log "helm lint"
  "$BIN_DIR/helm" lint --strict "$REPO_DIR/charts/baton" >/dev/null
  log "the image (make image): built from the Dockerfile with buildah, and checked"
  bash "$ENV_DIR/image.sh"
fi
# The suites drive the operator's crash and clock hooks, which only a test-hooks build has.
cargo build --workspace --all-targets --locked -q --features baton/test-hooks

export BATON_RUN="$BATON_CACHE/test-run" BATON_APISERVER_PORT=26443 BATON_ETCD_PORT=24790 BATON_KCM_PORT=20257
# Pods of the test environment use 127.2.x.x, those of `make up` 127.1.x.x.
export BATON_FIRST_POD_IP=127.2.0.2
trap 'bash "$ENV_DIR/down.sh"' EXIT
bash "$ENV_DIR/down.sh" 2>/dev/null || true
BATON_KUBECONFIG=$(bash "$ENV_DIR/up.sh")
export BATON_KUBECONFIG BATON_BIN_DIR="$BIN_DIR"
export BATON_BIN="$REPO_DIR/target/debug/baton" BATON_NODE_BIN="$REPO_DIR/target/debug/baton-node"
bash "$ENV_DIR/node.sh"
log "tests run against:"
"$BIN_DIR/kubectl" --kubeconfig "$BATON_KUBECONFIG" version

if [ "$mode" = crash ]; then
  BATON_CRASH_ALL=1 cargo test --locked -p baton-e2e --test crash -- --nocapture an_operator_killed
  exit 0
fi
# This suite removes the CRDs, so it runs alone before the others.
cargo test --locked -p baton-e2e --test crds_absent
cargo test --locked --workspace --no-fail-fast
# This one restarts the shared API server, so it runs alone, after the others.
cargo test --locked -p baton-e2e --test apiserver_restart
