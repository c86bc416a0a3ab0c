#!/usr/bin/env bash
# Starts the local control plane on loopback (etcd, kube-apiserver, kube-controller-manager) in
# the background, writes a kubeconfig with an admin and an unprivileged user, and prints its
# path. Idempotent: an environment that is already up and healthy is reused.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ETCD_PORT=${BATON_ETCD_PORT:-23790}
APISERVER_PORT=${BATON_APISERVER_PORT:-16443}
KCM_PORT=${BATON_KCM_PORT:-10257}
PKI="$BATON_RUN/pki"
LOGS="$BATON_RUN/logs"
PIDS="$BATON_RUN/pids"
KUBECONFIG_OUT="$BATON_RUN/kubeconfig"
# etcd on tmpfs with fsync off: fast, and nothing here must outlive the environment.
ETCD_DATA=${BATON_ETCD_DATA:-/dev/shm/baton-etcd-$APISERVER_PORT}

running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

wait_http() { # name url timeout-seconds [curl args...]
  local name=$1 url=$2 deadline=$((SECONDS + $3)); shift 3
  until curl -fsS --max-time 2 "$@" "$url" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "$name did not become healthy at $url; last log lines:"
      tail -n 30 "$LOGS/$name.log" >&2 || true
      exit 1
    fi
    running "$name" || { log "$name exited; log:"; tail -n 30 "$LOGS/$name.log" >&2; exit 1; }
    sleep 0.5
  done
}

start() { # name binary args...
  local name=$1; shift
  running "$name" && return 0
  log "starting $name"
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

make_pki() {
  [ -f "$PKI/done" ] && return 0
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=baton-local-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\n' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Static bearer tokens: an admin in system:masters and an unprivileged developer.
    admin=$(openssl rand -hex 24)
    dev=$(openssl rand -hex 24)
    printf '%s,admin,admin-uid,"system:masters"\n%s,developer,developer-uid,"developers"\n' \
      "$admin" "$dev" >tokens.csv
    echo "$admin" >admin.token
    echo "$dev" >developer.token
    touch done
  )
}

write_kubeconfig() {
  local server="https://127.0.0.1:$APISERVER_PORT"
  cat >"$KUBECONFIG_OUT" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: baton-local
  cluster:
    server: $server
    certificate-authority: $PKI/ca.crt
users:
- name: admin
  user:
    token: $(cat "$PKI/admin.token")
- name: developer
  user:
    token: $(cat "$PKI/developer.token")
contexts:
- name: admin
  context: {cluster: baton-local, user: admin, namespace: default}
- name: developer
  context: {cluster: baton-local, user: developer, namespace: default}
current-context: admin
KCFG
}

# The API server's own record of who did what (metadata only, no watches): the tests count the
# operator's requests in it (a settled instance costs no writes). One file, never rotated mid-run.
audit_policy() {
  cat >"$BATON_RUN/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  verbs: ["watch"]
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version", "/openapi*", "/api*"]
- level: Metadata
POLICY
}

mkdir -p "$LOGS" "$PIDS" "$ETCD_DATA"
bash "$ENV_DIR/build-control-plane.sh"
make_pki
audit_policy

start etcd "$BIN_DIR/etcd" --name baton --data-dir "$ETCD_DATA" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "baton=http://127.0.0.1:$((ETCD_PORT + 1))" \
  --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
wait_http etcd "http://127.0.0.1:$ETCD_PORT/health" 60

# A fresh API server starts a fresh audit log.
running kube-apiserver || rm -f "$LOGS/audit.log"
start kube-apiserver "$BIN_DIR/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --endpoint-reconciler-type none \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 \
  --allow-privileged=true \
  --anonymous-auth=true \
  --audit-policy-file "$BATON_RUN/audit-policy.yaml" --audit-log-path "$LOGS/audit.log" \
  --audit-log-format json --audit-log-maxsize 4096 --audit-log-maxbackup 1
wait_http kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" 180 --cacert "$PKI/ca.crt"
write_kubeconfig

start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
  --kubeconfig "$KUBECONFIG_OUT" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials=false \
  --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,deployment-controller,replicaset-controller
wait_http kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" 120 -k

log "control plane ${K8S_VERSION} up at https://127.0.0.1:$APISERVER_PORT"
echo "$KUBECONFIG_OUT"
