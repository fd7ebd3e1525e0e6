//! Kubernetes resources to infergate's translation [`Snapshot`].
//!
//! Both providers go through here: the standalone provider hands in YAML
//! documents ([`Resources::add_yaml`]), the Kubernetes provider typed API
//! objects. Errors name the file, the document, the object and the field, so
//! that an operator can find the mistake without reading our code.

pub mod certificates;
mod convert;
mod errors;
mod inference_pool;
mod model_rewrite;
mod names;
pub mod schema;

pub use certificates::{Certificate, Certificates};
pub use convert::empty_snapshot;
pub use errors::{ResourceError, Source};
pub use inference_pool::{
    EndpointPickerRef, InferencePool, InferencePoolSpec, LabelSelector as PoolSelector, PickerPort,
    TargetPort,
};
pub use model_rewrite::{
    InferenceModelRewrite, InferenceModelRewriteSpec, ModelMatch, PoolRef, RewriteMatch,
    RewriteRule, TargetModel,
};

use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use infergate_model::{Settings, Snapshot};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Every object a snapshot is built from, as Kubernetes types. Shared
/// (`Arc`): in a cluster the objects are the watch caches' own, so that
/// taking stock of a cluster copies no object.
#[derive(Default, Clone, Debug)]
pub struct Resources {
    pub namespaces: Vec<Arc<Namespace>>,
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HttpRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub inference_pools: Vec<Arc<InferencePool>>,
    pub inference_model_rewrites: Vec<Arc<InferenceModelRewrite>>,
    /// Secrets that listeners may take certificates from (in a cluster, those
    /// of type kubernetes.io/tls only).
    pub secrets: Vec<Arc<Secret>>,
    /// Documents that were skipped, with why (kinds infergate does not read).
    pub skipped: Vec<String>,
    /// Where each object was read from, by (kind, namespace, name).
    pub origins: Origins,
    /// Check each document of a CRD kind against its CRD first
    /// ([`schema::check`]), as the API server would: see [`Resources::checked`].
    pub check_schemas: bool,
}

/// Where objects were read from, by (kind, namespace, name).
pub type Origins = std::collections::HashMap<(String, String, String), Source>;

/// The kinds infergate reads, with the apiVersions it accepts.
const KINDS: &[(&str, &[&str])] = &[
    ("Namespace", &["v1"]),
    ("GatewayClass", &["gateway.networking.k8s.io/v1"]),
    ("Gateway", &["gateway.networking.k8s.io/v1"]),
    ("HTTPRoute", &["gateway.networking.k8s.io/v1"]),
    (
        "ReferenceGrant",
        &[
            "gateway.networking.k8s.io/v1beta1",
            "gateway.networking.k8s.io/v1",
        ],
    ),
    ("Service", &["v1"]),
    ("EndpointSlice", &["discovery.k8s.io/v1"]),
    ("Pod", &["v1"]),
    ("InferencePool", &["inference.networking.k8s.io/v1"]),
    (
        "InferenceModelRewrite",
        &["inference.networking.x-k8s.io/v1alpha2"],
    ),
    ("Secret", &["v1"]),
];

impl Resources {
    /// Resources that check each document of a CRD kind (Gateway API,
    /// InferencePool) against its CRD's OpenAPI schema and CEL rules before
    /// reading it, so that files get the answer `kubectl apply` would get.
    /// What standalone mode and `infergate translate` read files with.
    /// ([`Resources::default`] does not: tests of the translation's own
    /// checks feed it values the API server would refuse.)
    pub fn checked() -> Self {
        Resources {
            check_schemas: true,
            ..Resources::default()
        }
    }

    /// Parse a multi-document YAML text. An object already defined, in this
    /// text or an earlier one, is an error naming both places. On any error
    /// nothing from this text is kept: the caller's resources are left as
    /// they were.
    pub fn add_yaml(&mut self, file: &str, text: &str) -> Result<(), Vec<ResourceError>> {
        let mut staged = Resources {
            check_schemas: self.check_schemas,
            ..Resources::default()
        };
        let mut errors = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let source = Source::document(file, index);
            let value = match <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(ResourceError::new(source, None, None, e.to_string()));
                    // A syntax error ends the stream: later documents cannot be located.
                    break;
                }
            };
            if let Err(e) = staged.add_value(source, value, &self.origins) {
                errors.extend(e);
            }
        }
        if errors.is_empty() {
            self.extend(staged);
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn add_value(
        &mut self,
        source: Source,
        value: serde_yaml_ng::Value,
        earlier: &Origins,
    ) -> Result<(), Vec<ResourceError>> {
        if value.is_null() {
            return Ok(()); // an empty document, e.g. a trailing `---`
        }
        let str_at = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let kind = str_at("kind");
        let api_version = str_at("apiVersion");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        // Objects are named "namespace/name" in every error, as the
        // conversion's errors name them.
        let cluster_scoped = matches!(kind.as_deref(), Some("Namespace" | "GatewayClass"));
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(if cluster_scoped { "" } else { "default" })
            .to_string();
        let label = name.as_ref().map(|n| {
            if cluster_scoped {
                n.clone()
            } else {
                format!("{namespace}/{n}")
            }
        });
        let err = |field: Option<&str>, message: String| {
            ResourceError::new(
                source.clone(),
                kind.clone().map(|k| (k, label.clone())),
                field.map(str::to_string),
                message,
            )
        };
        let (Some(kind_name), Some(api_version)) = (kind.as_deref(), api_version.as_deref()) else {
            return Err(vec![err(
                None,
                "not a Kubernetes object: `apiVersion` and `kind` are required".into(),
            )]);
        };
        let Some((_, versions)) = KINDS.iter().find(|(k, _)| *k == kind_name) else {
            let near = KINDS.iter().map(|(k, _)| *k).find(|k| {
                k.eq_ignore_ascii_case(kind_name)
                    || kind_name
                        .strip_suffix('s')
                        .is_some_and(|singular| k.eq_ignore_ascii_case(singular))
            });
            let hint = near
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            self.skipped.push(format!(
                "{source}: skipped: kind {kind_name:?} is not read by infergate{hint}"
            ));
            return Ok(());
        };
        if !versions.contains(&api_version) {
            let hint = if kind_name == "InferencePool"
                && api_version.starts_with("inference.networking.x-k8s.io")
            {
                "; the v1alpha2 InferencePool was removed upstream in GIE v1.5.0"
            } else {
                ""
            };
            return Err(vec![err(
                Some("apiVersion"),
                format!(
                    "{api_version:?} is not supported for {kind_name}; use {}{hint}",
                    versions.join(" or ")
                ),
            )]);
        }
        if name.as_deref().is_none_or(str::is_empty) {
            return Err(vec![err(Some("metadata.name"), "is required".into())]);
        }
        // Names as the API server requires them: generated Envoy names join
        // them with "/", which no valid name contains, so they cannot collide.
        let name_rule = if kind_name == "Service" || kind_name == "Namespace" {
            names::dns_label
        } else {
            names::dns_subdomain
        };
        if let Err(why) = name_rule(name.as_deref().unwrap_or_default()) {
            return Err(vec![err(Some("metadata.name"), why)]);
        }
        // An empty namespace means the default one, as for kubectl.
        if !cluster_scoped && let Err(why) = names::dns_label(&namespace) {
            return Err(vec![err(Some("metadata.namespace"), why)]);
        }
        let key = (
            kind_name.to_string(),
            namespace.clone(),
            name.clone().unwrap_or_default(),
        );
        if let Some(first) = self.origins.get(&key).or_else(|| earlier.get(&key)) {
            return Err(vec![ResourceError::defined_twice(
                &key,
                source.clone(),
                first,
            )]);
        }
        if self.check_schemas {
            let checked = schema::check(api_version, kind_name, &value);
            for (rule, why) in checked.skipped_rules {
                self.skipped.push(format!(
                    "{source}: the CRD rule `{rule}` was not checked ({why})"
                ));
            }
            if !checked.violations.is_empty() {
                return Err(checked
                    .violations
                    .into_iter()
                    .map(|v| err(Some(&v.field), v.message))
                    .collect());
            }
        }
        self.origins.insert(key, source.clone());
        let located = |(field, message): (String, String)| vec![err(Some(&field), message)];
        macro_rules! push {
            ($kind:ident) => {
                self.$kind.push(Arc::new(decode(value).map_err(located)?))
            };
        }
        match kind_name {
            "Namespace" => push!(namespaces),
            "GatewayClass" => push!(gateway_classes),
            "Gateway" => push!(gateways),
            "HTTPRoute" => push!(http_routes),
            "ReferenceGrant" => push!(reference_grants),
            "Service" => push!(services),
            "EndpointSlice" => push!(endpoint_slices),
            "Pod" => push!(pods),
            "InferencePool" => push!(inference_pools),
            "InferenceModelRewrite" => push!(inference_model_rewrites),
            "Secret" => push!(secrets),
            _ => unreachable!("KINDS lists only the kinds matched here"),
        }
        Ok(())
    }

    fn extend(&mut self, other: Resources) {
        self.namespaces.extend(other.namespaces);
        self.gateway_classes.extend(other.gateway_classes);
        self.gateways.extend(other.gateways);
        self.http_routes.extend(other.http_routes);
        self.reference_grants.extend(other.reference_grants);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.pods.extend(other.pods);
        self.inference_pools.extend(other.inference_pools);
        self.inference_model_rewrites
            .extend(other.inference_model_rewrites);
        self.secrets.extend(other.secrets);
        self.skipped.extend(other.skipped);
        self.origins.extend(other.origins);
    }

    /// Where an object was read from, if known.
    pub fn origin(&self, kind: &str, namespace: &str, name: &str) -> Source {
        self.origins
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
            .unwrap_or(Source::Api)
    }

    /// Build the snapshot. Values that the CRD schemas would have refused
    /// (a negative port, say) are errors naming the object and field.
    pub fn to_snapshot(&self, settings: Settings) -> Result<Snapshot, Vec<ResourceError>> {
        convert::snapshot(self, settings)
    }

    /// The Secrets that can serve as listener certificates, by
    /// "<namespace>/<name>" (what the snapshot's `tls-secrets` say of them,
    /// with their PEM). The host hands these to the xDS server, never to the
    /// translation component.
    pub fn certificates(&self) -> Certificates {
        self.secrets
            .iter()
            .filter_map(|s| {
                let certificate = certificates::check(s).ok()?;
                let key = format!(
                    "{}/{}",
                    s.metadata
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("default"),
                    s.metadata.name.as_deref().unwrap_or_default()
                );
                Some((key, Arc::new(certificate)))
            })
            .collect()
    }
}

/// Deserialize with the path of the offending field on error.
fn decode<T: DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn an_object_defined_in_an_earlier_text_is_an_error_naming_both_and_nothing_is_added() {
        let mut resources = Resources::default();
        resources.add_yaml("a.yaml", SERVICE).unwrap();
        let other = "---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: 81}]}\n";
        let errors = resources
            .add_yaml("b.yaml", &format!("{SERVICE}{other}"))
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.contains(
                "b.yaml: document 1 (Service default/web): defined twice; first defined at a.yaml: document 1"
            ),
            "{text}"
        );
        assert_eq!(resources.services.len(), 1, "nothing of b.yaml is added");
    }

    #[test]
    fn an_object_defined_twice_in_one_text_is_an_error_naming_both() {
        let mut resources = Resources::default();
        let errors = resources
            .add_yaml("a.yaml", &format!("{SERVICE}---\n{SERVICE}"))
            .unwrap_err();
        let text = errors[0].to_string();
        assert!(
            text.contains("a.yaml: document 2 (Service default/web): defined twice; first defined at a.yaml: document 1"),
            "{text}"
        );
        assert!(resources.services.is_empty());
    }

    /// Every error of converting `yaml`, as text.
    fn conversion_errors(yaml: &str) -> String {
        let mut resources = Resources::default();
        let added = resources.add_yaml("a.yaml", yaml);
        let converted = added.and_then(|()| {
            resources
                .to_snapshot(Settings {
                    inference_extension: true,
                    ..Settings::new("c")
                })
                .map(|_| ())
        });
        match converted {
            Ok(()) => String::new(),
            Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
        }
    }

    #[test]
    fn a_terminating_pod_is_not_ready_although_its_ready_condition_still_says_so() {
        let pod = |name: &str, deleting: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: llm}}{deleting}}}\n\
                 status: {{podIP: 198.18.0.9, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
            )
        };
        let mut resources = Resources::default();
        let text = format!(
            "{}---\n{}",
            pod("serving", ""),
            pod("leaving", ", deletionTimestamp: \"2026-11-30T00:00:00Z\"")
        );
        resources.add_yaml("pods.yaml", &text).unwrap();
        let snapshot = resources
            .to_snapshot(Settings {
                inference_extension: true,
                ..Settings::new("c")
            })
            .unwrap();
        let ready: Vec<(&str, bool)> = snapshot
            .pods
            .iter()
            .map(|p| (p.meta.name.as_str(), p.ready))
            .collect();
        assert_eq!(ready, [("serving", true), ("leaving", false)]);
    }

    fn slice(address_type: &str, addresses: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, labels: {{kubernetes.io/service-name: web}}}}\naddressType: {address_type}\nendpoints: [{{addresses: {addresses}}}]\n"
        )
    }

    #[test]
    fn endpoint_addresses_must_fit_the_slice_address_type_and_fqdn_slices_are_ignored() {
        assert_eq!(conversion_errors(&slice("IPv4", "[198.18.0.1]")), "");
        assert_eq!(conversion_errors(&slice("IPv6", "[\"2001:db8::1\"]")), "");
        let errors = conversion_errors(&slice("IPv4", "[198.18.0.1, 999.1.1.1, localhost]"));
        assert!(errors.contains("endpoints[0].addresses[1]"), "{errors}");
        assert!(errors.contains("endpoints[0].addresses[2]"), "{errors}");
        assert!(
            conversion_errors(&slice("IPv6", "[198.18.0.1]")).contains("addresses[0]"),
            "an IPv4 address in an IPv6 slice"
        );
        let mut resources = Resources::default();
        resources
            .add_yaml("a.yaml", &slice("FQDN", "[localhost]"))
            .unwrap();
        let snapshot = resources.to_snapshot(Settings::new("c")).unwrap();
        assert!(
            snapshot.endpoint_slices.is_empty(),
            "FQDN slices are ignored"
        );
    }

    #[test]
    fn names_are_checked_as_the_api_server_checks_them() {
        for (bad, field) in [
            ("{name: a/b, namespace: x}", "metadata.name"),
            ("{name: b, namespace: x/a}", "metadata.namespace"),
            ("{name: \"a\\nb\"}", "metadata.name"),
            ("{name: Web}", "metadata.name"),
            ("{name: a.b}", "metadata.name"),
        ] {
            let yaml = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {bad}\nspec: {{ports: [{{port: 80}}]}}\n"
            );
            let errors = conversion_errors(&yaml);
            assert!(errors.contains(field), "{bad}: {errors}");
        }
        // An empty namespace is the default one, as for kubectl.
        let mut resources = Resources::default();
        resources
            .add_yaml(
                "a.yaml",
                &SERVICE.replace("{name: web}", "{name: web, namespace: \"\"}"),
            )
            .unwrap();
        assert!(resources.origins.contains_key(&(
            "Service".to_string(),
            "default".to_string(),
            "web".to_string()
        )));
    }

    #[test]
    fn inference_pools_are_checked_as_their_crd_checks_them() {
        let pool = |spec: &str| {
            format!(
                "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {{name: p}}\nspec: {spec}\n"
            )
        };
        assert_eq!(
            conversion_errors(&pool(
                "{selector: {matchLabels: {app: m}}, targetPorts: [{number: 8000}]}"
            )),
            ""
        );
        for (spec, field) in [
            (
                "{selector: {}, targetPorts: [{number: 8000}]}",
                "spec.selector.matchLabels",
            ),
            (
                "{selector: {matchLabels: {app: m}, matchExpressions: [{key: a, operator: Exists}]}, targetPorts: [{number: 8000}]}",
                "spec.selector.matchExpressions",
            ),
            (
                "{selector: {matchLabels: {app: m}}, targetPorts: []}",
                "spec.targetPorts",
            ),
            (
                "{selector: {matchLabels: {app: m}}, targetPorts: [{number: 8000}, {number: 8000}]}",
                "spec.targetPorts[1].number",
            ),
            (
                "{selector: {matchLabels: {app: m}}, targetPorts: [{number: 8000}], appProtocol: grpc}",
                "spec.appProtocol",
            ),
        ] {
            let errors = conversion_errors(&pool(spec));
            assert!(errors.contains(field), "{spec}: {errors}");
        }
    }

    #[test]
    fn unknown_kinds_are_skipped_with_a_hint_and_errors_name_namespace_and_name() {
        let mut resources = Resources::default();
        resources
            .add_yaml(
                "a.yaml",
                "apiVersion: v1\nkind: Services\nmetadata: {name: web}\n",
            )
            .unwrap();
        assert_eq!(
            resources.skipped,
            [
                "a.yaml: document 1: skipped: kind \"Services\" is not read by infergate (did you mean Service?)"
            ]
        );
        let errors = conversion_errors(&SERVICE.replace("port: 80", "port: eighty"));
        assert!(errors.contains("(Service default/web)"), "{errors}");
    }
}
