#!/usr/bin/env bash
# Fuzz infergate with cargo-fuzz (libFuzzer, nightly Rust).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 60 s for each target
#
# Targets (fuzz/fuzz_targets, bodies in host/fuzzing/src/lib.rs):
#   yaml_translate   YAML -> resources -> translation -> Envoy protobufs
#   sim_http         raw HTTP requests to the model-server simulator
#   picker_extproc   ext_proc message sequences to the endpoint picker
#
# New interesting inputs are added to fuzz/corpus/<target>/; a crash is
# written to fuzz/artifacts/<target>/. Copy a crash into
# fuzz/regressions/<target>/ and fix it: the test suite replays both
# directories on stable (host/fuzzing/tests/replay.rs). Record clean runs in
# docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(yaml_translate sim_http picker_extproc)

rustup toolchain install nightly --profile minimal >/dev/null
CARGO_FUZZ_VERSION=0.13.2
if ! cargo +nightly fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
# Fuzz builds are instrumented: keep them apart from the ordinary target directory.
export CARGO_TARGET_DIR="$HOME/.cache/infergate/fuzz-target"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "== $target for ${seconds}s"
  status=0
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|SUMMARY|==[0-9]+== ERROR)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $target failed (a crash is in fuzz/artifacts/$target)" >&2
    exit 1
  fi
done
