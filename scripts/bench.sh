#!/usr/bin/env bash
# Builds infergate in release mode and runs the benchmarks; they print
# figures (record them in docs/benchmarks.md). Arguments go to the
# translate and apply runs, e.g. scripts/bench.sh --routes 1000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
# shellcheck source=env.sh
source scripts/env.sh
cargo build --release --quiet -p infergate -p infergate-bench -p infergate-epp -p infergate-sim
export INFERGATE_BIN="$CARGO_TARGET_DIR/release/infergate"
export INFERGATE_BIN_DIR="$CARGO_TARGET_DIR/release"
bench="$CARGO_TARGET_DIR/release/infergate-bench"
echo "== translation (component vs native) and Envoy encoding"
"$bench" translate "$@"
echo
echo "== file change -> applied by Envoy"
"$bench" apply "$@"
echo
echo "== latency added by the endpoint picker"
"$bench" picker
echo
echo "== latency added by routing by model (1 KB and 300 KB bodies)"
"$bench" model-routing
echo
echo "== component swaps"
"$bench" swap --other "$CARGO_TARGET_DIR/test-components/infergate-test-misbehaving.wasm"
echo
echo "== Kubernetes mode: 1,000 HTTPRoutes, 100 InferencePools, 3,000 Pods on the test kube-apiserver"
"$bench" kube
