//! The picker's pool in Kubernetes, found the way the upstream picker finds
//! it: watch its InferencePool (`--pool-name`/`--pool-namespace`) and the
//! Pods of that namespace; the endpoints are the ready Pods the pool's
//! selector matches, each Pod IP times each target port.
//!
//! Needs, in the pool's namespace only: get/list/watch on inferencepools and
//! pods (`infergate rbac` prints that Role).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use crate::Handle;

/// What the pool says about its endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSpec {
    pub selector: BTreeMap<String, String>,
    pub target_ports: Vec<u16>,
}

impl PoolSpec {
    /// From an InferencePool object, read as the controller reads it (the
    /// shared [`infergate_resources::InferencePool`] type): its selector's
    /// `matchLabels` and its target port numbers. None if it is not a valid
    /// pool.
    pub fn from_object(object: &serde_json::Value) -> Option<PoolSpec> {
        let pool: infergate_resources::InferencePool =
            serde_json::from_value(object.clone()).ok()?;
        Some(PoolSpec {
            selector: pool.spec.selector.match_labels,
            target_ports: pool
                .spec
                .target_ports
                .iter()
                .filter_map(|p| u16::try_from(p.number).ok())
                .collect(),
        })
    }

    /// The endpoints of `pods` under this pool: ready, selected, with an IP.
    pub fn endpoints<'a>(&self, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for pod in pods {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if !self.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(status) = &pod.status else { continue };
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                continue;
            }
            let Some(ip) = status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue;
            };
            for port in &self.target_ports {
                out.push(SocketAddr::new(ip, *port));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Keep `handle`'s endpoints in line with the pool in the cluster. Runs
/// until the process ends; watches recover from API outages on their own
/// (the endpoints last seen stay in use meanwhile).
pub async fn run(client: kube::Client, namespace: String, name: String, handle: Arc<Handle>) {
    let ar = infergate_kube::watch::pool_api_resource();
    let changed = Arc::new(Notify::new());
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let pool_store: Store<DynamicObject> = {
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let stream = watcher(
            pools,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff();
        tokio::spawn(forward(
            "InferencePool",
            reflector::reflector(writer, stream),
            changed.clone(),
        ));
        store
    };
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let (pod_store, writer) = reflector::store();
    let stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .modify(|pod: &mut Pod| {
            pod.metadata.managed_fields = None;
            pod.spec = None;
        });
    tokio::spawn(forward(
        "Pod",
        reflector::reflector(writer, stream),
        changed.clone(),
    ));

    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        changed.notified().await;
        let pool = pool_store
            .state()
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        let endpoints = match pool {
            None => {
                if last.as_ref().is_none_or(|l| !l.is_empty()) {
                    tracing::warn!(pool = %format!("{namespace}/{name}"), "InferencePool not found; no endpoints");
                }
                vec![]
            }
            Some(pool) => match PoolSpec::from_object(&pool.data) {
                Some(spec) => spec.endpoints(pod_store.state().iter().map(|p| p.as_ref())),
                None => {
                    tracing::warn!(pool = %format!("{namespace}/{name}"), "InferencePool has no usable spec.selector/targetPorts");
                    vec![]
                }
            },
        };
        if last.as_ref() != Some(&endpoints) {
            tracing::info!(pool = %format!("{namespace}/{name}"), endpoints = ?endpoints, "pool endpoints");
            handle.scheduler.set_endpoints(&endpoints);
            handle.set_ready(!endpoints.is_empty()).await;
            last = Some(endpoints);
        }
    }
}

async fn forward<K, S>(kind: &'static str, stream: S, changed: Arc<Notify>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::warn!(kind, "watch failed: {e}; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(labels: &[(&str, &str)], ip: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_selected_pods_times_target_ports() {
        let spec = PoolSpec::from_object(&serde_json::json!({
            "spec": {
                "selector": { "matchLabels": { "app": "vllm" } },
                "targetPorts": [{ "number": 8000 }, { "number": 8001 }],
            }
        }))
        .expect("a pool spec");
        let pods = [
            pod(&[("app", "vllm"), ("x", "y")], Some("10.0.0.1"), true),
            pod(&[("app", "vllm")], Some("10.0.0.2"), false), // not ready
            pod(&[("app", "other")], Some("10.0.0.3"), true), // not selected
            pod(&[("app", "vllm")], None, true),              // no IP yet
        ];
        let endpoints = spec.endpoints(pods.iter());
        assert_eq!(
            endpoints,
            vec![
                "10.0.0.1:8000".parse().unwrap(),
                "10.0.0.1:8001".parse().unwrap()
            ]
        );
    }
}
