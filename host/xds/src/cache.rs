//! The resources each Envoy node should have, versioned per type.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use crate::encode::Resources;

/// One type's resources for one node. The version is a digest of the
/// content, so an unchanged type is never re-sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: Vec<(String, Any)>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub types: HashMap<&'static str, TypeSnapshot>,
}

/// Snapshots by Envoy node id; streams are told when anything changes.
pub struct SnapshotCache {
    nodes: Mutex<HashMap<String, NodeSnapshot>>,
    changes: watch::Sender<u64>,
}

impl SnapshotCache {
    pub fn new() -> Arc<Self> {
        Arc::new(SnapshotCache {
            nodes: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
        })
    }

    /// Replace every node's resources at once. Nodes that are no longer
    /// listed keep an empty snapshot, so their Envoy drops what it had.
    pub fn replace_all(&self, nodes: Vec<(String, Resources)>) {
        let mut current = self.nodes.lock().expect("snapshot cache lock");
        let mut next: HashMap<String, NodeSnapshot> = current
            .keys()
            .map(|k| (k.clone(), snapshot(Resources::default())))
            .collect();
        for (node, resources) in nodes {
            next.insert(node, snapshot(resources));
        }
        *current = next;
        drop(current);
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub fn get(&self, node: &str) -> Option<NodeSnapshot> {
        self.nodes
            .lock()
            .expect("snapshot cache lock")
            .get(node)
            .cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn snapshot(resources: Resources) -> NodeSnapshot {
    NodeSnapshot {
        types: resources
            .into_packed()
            .into_iter()
            .map(|(type_url, resources)| {
                let mut hasher = DefaultHasher::new();
                for (name, any) in &resources {
                    name.hash(&mut hasher);
                    any.value.hash(&mut hasher);
                }
                (
                    type_url,
                    TypeSnapshot {
                        version: format!("{:016x}", hasher.finish()),
                        resources,
                    },
                )
            })
            .collect(),
    }
}
