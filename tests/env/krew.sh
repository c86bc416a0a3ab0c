#!/usr/bin/env bash
# `make krew`: the krew release artifacts of `kubectl baton`, checked with krew itself. Builds the
# archive (kubectl-baton and LICENSE) into target/krew, writes the manifest (krew/baton.yaml with
# the archive's sha256), validates it with krew's validate-krew-manifest, installs it with
# `krew install --manifest --archive` into a scratch KREW_ROOT, and runs `kubectl baton
# --version` found by kubectl's plugin lookup in krew's bin directory. `krew.sh BINARY` packs a
# binary already built (the tests use the debug one) instead of a release build.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
bash "$ENV_DIR/build-control-plane.sh" >/dev/null
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build -q --release --locked -p kubectl-baton
  bin=target/release/kubectl-baton
fi
version=v$(sed -n 's/^version = "\(.*\)"/\1/p' crates/kubectl-baton/Cargo.toml | head -1)
out=target/krew
rm -rf "$out" && mkdir -p "$out/pack"
cp "$bin" "$out/pack/kubectl-baton"
cp LICENSE "$out/pack/LICENSE"
archive="$out/kubectl-baton_${version}_linux_amd64.tar.gz"
tar -C "$out/pack" -czf "$archive" kubectl-baton LICENSE
sha=$(sha256sum "$archive" | cut -d' ' -f1)
grep -q "version: $version\$" krew/baton.yaml || { log "krew/baton.yaml does not name $version"; exit 1; }
sed "s/sha256: \".*\"/sha256: \"$sha\"/" krew/baton.yaml >"$out/baton.yaml"
"$BIN_DIR/validate-krew-manifest" -manifest "$out/baton.yaml" -skip-install 2>&1 | grep -q "no overlapping" \
  || { "$BIN_DIR/validate-krew-manifest" -manifest "$out/baton.yaml" -skip-install; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
KREW_ROOT="$root" "$BIN_DIR/krew" install --manifest="$out/baton.yaml" --archive="$archive" >/dev/null 2>&1 \
  || { KREW_ROOT="$root" "$BIN_DIR/krew" install --manifest="$out/baton.yaml" --archive="$archive"; exit 1; }
echo "archive:  $archive"
echo "sha256:   $sha"
echo "manifest: $out/baton.yaml (validated)"
echo "installed with krew; kubectl baton --version:"
PATH="$root/bin:$PATH" "$BIN_DIR/kubectl" baton --version
