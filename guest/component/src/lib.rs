//! The translation component: exports [`infergate_translate::translate`]
//! through the `infergate:translator` world. Built for
//! `wasm32-unknown-unknown` and encoded as a component by `cargo xtask
//! component`, so it imports nothing: no WASI, no capability but computing.

use infergate_model::{Guest, Output, Snapshot, TranslateError};

struct Translator;

impl Guest for Translator {
    fn translate(input: Snapshot) -> Result<Output, TranslateError> {
        infergate_translate::translate(&input)
    }
}

infergate_model::export_translator!(Translator with_types_in infergate_model);
