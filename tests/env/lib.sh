# Shared settings for the local-environment scripts; sourced, never run.
ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$ENV_DIR/../.." && pwd)
# shellcheck source=versions.env
. "$ENV_DIR/versions.env"
export GOTOOLCHAIN=local
# Built binaries and Go caches live outside the repo so a fresh clone reuses them.
BATON_CACHE=${BATON_CACHE:-$HOME/.cache/baton}
BIN_DIR="$BATON_CACHE/bin"
# Runtime state (certificates, etcd data, logs, pids) of the running environment.
BATON_RUN=${BATON_RUN:-$BATON_CACHE/run}
log() { printf '[baton-env] %s\n' "$*" >&2; }
