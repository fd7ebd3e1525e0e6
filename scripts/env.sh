# Sourced by the scripts: where the tools that setup.sh installed live.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One target directory per Rust toolchain, shared by clones: dependencies
# (wasmtime, envoy-types, kube) are built once per machine, and cargo's
# fingerprints rebuild whatever changed. Workspace crates of clones at other
# paths get their own artifacts (their path is part of cargo's hash); the
# binaries in debug/ are those of the clone that built last, which is why the
# scripts build before they test. Run two clones' builds one after the other.
TOOLCHAIN_KEY="$(rustc -vV 2>/dev/null | sha256sum | cut -c1-12)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/infergate/target-$TOOLCHAIN_KEY}"
INFERGATE_ENVOY="$(ls "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)"
export INFERGATE_ENVOY
WASMTIME_BIN="$(ls "$ROOT"/.venv/lib/python3*/site-packages/wasmtime_cli/wasmtime 2>/dev/null | head -1 || true)"
export WASMTIME_BIN
export INFERGATE_COMPONENT="$CARGO_TARGET_DIR/infergate-translator.wasm"
# kube-apiserver and etcd for the Kubernetes tests (scripts/kube-tools.sh builds them).
INFERGATE_KUBE_BIN="$("$ROOT/scripts/kube-tools.sh" --print)"
export INFERGATE_KUBE_BIN
