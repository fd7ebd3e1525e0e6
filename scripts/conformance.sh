#!/usr/bin/env bash
# The upstream conformance suites, unmodified, against infergate installed
# by its Helm chart on a real single-node cluster (scripts/cluster.sh; needs
# root):
#
#   scripts/conformance.sh inference   # Gateway API Inference Extension v1.6.0 (the default)
#   scripts/conformance.sh gateway     # Gateway API v1.6.1, the GATEWAY-HTTP profile
#   scripts/conformance.sh all         # both, on one cluster
#
# Steps: build (once per machine, cached under ~/.cache/infergate/conformance)
# the suite's Go test binary and the images its manifests name; bring up
# cluster $INFERGATE_CLUSTER_INDEX (8 by default: 1 is the developer's, 9
# the tests'); install the Gateway API v1.6.1 and InferencePool CRDs, then
# infergate with its chart (inference extension on, Envoys deployed per
# Gateway); run the suite(s); write the reports to
# conformance/reports/<suite version>/{inference-extension,gateway-http}-report.yaml;
# print the suites' own results; tear the cluster down (purge: the next run starts
# from an empty cluster). Exits non-zero if a test failed.
#
# Environment:
#   INFERGATE_CLUSTER_INDEX       cluster index (default 8)
#   INFERGATE_CONFORMANCE_KEEP=1  leave the cluster up afterwards (for a look around)
#   INFERGATE_CONFORMANCE_PICKER  `infergate` (default): the suite's picker image
#       reference runs infergate-epp with --test-header-steering; `lwepp`: the
#       upstream lwepp v1.6.0 itself, which does not work with Envoy (see
#       conformance/README.md). The choice is written in the report.
#   INFERGATE_CONFORMANCE_RUN     one test's name (-run-test), default all
#   INFERGATE_CONFORMANCE_NO_BUILD=1  use the debug binaries as they are (no setup, no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
[ "$(id -u)" = 0 ] || { echo "conformance: needs root (the cluster's node, containers)" >&2; exit 1; }
# The node's kubelet evicts Pods when the disk is nearly full (evictionHard 1%).
free_kib="$(df --output=avail -k /var/tmp | tail -1)"
[ "$free_kib" -ge $((6 * 1024 * 1024)) ] ||
  { echo "conformance: under 6 GiB free on /var/tmp's disk; the cluster's node would be under DiskPressure" >&2; exit 1; }
SUITE="${1:-inference}"
case "$SUITE" in
  inference | gateway | all) ;;
  *) echo "usage: scripts/conformance.sh [inference|gateway|all]" >&2; exit 2 ;;
esac
want() { [ "$SUITE" = all ] || [ "$SUITE" = "$1" ]; }

GIE_VERSION=v1.6.0
# The Gateway API release whose CRDs the inference suite requires (it checks
# their bundle-version annotation), and whose conformance suite runs.
GATEWAY_API_VERSION=v1.6.1
# The CoreDNS that the Gateway API suite's base manifests run (UDPRoute
# tests; its Pod must be ready before any test starts).
COREDNS_VERSION=v1.12.2
PICKER="${INFERGATE_CONFORMANCE_PICKER:-infergate}"
case "$PICKER" in infergate | lwepp) ;; *) echo "conformance: INFERGATE_CONFORMANCE_PICKER is infergate or lwepp" >&2; exit 2 ;; esac
export INFERGATE_CLUSTER_INDEX="${INFERGATE_CLUSTER_INDEX:-8}"

# INFERGATE_CONFORMANCE_NO_BUILD=1 (scripts/test.sh, right after the
# workspace's tests built every binary): take the binaries as they are.
no_build="${INFERGATE_CONFORMANCE_NO_BUILD:-0}"
[ "$no_build" = 1 ] || scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
export PATH="$PATH:/usr/local/go/bin"
kube_bin="$(scripts/kube-tools.sh --print)"
step() { printf '\n== conformance: %s\n' "$*"; }

# --- the suite and its images, built once per machine -----------------------
GO_VERSION="$(go env GOVERSION)"
CACHE="$HOME/.cache/infergate/conformance/gie-$GIE_VERSION-$GO_VERSION"
# build_go CACHE DIRECTORY OUTPUT PACKAGE VERSION [ENV...]: CACHE/OUTPUT built
# from PACKAGE@VERSION in a scratch module (CACHE/src/DIRECTORY) that requires
# it, once: kept while it exists. An OUTPUT ending in .test is the package's
# test binary (the conformance suites are Go tests).
build_go() {
  local cache="$1" dir="$2" out="$3" package="$4" version="$5"
  shift 5
  [ -x "$cache/$out" ] && return
  step "building $package@$version (once per machine, a few minutes)"
  mkdir -p "$cache/src/$dir"
  (
    cd "$cache/src/$dir"
    [ -f go.mod ] || go mod init "infergate.dev/conformance-$dir" >/dev/null 2>&1
    # Gateway API's conformance module requires the API module at a
    # placeholder version (a replace upstream, which dependents do not
    # get): pin it.
    case "$package" in
      sigs.k8s.io/gateway-api/*) go get "sigs.k8s.io/gateway-api@$version" >/dev/null 2>&1 ;;
    esac
    go get "$package@$version" >/dev/null 2>&1 || go get "$package@$version"
    case "$out" in
      *.test) env "$@" go test -c -trimpath -o "$cache/$out.tmp" "$package" ;;
      *) env "$@" go build -trimpath -o "$cache/$out.tmp" "$package" ;;
    esac
    mv "$cache/$out.tmp" "$cache/$out"
  )
}
SUITE_MODULE=sigs.k8s.io/gateway-api-inference-extension/conformance
image_dir="$CARGO_TARGET_DIR/images/conformance"
[ "$no_build" = 1 ] || cargo build --quiet -p infergate -p infergate-epp -p infergate-envoy-drain
images="$(cargo xtask images --profile debug --no-build --only infergate,envoy)"
xtask="$CARGO_TARGET_DIR/debug/xtask"
extra_images=()
if want inference; then
  build_go "$CACHE" suite gie-conformance.test "$SUITE_MODULE" "$GIE_VERSION" CGO_ENABLED=0
  # echo-basic comes from the Gateway API conformance module the suite requires.
  if [ ! -x "$CACHE/echo-basic" ]; then
    (cd "$CACHE/src/suite" && CGO_ENABLED=0 go build -trimpath -o "$CACHE/echo-basic.tmp" \
      sigs.k8s.io/gateway-api/conformance/echo-basic && mv "$CACHE/echo-basic.tmp" "$CACHE/echo-basic")
  fi
  [ "$PICKER" = lwepp ] && build_go "$CACHE" lwepp lwepp \
    sigs.k8s.io/gateway-api-inference-extension/cmd/lwepp "$GIE_VERSION" CGO_ENABLED=0

  # The images exactly as the suite's manifests name them (embedded in the
  # binary; read from the module's source).
  manifests="$(cd "$CACHE/src/suite" && go list -m -f '{{.Dir}}' "$SUITE_MODULE")/resources"
  image_of() { grep -ho "image: .*$1.*" "$manifests"/*.yaml | head -1 | awk '{print $2}'; }
  ECHO_IMAGE="$(image_of echo-basic)"
  PICKER_IMAGE="$(image_of lwepp)"
  [ -n "$ECHO_IMAGE" ] && [ -n "$PICKER_IMAGE" ] || { echo "conformance: no image references found in $manifests" >&2; exit 1; }

  step "images: infergate, envoy (debug builds), $ECHO_IMAGE, $PICKER_IMAGE ($PICKER)"
  "$xtask" image --reference "$ECHO_IMAGE" --binary "$CACHE/echo-basic" \
    --description "Gateway API conformance echo server" --out "$image_dir/echo-basic.tar" >/dev/null
  if [ "$PICKER" = lwepp ]; then
    "$xtask" image --reference "$PICKER_IMAGE" --binary "$CACHE/lwepp" \
      --description "upstream lwepp $GIE_VERSION" --out "$image_dir/picker.tar" >/dev/null
  else
    # infergate-epp answers lwepp's flags; the entrypoint adds the test
    # header steering that lwepp always has.
    "$xtask" image --reference "$PICKER_IMAGE" --binary "$CARGO_TARGET_DIR/debug/infergate-epp" \
      --entrypoint-arg --test-header-steering \
      --description "infergate-epp as the conformance suite's picker" --out "$image_dir/picker.tar" >/dev/null
  fi
  extra_images+=("$image_dir/echo-basic.tar" "$image_dir/picker.tar")
fi
GW_CACHE="$HOME/.cache/infergate/conformance/gateway-api-$GATEWAY_API_VERSION-$GO_VERSION"
if want gateway; then
  GW_MODULE=sigs.k8s.io/gateway-api/conformance
  for build in "gateway-conformance.test $GW_MODULE $GATEWAY_API_VERSION" \
    "echo-basic $GW_MODULE/echo-basic $GATEWAY_API_VERSION" \
    "coredns github.com/coredns/coredns $COREDNS_VERSION"; do
    read -r out package version <<<"$build"
    build_go "$GW_CACHE" "$out" "$out" "$package" "$version" CGO_ENABLED=0
  done
  gw_manifests="$(cd "$GW_CACHE/src/gateway-conformance.test" && go list -m -f '{{.Dir}}' "$GW_MODULE")"
  # Every echo-basic reference of the base manifests and the tests is the
  # echo-basic of this release; CoreDNS as the base manifests name it.
  n=0
  for reference in $(grep -rhoE "registry.k8s.io/gateway-api/echo-basic:[^ \"]+" "$gw_manifests/base" "$gw_manifests/tests" | sort -u); do
    n=$((n + 1))
    "$xtask" image --reference "$reference" --binary "$GW_CACHE/echo-basic" \
      --description "Gateway API $GATEWAY_API_VERSION conformance echo server" --out "$image_dir/gw-echo-$n.tar" >/dev/null
    extra_images+=("$image_dir/gw-echo-$n.tar")
  done
  coredns_ref="$(grep -rhoE "registry.k8s.io/coredns/coredns:[^ \"]+" "$gw_manifests/base" | head -1)"
  # Its Pod binds port 53 with NET_BIND_SERVICE, which a non-root user
  # cannot use without file capabilities: this image runs as root.
  "$xtask" image --reference "$coredns_ref" --binary "$GW_CACHE/coredns" --user root \
    --description "CoreDNS $COREDNS_VERSION for the Gateway API conformance suite" --out "$image_dir/coredns.tar" >/dev/null
  extra_images+=("$image_dir/coredns.tar")
  step "images: infergate, envoy (debug builds), echo-basic ($n references), $coredns_ref"
fi
ref() { echo "$images" | awk -v n="/$1:" 'index($2, n) { print $2 }'; }

# --- the cluster --------------------------------------------------------------
keep="${INFERGATE_CONFORMANCE_KEEP:-0}"
teardown() {
  if [ "$keep" = 1 ]; then
    echo "conformance: the cluster stays up (scripts/cluster.sh kubectl ...; INFERGATE_CLUSTER_INDEX=$INFERGATE_CLUSTER_INDEX)" >&2
  else
    scripts/cluster.sh purge >/dev/null 2>&1 || scripts/cluster.sh purge
  fi
}
step "cluster $INFERGATE_CLUSTER_INDEX: up"
scripts/cluster.sh purge >/dev/null 2>&1 || true
trap teardown EXIT
scripts/cluster.sh up
for file in $(echo "$images" | awk '{print $1}') "${extra_images[@]}"; do
  scripts/cluster.sh load-image "$file"
done
kubeconfig="$(scripts/cluster.sh kubeconfig)"
kubectl() { "$kube_bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

step "CRDs: Gateway API $GATEWAY_API_VERSION, InferencePool $GIE_VERSION"
kubectl apply --server-side -f "crds/gateway-api-$GATEWAY_API_VERSION/" >/dev/null
kubectl apply --server-side -f "crds/inference-$GIE_VERSION/" >/dev/null
kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null

step "helm install infergate (inference extension on, an Envoy per Gateway)"
controller="$(ref infergate)"; envoy="$(ref envoy)"
"$kube_bin/helm" --kubeconfig "$kubeconfig" upgrade --install infergate charts/infergate \
  -n infergate-system --create-namespace --wait --timeout 180s --skip-crds \
  --set inferenceExtension.enabled=true \
  --set "image.repository=${controller%:*},image.tag=${controller##*:}" \
  --set "gatewayDeployer.envoy.image.repository=${envoy%:*},gatewayDeployer.envoy.image.tag=${envoy##*:}" \
  2>&1 | grep -v 'symbolic link' | sed -n 1p
class="$(kubectl get gatewayclass -o jsonpath='{.items[0].metadata.name}')"
kubectl wait --for condition=Accepted "gatewayclass/$class" --timeout=60s >/dev/null

# --- the suites ---------------------------------------------------------------
version="$(git describe --always --dirty 2>/dev/null || echo unknown)"
report_fields=(-organization infergate -project infergate -url https://github.com/infergate/infergate
  -version "$version" -contact https://github.com/infergate/infergate/issues)
summary=()
overall=0

run_inference() {
  local report_dir="conformance/reports/$GIE_VERSION" log status passed failed
  mkdir -p "$report_dir"
  local report="$ROOT/$report_dir/inference-extension-report.yaml"
  step "the Inference Extension $GIE_VERSION suite (GatewayClass $class, picker image: $PICKER)"
  log="$(mktemp)"
  set +e
  (
    cd "$(mktemp -d)"
    "$CACHE/gie-conformance.test" -test.v -test.timeout 60m \
      -gateway-class "$class" -kubeconfig "$kubeconfig" \
      -report-output "$report.tmp" "${report_fields[@]}" \
      ${INFERGATE_CONFORMANCE_RUN:+-run-test "$INFERGATE_CONFORMANCE_RUN"}
  ) >"$log" 2>&1
  status=$?
  set -e
  grep -E '^\s*--- (PASS|FAIL|SKIP)' "$log" || true
  if [ $status -ne 0 ]; then
    echo "conformance: the suite failed (exit $status); its output ends:" >&2
    tail -n 60 "$log" >&2
  fi
  if [ -f "$report.tmp" ]; then
    # Which picker served under the suite's picker image reference.
    {
      echo "# Run by scripts/conformance.sh on a single-node cluster (scripts/cluster.sh)."
      if [ "$PICKER" = infergate ]; then
        echo "# The suite's picker image ($PICKER_IMAGE) ran infergate-epp --test-header-steering"
        echo "# with lwepp's flags: lwepp $GIE_VERSION does not work with Envoy (conformance/README.md)."
      else
        echo "# The suite's picker image ran the upstream lwepp $GIE_VERSION itself."
      fi
      cat "$report.tmp"
    } >"$report"
    rm -f "$report.tmp"
    echo "conformance: report written to $report_dir/inference-extension-report.yaml; its summary:"
    sed -n '/^profiles:/,$p' "$report"
  fi
  passed="$(grep -cE '^    --- PASS: TestConformance/[^/]*? ' "$log" || true)"
  failed="$(grep -cE '^    --- FAIL: TestConformance/[^/]*? ' "$log" || true)"
  rm -f "$log"
  summary+=("conformance (Inference Extension $GIE_VERSION): $passed passed, $failed failed")
  [ $status -eq 0 ] || overall=$status
}

# The GATEWAY-HTTP profile, with the features the GatewayClass publishes in
# status.supportedFeatures (the suite reads them from there). The full log
# is kept next to the report: a failing test's reasons are in it.
run_gateway() {
  local report_dir="conformance/reports/gateway-api-$GATEWAY_API_VERSION" status passed failed skipped
  mkdir -p "$report_dir"
  local report="$ROOT/$report_dir/gateway-http-report.yaml"
  local log="$ROOT/$report_dir/gateway-http.log"
  step "the Gateway API $GATEWAY_API_VERSION suite, profile GATEWAY-HTTP (GatewayClass $class)"
  set +e
  (
    cd "$(mktemp -d)"
    "$GW_CACHE/gateway-conformance.test" -test.v -test.timeout 90m -test.run '^TestConformance$' \
      -gateway-class "$class" -kubeconfig "$kubeconfig" \
      -conformance-profiles GATEWAY-HTTP \
      -report-output "$report.tmp" "${report_fields[@]}" \
      ${INFERGATE_CONFORMANCE_RUN:+-run-test "$INFERGATE_CONFORMANCE_RUN"}
  ) >"$log" 2>&1
  status=$?
  set -e
  grep -E '^    --- (PASS|FAIL|SKIP)' "$log" || true
  if [ -f "$report.tmp" ]; then
    {
      echo "# Run by scripts/conformance.sh on a single-node cluster (scripts/cluster.sh)."
      echo "# The suite's CoreDNS image ran CoreDNS $COREDNS_VERSION built from source, as root."
      cat "$report.tmp"
    } >"$report"
    rm -f "$report.tmp"
    echo "conformance: report written to $report_dir/gateway-http-report.yaml; its summary:"
    sed -n '/^profiles:/,$p' "$report"
  fi
  passed="$(grep -cE '^    --- PASS: TestConformance/[^/]*? ' "$log" || true)"
  failed="$(grep -cE '^    --- FAIL: TestConformance/[^/]*? ' "$log" || true)"
  skipped="$(grep -cE '^    --- SKIP: TestConformance/[^/]*? ' "$log" || true)"
  summary+=("conformance (Gateway API $GATEWAY_API_VERSION, GATEWAY-HTTP): $passed passed, $failed failed, $skipped skipped (log: $report_dir/gateway-http.log)")
  [ $status -eq 0 ] || overall=$status
}

want inference && run_inference
want gateway && run_gateway
printf '%s\n' "${summary[@]}"
exit "$overall"
