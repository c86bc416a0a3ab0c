#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl (k8s.io/kubernetes), etcd, helm and
# krew from their published Go modules into $BATON_CACHE/bin, and the GitOps health checker of
# tests/health (kstatus and Argo CD's Lua interpreter). Each binary is rebuilt only when its
# pinned version (or, for the checker, its source) changes: a stamp file records what was built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "$BIN_DIR" "$BATON_CACHE/src"

stamp_ok() { [ -x "$BIN_DIR/$1" ] && [ "$(cat "$BIN_DIR/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN_DIR/.$1.version"; }

build_kubernetes() {
  local v=$K8S_VERSION minor need=()
  for b in kube-apiserver kube-controller-manager kubectl; do stamp_ok "$b" "$v" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  log "building ${need[*]} $v (cold: several minutes on 2 cores)"
  local dir="$BATON_CACHE/src/kubernetes-$v"
  mkdir -p "$dir"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces, which do not
  # apply to a dependency; pin each one to its published v0.x tag, read from upstream's go.mod.
  local gomod
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  local staging_v="v0.${v#v1.}"
  {
    echo "module baton.dev/localenv/kubernetes"
    echo
    echo "go 1.26"
    echo
    grep '^godebug' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging_v"'#p' "$gomod"
    echo ")"
  } >"$dir/go.mod"
  minor=$(echo "$v" | cut -d. -f2)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${need[@]}"; do
    (cd "$dir" && CGO_ENABLED=0 go build -mod=mod -trimpath -tags selinux,notest -ldflags "$ld" \
      -o "$BIN_DIR/$b" "k8s.io/kubernetes/cmd/$b")
    stamp "$b" "$v"
    log "built $b $v"
  done
}

build_etcd() {
  stamp_ok etcd "$ETCD_VERSION" && return 0
  log "building etcd $ETCD_VERSION"
  # A module of its own: sharing one with the apiserver would raise grpc/otel under it.
  local dir="$BATON_CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module baton.dev/localenv/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" >"$dir/go.mod"
  (cd "$dir" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" \
    -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"
}

build_helm() {
  stamp_ok helm "$HELM_VERSION" && return 0
  log "building helm $HELM_VERSION"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
}

build_krew() {
  stamp_ok krew "$KREW_VERSION" && stamp_ok validate-krew-manifest "$KREW_VERSION" && return 0
  log "building krew $KREW_VERSION"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION" "sigs.k8s.io/krew/cmd/validate-krew-manifest@$KREW_VERSION"
  stamp krew "$KREW_VERSION"
  stamp validate-krew-manifest "$KREW_VERSION"
}

build_health() {
  local src="$REPO_DIR/tests/health" sum
  sum=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha1sum | cut -c1-16)
  stamp_ok baton-health "$sum" && return 0
  log "building the GitOps health checker (tests/health)"
  (cd "$src" && CGO_ENABLED=0 go build -mod=mod -trimpath -o "$BIN_DIR/baton-health" .)
  stamp baton-health "$sum"
}

build_etcd
build_kubernetes
build_helm
build_krew
build_health
log "control plane binaries ready in $BIN_DIR"
