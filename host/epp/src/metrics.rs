//! The picker's `/metrics`: counters of its decisions, and per endpoint what
//! the scraper last saw. Every series carries the pool's name (`pool`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::scheduler::{Decision, Load, Scheduler};

/// What the picker decided, counted.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub picked: Counter,
    pub picked_uninformed: Counter,
    pub no_endpoint: Counter,
    pub bad_request: Counter,
    pub too_large: Counter,
    pub protocol_errors: Counter,
    pub served_elsewhere: Counter,
    /// Picks by what decided them (`Decision::name`, a bounded set).
    pub decided_by: Family<DecidedLabel, Counter>,
    /// What became of the requests sent on, per model.
    pub models: ModelMetrics,
}

/// Per-model figures of the requests the picker sent on, under the names of
/// the Gateway API Inference Extension's picker (`inference_objective_*`,
/// labels `model_name`: what the request named, `target_model_name`: what
/// the server got; a model no route names is `other`). `docs/metrics.md`
/// maps them to OpenTelemetry's `gen_ai.*` names.
#[derive(Clone, Debug)]
pub struct ModelMetrics {
    pub requests: Family<ModelLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub input_tokens: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub output_tokens: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub tpot: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub normalized_tpot: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub running: Family<RunningLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model_name: String,
    pub target_model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub model_name: String,
    pub target_model_name: String,
    /// The HTTP status, or `stream_broken` for a response that ended early.
    pub error_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunningLabels {
    pub model_name: String,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}
fn tokens() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 20))
}
fn first_token_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}
fn token_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            requests: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(seconds),
            input_tokens: Family::new_with_constructor(tokens),
            output_tokens: Family::new_with_constructor(tokens),
            ttft: Family::new_with_constructor(first_token_seconds),
            tpot: Family::new_with_constructor(token_seconds),
            normalized_tpot: Family::new_with_constructor(token_seconds),
            running: Family::default(),
        }
    }
}

/// How a request sent on ended, as the picker saw its response.
#[derive(Clone, Debug, Default)]
pub struct Finished {
    /// The response's status; None when none came.
    pub status: Option<u16>,
    /// The response ended before its end (a reset, a picker stream cut).
    pub broken: bool,
    pub duration: std::time::Duration,
    pub usage: Option<crate::response_body::Usage>,
    /// Streamed: the time to the first token, and between the first and
    /// the last.
    pub time_to_first_token: Option<std::time::Duration>,
    pub decode_time: Option<std::time::Duration>,
}

impl ModelMetrics {
    pub fn labels(choice: &crate::models::ModelChoice) -> ModelLabels {
        ModelLabels {
            model_name: choice.asked_label.clone(),
            target_model_name: choice.served_label.clone(),
        }
    }

    pub fn started(&self, choice: &crate::models::ModelChoice) {
        self.running
            .get_or_create(&RunningLabels {
                model_name: choice.asked_label.clone(),
            })
            .inc();
    }

    pub fn finished(&self, choice: &crate::models::ModelChoice, end: &Finished) {
        self.running
            .get_or_create(&RunningLabels {
                model_name: choice.asked_label.clone(),
            })
            .dec();
        let labels = Self::labels(choice);
        self.requests.get_or_create(&labels).inc();
        let error = match end.status {
            _ if end.broken => Some("stream_broken".to_string()),
            Some(status) if status >= 400 => Some(status.to_string()),
            None => Some("no_response".to_string()),
            _ => None,
        };
        if let Some(error_code) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    model_name: labels.model_name.clone(),
                    target_model_name: labels.target_model_name.clone(),
                    error_code,
                })
                .inc();
            return;
        }
        self.duration
            .get_or_create(&labels)
            .observe(end.duration.as_secs_f64());
        if let Some(usage) = end.usage {
            self.input_tokens
                .get_or_create(&labels)
                .observe(usage.input_tokens as f64);
            self.output_tokens
                .get_or_create(&labels)
                .observe(usage.output_tokens as f64);
            if usage.output_tokens > 0 {
                self.normalized_tpot
                    .get_or_create(&labels)
                    .observe(end.duration.as_secs_f64() / usage.output_tokens as f64);
            }
            if let Some(decode) = end.decode_time
                && usage.output_tokens > 1
            {
                self.tpot
                    .get_or_create(&labels)
                    .observe(decode.as_secs_f64() / (usage.output_tokens - 1) as f64);
            }
        }
        if let Some(ttft) = end.time_to_first_token {
            self.ttft.get_or_create(&labels).observe(ttft.as_secs_f64());
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "inference_objective_request",
            "Requests sent to a model server, by the model named (model_name) and the model served (target_model_name); models no route names are `other`.",
            self.requests.clone(),
        );
        registry.register(
            "inference_objective_request_error",
            "Requests that ended in an error: the response status (400 and up), stream_broken, or no_response.",
            self.errors.clone(),
        );
        registry.register(
            "inference_objective_request_duration_seconds",
            "Time from the request reaching the picker to the response's end, successful requests.",
            self.duration.clone(),
        );
        registry.register(
            "inference_objective_input_tokens",
            "Prompt tokens per request, from the response's usage.",
            self.input_tokens.clone(),
        );
        registry.register(
            "inference_objective_output_tokens",
            "Generated tokens per request, from the response's usage.",
            self.output_tokens.clone(),
        );
        registry.register(
            "inference_objective_request_ttft_seconds",
            "Time to the first token of streamed responses.",
            self.ttft.clone(),
        );
        registry.register(
            "inference_objective_request_tpot_seconds",
            "Time per output token after the first, streamed responses.",
            self.tpot.clone(),
        );
        registry.register(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Request duration over its output tokens.",
            self.normalized_tpot.clone(),
        );
        registry.register(
            "inference_objective_running_requests",
            "Requests sent on whose response has not ended.",
            self.running.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecidedLabel {
    decided_by: &'static str,
}

impl Counters {
    pub fn decided(&self, decision: Decision) {
        self.decided_by
            .get_or_create(&DecidedLabel {
                decided_by: decision.name(),
            })
            .inc();
    }
}

/// The registry `/metrics` shows for the picker of `pool`.
pub fn registry(pool: &str, counters: &Counters, scheduler: Arc<Scheduler>) -> Registry {
    let mut registry =
        Registry::with_labels([("pool".into(), pool.to_string().into())].into_iter());
    for (name, help, counter) in [
        (
            "infergate_epp_picks",
            "Requests sent to an endpoint.",
            &counters.picked,
        ),
        (
            "infergate_epp_uninformed_picks",
            "Picks made round robin because no candidate had fresh metrics.",
            &counters.picked_uninformed,
        ),
        (
            "infergate_epp_no_endpoint",
            "Requests refused with 503: no eligible endpoint.",
            &counters.no_endpoint,
        ),
        (
            "infergate_epp_bad_request",
            "Requests refused with 400: the body is not a JSON request naming a model.",
            &counters.bad_request,
        ),
        (
            "infergate_epp_too_large",
            "Requests refused with 413: the body is over the limit.",
            &counters.too_large,
        ),
        (
            "infergate_epp_protocol_errors",
            "ext_proc streams ended because of a malformed message.",
            &counters.protocol_errors,
        ),
        (
            "infergate_epp_served_elsewhere",
            "Requests served by a fallback because the chosen endpoint failed; that endpoint is then avoided for the failure cooldown.",
            &counters.served_elsewhere,
        ),
    ] {
        registry.register(name, help, counter.clone());
    }
    // Every value present from the start, so that rates work from zero.
    for decision in Decision::ALL {
        let _ = counters.decided_by.get_or_create(&DecidedLabel {
            decided_by: decision.name(),
        });
    }
    registry.register(
        "infergate_epp_picks_decided",
        "Picks by what decided them: the scorer that most separated the chosen endpoint from the next best (queue, kv_cache, running, prefix, lora), tie (equal best totals, chosen at random), only_candidate, uninformed (no fresh metrics: round robin), test_header, failure_cooldown (the best failed lately).",
        counters.decided_by.clone(),
    );
    counters.models.register(&mut registry);
    registry.register_collector(Box::new(Endpoints(scheduler)));
    registry
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// A gauge of what an endpoint reports: name, help, the value.
type LoadGauge = (&'static str, &'static str, fn(&Load) -> f64);

/// Per-endpoint gauges, read from the scheduler at each scrape.
struct Endpoints(Arc<Scheduler>);

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoints")
    }
}

impl Collector for Endpoints {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports = self.0.reports();
        let label = |address: &std::net::SocketAddr| EndpointLabel {
            endpoint: address.to_string(),
        };
        {
            let mut family = encoder.encode_descriptor(
                "infergate_epp_endpoint_fresh",
                "1 when the endpoint's metrics are fresh.",
                None,
                MetricType::Gauge,
            )?;
            for r in &reports {
                ConstGauge::new(i64::from(r.fresh))
                    .encode(family.encode_family(&label(&r.address))?)?;
            }
        }
        let loads: [LoadGauge; 2] = [
            (
                "infergate_epp_endpoint_queue",
                "Waiting requests the endpoint last reported.",
                |l| l.waiting,
            ),
            (
                "infergate_epp_endpoint_kv_cache_usage",
                "KV-cache usage the endpoint last reported (0..1).",
                |l| l.kv_cache_usage,
            ),
        ];
        for (name, help, value) in loads {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in &reports {
                if let Some(load) = &r.load {
                    ConstGauge::new(value(load))
                        .encode(family.encode_family(&label(&r.address))?)?;
                }
            }
        }
        Ok(())
    }
}
