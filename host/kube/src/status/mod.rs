//! Status written back: GatewayClass, Gateway, HTTPRoute parents and
//! InferencePool parents, by server-side apply under our field manager, off
//! the configuration path.
//!
//! - [`plan`]: what to write, a pure function of what the watches have seen
//!   and the translation's statuses. An object is written only when what we
//!   own of its status differs from what the API server has (compared
//!   without `lastTransitionTime`, which is kept while a condition's status
//!   stays the same). Route and pool `parents` lists are atomic in their
//!   CRDs: we write the entries of other controllers back as they were, and
//!   send the object's `resourceVersion` so that an entry another controller
//!   adds meanwhile is never overwritten (the write is refused with a
//!   conflict and planned again from fresh data).
//! - [`StatusWriter`]: the writes, each with a timeout, a few at a time, and
//!   the Warning Events for the problems they report.
//! - [`StatusTask`]: a task of its own that the controller hands the latest
//!   statuses to and never waits for. It writes only while this replica
//!   leads, retries conflicts and failures with a backoff, and skips any
//!   state that a newer one replaced meanwhile: a slow API server delays
//!   statuses, never configuration.

mod plan;
mod task;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use plan::{Kind, Observed, StatusPatch, plan};
pub use task::{Backoff, StatusTask};

use crate::watch::pool_api_resource;

/// What one pass of writes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects whose status was written.
    pub written: usize,
    /// Writes refused because the object changed meanwhile.
    pub conflicts: usize,
    /// Writes that failed otherwise, or took longer than the write timeout.
    pub failed: usize,
    /// Writes not made because this replica stopped leading meanwhile.
    pub skipped: usize,
}

impl Report {
    /// Whether the pass must be planned again later.
    pub fn retry(&self) -> bool {
        self.conflicts > 0 || self.failed > 0
    }
}

/// The status writer's metrics.
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    writes: Family<Outcome, Counter>,
    pending: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

impl StatusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "infergate_status_writes",
            "Status writes by outcome: written; conflict (the object changed meanwhile: planned again from fresh data); gone (deleted meanwhile); failed; timeout (longer than --status-write-timeout-seconds).",
            self.writes.clone(),
        );
        registry.register(
            "infergate_status_writes_pending",
            "Status writes of the current pass not done yet.",
            self.pending.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.writes.get_or_create(&Outcome { outcome }).inc();
    }

    /// How many writes ended with `outcome` (for tests and logs).
    pub fn writes(&self, outcome: &'static str) -> u64 {
        self.writes.get_or_create(&Outcome { outcome }).get()
    }
}

/// How the writer identifies itself and how long it waits.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The server-side apply field manager (also the Events' reporter).
    pub field_manager: String,
    /// Our `controllerName` in GatewayClasses and `parents` entries.
    pub controller_name: String,
    /// This replica, for Events.
    pub instance: String,
    /// How long one write may take before it counts as failed.
    pub write_timeout: Duration,
}

pub struct StatusWriter {
    client: Client,
    config: WriterConfig,
    recorder: Recorder,
    /// Problems already published as Events (object, reason, message).
    published: Mutex<HashSet<(String, String, String)>>,
    metrics: StatusMetrics,
}

/// Writes run this many at a time.
const CONCURRENT_WRITES: usize = 8;

impl StatusWriter {
    pub fn new(client: Client, config: WriterConfig, metrics: StatusMetrics) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: config.field_manager.clone(),
                instance: Some(config.instance.clone()),
            },
        );
        StatusWriter {
            client,
            config,
            recorder,
            published: Mutex::new(HashSet::new()),
            metrics,
        }
    }

    pub fn controller_name(&self) -> &str {
        &self.config.controller_name
    }

    pub fn metrics(&self) -> &StatusMetrics {
        &self.metrics
    }

    /// Make `patches`, a few at a time, each within the write timeout; a
    /// write not started yet when `leading` turns false is skipped.
    pub async fn write(
        &self,
        patches: Vec<StatusPatch>,
        leading: &watch::Receiver<bool>,
    ) -> Report {
        let params = PatchParams::apply(&self.config.field_manager).force();
        self.metrics.pending.set(patches.len() as i64);
        let results: Vec<(StatusPatch, Outcome)> = futures::stream::iter(patches)
            .map(|patch| {
                let params = params.clone();
                async move {
                    let outcome = if *leading.borrow() {
                        self.write_one(&patch, &params).await
                    } else {
                        Outcome { outcome: "skipped" }
                    };
                    self.metrics.pending.dec();
                    (patch, outcome)
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut report = Report::default();
        for (patch, Outcome { outcome }) in results {
            match outcome {
                "written" => {
                    report.written += 1;
                    self.publish_problems(&patch).await;
                }
                "conflict" => report.conflicts += 1,
                "failed" | "timeout" => report.failed += 1,
                "skipped" => report.skipped += 1,
                _ => {} // deleted meanwhile
            }
        }
        report
    }

    async fn write_one(&self, patch: &StatusPatch, params: &PatchParams) -> Outcome {
        let api = self.api(patch);
        let body = Patch::Apply(&patch.body);
        let write = api.patch_status(&patch.name, params, &body);
        let outcome = match tokio::time::timeout(self.config.write_timeout, write).await {
            Ok(Ok(_)) => {
                tracing::debug!("status of {patch} written");
                "written"
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                tracing::debug!("status of {patch} changed meanwhile; planned again");
                "conflict"
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                tracing::debug!("{patch} was deleted meanwhile");
                "gone"
            }
            Ok(Err(e)) => {
                tracing::warn!("writing the status of {patch} failed: {e}");
                "failed"
            }
            Err(_) => {
                tracing::warn!(
                    "writing the status of {patch} took longer than {:?}; will retry",
                    self.config.write_timeout
                );
                "timeout"
            }
        };
        self.metrics.count(outcome);
        Outcome { outcome }
    }

    fn api(&self, patch: &StatusPatch) -> Api<DynamicObject> {
        let ar = match patch.kind {
            Kind::GatewayClass => ApiResource::erase::<GatewayClass>(&()),
            Kind::Gateway => ApiResource::erase::<Gateway>(&()),
            Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
            Kind::InferencePool => pool_api_resource(),
            Kind::InferenceModelRewrite => crate::watch::rewrite_api_resource(),
        };
        match &patch.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Warning Events for conditions that report a problem, once per distinct problem.
    async fn publish_problems(&self, patch: &StatusPatch) {
        for (reason, message) in &patch.problems {
            let key = (patch.to_string(), reason.clone(), message.clone());
            if !self.published.lock().expect("events lock").insert(key) {
                continue;
            }
            self.event(&patch.reference, EventType::Warning, reason, message)
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
            note: Some(plan::truncate(note, 1024)),
            action: "Translate".into(),
            secondary: None,
        };
        let publish = self.recorder.publish(&event, reference);
        match tokio::time::timeout(self.config.write_timeout, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("publishing an Event failed: {e}"),
            Err(_) => tracing::warn!(
                "publishing an Event took longer than {:?}",
                self.config.write_timeout
            ),
        }
    }

    /// A Warning Event on each GatewayClass of ours (a rejected component
    /// concerns every Gateway we serve).
    pub async fn event_on_classes(&self, classes: &[Arc<GatewayClass>], reason: &str, note: &str) {
        for class in classes {
            if class.spec.controller_name == self.config.controller_name {
                self.event(&class.object_ref(&()), EventType::Warning, reason, note)
                    .await;
            }
        }
    }
}

/// Now as the API has timestamps.
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
