#!/usr/bin/env bash
# Runs every check: setup, rustfmt and clippy, the workspace's tests natively (translation, runtime,
# end to end with the real Envoy, Kubernetes, the real cluster), then the translation library's
# tests again compiled to WebAssembly under the wasmtime CLI, then the upstream conformance suites
# (Inference Extension, and Gateway API's GATEWAY-HTTP profile) on a real cluster
# (scripts/conformance.sh all). Ends with three summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "== lints"
cargo fmt --all --check
cargo clippy --workspace --exclude infergate-guest --exclude infergate-test-misbehaving \
  --exclude infergate-test-other-version --all-targets --quiet -- -D warnings

echo "== native tests"
cargo test --workspace --exclude infergate-guest --exclude infergate-test-misbehaving \
  --exclude infergate-test-other-version 2>&1 | tee -a "$log"

echo "== translation tests inside WebAssembly (wasm32-wasip1, wasmtime CLI as the runner)"
CARGO_TARGET_WASM32_WASIP1_RUNNER="$WASMTIME_BIN run --" \
  cargo test --package infergate-translate --target wasm32-wasip1 --tests 2>&1 | tee -a "$log"

echo "== upstream conformance: Gateway API Inference Extension and Gateway API (scripts/conformance.sh all)"
conformance_log="$(mktemp)"
trap 'rm -f "$log" "$conformance_log"' EXIT
conformance=0
INFERGATE_CONFORMANCE_NO_BUILD=1 scripts/conformance.sh all 2>&1 | tee "$conformance_log" ||
  conformance=$?

awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
grep '^conformance (' "$conformance_log" || echo "conformance: did not run to the end (exit $conformance)"
exit "$conformance"
