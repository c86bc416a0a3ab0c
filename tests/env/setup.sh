#!/usr/bin/env bash
# Installs what the tests and the local environment need on a fresh machine, idempotently:
# Debian packages (only when one is missing) and the Rust components for lint.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need=()
for pair in openssl:openssl curl:curl update-ca-certificates:ca-certificates setsid:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v go >/dev/null || { log "Go is required to build the control plane"; exit 1; }
command -v cargo >/dev/null || { log "Rust (cargo) is required"; exit 1; }
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
