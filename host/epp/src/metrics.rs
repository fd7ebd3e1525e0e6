//! The picker's `/metrics`: counters of its decisions, and per endpoint what
//! the scraper last saw. Every series carries the pool's name (`pool`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
