//! Kubernetes types to snapshot records, applying the defaults the CRDs
//! declare (the API server would have applied them; files do not).

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From_,
};
use gateway_api::apis::standard::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType,
    HttpRouteRulesMatchesPathType as PathType, HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use infergate_model as m;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::{ResourceError, Resources};

const DEFAULT_NAMESPACE: &str = "default";
use m::GATEWAY_GROUP;

/// Collects errors for one object.
struct Ctx<'a> {
    resources: &'a Resources,
    kind: &'static str,
    meta: &'a ObjectMeta,
    errors: &'a mut Vec<ResourceError>,
}

impl Ctx<'_> {
    fn error(&mut self, field: String, message: impl Into<String>) {
        let name = self.meta.name.clone().unwrap_or_default();
        let namespace = self
            .meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let origin = self.resources.origin(self.kind, &namespace, &name);
        let name = format!("{namespace}/{name}");
        self.errors.push(ResourceError::new(
            origin,
            Some((self.kind.to_string(), Some(name))),
            Some(field),
            message.into(),
        ));
    }

    /// A port number in 1..=65535.
    fn port(&mut self, field: String, value: i32) -> u32 {
        if (1..=65535).contains(&value) {
            value as u32
        } else {
            self.error(field, format!("{value} is not a port number (1-65535)"));
            0
        }
    }

    fn opt_port(&mut self, field: String, value: Option<i32>) -> Option<u32> {
        value.map(|v| self.port(field, v))
    }
}

fn meta(meta: &ObjectMeta, namespaced: bool) -> m::ObjectMeta {
    m::ObjectMeta {
        name: meta.name.clone().unwrap_or_default(),
        namespace: if namespaced {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        } else {
            String::new()
        },
        generation: meta.generation.unwrap_or(0),
        creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
    }
}

fn labels(map: Option<&BTreeMap<String, String>>) -> Vec<m::Label> {
    map.into_iter()
        .flatten()
        .map(|(k, v)| m::Label {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// A reference's group and kind, with the API's defaults for unset fields.
fn ref_kind(
    group: &Option<String>,
    kind: &Option<String>,
    default_group: &str,
    default_kind: &str,
) -> m::RefKind {
    m::RefKind::new(
        group.as_deref().unwrap_or(default_group),
        kind.as_deref().unwrap_or(default_kind),
    )
}

/// The wire name of a serde enum value (e.g. `GET` for a method).
fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A snapshot with `settings` and no objects.
pub fn empty_snapshot(settings: m::Settings) -> m::Snapshot {
    m::Snapshot {
        settings,
        namespaces: vec![],
        gateway_classes: vec![],
        gateways: vec![],
        http_routes: vec![],
        reference_grants: vec![],
        services: vec![],
        endpoint_slices: vec![],
        pods: vec![],
        inference_pools: vec![],
        tls_secrets: vec![],
        inference_model_rewrites: vec![],
    }
}

pub fn snapshot(r: &Resources, settings: m::Settings) -> Result<m::Snapshot, Vec<ResourceError>> {
    let mut errors = Vec::new();
    let mut s = m::Snapshot {
        settings: settings.clone(),
        namespaces: r
            .namespaces
            .iter()
            .map(|n| m::Namespace {
                name: n.metadata.name.clone().unwrap_or_default(),
                labels: labels(n.metadata.labels.as_ref()),
            })
            .collect(),
        gateway_classes: r
            .gateway_classes
            .iter()
            .map(|gc| m::GatewayClass {
                name: gc.metadata.name.clone().unwrap_or_default(),
                generation: gc.metadata.generation.unwrap_or(0),
                controller_name: gc.spec.controller_name.clone(),
            })
            .collect(),
        ..empty_snapshot(settings)
    };
    for gw in &r.gateways {
        let mut cx = Ctx {
            resources: r,
            kind: "Gateway",
            meta: &gw.metadata,
            errors: &mut errors,
        };
        let listeners = gw
            .spec
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| listener(&mut cx, i, l))
            .collect();
        s.gateways.push(m::Gateway {
            meta: meta(&gw.metadata, true),
            gateway_class_name: gw.spec.gateway_class_name.clone(),
            listeners,
            addresses: gw
                .spec
                .addresses
                .iter()
                .flatten()
                .filter_map(|a| a.value.clone())
                .collect(),
        });
    }
    for route in &r.http_routes {
        let mut cx = Ctx {
            resources: r,
            kind: "HTTPRoute",
            meta: &route.metadata,
            errors: &mut errors,
        };
        let parent_refs = route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| m::ParentRef {
                kind: ref_kind(&p.group, &p.kind, GATEWAY_GROUP, "Gateway"),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: cx.opt_port(format!("spec.parentRefs[{i}].port"), p.port),
            })
            .collect();
        let rules = route
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| route_rule(&mut cx, i, rule))
            .collect();
        s.http_routes.push(m::HttpRoute {
            meta: meta(&route.metadata, true),
            parent_refs,
            hostnames: route.spec.hostnames.clone().unwrap_or_default(),
            rules,
        });
    }
    for grant in &r.reference_grants {
        s.reference_grants.push(m::ReferenceGrant {
            meta: meta(&grant.metadata, true),
            from: grant
                .spec
                .from
                .iter()
                .map(|f| m::GrantFrom {
                    group: f.group.clone(),
                    kind: f.kind.clone(),
                    namespace: f.namespace.clone(),
                })
                .collect(),
            to: grant
                .spec
                .to
                .iter()
                .map(|t| m::GrantTo {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    name: t.name.clone(),
                })
                .collect(),
        });
    }
    for svc in &r.services {
        let mut cx = Ctx {
            resources: r,
            kind: "Service",
            meta: &svc.metadata,
            errors: &mut errors,
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| m::ServicePort {
                name: p.name.clone(),
                port: cx.port(format!("spec.ports[{i}].port"), p.port),
                target_port: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        cx.opt_port(format!("spec.ports[{i}].targetPort"), Some(*n))
                    }
                    _ => None,
                },
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        s.services.push(m::Service {
            meta: meta(&svc.metadata, true),
            service_type: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
            ports,
            external_name: spec.external_name.clone(),
        });
    }
    for slice in &r.endpoint_slices {
        // FQDN slices name hosts to resolve, which infergate does not do (as
        // other Gateway API implementations, it routes to IP addresses only).
        if slice.address_type == "FQDN" {
            continue;
        }
        let mut cx = Ctx {
            resources: r,
            kind: "EndpointSlice",
            meta: &slice.metadata,
            errors: &mut errors,
        };
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        if service_name.is_empty() {
            cx.error(
                "metadata.labels".into(),
                "the kubernetes.io/service-name label is required",
            );
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| {
                let port = cx.opt_port(format!("ports[{i}].port"), p.port)?;
                Some(m::EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                })
            })
            .collect();
        for (i, e) in slice.endpoints.iter().enumerate() {
            for (j, address) in e.addresses.iter().enumerate() {
                let fits = match slice.address_type.as_str() {
                    "IPv4" => address.parse::<std::net::Ipv4Addr>().is_ok(),
                    "IPv6" => address.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => false,
                };
                if !fits {
                    cx.error(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!(
                            "{address:?} is not an address of the slice's addressType {:?} (IPv4, IPv6; FQDN slices are ignored)",
                            slice.address_type
                        ),
                    );
                }
            }
        }
        s.endpoint_slices.push(m::EndpointSlice {
            meta: meta(&slice.metadata, true),
            service_name,
            ports,
            endpoints: slice
                .endpoints
                .iter()
                .map(|e| m::Endpoint {
                    addresses: e.addresses.clone(),
                    ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                })
                .collect(),
        });
    }
    for pod in &r.pods {
        let status = pod.status.clone().unwrap_or_default();
        let mut ips: Vec<String> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|ip| ip.ip.clone())
            .collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.clone());
        }
        // A terminating Pod takes no new requests, as EndpointSlices mark its
        // endpoints not ready: its Ready condition stays true until its
        // containers stop, which is too late for a drain.
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        s.pods.push(m::Pod {
            meta: meta(&pod.metadata, true),
            labels: labels(pod.metadata.labels.as_ref()),
            ips,
            ready,
        });
    }
    for pool in &r.inference_pools {
        let mut cx = Ctx {
            resources: r,
            kind: "InferencePool",
            meta: &pool.metadata,
            errors: &mut errors,
        };
        s.inference_pools.push(inference_pool(&mut cx, pool));
    }
    for rewrite in &r.inference_model_rewrites {
        let mut cx = Ctx {
            resources: r,
            kind: "InferenceModelRewrite",
            meta: &rewrite.metadata,
            errors: &mut errors,
        };
        s.inference_model_rewrites
            .push(inference_model_rewrite(&mut cx, rewrite));
    }
    s.tls_secrets = r
        .secrets
        .iter()
        .map(|secret| m::TlsSecret {
            meta: meta(&secret.metadata, true),
            problem: crate::certificates::check(secret).err(),
        })
        .collect();
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(errors)
    }
}

fn listener(cx: &mut Ctx, i: usize, l: &GatewayListeners) -> m::Listener {
    let allowed = l.allowed_routes.clone().unwrap_or_default();
    let namespaces = allowed.namespaces.unwrap_or_default();
    let from = match namespaces.from {
        None | Some(From_::Same) => m::FromNamespaces::Same,
        Some(From_::All) => m::FromNamespaces::All,
        Some(From_::Selector) => {
            let sel = namespaces.selector.unwrap_or_default();
            m::FromNamespaces::Selector(m::LabelSelector {
                match_labels: labels(sel.match_labels.as_ref()),
                match_expressions: sel
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(|e| m::LabelSelectorRequirement {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: e.values.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
        }
    };
    m::Listener {
        name: l.name.clone(),
        port: cx.port(format!("spec.listeners[{i}].port"), l.port),
        protocol: l.protocol.clone(),
        hostname: l.hostname.clone(),
        allowed_routes: m::AllowedRoutes {
            namespaces: from,
            kinds: allowed
                .kinds
                .iter()
                .flatten()
                .map(|k| m::GroupKind {
                    group: k.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into()),
                    kind: k.kind.clone(),
                })
                .collect(),
        },
        tls: l.tls.as_ref().map(|tls| m::ListenerTls {
            mode: tls
                .mode
                .as_ref()
                .map(wire_name)
                .unwrap_or_else(|| "Terminate".into()),
            certificate_refs: tls
                .certificate_refs
                .iter()
                .flatten()
                .map(|r| m::CertificateRef {
                    kind: ref_kind(&r.group, &r.kind, "", "Secret"),
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                })
                .collect(),
        }),
    }
}

fn route_rule(cx: &mut Ctx, i: usize, rule: &HttpRouteRules) -> m::RouteRule {
    let mut filters: Vec<m::RouteFilter> = rule
        .filters
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, f)| filter(cx, i, j, f))
        .collect();
    let backend_refs = rule
        .backend_refs
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, b)| {
            if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                filters.push(m::RouteFilter::Unsupported(format!(
                    "backendRefs[{j}].filters"
                )));
            }
            let weight = b.weight.unwrap_or(1);
            if weight < 0 {
                cx.error(
                    format!("spec.rules[{i}].backendRefs[{j}].weight"),
                    format!("{weight} is negative"),
                );
            }
            m::BackendRef {
                kind: ref_kind(&b.group, &b.kind, "", "Service"),
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                port: cx.opt_port(format!("spec.rules[{i}].backendRefs[{j}].port"), b.port),
                weight: weight.max(0) as u32,
            }
        })
        .collect();
    m::RouteRule {
        name: rule.name.clone(),
        matches: rule.matches.iter().flatten().map(route_match).collect(),
        filters,
        backend_refs,
    }
}

fn route_match(mt: &HttpRouteRulesMatches) -> m::RouteMatch {
    let path = mt.path.as_ref().map(|p| {
        let value = p.value.clone().unwrap_or_else(|| "/".into());
        match p.r#type {
            Some(PathType::Exact) => m::PathMatch::Exact(value),
            Some(PathType::RegularExpression) => m::PathMatch::RegularExpression(value),
            Some(PathType::PathPrefix) | None => m::PathMatch::Prefix(value),
        }
    });
    let string_match = |regex: bool| {
        if regex {
            m::StringMatchType::RegularExpression
        } else {
            m::StringMatchType::Exact
        }
    };
    m::RouteMatch {
        path,
        headers: mt
            .headers
            .iter()
            .flatten()
            .map(|h| m::HeaderMatch {
                match_type: string_match(matches!(h.r#type, Some(HeaderType::RegularExpression))),
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        query_params: mt
            .query_params
            .iter()
            .flatten()
            .map(|q| m::HeaderMatch {
                match_type: string_match(matches!(q.r#type, Some(QueryType::RegularExpression))),
                name: q.name.clone(),
                value: q.value.clone(),
            })
            .collect(),
        method: mt.method.as_ref().map(wire_name),
    }
}

fn header_values<T>(
    items: Option<&Vec<T>>,
    f: impl Fn(&T) -> (String, String),
) -> Vec<m::HeaderValue> {
    items
        .into_iter()
        .flatten()
        .map(|item| {
            let (name, value) = f(item);
            m::HeaderValue { name, value }
        })
        .collect()
}

/// The request and response header modifiers are distinct generated types
/// with the same fields.
macro_rules! header_modifier {
    ($h:expr) => {
        m::HeaderModifier {
            set: header_values($h.set.as_ref(), |v| (v.name.clone(), v.value.clone())),
            add: header_values($h.add.as_ref(), |v| (v.name.clone(), v.value.clone())),
            remove: $h.remove.clone().unwrap_or_default(),
        }
    };
}

fn path_modifier(full: &Option<String>, prefix: &Option<String>) -> Option<m::PathModifier> {
    match (full, prefix) {
        (Some(full), _) => Some(m::PathModifier::ReplaceFullPath(full.clone())),
        (None, Some(prefix)) => Some(m::PathModifier::ReplacePrefixMatch(prefix.clone())),
        (None, None) => None,
    }
}

fn filter(cx: &mut Ctx, i: usize, j: usize, f: &HttpRouteRulesFilters) -> m::RouteFilter {
    let field = format!("spec.rules[{i}].filters[{j}]");
    let mut missing = |name: &str| {
        cx.error(
            field.clone(),
            format!("type {name} needs the field of the same name"),
        );
        m::RouteFilter::Unsupported(name.to_string())
    };
    match f.r#type {
        FilterType::RequestHeaderModifier => match &f.request_header_modifier {
            Some(h) => m::RouteFilter::RequestHeaderModifier(header_modifier!(h)),
            None => missing("RequestHeaderModifier"),
        },
        FilterType::ResponseHeaderModifier => match &f.response_header_modifier {
            Some(h) => m::RouteFilter::ResponseHeaderModifier(header_modifier!(h)),
            None => missing("ResponseHeaderModifier"),
        },
        FilterType::RequestRedirect => match &f.request_redirect {
            Some(r) => {
                let path = r
                    .path
                    .as_ref()
                    .and_then(|p| path_modifier(&p.replace_full_path, &p.replace_prefix_match));
                let port = r.port;
                let scheme = r.scheme.as_ref().map(wire_name);
                let status_code = r.status_code.map(|c| c as u32);
                let hostname = r.hostname.clone();
                let port = cx.opt_port(format!("{field}.requestRedirect.port"), port);
                m::RouteFilter::RequestRedirect(m::RequestRedirect {
                    scheme,
                    hostname,
                    path,
                    port,
                    status_code,
                })
            }
            None => missing("RequestRedirect"),
        },
        FilterType::UrlRewrite => match &f.url_rewrite {
            Some(r) => m::RouteFilter::UrlRewrite(m::UrlRewrite {
                hostname: r.hostname.clone(),
                path: r
                    .path
                    .as_ref()
                    .and_then(|p| path_modifier(&p.replace_full_path, &p.replace_prefix_match)),
            }),
            None => missing("URLRewrite"),
        },
        ref other => m::RouteFilter::Unsupported(wire_name(other)),
    }
}

fn inference_model_rewrite(
    cx: &mut Ctx,
    rewrite: &crate::InferenceModelRewrite,
) -> m::InferenceModelRewrite {
    let spec = &rewrite.spec;
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let models = rule
                .matches
                .iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    let model = m.model.as_ref()?;
                    if let Some(other) = model.match_type.as_deref().filter(|t| *t != "Exact") {
                        cx.error(
                            format!("spec.rules[{i}].matches[{j}].model.type"),
                            format!("{other:?} is not supported: Exact is the only type"),
                        );
                    }
                    Some(model.value.clone())
                })
                .collect();
            let targets = rule
                .targets
                .iter()
                .enumerate()
                .map(|(j, t)| m::WeightedModel {
                    model: t.model_rewrite.clone(),
                    weight: t.weight.map(|w| {
                        u32::try_from(w).unwrap_or_else(|_| {
                            cx.error(
                                format!("spec.rules[{i}].targets[{j}].weight"),
                                format!("{w} is negative"),
                            );
                            0
                        })
                    }),
                })
                .collect();
            m::ModelRewriteRule { models, targets }
        })
        .collect();
    m::InferenceModelRewrite {
        meta: meta(&rewrite.metadata, true),
        pool_kind: ref_kind(
            &spec.pool_ref.group,
            &spec.pool_ref.kind,
            infergate_names::inference_pool::GROUP,
            infergate_names::inference_pool::KIND,
        ),
        pool_name: spec.pool_ref.name.clone(),
        rules,
    }
}

fn inference_pool(cx: &mut Ctx, pool: &crate::InferencePool) -> m::InferencePool {
    let spec = &pool.spec;
    // The rules of the InferencePool v1 CRD, which the API server enforces
    // and files must meet too: a pool must never select a whole namespace.
    let labels_count = spec.selector.match_labels.len();
    if labels_count == 0 {
        cx.error(
            "spec.selector.matchLabels".into(),
            "at least one label is required (an empty selector would select every Pod of the namespace)",
        );
    } else if labels_count > 64 {
        cx.error(
            "spec.selector.matchLabels".into(),
            format!("{labels_count} labels; at most 64 are allowed"),
        );
    }
    if spec.selector.match_expressions.is_some() {
        cx.error(
            "spec.selector.matchExpressions".into(),
            "is not part of InferencePool v1; select Pods with matchLabels",
        );
    }
    if spec.target_ports.is_empty() || spec.target_ports.len() > 8 {
        cx.error(
            "spec.targetPorts".into(),
            format!(
                "{} ports; between 1 and 8 are required",
                spec.target_ports.len()
            ),
        );
    }
    for (i, p) in spec.target_ports.iter().enumerate() {
        if spec.target_ports[..i].iter().any(|q| q.number == p.number) {
            cx.error(
                format!("spec.targetPorts[{i}].number"),
                format!("port {} is listed twice", p.number),
            );
        }
    }
    if let Some(protocol) = &spec.app_protocol
        && protocol != "http"
        && protocol != "kubernetes.io/h2c"
    {
        cx.error(
            "spec.appProtocol".into(),
            format!("{protocol:?} is not http or kubernetes.io/h2c"),
        );
    }
    let target_ports = spec
        .target_ports
        .iter()
        .enumerate()
        .map(|(i, p)| cx.port(format!("spec.targetPorts[{i}].number"), p.number))
        .collect();
    let endpoint_picker = spec
        .endpoint_picker_ref
        .as_ref()
        .map(|r| m::EndpointPickerRef {
            kind: ref_kind(&r.group, &r.kind, "", "Service"),
            name: r.name.clone(),
            port: r
                .port
                .as_ref()
                .map(|p| cx.port("spec.endpointPickerRef.port.number".into(), p.number)),
            failure_mode: match r.failure_mode.as_deref() {
                Some("FailOpen") => m::FailureMode::FailOpen,
                Some("FailClose") | None => m::FailureMode::FailClose,
                Some(other) => {
                    cx.error(
                        "spec.endpointPickerRef.failureMode".into(),
                        format!("{other:?} is not FailOpen or FailClose"),
                    );
                    m::FailureMode::FailClose
                }
            },
        });
    m::InferencePool {
        meta: meta(&pool.metadata, true),
        selector: labels(Some(&spec.selector.match_labels)),
        target_ports,
        app_protocol: spec.app_protocol.clone(),
        endpoint_picker,
    }
}
