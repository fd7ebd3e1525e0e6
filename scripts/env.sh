# Sourced by the scripts: where the tools that setup.sh installed live.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One target directory per clone path: build outputs embed absolute source
# paths (CARGO_MANIFEST_DIR), so two clones must not share one.
CLONE_KEY="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/infergate/target-$CLONE_KEY}"
INFERGATE_ENVOY="$(ls "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)"
export INFERGATE_ENVOY
WASMTIME_BIN="$(ls "$ROOT"/.venv/lib/python3*/site-packages/wasmtime_cli/wasmtime 2>/dev/null | head -1 || true)"
export WASMTIME_BIN
export INFERGATE_COMPONENT="$CARGO_TARGET_DIR/infergate-translator.wasm"
