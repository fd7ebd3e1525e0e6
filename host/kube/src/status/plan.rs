//! What to write: a pure function from what the watches have seen and the
//! translation's statuses to the status patches that would bring the API
//! server in line. No I/O, so every rule here is unit-tested without an API
//! server.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
};
use infergate_model::{Condition, ConditionStatus, ConditionType, ObjectRef, ParentRef, Statuses};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::watch::{pool_api_resource, rewrite_api_resource};

/// The objects whose status we write, as the watches have them.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HttpRoute>>,
    /// Empty while InferencePools are not watched.
    pub inference_pools: Vec<Arc<DynamicObject>>,
    /// Empty while InferenceModelRewrites are not watched.
    pub inference_model_rewrites: Vec<Arc<DynamicObject>>,
}

/// The kinds whose status we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    InferencePool,
    InferenceModelRewrite,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::InferencePool => infergate_names::inference_pool::KIND,
            Kind::InferenceModelRewrite => infergate_names::model_rewrite::KIND,
        }
    }
}

/// One status write: a server-side apply of `body` to the status
/// subresource of one object.
#[derive(Clone, Debug)]
pub struct StatusPatch {
    pub kind: Kind,
    /// None for cluster-scoped objects (GatewayClass).
    pub namespace: Option<String>,
    pub name: String,
    /// The apply body: apiVersion, kind, metadata and status. Route and pool
    /// bodies carry the `resourceVersion` they were computed from, so a
    /// `parents` entry another controller added meanwhile makes the write
    /// fail with a conflict instead of being overwritten.
    pub body: Value,
    /// The object, for Events.
    pub reference: ObjectReference,
    /// Problems its conditions report, as (reason, note): published as
    /// Warning Events once the write succeeds.
    pub problems: Vec<(String, String)>,
}

impl std::fmt::Display for StatusPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// The patches that bring every status we own in line with `statuses`; an
/// object whose status already says it (timestamps aside) gets none, and an
/// object the watches no longer have gets none either.
pub fn plan(
    observed: &Observed,
    statuses: &Statuses,
    controller_name: &str,
    now: &str,
) -> Vec<StatusPatch> {
    let mut patches = Vec::new();
    gateway_classes(observed, statuses, now, &mut patches);
    gateways(observed, statuses, now, &mut patches);
    http_routes(observed, statuses, controller_name, now, &mut patches);
    inference_pools(observed, statuses, controller_name, now, &mut patches);
    inference_model_rewrites(observed, statuses, now, &mut patches);
    patches
}

/// An InferenceModelRewrite's own conditions (it has no parents): written
/// only for the rewrites the translation judged (those of our pools), and
/// only the condition types it judged, so another controller's stay.
fn inference_model_rewrites(
    observed: &Observed,
    statuses: &Statuses,
    now: &str,
    out: &mut Vec<StatusPatch>,
) {
    let ar = rewrite_api_resource();
    let current: HashMap<(&str, &str), &Arc<DynamicObject>> = observed
        .inference_model_rewrites
        .iter()
        .filter_map(|r| {
            Some((
                (
                    r.metadata.namespace.as_deref()?,
                    r.metadata.name.as_deref()?,
                ),
                r,
            ))
        })
        .collect();
    for status in &statuses.inference_model_rewrites {
        let key = &status.rewrite;
        let Some(current) = current.get(&(key.namespace.as_str(), key.name.as_str())) else {
            continue;
        };
        let old = current.data.get("status").and_then(|s| s.get("conditions"));
        let conditions = conditions(&status.conditions, old, now);
        // Only ours: a condition of another type is left out of the apply
        // (server-side apply keeps what other managers own).
        let old_ours: Vec<Value> = old
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| {
                status.conditions.iter().any(|o| {
                    c.get("type").and_then(Value::as_str) == Some(o.condition_type.as_str())
                })
            })
            .cloned()
            .collect();
        if same(Some(&Value::Array(old_ours)), Some(&conditions)) {
            continue;
        }
        out.push(StatusPatch {
            kind: Kind::InferenceModelRewrite,
            body: json!({
                "apiVersion": ar.api_version,
                "kind": ar.kind,
                "metadata": { "name": key.name, "namespace": key.namespace },
                "status": { "conditions": conditions },
            }),
            problems: problems(&status.conditions),
            reference: current.object_ref(&ar),
            namespace: Some(key.namespace.clone()),
            name: key.name.clone(),
        });
    }
}

fn gateway_classes(
    observed: &Observed,
    statuses: &Statuses,
    now: &str,
    out: &mut Vec<StatusPatch>,
) {
    let current: HashMap<&str, &Arc<GatewayClass>> = observed
        .gateway_classes
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, c)))
        .collect();
    for status in &statuses.gateway_classes {
        let Some(current) = current.get(status.name.as_str()) else {
            continue;
        };
        let current_status = to_value(current.status.as_ref());
        let old = current_status.get("conditions");
        let conditions = conditions(&status.conditions, old, now);
        let features: Vec<Value> = status
            .supported_features
            .iter()
            .map(|name| json!({ "name": name }))
            .collect();
        let old_features = current_status
            .get("supportedFeatures")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        if same(old, Some(&conditions)) && old_features == Value::Array(features.clone()) {
            continue;
        }
        out.push(StatusPatch {
            kind: Kind::GatewayClass,
            namespace: None,
            name: status.name.clone(),
            body: json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": { "name": status.name },
                "status": { "conditions": conditions, "supportedFeatures": features },
            }),
            reference: current.object_ref(&()),
            problems: problems(&status.conditions),
        });
    }
}

fn gateways(observed: &Observed, statuses: &Statuses, now: &str, out: &mut Vec<StatusPatch>) {
    let current: HashMap<(&str, &str), &Arc<Gateway>> = observed
        .gateways
        .iter()
        .filter_map(|g| {
            Some((
                (
                    g.metadata.namespace.as_deref()?,
                    g.metadata.name.as_deref()?,
                ),
                g,
            ))
        })
        .collect();
    for status in &statuses.gateways {
        let gateway = &status.gateway;
        let Some(current) = current.get(&(gateway.namespace.as_str(), gateway.name.as_str()))
        else {
            continue;
        };
        let current_status = to_value(current.status.as_ref());
        let old_conditions = current_status.get("conditions");
        let own_conditions = conditions(&status.conditions, old_conditions, now);
        let old_listeners = current_status
            .get("listeners")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let listeners: Vec<Value> = status
            .listeners
            .iter()
            .map(|l| {
                let old = old_listeners
                    .iter()
                    .find(|o| o.get("name").and_then(Value::as_str) == Some(&l.name))
                    .and_then(|o| o.get("conditions"));
                json!({
                    "name": l.name,
                    "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                    "attachedRoutes": l.attached_routes,
                    "conditions": conditions(&l.conditions, old, now),
                })
            })
            .collect();
        let addresses: Vec<Value> = status
            .addresses
            .iter()
            .map(|a| {
                let kind = if a.parse::<std::net::IpAddr>().is_ok() {
                    "IPAddress"
                } else {
                    "Hostname"
                };
                json!({ "type": kind, "value": a })
            })
            .collect();
        let desired = json!({
            "addresses": addresses,
            "conditions": own_conditions,
            "listeners": listeners,
        });
        let old = json!({
            "addresses": current_status.get("addresses").cloned().unwrap_or(json!([])),
            "conditions": old_conditions.cloned().unwrap_or(json!([])),
            "listeners": old_listeners,
        });
        if same(Some(&old), Some(&desired)) {
            continue;
        }
        let mut problems = problems(&status.conditions);
        for l in &status.listeners {
            problems.extend(
                self::problems(&l.conditions)
                    .into_iter()
                    .map(|(r, m)| (r, format!("listener {}: {m}", l.name))),
            );
        }
        out.push(StatusPatch {
            kind: Kind::Gateway,
            namespace: Some(gateway.namespace.clone()),
            name: gateway.name.clone(),
            body: json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": { "name": gateway.name, "namespace": gateway.namespace },
                "status": desired,
            }),
            reference: current.object_ref(&()),
            problems,
        });
    }
}

fn http_routes(
    observed: &Observed,
    statuses: &Statuses,
    controller_name: &str,
    now: &str,
    out: &mut Vec<StatusPatch>,
) {
    let ours: HashMap<(&str, &str), &infergate_model::HttpRouteStatus> = statuses
        .http_routes
        .iter()
        .map(|s| ((s.route.namespace.as_str(), s.route.name.as_str()), s))
        .collect();
    for current in &observed.http_routes {
        let key = ObjectRef::new(
            current.metadata.namespace.as_deref().unwrap_or_default(),
            current.metadata.name.as_deref().unwrap_or_default(),
        );
        let desired: Vec<Parent> = ours
            .get(&(key.namespace.as_str(), key.name.as_str()))
            .map(|s| {
                s.parents
                    .iter()
                    .map(|p| Parent {
                        parent_ref: route_parent_ref(&p.parent_ref),
                        label: p.parent_ref.name.clone(),
                        conditions: &p.conditions,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let current_status = to_value(current.status.as_ref());
        let Some(body) = parents(&current_status, &desired, controller_name, now) else {
            continue;
        };
        out.push(StatusPatch {
            kind: Kind::HttpRoute,
            body: json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {
                    "name": key.name,
                    "namespace": key.namespace,
                    "resourceVersion": current.metadata.resource_version,
                },
                "status": body,
            }),
            problems: parent_problems(&desired),
            reference: current.object_ref(&()),
            namespace: Some(key.namespace),
            name: key.name,
        });
    }
}

fn inference_pools(
    observed: &Observed,
    statuses: &Statuses,
    controller_name: &str,
    now: &str,
    out: &mut Vec<StatusPatch>,
) {
    let ar = pool_api_resource();
    let ours: HashMap<(&str, &str), &infergate_model::InferencePoolStatus> = statuses
        .inference_pools
        .iter()
        .map(|s| ((s.pool.namespace.as_str(), s.pool.name.as_str()), s))
        .collect();
    for current in &observed.inference_pools {
        let key = ObjectRef::new(
            current.metadata.namespace.as_deref().unwrap_or_default(),
            current.metadata.name.as_deref().unwrap_or_default(),
        );
        let desired: Vec<Parent> = ours
            .get(&(key.namespace.as_str(), key.name.as_str()))
            .map(|s| {
                s.parents
                    .iter()
                    .map(|p| Parent {
                        parent_ref: json!({
                            "group": infergate_names::GATEWAY_GROUP,
                            "kind": "Gateway",
                            "namespace": p.gateway.namespace,
                            "name": p.gateway.name,
                        }),
                        label: p.gateway.to_string(),
                        conditions: &p.conditions,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let current_status = current.data.get("status").cloned().unwrap_or(Value::Null);
        let Some(body) = parents(&current_status, &desired, controller_name, now) else {
            continue;
        };
        out.push(StatusPatch {
            kind: Kind::InferencePool,
            body: json!({
                "apiVersion": format!("{}/{}", ar.group, ar.version),
                "kind": ar.kind,
                "metadata": {
                    "name": key.name,
                    "namespace": key.namespace,
                    "resourceVersion": current.metadata.resource_version,
                },
                "status": body,
            }),
            problems: parent_problems(&desired),
            reference: current.object_ref(&ar),
            namespace: Some(key.namespace),
            name: key.name,
        });
    }
}

/// The `parents` status of a route or pool: other controllers' entries as
/// they are, then ours. None when nothing would change.
fn parents(current: &Value, ours: &[Parent], controller_name: &str, now: &str) -> Option<Value> {
    let existing: Vec<Value> = current
        .get("parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours = |entry: &Value| {
        entry.get("controllerName").and_then(Value::as_str) == Some(controller_name)
    };
    let mut parents: Vec<Value> = existing.iter().filter(|e| !is_ours(e)).cloned().collect();
    for parent in ours {
        let old = existing
            .iter()
            .filter(|e| is_ours(e))
            .find(|e| same(e.get("parentRef"), Some(&parent.parent_ref)))
            .and_then(|e| e.get("conditions"));
        parents.push(json!({
            "parentRef": parent.parent_ref,
            "controllerName": controller_name,
            "conditions": conditions(parent.conditions, old, now),
        }));
    }
    let parents = Value::Array(parents);
    if same(Some(&Value::Array(existing)), Some(&parents)) {
        None
    } else {
        Some(json!({ "parents": parents }))
    }
}

/// One entry of ours in a route's or pool's `parents`.
struct Parent<'a> {
    parent_ref: Value,
    /// How the parent is named in Event notes.
    label: String,
    conditions: &'a [Condition],
}

/// The problems of every parent entry, each note naming its parent.
fn parent_problems(parents: &[Parent]) -> Vec<(String, String)> {
    parents
        .iter()
        .flat_map(|p| {
            problems(p.conditions)
                .into_iter()
                .map(|(r, m)| (r, format!("parent {}: {m}", p.label)))
        })
        .collect()
}

fn route_parent_ref(p: &ParentRef) -> Value {
    let mut v = json!({ "group": p.kind.group(), "kind": p.kind.kind(), "name": p.name });
    if let Some(ns) = &p.namespace {
        v["namespace"] = json!(ns);
    }
    if let Some(section) = &p.section_name {
        v["sectionName"] = json!(section);
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}

/// Conditions as the API has them, keeping `lastTransitionTime` from `old`
/// where a condition's status did not change.
fn conditions(conditions: &[Condition], old: Option<&Value>, now: &str) -> Value {
    let old = old.and_then(Value::as_array);
    Value::Array(
        conditions
            .iter()
            .map(|c| {
                let status = match c.status {
                    ConditionStatus::True => "True",
                    ConditionStatus::False => "False",
                    ConditionStatus::Unknown => "Unknown",
                };
                let since = old
                    .into_iter()
                    .flatten()
                    .find(|o| {
                        o.get("type").and_then(Value::as_str) == Some(c.condition_type.as_str())
                            && o.get("status").and_then(Value::as_str) == Some(status)
                    })
                    .and_then(|o| o.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(now));
                json!({
                    "type": c.condition_type.as_str(),
                    "status": status,
                    "reason": c.reason,
                    "message": truncate(&c.message, 32768),
                    "observedGeneration": c.observed_generation,
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

/// Conditions that say something is wrong, as (reason, message).
pub(crate) fn problems(conditions: &[Condition]) -> Vec<(String, String)> {
    conditions
        .iter()
        .filter(|c| {
            (c.status == ConditionStatus::False
                && matches!(
                    c.condition_type,
                    ConditionType::Accepted
                        | ConditionType::ResolvedRefs
                        | ConditionType::Programmed
                ))
                || (c.status == ConditionStatus::True
                    && c.condition_type == ConditionType::Conflicted)
        })
        .map(|c| {
            (
                c.reason.clone(),
                format!("{}: {}", c.condition_type, c.message),
            )
        })
        .collect()
}

fn to_value<T: serde::Serialize>(value: Option<&T>) -> Value {
    value
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null)
}

/// Equal once timestamps and nulls are removed, and conditions ordered by type.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    normalize(a.cloned().unwrap_or(Value::Null)) == normalize(b.cloned().unwrap_or(Value::Null))
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                if k == "lastTransitionTime" || v.is_null() {
                    continue;
                }
                let v = if k == "conditions" {
                    let mut items = match normalize(v) {
                        Value::Array(items) => items,
                        other => vec![other],
                    };
                    items
                        .sort_by_key(|c| c.get("type").and_then(Value::as_str).map(str::to_string));
                    Value::Array(items)
                } else {
                    normalize(v)
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Null => Value::Array(vec![]),
        other => other,
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_model::{
        GatewayStatus, HttpRouteStatus, InferencePoolStatus, PoolParentStatus, RefKind,
        RouteParentStatus,
    };

    const US: &str = "infergate.io/gateway-controller";
    const NOW: &str = "2026-11-30T12:00:00Z";

    fn no_statuses() -> Statuses {
        Statuses {
            gateway_classes: vec![],
            gateways: vec![],
            http_routes: vec![],
            inference_pools: vec![],
            inference_model_rewrites: vec![],
        }
    }

    fn accepted(ok: bool) -> Vec<Condition> {
        let reason = if ok { "Accepted" } else { "NoMatchingParent" };
        vec![Condition::new(ConditionType::Accepted, ok, reason, "m", 2)]
    }

    fn route_status(route: &str, parents: &[(&str, bool)]) -> HttpRouteStatus {
        HttpRouteStatus {
            route: ObjectRef::new("default", route),
            parents: parents
                .iter()
                .map(|(gateway, ok)| RouteParentStatus {
                    parent_ref: ParentRef {
                        kind: RefKind::Gateway,
                        namespace: None,
                        name: gateway.to_string(),
                        section_name: None,
                        port: None,
                    },
                    conditions: accepted(*ok),
                })
                .collect(),
        }
    }

    /// A route as the API server has it, with these `parents` entries.
    fn route(name: &str, parents: Value) -> Arc<HttpRoute> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "default", "resourceVersion": "42", "generation": 2},
                "spec": {},
                "status": {"parents": parents},
            }))
            .expect("an HTTPRoute"),
        )
    }

    fn entry(controller: &str, gateway: &str, status: &str, reason: &str) -> Value {
        json!({
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway},
            "controllerName": controller,
            "conditions": [{
                "type": "Accepted", "status": status, "reason": reason, "message": "m",
                "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        })
    }

    #[test]
    fn other_controllers_entries_are_written_back_as_they_are_and_ours_replaced() {
        let theirs = entry("example.com/other", "their-gw", "True", "Accepted");
        let observed = Observed {
            http_routes: vec![route(
                "r",
                json!([theirs, entry(US, "gw", "False", "NoMatchingParent")]),
            )],
            ..Observed::default()
        };
        let mut statuses = no_statuses();
        statuses
            .http_routes
            .push(route_status("r", &[("gw", true)]));

        let patches = plan(&observed, &statuses, US, NOW);
        assert_eq!(patches.len(), 1);
        let patch = &patches[0];
        assert_eq!(patch.to_string(), "HTTPRoute default/r");
        assert_eq!(
            patch.body["metadata"]["resourceVersion"], "42",
            "the write must fail if another controller changed the list meanwhile"
        );
        let parents = patch.body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert_eq!(
            parents[0], theirs,
            "another controller's entry is kept as it is"
        );
        assert_eq!(parents[1]["controllerName"], US);
        assert_eq!(parents[1]["conditions"][0]["status"], "True");
        assert_eq!(
            parents[1]["conditions"][0]["lastTransitionTime"], NOW,
            "the status changed, so did the transition time"
        );
        assert!(patch.problems.is_empty());
    }

    #[test]
    fn a_status_the_api_server_already_has_is_not_written_again() {
        let observed = Observed {
            http_routes: vec![route("r", json!([entry(US, "gw", "True", "Accepted")]))],
            ..Observed::default()
        };
        let mut statuses = no_statuses();
        statuses
            .http_routes
            .push(route_status("r", &[("gw", true)]));
        assert!(plan(&observed, &statuses, US, NOW).is_empty());
    }

    #[test]
    fn our_entries_for_parents_we_no_longer_report_are_removed_and_only_those() {
        let theirs = entry("example.com/other", "gw", "True", "Accepted");
        let observed = Observed {
            http_routes: vec![route(
                "r",
                json!([entry(US, "old-gw", "True", "Accepted"), theirs]),
            )],
            ..Observed::default()
        };
        let patches = plan(&observed, &no_statuses(), US, NOW);
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].body["status"]["parents"], json!([theirs]));
    }

    #[test]
    fn objects_the_watches_no_longer_have_get_no_patch() {
        let mut statuses = no_statuses();
        statuses
            .http_routes
            .push(route_status("deleted", &[("gw", true)]));
        statuses.gateways.push(GatewayStatus {
            gateway: ObjectRef::new("default", "deleted-gw"),
            addresses: vec!["127.0.0.1".into()],
            conditions: accepted(true),
            listeners: vec![],
        });
        assert!(plan(&Observed::default(), &statuses, US, NOW).is_empty());
    }

    #[test]
    fn problems_become_event_notes_naming_the_parent() {
        let observed = Observed {
            http_routes: vec![route("r", json!([]))],
            ..Observed::default()
        };
        let mut statuses = no_statuses();
        statuses
            .http_routes
            .push(route_status("r", &[("gw", false)]));
        let patches = plan(&observed, &statuses, US, NOW);
        assert_eq!(
            patches[0].problems,
            vec![(
                "NoMatchingParent".to_string(),
                "parent gw: Accepted: m".to_string()
            )]
        );
    }

    #[test]
    fn gateway_addresses_are_typed_and_pool_parents_name_their_namespace() {
        let gateway: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "infra"},
            "spec": {"gatewayClassName": "c", "listeners": []},
        }))
        .unwrap();
        let pool: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "pool", "namespace": "apps", "resourceVersion": "7"},
            "spec": {},
        }))
        .unwrap();
        let observed = Observed {
            gateways: vec![Arc::new(gateway)],
            inference_pools: vec![Arc::new(pool)],
            ..Observed::default()
        };
        let mut statuses = no_statuses();
        statuses.gateways.push(GatewayStatus {
            gateway: ObjectRef::new("infra", "gw"),
            addresses: vec!["198.18.0.10".into(), "gw.example".into()],
            conditions: accepted(true),
            listeners: vec![],
        });
        statuses.inference_pools.push(InferencePoolStatus {
            pool: ObjectRef::new("apps", "pool"),
            parents: vec![PoolParentStatus {
                gateway: ObjectRef::new("infra", "gw"),
                conditions: accepted(true),
            }],
        });
        let patches = plan(&observed, &statuses, US, NOW);
        let gw = patches.iter().find(|p| p.kind == Kind::Gateway).unwrap();
        assert_eq!(
            gw.body["status"]["addresses"],
            json!([{"type": "IPAddress", "value": "198.18.0.10"}, {"type": "Hostname", "value": "gw.example"}])
        );
        let pool = patches
            .iter()
            .find(|p| p.kind == Kind::InferencePool)
            .unwrap();
        assert_eq!(pool.to_string(), "InferencePool apps/pool");
        assert_eq!(pool.body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            pool.body["status"]["parents"][0]["parentRef"],
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "gw"})
        );
    }

    #[test]
    fn timestamps_nulls_and_condition_order_do_not_count_as_changes() {
        let a = json!({"conditions": [
            {"type": "B", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "A", "status": "False", "message": null},
        ]});
        let b = json!({"conditions": [
            {"type": "A", "status": "False"},
            {"type": "B", "status": "True", "lastTransitionTime": "2026-11-26T00:00:00Z"},
        ]});
        assert!(same(Some(&a), Some(&b)));
        let c = json!({"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]});
        assert!(!same(Some(&a), Some(&c)), "a status change is a change");
        assert!(
            same(None, Some(&json!([]))),
            "no list and an empty list are the same"
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let old = json!([{"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let kept = conditions(&accepted(true), Some(&old), NOW);
        assert_eq!(kept[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        let flipped = conditions(&accepted(false), Some(&old), NOW);
        assert_eq!(flipped[0]["lastTransitionTime"], NOW);
        assert_eq!(flipped[0]["observedGeneration"], 2);
    }
}
