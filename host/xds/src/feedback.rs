//! What the connected Envoys made of what they were sent: ACKs and NACKs per
//! stream and resource type, summed up as one [`Verdict`] on the cache's
//! current snapshots.
//!
//! The ADS server reports here; the controller reads the verdict after each
//! change ([`crate::SnapshotCache::verdicts`]) to find out whether Envoy took
//! the configuration, and, when it did not, which one it refused and why.

use std::collections::HashMap;

use crate::cache::NodeSnapshot;
use crate::encode::TYPE_ORDER;

/// One ADS stream (one Envoy; an Envoy that reconnects is a new stream).
pub type StreamId = u64;

/// What the connected Envoys say about the current snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No Envoy is connected, or one has not answered yet.
    Pending,
    /// Every connected Envoy ACKed every resource type it was sent, at the
    /// current version.
    Accepted,
    /// An Envoy NACKed the current version of a type.
    Rejected {
        node: String,
        type_url: String,
        message: String,
    },
}

#[derive(Default)]
struct StreamState {
    node: String,
    /// Types Envoy asked for.
    subscribed: Vec<String>,
    /// type -> the version Envoy last ACKed.
    acked: HashMap<String, String>,
    /// type -> (the version Envoy last NACKed, its message).
    nacked: HashMap<String, (String, String)>,
}

/// Per-stream ACK/NACK bookkeeping.
#[derive(Default)]
pub struct Feedback {
    streams: HashMap<StreamId, StreamState>,
}

impl Feedback {
    pub fn connected(&mut self, stream: StreamId, node: &str) {
        self.streams.insert(
            stream,
            StreamState {
                node: node.to_string(),
                ..Default::default()
            },
        );
    }

    pub fn disconnected(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
    }

    pub fn subscribed(&mut self, stream: StreamId, type_url: &str) {
        if let Some(state) = self.streams.get_mut(&stream)
            && !state.subscribed.iter().any(|t| t == type_url)
        {
            state.subscribed.push(type_url.to_string());
        }
    }

    pub fn ack(&mut self, stream: StreamId, type_url: &str, version: &str) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state
                .acked
                .insert(type_url.to_string(), version.to_string());
        }
    }

    pub fn nack(&mut self, stream: StreamId, type_url: &str, version: &str, message: &str) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state.nacked.insert(
                type_url.to_string(),
                (version.to_string(), message.to_string()),
            );
        }
    }

    /// The verdict on `snapshots` (by node). A stream whose node has no
    /// snapshot is not asked. A type counts when the stream subscribed to
    /// it or it has resources (Envoy asks for route configurations and
    /// endpoints only after it took the listeners and clusters naming them,
    /// so an early ACK of the listeners alone is not yet a yes).
    pub fn verdict<'a>(&self, snapshot_of: impl Fn(&str) -> Option<&'a NodeSnapshot>) -> Verdict {
        let mut any = false;
        let mut pending = false;
        let mut streams: Vec<&StreamState> = self.streams.values().collect();
        streams.sort_by(|a, b| a.node.cmp(&b.node));
        for state in streams {
            let Some(snapshot) = snapshot_of(&state.node) else {
                continue;
            };
            any = true;
            for type_url in TYPE_ORDER {
                let Some(current) = snapshot.types.get(type_url) else {
                    continue;
                };
                if let Some((version, message)) = state.nacked.get(type_url)
                    && *version == current.version
                {
                    return Verdict::Rejected {
                        node: state.node.clone(),
                        type_url: type_url.to_string(),
                        message: message.clone(),
                    };
                }
                let asked =
                    state.subscribed.iter().any(|t| t == type_url) || !current.resources.is_empty();
                if asked && state.acked.get(type_url) != Some(&current.version) {
                    pending = true;
                }
            }
        }
        if !any || pending {
            Verdict::Pending
        } else {
            Verdict::Accepted
        }
    }
}
