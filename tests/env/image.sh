#!/usr/bin/env bash
# `make image`: builds Baton's image from the Dockerfile with buildah (daemonless; chroot
# isolation, no container runtime needed) and checks it. Base images cannot be pulled here, so
# both bases are made once from Debian packages and kept in buildah's storage
# (/var/lib/containers/storage, outside the repo), as are the cached layers:
#  - the build base: a debootstrapped Debian bookworm with gcc, plus this machine's Rust
#    toolchain, laid out as the official rust image lays it out, and its CA bundle;
#  - the runtime base: glibc and libgcc from Debian's packages and a nonroot (65532) user, as
#    distroless cc-debian12:nonroot has them.
# A normal `docker build .` elsewhere uses the real bases (the Dockerfile's defaults).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export BUILDAH_ISOLATION=chroot

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
rust=$(rustc --version | cut -d' ' -f2)
TAG=${BATON_IMAGE:-ghcr.io/baton-dev/baton:$version}
RUNTIME_BASE=localhost/baton-runtime-base:cc-debian12-nonroot
BUILD_BASE=localhost/baton-build-base:$rust-bookworm
have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

if ! have "$RUNTIME_BASE"; then
  log "making the runtime base $RUNTIME_BASE (glibc and libgcc from Debian's packages)"
  tmp=$(mktemp -d) && chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq libc6 libgcc-s1 2>/dev/null || { apt-get update -qq && apt-get download -qq libc6 libgcc-s1; })
  ctr=$(buildah from scratch)
  root=$(buildah mount "$ctr")
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$root"; done
  rm -rf "$root"/usr/share/doc "$root"/usr/share/lintian "$root"/usr/share/locale "$root"/usr/share/man
  mkdir -p "$root"/etc "$root"/tmp "$root"/home/nonroot
  chmod 1777 "$root"/tmp && chown 65532:65532 "$root"/home/nonroot
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root"/etc/passwd
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root"/etc/group
  buildah umount "$ctr" >/dev/null
  buildah config --user 65532:65532 --workingdir /home/nonroot "$ctr"
  buildah commit -q "$ctr" "$RUNTIME_BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
  rm -rf "$tmp"
fi

if ! have "$BUILD_BASE"; then
  log "making the build base $BUILD_BASE (debootstrap bookworm + gcc, Rust $rust from this machine)"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$rootfs" \
    http://deb.debian.org/debian >/dev/null
  toolchain=$(rustc --print sysroot)
  ctr=$(buildah from scratch)
  root=$(buildah mount "$ctr")
  cp -a "$rootfs"/. "$root"/
  rm -rf "$rootfs"
  # This machine's trust store, so cargo reaches crates.io through the same network path the
  # machine does (some networks re-sign TLS with a local CA). The base is never published.
  cp /etc/ssl/certs/ca-certificates.crt "$root"/etc/ssl/certs/ca-certificates.crt
  dest="$root/usr/local/rustup/toolchains/$rust-x86_64-unknown-linux-gnu"
  mkdir -p "$dest" "$root/usr/local/cargo/bin"
  # The compiler and the target's standard library; no documentation or sources.
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$dest"/
  for b in cargo rustc rustdoc; do ln -s "../../rustup/toolchains/$rust-x86_64-unknown-linux-gnu/bin/$b" "$root/usr/local/cargo/bin/$b"; done
  buildah umount "$ctr" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit -q "$ctr" "$BUILD_BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

log "building $TAG from the Dockerfile (buildah, layers cached)"
buildah build --layers --isolation chroot \
  --build-arg RUST_IMAGE="$BUILD_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
  -t "$TAG" -f Dockerfile . >"$BATON_CACHE/image-build.log" 2>&1 \
  || { tail -40 "$BATON_CACHE/image-build.log" >&2; exit 1; }

# The checks: non-root user, entrypoint, --version run inside the image's own filesystem (only
# its libraries), no test hooks, size.
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$TAG")
entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$TAG")
ctr=$(buildah from "$TAG")
root=$(buildah mount "$ctr")
out=$(chroot --userspec=65532:65532 "$root" /usr/local/bin/baton --version 2>&1) || out="FAILED: $out"
buildah umount "$ctr" >/dev/null && buildah rm "$ctr" >/dev/null
size=$(buildah images --format '{{.Size}}' "$TAG" | head -1)
echo "image:      $TAG"
echo "user:       $user"
echo "entrypoint: $entrypoint"
echo "--version:  $out"
echo "size:       $size"
[ "$user" = "65532:65532" ] || { log "the image does not run as 65532:65532"; exit 1; }
[ "$entrypoint" = '[/usr/local/bin/baton]' ] || { log "unexpected entrypoint"; exit 1; }
[ "$out" = "baton $version" ] || { log "--version in the image printed: $out"; exit 1; }
