//! Status written back: GatewayClass, Gateway, HTTPRoute parents and
//! InferencePool parents, by server-side apply under our field manager.
//!
//! An object is written only when what we own of its status differs from
//! what the API server has (compared without `lastTransitionTime`, which is
//! kept while a condition's status stays the same). Route and pool `parents`
//! lists are atomic in their CRDs: we write the entries of other controllers
//! back as they were, and send the object's `resourceVersion` so that an
//! entry another controller adds meanwhile is never overwritten (the write is
//! refused with a conflict and retried from fresh data).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::StreamExt;
use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
};
use infergate_model::{Condition, ConditionStatus, ConditionType, ObjectRef, ParentRef, Statuses};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::watch::{Watches, pool_api_resource};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects whose status was written.
    pub written: usize,
    /// Writes refused because the object changed meanwhile (retried later).
    pub conflicts: usize,
    /// Writes that failed otherwise.
    pub failed: usize,
}

impl Report {
    pub fn retry(&self) -> bool {
        self.conflicts > 0 || self.failed > 0
    }
}

pub struct StatusWriter {
    client: Client,
    field_manager: String,
    controller_name: String,
    recorder: Recorder,
    /// Problems already published as Events (object, reason, message).
    published: Mutex<HashSet<(String, String, String)>>,
}

/// One status write to make.
struct Write {
    what: String,
    api: Api<DynamicObject>,
    name: String,
    body: Value,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    problems: Vec<(String, String)>,
}

/// Writes run this many at a time.
const CONCURRENT_WRITES: usize = 8;

impl StatusWriter {
    pub fn new(client: Client, field_manager: &str, controller_name: &str, instance: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: field_manager.to_string(),
                instance: Some(instance.to_string()),
            },
        );
        StatusWriter {
            client,
            field_manager: field_manager.to_string(),
            controller_name: controller_name.to_string(),
            recorder,
            published: Mutex::new(HashSet::new()),
        }
    }

    /// Bring every status we own in line with `statuses`.
    pub async fn reconcile(&self, watches: &Watches, statuses: &Statuses) -> Report {
        let now = Timestamp::now().to_string();
        let mut writes = Vec::new();
        self.gateway_classes(watches, statuses, &now, &mut writes);
        self.gateways(watches, statuses, &now, &mut writes);
        self.http_routes(watches, statuses, &now, &mut writes);
        self.inference_pools(watches, statuses, &now, &mut writes);

        let params = PatchParams::apply(&self.field_manager).force();
        let results: Vec<(Write, Result<(), kube::Error>)> = futures::stream::iter(writes)
            .map(|w| {
                let params = params.clone();
                async move {
                    let result = w
                        .api
                        .patch_status(&w.name, &params, &Patch::Apply(&w.body))
                        .await
                        .map(|_| ());
                    (w, result)
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut report = Report::default();
        for (write, result) in results {
            match result {
                Ok(()) => {
                    report.written += 1;
                    tracing::debug!("status of {} written", write.what);
                    self.publish_problems(&write).await;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    report.conflicts += 1;
                    tracing::debug!("status of {} changed meanwhile; will retry", write.what);
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    // Deleted meanwhile: nothing to write.
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!("writing the status of {} failed: {e}", write.what);
                }
            }
        }
        report
    }

    /// Warning Events for conditions that report a problem, once per distinct problem.
    async fn publish_problems(&self, write: &Write) {
        for (reason, message) in &write.problems {
            let key = (write.what.clone(), reason.clone(), message.clone());
            if !self.published.lock().expect("events lock").insert(key) {
                continue;
            }
            self.event(&write.reference, EventType::Warning, reason, message)
                .await;
        }
    }

    /// Publish one Event about an object (failures are logged, not fatal).
    pub async fn event(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, 1024)),
            action: "Translate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!("publishing an Event failed: {e}");
        }
    }

    /// A Warning Event on each GatewayClass of ours (a rejected component
    /// concerns every Gateway we serve).
    pub async fn event_on_classes(&self, watches: &Watches, reason: &str, note: &str) {
        for class in watches.gateway_classes().state() {
            if class.spec.controller_name == self.controller_name {
                self.event(&class.object_ref(&()), EventType::Warning, reason, note)
                    .await;
            }
        }
    }

    fn dynamic_api<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        let ar = kube::api::ApiResource::erase::<K>(&());
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn gateway_classes(
        &self,
        watches: &Watches,
        statuses: &Statuses,
        now: &str,
        writes: &mut Vec<Write>,
    ) {
        for status in &statuses.gateway_classes {
            let Some(current) = watches
                .gateway_classes()
                .get(&kube::runtime::reflector::ObjectRef::new(&status.name))
            else {
                continue;
            };
            let current_status = to_value(current.status.as_ref());
            let old = current_status.get("conditions");
            let conditions = conditions(&status.conditions, old, now);
            if same(old, Some(&conditions)) {
                continue;
            }
            writes.push(Write {
                what: format!("GatewayClass {}", status.name),
                api: self.dynamic_api::<GatewayClass>(None),
                name: status.name.clone(),
                body: json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GatewayClass",
                    "metadata": { "name": status.name },
                    "status": { "conditions": conditions },
                }),
                reference: current.object_ref(&()),
                problems: problems(&status.conditions),
            });
        }
    }

    fn gateways(&self, watches: &Watches, statuses: &Statuses, now: &str, writes: &mut Vec<Write>) {
        for status in &statuses.gateways {
            let Some(current) = watches.gateways().get(
                &kube::runtime::reflector::ObjectRef::new(&status.gateway.name)
                    .within(&status.gateway.namespace),
            ) else {
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
            writes.push(Write {
                what: format!("Gateway {}", status.gateway),
                api: self.dynamic_api::<Gateway>(Some(&status.gateway.namespace)),
                name: status.gateway.name.clone(),
                body: json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "metadata": { "name": status.gateway.name, "namespace": status.gateway.namespace },
                    "status": desired,
                }),
                reference: current.object_ref(&()),
                problems,
            });
        }
    }

    fn http_routes(
        &self,
        watches: &Watches,
        statuses: &Statuses,
        now: &str,
        writes: &mut Vec<Write>,
    ) {
        let ours: HashMap<(&str, &str), &infergate_model::HttpRouteStatus> = statuses
            .http_routes
            .iter()
            .map(|s| ((s.route.namespace.as_str(), s.route.name.as_str()), s))
            .collect();
        for current in watches.http_routes().state() {
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
            let Some(body) = self.parents(&current_status, &desired, now) else {
                continue;
            };
            let problems = parent_problems(&desired);
            writes.push(Write {
                what: format!("HTTPRoute {key}"),
                api: self.dynamic_api::<HttpRoute>(Some(&key.namespace)),
                name: key.name.clone(),
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
                reference: current.object_ref(&()),
                problems,
            });
        }
    }

    fn inference_pools(
        &self,
        watches: &Watches,
        statuses: &Statuses,
        now: &str,
        writes: &mut Vec<Write>,
    ) {
        let Some(store) = watches.inference_pools() else {
            return;
        };
        let ar = pool_api_resource();
        let ours: HashMap<(&str, &str), &infergate_model::InferencePoolStatus> = statuses
            .inference_pools
            .iter()
            .map(|s| ((s.pool.namespace.as_str(), s.pool.name.as_str()), s))
            .collect();
        for current in store.state() {
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
                                "group": "gateway.networking.k8s.io",
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
            let Some(body) = self.parents(&current_status, &desired, now) else {
                continue;
            };
            let problems = parent_problems(&desired);
            writes.push(Write {
                what: format!("InferencePool {key}"),
                api: Api::namespaced_with(self.client.clone(), &key.namespace, &ar),
                name: key.name.clone(),
                body: json!({
                    "apiVersion": format!("{}/{}", ar.group, ar.version),
                    "kind": "InferencePool",
                    "metadata": {
                        "name": key.name,
                        "namespace": key.namespace,
                        "resourceVersion": current.metadata.resource_version,
                    },
                    "status": body,
                }),
                reference: current.object_ref(&ar),
                problems,
            });
        }
    }

    /// The `parents` status of a route or pool: other controllers' entries as
    /// they are, then ours. None when nothing would change.
    fn parents(&self, current: &Value, ours: &[Parent], now: &str) -> Option<Value> {
        let existing: Vec<Value> = current
            .get("parents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_ours = |entry: &Value| {
            entry.get("controllerName").and_then(Value::as_str) == Some(&self.controller_name)
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
                "controllerName": self.controller_name,
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
fn problems(conditions: &[Condition]) -> Vec<(String, String)> {
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

fn truncate(text: &str, max: usize) -> String {
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
        let kept = conditions(
            &[Condition::new(
                ConditionType::Accepted,
                true,
                "Accepted",
                "ok",
                3,
            )],
            Some(&old),
            "2026-11-26T00:00:00Z",
        );
        assert_eq!(kept[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        let flipped = conditions(
            &[Condition::new(
                ConditionType::Accepted,
                false,
                "NoMatchingParent",
                "no",
                3,
            )],
            Some(&old),
            "2026-11-26T00:00:00Z",
        );
        assert_eq!(flipped[0]["lastTransitionTime"], "2026-11-26T00:00:00Z");
        assert_eq!(flipped[0]["observedGeneration"], 3);
    }
}
