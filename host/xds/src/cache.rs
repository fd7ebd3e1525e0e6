//! The resources each Envoy node should have, versioned per type.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use crate::encode::{Certificates, Packed};
use crate::encoder::{EncodeStats, Encoder};
use crate::feedback::{Feedback, Verdict};

/// One type's resources for one node. The version is a digest of the
/// content, so an unchanged type is never re-sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: Vec<(String, Any)>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    /// Shared with the streams sending them: a stream copies only the
    /// resources it sends.
    pub types: HashMap<&'static str, Arc<TypeSnapshot>>,
}

/// Snapshots by Envoy node id; streams are told when anything changes.
pub struct SnapshotCache {
    nodes: Mutex<HashMap<String, Arc<NodeSnapshot>>>,
    /// Remembers what [`SnapshotCache::publish`] encoded last.
    encoder: Mutex<Encoder>,
    /// The certificates the next [`SnapshotCache::publish`] serves.
    certificates: Mutex<Arc<Certificates>>,
    changes: watch::Sender<u64>,
    /// What the Envoys answered; `answers` ticks on each answer.
    feedback: Mutex<Feedback>,
    answers: watch::Sender<u64>,
}

impl SnapshotCache {
    pub fn new() -> Arc<Self> {
        Arc::new(SnapshotCache {
            nodes: Mutex::new(HashMap::new()),
            encoder: Mutex::new(Encoder::new()),
            certificates: Mutex::new(Arc::default()),
            changes: watch::Sender::new(0),
            feedback: Mutex::new(Feedback::default()),
            answers: watch::Sender::new(0),
        })
    }

    /// The listener certificates (by Secret "<namespace>/<name>") that
    /// publishing serves from now on, for the TLS chains that name them.
    /// The host sets them from the same objects as the snapshot it then
    /// translates and publishes.
    pub fn set_certificates(&self, certificates: Certificates) {
        *self.certificates.lock().expect("certificates lock") = Arc::new(certificates);
    }

    /// Encode every Gateway (re-using the encoding of what did not change
    /// since the last call) and replace all nodes' resources with them.
    pub fn publish(&self, gateways: &[infergate_model::GatewayIr]) -> EncodeStats {
        let certificates = self.certificates.lock().expect("certificates lock").clone();
        let (nodes, stats) = self
            .encoder
            .lock()
            .expect("encoder lock")
            .encode(gateways, &certificates);
        self.replace_all(nodes);
        stats
    }

    /// Replace every node's resources at once (typed [`crate::encode::Resources`]
    /// or already [`Packed`]). Nodes that are no longer listed keep an empty
    /// snapshot, so their Envoy drops what it had.
    pub fn replace_all<R: Into<Packed>>(&self, nodes: Vec<(String, R)>) {
        let mut next: HashMap<String, Arc<NodeSnapshot>> = nodes
            .into_iter()
            .map(|(node, resources)| (node, Arc::new(snapshot(resources.into()))))
            .collect();
        let mut current = self.nodes.lock().expect("snapshot cache lock");
        for gone in current.keys() {
            if !next.contains_key(gone) {
                let empty = crate::encode::Resources::default().into_packed();
                next.insert(gone.clone(), Arc::new(snapshot(empty)));
            }
        }
        let previous = std::mem::replace(&mut *current, next);
        drop(current);
        self.changes.send_modify(|generation| *generation += 1);
        // The streams are told first; the old resources are freed after.
        drop(previous);
    }

    pub fn get(&self, node: &str) -> Option<Arc<NodeSnapshot>> {
        self.nodes
            .lock()
            .expect("snapshot cache lock")
            .get(node)
            .cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Record something an ADS stream learned (the server calls this).
    /// Waiters on [`SnapshotCache::answers`] are told.
    pub fn record(&self, update: impl FnOnce(&mut Feedback)) {
        update(&mut self.feedback.lock().expect("feedback lock"));
        self.answers.send_modify(|n| *n += 1);
    }

    /// Ticks whenever an Envoy connects, disconnects, ACKs or NACKs.
    pub fn answers(&self) -> watch::Receiver<u64> {
        self.answers.subscribe()
    }

    /// What the connected Envoys make of the current snapshots.
    pub fn verdict(&self) -> Verdict {
        let nodes = self.nodes.lock().expect("snapshot cache lock").clone();
        self.feedback
            .lock()
            .expect("feedback lock")
            .verdict(|node| nodes.get(node).map(|s| s.as_ref()))
    }
}

fn snapshot(packed: Packed) -> NodeSnapshot {
    NodeSnapshot {
        types: packed
            .into_iter()
            .map(|(type_url, resources)| {
                let mut hasher = DefaultHasher::new();
                for (name, any) in &resources {
                    name.hash(&mut hasher);
                    any.value.hash(&mut hasher);
                }
                (
                    type_url,
                    Arc::new(TypeSnapshot {
                        version: format!("{:016x}", hasher.finish()),
                        resources,
                    }),
                )
            })
            .collect(),
    }
}
