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
pub const WIT_PACKAGE: &str = "infergate:translator@0.6.0";

pub use exports::infergate::translator::translate::*;

impl Settings {
    /// Settings for the GatewayClasses of `controller_name`, every feature
    /// at its default: the inference extension off, listeners on 127.0.0.1,
    /// Gateways sharing one host, no managed picker.
    pub fn new(controller_name: impl Into<String>) -> Self {
        Settings {
            controller_name: controller_name.into(),
            inference_extension: false,
            default_address: "127.0.0.1".into(),
            isolated_gateways: false,
            managed_picker: None,
            model_routing_max_body_bytes: infergate_names::model::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Condition {
    pub fn new(
        condition_type: ConditionType,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            condition_type,
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

impl ConditionType {
    /// The condition type as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::Programmed => "Programmed",
            ConditionType::ResolvedRefs => "ResolvedRefs",
            ConditionType::Conflicted => "Conflicted",
            ConditionType::PartiallyInvalid => "PartiallyInvalid",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use infergate_names::GATEWAY_GROUP;
/// The API group of the Inference Extension's InferencePool.
pub const INFERENCE_GROUP: &str = infergate_names::inference_pool::GROUP;

impl RefKind {
    /// The reference's group and kind; the case for a known pair, else `other`.
    pub fn new(group: &str, kind: &str) -> Self {
        match (group, kind) {
            (GATEWAY_GROUP, "Gateway") => RefKind::Gateway,
            ("", "Service") => RefKind::Service,
            (INFERENCE_GROUP, "InferencePool") => RefKind::InferencePool,
            ("", "Secret") => RefKind::Secret,
            _ => RefKind::Other(GroupKind {
                group: group.to_string(),
                kind: kind.to_string(),
            }),
        }
    }

    pub fn group(&self) -> &str {
        match self {
            RefKind::Gateway => GATEWAY_GROUP,
            RefKind::Service => "",
            RefKind::InferencePool => INFERENCE_GROUP,
            RefKind::Secret => "",
            RefKind::Other(gk) => &gk.group,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            RefKind::Gateway => "Gateway",
            RefKind::Service => "Service",
            RefKind::InferencePool => "InferencePool",
            RefKind::Secret => "Secret",
            RefKind::Other(gk) => &gk.kind,
        }
    }

    /// Whether this names `group` and `kind`, whichever case carries them.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group() == group && self.kind() == kind
    }
}

impl Output {
    /// Checks what the types alone cannot: every route names a rule of its
    /// virtual host. The host checks a component's output with this before
    /// it uses it.
    pub fn check_references(&self) -> Result<(), String> {
        for gateway in &self.gateways {
            for listener in &gateway.listeners {
                for vh in listener.virtual_hosts() {
                    if let Some(r) = vh.routes.iter().find(|r| r.rule as usize >= vh.rules.len()) {
                        return Err(format!(
                            "Gateway {}: virtual host {:?} has {} rules, but a route refers to rule {}",
                            gateway.node_id,
                            vh.name,
                            vh.rules.len(),
                            r.rule
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl ListenerIr {
    /// The virtual hosts of every filter chain.
    pub fn virtual_hosts(&self) -> impl Iterator<Item = &VirtualHostIr> {
        self.filter_chains.iter().flat_map(|c| &c.virtual_hosts)
    }
}

/// `kind` for the core group, else `group/kind`, as errors and statuses
/// name a kind.
impl std::fmt::Display for RefKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group().is_empty() {
            f.write_str(self.kind())
        } else {
            write!(f, "{}/{}", self.group(), self.kind())
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
    fn ref_kind_names_known_pairs_by_their_case_and_keeps_others() {
        for (group, kind) in [
            (GATEWAY_GROUP, "Gateway"),
            ("", "Service"),
            (INFERENCE_GROUP, "InferencePool"),
            ("", "Secret"),
            ("example.com", "Service"),
            ("", "ConfigMap"),
        ] {
            let r = RefKind::new(group, kind);
            assert_eq!((r.group(), r.kind()), (group, kind));
            assert!(r.is(group, kind));
            assert_eq!(
                matches!(r, RefKind::Other(_)),
                group == "example.com" || kind == "ConfigMap"
            );
        }
        assert_eq!(RefKind::Service.to_string(), "Service");
        assert_eq!(
            RefKind::InferencePool.to_string(),
            "inference.networking.k8s.io/InferencePool"
        );
        // An `other` that spells a known pair still answers for it.
        let spelled = RefKind::Other(GroupKind {
            group: String::new(),
            kind: "Service".into(),
        });
        assert!(spelled.is("", "Service"));
    }

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
