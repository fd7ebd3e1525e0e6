//! The translation component: exports [`infergate_translate::translate`]
//! through the `infergate:translator` world. Built for
//! `wasm32-unknown-unknown` and encoded as a component by `cargo xtask
//! component`, so it imports nothing: no WASI, no capability but computing.

// The contract's guest-side bindings exist only when built for WebAssembly.
#![cfg(target_family = "wasm")]

use infergate_model::{Guest, Output, Snapshot, TranslateError};

mod bump;

#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

struct Translator;

impl Guest for Translator {
    fn translate(input: Snapshot) -> Result<Output, TranslateError> {
        infergate_translate::translate(&input)
    }
}

infergate_model::export_translator!(Translator with_types_in infergate_model);
