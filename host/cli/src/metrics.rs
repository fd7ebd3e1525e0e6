//! The controller's own metrics (Prometheus text on `/metrics`) and what
//! component is active (JSON on `/info`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

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

#[derive(Default)]
struct Inner {
    translations: BTreeMap<&'static str, u64>,
    bucket_counts: [u64; BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
    guest_memory_bytes: Option<usize>,
    swaps: u64,
    rejections: BTreeMap<String, u64>,
    active: Option<ActiveComponent>,
    held_by_envoy: usize,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// One translation ended: `outcome` is `ok` or the failure's kind;
    /// `guest_memory` is the guest memory's peak in bytes.
    pub fn translation(&self, outcome: &'static str, took: Duration, guest_memory: usize) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner.guest_memory_bytes = Some(guest_memory);
        *inner.translations.entry(outcome).or_default() += 1;
        let seconds = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                inner.bucket_counts[i] += 1;
            }
        }
        inner.duration_count += 1;
        inner.duration_sum += seconds;
    }

    pub fn swapped(&self, active: ActiveComponent) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner.swaps += 1;
        inner.active = Some(active);
    }

    pub fn loaded(&self, active: ActiveComponent) {
        self.inner.lock().expect("metrics lock").active = Some(active);
    }

    pub fn rejected(&self, reason: &str) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.rejections.entry(reason.to_string()).or_default() += 1;
    }

    /// How many objects are held back because Envoy refuses them.
    pub fn held_by_envoy(&self, objects: usize) {
        self.inner.lock().expect("metrics lock").held_by_envoy = objects;
    }

    pub fn active(&self) -> Option<ActiveComponent> {
        self.inner.lock().expect("metrics lock").active.clone()
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP infergate_translations_total Translations by outcome (ok, or why they failed).\n# TYPE infergate_translations_total counter"
        );
        for (outcome, n) in &inner.translations {
            let _ = writeln!(
                out,
                "infergate_translations_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP infergate_translation_duration_seconds Time of one translation through the component.\n# TYPE infergate_translation_duration_seconds histogram"
        );
        for (bound, n) in BUCKETS.iter().zip(inner.bucket_counts) {
            let _ = writeln!(
                out,
                "infergate_translation_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "infergate_translation_duration_seconds_bucket{{le=\"+Inf\"}} {count}\ninfergate_translation_duration_seconds_sum {sum}\ninfergate_translation_duration_seconds_count {count}",
            count = inner.duration_count,
            sum = inner.duration_sum
        );
        if let Some(bytes) = inner.guest_memory_bytes {
            let _ = writeln!(
                out,
                "# HELP infergate_translation_guest_memory_bytes Guest memory at its peak in the last translation (compare with --translation-memory-mib).\n# TYPE infergate_translation_guest_memory_bytes gauge\ninfergate_translation_guest_memory_bytes {bytes}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP infergate_component_swaps_total Components swapped in while running.\n# TYPE infergate_component_swaps_total counter\ninfergate_component_swaps_total {}",
            inner.swaps
        );
        let _ = writeln!(
            out,
            "# HELP infergate_component_rejections_total Components refused, by reason.\n# TYPE infergate_component_rejections_total counter"
        );
        for (reason, n) in &inner.rejections {
            let _ = writeln!(
                out,
                "infergate_component_rejections_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP infergate_objects_refused_by_envoy Objects held at their last accepted version (or left out) because Envoy refuses their configuration; their statuses say why.\n# TYPE infergate_objects_refused_by_envoy gauge\ninfergate_objects_refused_by_envoy {}",
            inner.held_by_envoy
        );
        if let Some(active) = &inner.active {
            let _ = writeln!(
                out,
                "# HELP infergate_component_info The active translation component.\n# TYPE infergate_component_info gauge\ninfergate_component_info{{digest=\"{}\",wit=\"{}\"}} 1",
                active.digest, active.wit_package
            );
        }
        out
    }
}

/// Serve `/metrics` and `/info` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    use http_body_util::Full;
    let limits = infergate_serving::Limits::default();
    infergate_serving::accept_loop(listener, limits, std::future::pending(), move |stream| {
        let metrics = metrics.clone();
        async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, kind, body) = match req.uri().path() {
                        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
                        "/info" => (
                            200,
                            "application/json",
                            serde_json::json!({ "component": metrics.active() }).to_string(),
                        ),
                        _ => (404, "text/plain", "try /metrics or /info\n".to_string()),
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", kind)
                                .body(Full::new(bytes::Bytes::from(body)))
                                .expect("a response"),
                        )
                    }
                });
            let _ = infergate_serving::http1(limits)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
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
