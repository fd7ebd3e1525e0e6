#!/usr/bin/env bash
# The inference quick start in a cluster (needs root): a single-node Kubernetes
# cluster on this machine (scripts/cluster.sh), infergate installed with its Helm
# chart (inference extension on), three simulated model servers, an InferencePool
# without a picker reference, a Gateway and an HTTPRoute (examples/cluster/). The
# controller deploys the Gateway's Envoy and the pool's endpoint picker; completions
# go to the Gateway's address and the script prints which Pod served each. The cluster stays up for you to
# explore (`scripts/cluster.sh kubectl ...`); `scripts/cluster.sh down` removes it.
#
#   INFERGATE_CLUSTER_INDEX   which cluster (1 by default; tests use 9)
#   INFERGATE_IMAGE_PROFILE   debug (default: the binaries scripts/setup.sh builds) or release
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "cluster quick start: needs root (the cluster's node, containers)" >&2; exit 1; }
scripts/setup.sh
# shellcheck source=../scripts/env.sh
source scripts/env.sh
profile="${INFERGATE_IMAGE_PROFILE:-debug}"
kube_bin="$(scripts/kube-tools.sh --print)"

step() { printf '\n== %s\n' "$*"; }

step "images ($profile): infergate, infergate-epp, infergate-sim, envoy"
images="$(cargo xtask images --profile "$profile" $([ "$profile" = debug ] && echo --no-build) \
  --only infergate,infergate-epp,infergate-sim,envoy)"
echo "$images"
ref() { echo "$images" | awk -v n="/$1:" 'index($2, n) { print $2 }'; }

step "cluster ${INFERGATE_CLUSTER_INDEX:-1}: up"
scripts/cluster.sh up
echo "$images" | while read -r file _; do scripts/cluster.sh load-image "$file"; done
kubeconfig="$(scripts/cluster.sh kubeconfig)"
kubectl() { "$kube_bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

step "helm install infergate (inference extension on; it deploys an Envoy per Gateway and a picker per pool)"
controller="$(ref infergate)"; envoy="$(ref envoy)"; epp="$(ref infergate-epp)"
"$kube_bin/helm" --kubeconfig "$kubeconfig" upgrade --install infergate charts/infergate \
  -n infergate-system --create-namespace --wait --timeout 180s \
  --set inferenceExtension.enabled=true \
  --set "image.repository=${controller%:*},image.tag=${controller##*:}" \
  --set "gatewayDeployer.envoy.image.repository=${envoy%:*},gatewayDeployer.envoy.image.tag=${envoy##*:}" \
  --set "inferenceExtension.managedPicker.image.repository=${epp%:*},inferenceExtension.managedPicker.image.tag=${epp##*:}" \
  2>&1 | grep -v 'symbolic link'

step "model servers, the pool, a Gateway and a route (examples/cluster/quickstart.yaml)"
sed -e "s|SIM_IMAGE|$(ref infergate-sim)|" examples/cluster/quickstart.yaml | kubectl apply -f -
kubectl rollout status deployment/vllm --timeout=120s
step "the endpoint picker the controller deploys for the pool (infergate-epp-vllm)"
for _ in $(seq 1 60); do
  kubectl get deployment infergate-epp-vllm >/dev/null 2>&1 && break
  sleep 1
done
kubectl rollout status deployment/infergate-epp-vllm --timeout=120s
for _ in $(seq 1 90); do
  [ "$(kubectl get gateway inference -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status}')" = True ] && break
  sleep 1
done
kubectl get gateway inference
address="$(kubectl get gateway inference -o jsonpath='{.status.addresses[0].value}')"
[ -n "$address" ] || { echo "cluster quick start: the Gateway has no address" >&2; kubectl describe gateway inference >&2; exit 1; }

step "completions through the Gateway at $address:80 (each answered by the Pod the picker chose)"
for i in $(seq 1 6); do
  served="$(curl -s --max-time 10 "http://$address/v1/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"sim-model\",\"prompt\":\"request $i\",\"max_tokens\":5}" | jq -r '.served_by // "no answer"')"
  echo "  request $i: served by $served"
done

cat <<TEXT

The cluster stays up:
  scripts/cluster.sh kubectl get gateways,httproutes,inferencepools,pods -A
  scripts/cluster.sh kubectl -n default get deployment,service,configmap,secret,role -l app.kubernetes.io/managed-by=infergate
  scripts/cluster.sh down     # removes it and every change it made to this machine
TEXT
