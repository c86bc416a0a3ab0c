#!/usr/bin/env bash
# Part of `make up` and `make demo`: installs Baton the way its users do — `helm upgrade --install`
# of charts/baton with its catalog — into namespace baton-system. The Deployment's pod runs on
# the local node from the chart's image, which the node maps to the operator built from this
# checkout (tests/env/images.yaml). Prints the kubeconfig export.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
KUBECONFIG_OUT="$BATON_RUN/kubeconfig"
kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }
helm() { "$BIN_DIR/helm" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

cargo build -q -p baton --bin baton
# Helm installs a chart's CRDs only on first install and never upgrades them: apply the
# current ones first, as the README tells users to before `helm upgrade`.
kubectl apply --server-side --force-conflicts --field-manager=baton-env -f charts/baton/crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
# --take-ownership adopts catalog entries applied earlier from examples/catalog.yaml (the same
# entries); the pod template's annotation restarts the operator on the binary just built.
log "installing the chart (namespace baton-system)"
helm upgrade --install baton charts/baton --namespace baton-system --create-namespace \
  --set catalog.enabled=true --take-ownership \
  --set-string podAnnotations.baton\\.dev/binary="$(sha1sum target/debug/baton | cut -c1-12)" \
  --wait --timeout 3m >/dev/null
pod=$(kubectl get pods -n baton-system -l app.kubernetes.io/instance=baton \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
ip=$(kubectl get pod -n baton-system "$pod" -o jsonpath='{.status.podIP}')
log "operator pod $pod Ready: http://$ip:8080/metrics; log: $BATON_RUN/node/logs/baton-system_${pod}_*/baton.log"
echo "export KUBECONFIG=$KUBECONFIG_OUT"
