# Sourced by the scripts: where the tools that setup.sh installed live.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One target directory per Rust toolchain, shared by clones: dependencies
# (wasmtime, envoy-types, kube) are built once per machine, and cargo's
# fingerprints rebuild whatever changed. Clones share their workspace crates'
# artifacts too (cargo hashes a crate's path relative to the workspace, not
# the clone's location) and rebuild them when their files are newer than the
# last build: a fresh clone (CI) rebuilds them all. A clone whose files are
# older than another clone's last build may reuse that build; after building
# another clone, touch the changed files (or `cargo clean -p CRATE`). The
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
