//! The controller's own metrics (OpenMetrics text on `/metrics`, by
//! prometheus-client) and what
//! component is active (JSON on `/info`).

use std::sync::Mutex;
use std::time::Duration;

use infergate_kube::StatusMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Upper bounds of the translation duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The active component, as `/info` and the logs show it.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveComponent {
    pub path: String,
    pub digest: String,
    pub wit_package: String,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    pub compile_ms: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    digest: String,
    wit: String,
}

/// Every metric of the controller, in one registry.
pub struct Metrics {
    registry: Registry,
    translations: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    guest_memory_bytes: Gauge,
    swaps: Counter,
    rejections: Family<ReasonLabel, Counter>,
    held_by_envoy: Gauge,
    component: Family<ComponentLabels, Gauge>,
    /// The Kubernetes status writer's (registered here, counted there).
    pub status: StatusMetrics,
    active: Mutex<Option<ActiveComponent>>,
    /// Whether the first configuration was worked out (`/readyz`).
    ready: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let translations = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "infergate_translations",
            "Translations by outcome (ok, or why they failed).",
            translations.clone(),
        );
        let duration = Histogram::new(BUCKETS);
        registry.register(
            "infergate_translation_duration_seconds",
            "Time of one translation through the component.",
            duration.clone(),
        );
        let guest_memory_bytes = Gauge::default();
        registry.register(
            "infergate_translation_guest_memory_bytes",
            "Guest memory at its peak in the last translation (compare with --translation-memory-mib).",
            guest_memory_bytes.clone(),
        );
        let swaps = Counter::default();
        registry.register(
            "infergate_component_swaps",
            "Components swapped in while running.",
            swaps.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "infergate_component_rejections",
            "Components refused, by reason.",
            rejections.clone(),
        );
        let held_by_envoy = Gauge::default();
        registry.register(
            "infergate_objects_refused_by_envoy",
            "Objects held at their last accepted version (or left out) because Envoy refuses their configuration; their statuses say why.",
            held_by_envoy.clone(),
        );
        let component = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "infergate_component_info",
            "The active translation component.",
            component.clone(),
        );
        let status = StatusMetrics::default();
        status.register(&mut registry);
        Metrics {
            registry,
            translations,
            duration,
            guest_memory_bytes,
            swaps,
            rejections,
            held_by_envoy,
            component,
            status,
            active: Mutex::new(None),
            ready: Default::default(),
        }
    }
}

impl Metrics {
    /// One translation ended: `outcome` is `ok` or the failure's kind;
    /// `guest_memory` is the guest memory's peak in bytes.
    pub fn translation(&self, outcome: &'static str, took: Duration, guest_memory: usize) {
        self.guest_memory_bytes
            .set(i64::try_from(guest_memory).unwrap_or(i64::MAX));
        self.translations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn swapped(&self, active: ActiveComponent) {
        self.swaps.inc();
        self.loaded(active);
    }

    pub fn loaded(&self, active: ActiveComponent) {
        self.component.clear();
        self.component
            .get_or_create(&ComponentLabels {
                digest: active.digest.clone(),
                wit: active.wit_package.clone(),
            })
            .set(1);
        *self.active.lock().expect("metrics lock") = Some(active);
    }

    pub fn rejected(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// How many objects are held back because Envoy refuses them.
    pub fn held_by_envoy(&self, objects: usize) {
        self.held_by_envoy
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// The watches have listed everything and the first translation ran
    /// (whatever its outcome): xDS clients now get what there is to get.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn active(&self) -> Option<ActiveComponent> {
        self.active.lock().expect("metrics lock").clone()
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        infergate_serving::telemetry::encode(&self.registry)
    }
}

/// Serve `/metrics`, `/info`, `/healthz` (the process answers) and
/// `/readyz` (503 until [`Metrics::set_ready`]) on `listener` until the task
/// is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    use infergate_serving::telemetry::{self, Page};
    telemetry::serve_pages(
        listener,
        infergate_serving::Limits::default(),
        std::future::pending(),
        "try /metrics, /info, /healthz or /readyz",
        move |path| match path {
            "/metrics" => Some(Page::ok(telemetry::OPENMETRICS, metrics.render())),
            "/info" => Some(Page::ok(
                "application/json",
                serde_json::json!({ "component": metrics.active() }).to_string(),
            )),
            "/healthz" => Some(Page::ok("text/plain", "ok\n".into())),
            "/readyz" if metrics.is_ready() => Some(Page::ok("text/plain", "ok\n".into())),
            "/readyz" => Some(Page::unavailable(
                "not ready: the watches have not listed everything or nothing was translated yet",
            )),
            _ => None,
        },
    )
    .await
}

/// Now as RFC 3339 (UTC, whole seconds), e.g. `2026-11-30T15:20:40Z`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(digest: &str) -> ActiveComponent {
        ActiveComponent {
            path: "c.wasm".into(),
            digest: digest.into(),
            wit_package: "infergate:translator@0.5.0".into(),
            loaded_at: now_rfc3339(),
            compile_ms: 1,
        }
    }

    #[test]
    fn series_keep_the_names_dashboards_and_docs_use() {
        let metrics = Metrics::default();
        metrics.loaded(component("sha256:aaa"));
        metrics.translation("ok", Duration::from_millis(3), 1024);
        metrics.translation("trap", Duration::from_millis(30), 2048);
        metrics.rejected("read");
        metrics.swapped(component("sha256:bbb"));
        metrics.held_by_envoy(2);
        let text = metrics.render();
        for series in [
            "infergate_translations_total{outcome=\"ok\"} 1",
            "infergate_translations_total{outcome=\"trap\"} 1",
            "infergate_translation_duration_seconds_bucket{le=\"0.005\"} 1",
            "infergate_translation_duration_seconds_bucket{le=\"0.05\"} 2",
            "infergate_translation_duration_seconds_count 2",
            "infergate_translation_guest_memory_bytes 2048",
            "infergate_component_swaps_total 1",
            "infergate_component_rejections_total{reason=\"read\"} 1",
            "infergate_objects_refused_by_envoy 2",
            "infergate_component_info{digest=\"sha256:bbb\",wit=\"infergate:translator@0.5.0\"} 1",
            "infergate_status_writes_pending 0",
        ] {
            assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
        }
        assert!(
            !text.contains("sha256:aaa"),
            "only the active component is reported:\n{text}"
        );
    }

    #[test]
    fn now_is_rfc3339_in_utc_to_the_second() {
        let now = super::now_rfc3339();
        let parsed: jiff::Timestamp = now.parse().expect("RFC 3339");
        assert!(
            now.ends_with('Z') && now.len() == "2026-11-30T15:20:40Z".len(),
            "{now}"
        );
        let age = jiff::Timestamp::now().duration_since(parsed);
        assert!(age.as_secs() >= 0 && age.as_secs() < 5, "{now}");
    }
}
