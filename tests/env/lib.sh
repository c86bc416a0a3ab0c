# Shared settings for the local-environment scripts; sourced, never run.
ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$ENV_DIR/../.." && pwd)
# shellcheck source=versions.env
. "$ENV_DIR/versions.env"
export GOTOOLCHAIN=local
# Built binaries and Go caches live outside the repo so a fresh clone reuses them.
BATON_CACHE=${BATON_CACHE:-$HOME/.cache/baton}
BIN_DIR="$BATON_CACHE/bin"
# Database servers that run as a non-root user (PostgreSQL refuses root) live where that user
# can reach them: not under a home directory, which is often private.
BATON_SERVERS=${BATON_SERVERS:-/var/cache/baton/servers}
export BATON_SERVERS
# The podnet shim is preloaded into those non-root processes too: it lives beside them (a
# library the process cannot read is silently not preloaded, and the pod would bind every
# address).
PODNET="$(dirname "$BATON_SERVERS")/lib/libbaton-podnet.so"
# The images' entrypoint shims (tests/env/images) are copied there as well: a clone under a
# private directory (mktemp -d) is unreadable by the postgres user.
BATON_IMAGES="$(dirname "$BATON_SERVERS")/images"
export BATON_IMAGES
# Runtime state (certificates, etcd data, logs, pids) of the running environment.
BATON_RUN=${BATON_RUN:-$BATON_CACHE/run}
log() { printf '[baton-env] %s\n' "$*" >&2; }
