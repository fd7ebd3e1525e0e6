//! The types of the `infergate:translator` WIT package.
//!
//! Every crate that speaks the contract uses these types: the translation
//! library, the component adapter, the resource converters and the host, which
//! lowers them into the component and lifts the output back as they are. They
//! carry serde derives so that golden files and `infergate translate` can print
//! them.

#![allow(clippy::too_many_arguments)]

// Inside the component the guest's bindings come from wit-bindgen; on the
// host the same types come from wasmtime's bindgen, which also makes them
// liftable and lowerable. Both generate the same Rust types from the same
// WIT (same names, fields and variants), so the translation library compiles
// against either, and the host passes its values across the component
// boundary without converting them.
#[cfg(target_family = "wasm")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "translator",
    pub_export_macro: true,
    export_macro_name: "export_translator",
    default_bindings_module: "infergate_model",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq, Clone],
});

#[cfg(not(target_family = "wasm"))]
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "translator",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq, Clone],
});

/// The WIT package this crate was generated from, `name@version`.
pub const WIT_PACKAGE: &str = "infergate:translator@0.1.0";

pub use exports::infergate::translator::translate::*;

impl Condition {
    pub fn new(
        condition_type: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            condition_type: condition_type.to_string(),
            status: if ok {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.to_string(),
            message: message.into(),
            observed_generation,
        }
    }
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ObjectMeta {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

// wit-bindgen generates the type, so the derive cannot be added there.
#[allow(clippy::derivable_impls)]
impl Default for HeaderModifier {
    fn default() -> Self {
        HeaderModifier {
            set: vec![],
            add: vec![],
            remove: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_package_constant_matches_the_wit_file() {
        let wit = include_str!("../../../wit/translator.wit");
        let declared = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';'));
        assert_eq!(declared, Some(WIT_PACKAGE));
    }
}
