//! The endpoints of one pool, what their model servers last reported, and
//! the choice among them.
//!
//! Scores, each weighted ([`Weights`]): the queue scorer
//! `(maxQ - q) / (maxQ - minQ)` over the candidates (1 when they are all
//! equal), the KV-cache scorer `1 - usage`, and the prefix-affinity scorer:
//! the share of the prompt's leading blocks last sent to that endpoint (the
//! picker remembers, per endpoint, the block hashes it sent there, bounded
//! and least recently used first out), unless that endpoint's queue is
//! longer than [`Weights::prefix_max_queue`]. The highest total wins; ties
//! rotate.
//! Picks made since an endpoint's last scrape count as queued there, so a
//! burst between two scrapes spreads out instead of piling onto one server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use infergate_serving::prompt::BlockCache;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a model server's `/metrics` said.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub waiting: f64,
    pub running: f64,
    /// 0..1.
    pub kv_cache_usage: f64,
}

#[derive(Debug)]
struct Endpoint {
    address: SocketAddr,
    load: Option<(Load, Instant)>,
    /// Picks since the last successful scrape.
    pending: u32,
    last_error: Option<String>,
    /// Prompt blocks sent there lately.
    prefixes: BlockCache,
    /// When a request chosen for it was served by a fallback instead.
    failed_at: Option<Instant>,
}

/// How much each scorer counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub queue: f64,
    pub kv_cache: f64,
    pub prefix: f64,
    /// An endpoint with more requests queued than this gets no prefix
    /// credit: a cached prefix is not worth waiting behind a long queue.
    pub prefix_max_queue: f64,
    /// Prompt blocks remembered per endpoint (16 tokens each).
    pub prefix_blocks_per_endpoint: usize,
    /// An endpoint that failed a request is chosen only after all others
    /// for this long.
    pub failure_cooldown: Duration,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            queue: 2.0,
            kv_cache: 2.0,
            prefix: 3.0,
            prefix_max_queue: 8.0,
            prefix_blocks_per_endpoint: 16 * 1024,
            failure_cooldown: Duration::from_secs(10),
        }
    }
}

/// What the scorers know of a request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The prompt's chained block hashes (`infergate_serving::prompt`).
    pub blocks: Vec<u64>,
}

/// Why no endpoint could be picked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PickError {
    #[error("the pool has no endpoints")]
    NoEndpoints,
    #[error("none of the pool's endpoints is in the subset hint {0:?}")]
    NoneInSubset(Vec<String>),
}

/// The result of a pick: the chosen endpoint first, then fallbacks in
/// order of preference (at most [`MAX_FALLBACKS`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    pub endpoints: Vec<SocketAddr>,
    /// False when no candidate had fresh metrics and the pick was round robin.
    pub informed: bool,
}

impl Pick {
    /// The value of `x-gateway-destination-endpoint`.
    pub fn header_value(&self) -> String {
        self.endpoints
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub const MAX_FALLBACKS: usize = infergate_names::picker::FALLBACKS as usize;

/// Which endpoints a request may go to.
#[derive(Clone, Debug, Default)]
pub enum Filter {
    #[default]
    All,
    /// The gateway's subset hint: exactly these `ip:port`s.
    Subset(Vec<String>),
    /// The test header: `ip` (any port) or `ip:port` entries; when none
    /// matches, all endpoints are candidates, as in the upstream
    /// conformance picker.
    TestSteering(Vec<String>),
}

pub struct Scheduler {
    endpoints: Mutex<Vec<Endpoint>>,
    staleness: Duration,
    rotation: AtomicUsize,
    weights: Weights,
}

/// A snapshot of one endpoint for the picker's own /metrics.
#[derive(Clone, Debug)]
pub struct EndpointReport {
    pub address: SocketAddr,
    pub load: Option<Load>,
    pub fresh: bool,
    pub pending: u32,
    pub last_error: Option<String>,
}

impl Scheduler {
    pub fn new(staleness: Duration) -> Self {
        Self::with_weights(staleness, Weights::default())
    }

    pub fn with_weights(staleness: Duration, weights: Weights) -> Self {
        Scheduler {
            endpoints: Mutex::new(vec![]),
            staleness,
            rotation: AtomicUsize::new(0),
            weights,
        }
    }

    /// Replace the endpoint set, keeping what is known about endpoints that stay.
    pub fn set_endpoints(&self, addresses: &[SocketAddr]) {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        let unique: BTreeSet<SocketAddr> = addresses.iter().copied().collect();
        let mut known: std::collections::HashMap<SocketAddr, Endpoint> =
            std::mem::take(&mut *endpoints)
                .into_iter()
                .map(|e| (e.address, e))
                .collect();
        *endpoints = unique
            .into_iter()
            .map(|address| {
                known.remove(&address).unwrap_or_else(|| Endpoint {
                    address,
                    load: None,
                    pending: 0,
                    last_error: None,
                    prefixes: BlockCache::new(self.weights.prefix_blocks_per_endpoint),
                    failed_at: None,
                })
            })
            .collect();
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        let endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints.iter().map(|e| e.address).collect()
    }

    /// Record a scrape's outcome.
    pub fn report(&self, address: SocketAddr, outcome: Result<Load, String>) {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        let Some(endpoint) = endpoints.iter_mut().find(|e| e.address == address) else {
            return; // removed meanwhile
        };
        match outcome {
            Ok(load) => {
                endpoint.load = Some((load, Instant::now()));
                endpoint.pending = 0;
                endpoint.last_error = None;
            }
            Err(error) => endpoint.last_error = Some(error),
        }
    }

    /// A request chosen for `address` was served by another endpoint (the
    /// gateway's retry): `address` failed it. It comes after every other
    /// candidate for the failure cooldown.
    pub fn mark_failed(&self, address: SocketAddr) {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        if let Some(endpoint) = endpoints.iter_mut().find(|e| e.address == address) {
            endpoint.failed_at = Some(Instant::now());
        }
    }

    pub fn reports(&self) -> Vec<EndpointReport> {
        let endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints
            .iter()
            .map(|e| EndpointReport {
                address: e.address,
                load: e.load.map(|(l, _)| l),
                fresh: e.load.is_some_and(|(_, at)| at.elapsed() <= self.staleness),
                pending: e.pending,
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    pub fn pick(&self, filter: &Filter) -> Result<Pick, PickError> {
        self.pick_for(filter, &Request::default())
    }

    /// Pick an endpoint for `request` and remember its prompt blocks there.
    pub fn pick_for(&self, filter: &Filter, request: &Request) -> Result<Pick, PickError> {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        if endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let mut candidates: Vec<usize> = match filter {
            Filter::All => (0..endpoints.len()).collect(),
            Filter::Subset(subset) => {
                let wanted: Vec<SocketAddr> = subset
                    .iter()
                    .filter_map(|s| s.trim().parse().ok())
                    .collect();
                let found: Vec<usize> = (0..endpoints.len())
                    .filter(|&i| wanted.contains(&endpoints[i].address))
                    .collect();
                if found.is_empty() {
                    return Err(PickError::NoneInSubset(subset.clone()));
                }
                found
            }
            Filter::TestSteering(entries) => {
                let found: Vec<usize> = (0..endpoints.len())
                    .filter(|&i| {
                        let address = endpoints[i].address;
                        entries.iter().any(|entry| {
                            let entry = entry.trim();
                            entry.parse::<SocketAddr>().ok() == Some(address)
                                || entry.parse::<std::net::IpAddr>().ok() == Some(address.ip())
                        })
                    })
                    .collect();
                if found.is_empty() {
                    (0..endpoints.len()).collect()
                } else {
                    found
                }
            }
        };
        // Rotate the starting point so equal scores take turns.
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let shift = turn % candidates.len();
        candidates.rotate_left(shift);

        // The share of the prompt's leading blocks each candidate was sent.
        let prefix_share = |i: usize| -> f64 {
            if request.blocks.is_empty() {
                return 0.0;
            }
            let cached = endpoints[i].prefixes.cached_prefix(&request.blocks);
            cached as f64 / request.blocks.len() as f64
        };
        let fresh: Vec<(usize, Load)> = candidates
            .iter()
            .filter_map(|&i| {
                let (load, at) = endpoints[i].load?;
                (at.elapsed() <= self.staleness).then_some((i, load))
            })
            .collect();
        let (order, informed) = if matches!(filter, Filter::TestSteering(_)) {
            // The test header asks for plain round robin.
            (candidates, false)
        } else if fresh.is_empty() {
            // No load figures: take turns, where the prompt was sent before
            // first.
            let mut by_prefix: Vec<(usize, f64)> =
                candidates.iter().map(|&i| (i, prefix_share(i))).collect();
            by_prefix.sort_by(|a, b| b.1.total_cmp(&a.1));
            (by_prefix.into_iter().map(|(i, _)| i).collect(), false)
        } else {
            let w = self.weights;
            let queue = |i: usize, load: &Load| load.waiting + f64::from(endpoints[i].pending);
            let (min_q, max_q) = fresh.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (i, l)| {
                let q = queue(*i, l);
                (lo.min(q), hi.max(q))
            });
            let mut scored: Vec<(usize, f64)> = fresh
                .iter()
                .map(|(i, load)| {
                    let queue_score = if max_q > min_q {
                        (max_q - queue(*i, load)) / (max_q - min_q)
                    } else {
                        1.0
                    };
                    let kv_score = 1.0 - load.kv_cache_usage.clamp(0.0, 1.0);
                    let prefix_score = if queue(*i, load) > w.prefix_max_queue {
                        0.0
                    } else {
                        prefix_share(*i)
                    };
                    let total =
                        w.queue * queue_score + w.kv_cache * kv_score + w.prefix * prefix_score;
                    tracing::debug!(
                        endpoint = %endpoints[*i].address,
                        queue = queue_score,
                        kv_cache = kv_score,
                        prefix = prefix_score,
                        total,
                        "scored"
                    );
                    (*i, total)
                })
                .collect();
            // Stable: among equal scores the rotated order stands.
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            (scored.into_iter().map(|(i, _)| i).collect(), true)
        };
        // Endpoints that failed lately go last, in their order.
        let cooldown = self.weights.failure_cooldown;
        let failed_lately = |i: &usize| {
            endpoints[*i]
                .failed_at
                .is_some_and(|at| at.elapsed() < cooldown)
        };
        let (mut order, failed): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|i| !failed_lately(i));
        order.extend(failed);
        let chosen = order[0];
        endpoints[chosen].pending += 1;
        endpoints[chosen].prefixes.insert(&request.blocks);
        Ok(Pick {
            endpoints: order
                .iter()
                .take(1 + MAX_FALLBACKS)
                .map(|&i| endpoints[i].address)
                .collect(),
            informed,
        })
    }
}

/// Read the load figures from Prometheus text, under vLLM's names (and the
/// KV-cache name vLLM used before 0.10). Series of the same name are summed
/// (one per model).
pub fn parse_vllm_metrics(text: &str) -> Result<Load, String> {
    let mut waiting = None;
    let mut running = None;
    let mut kv = None;
    let mut kv_legacy = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let value_text = if rest.starts_with('{') {
            match rest.rfind('}') {
                Some(end) => &rest[end + 1..],
                None => return Err(format!("unterminated labels in line {line:?}")),
            }
        } else {
            rest
        };
        let Some(value) = value_text.split_whitespace().next() else {
            return Err(format!("no value in line {line:?}"));
        };
        let slot = match name {
            "vllm:num_requests_waiting" => &mut waiting,
            "vllm:num_requests_running" => &mut running,
            "vllm:kv_cache_usage_perc" => &mut kv,
            "vllm:gpu_cache_usage_perc" => &mut kv_legacy,
            _ => continue,
        };
        let value: f64 = value
            .parse()
            .map_err(|_| format!("{name} has a value that is not a number: {value:?}"))?;
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    Ok(Load {
        waiting: waiting.ok_or("no vllm:num_requests_waiting metric")?,
        running: running.unwrap_or(0.0),
        kv_cache_usage: kv
            .or(kv_legacy)
            .ok_or("no vllm:kv_cache_usage_perc (or vllm:gpu_cache_usage_perc) metric")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn scheduler(addresses: &[&str]) -> Scheduler {
        let s = Scheduler::new(Duration::from_secs(2));
        s.set_endpoints(&addresses.iter().map(|a| addr(a)).collect::<Vec<_>>());
        s
    }

    fn load(waiting: f64, kv: f64) -> Result<Load, String> {
        Ok(Load {
            waiting,
            running: 0.0,
            kv_cache_usage: kv,
        })
    }

    fn prompt(text: &str) -> Request {
        Request {
            blocks: infergate_serving::prompt::block_hashes(text),
        }
    }

    #[test]
    fn a_prompt_goes_where_its_prefix_went_unless_that_endpoint_is_overloaded() {
        let s = scheduler(&["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"]);
        for a in ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"] {
            s.report(addr(a), load(0.0, 0.2));
        }
        let system = "You are a helpful assistant for the docs of a gateway. ".repeat(20);
        let first = s
            .pick_for(&Filter::All, &prompt(&format!("{system}Q1")))
            .unwrap();
        let home = first.endpoints[0];
        // Scrapes say every server is equally idle again.
        let idle = |s: &Scheduler| {
            for a in ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"] {
                s.report(addr(a), load(0.0, 0.2));
            }
        };
        for n in 0..6 {
            idle(&s);
            let pick = s
                .pick_for(&Filter::All, &prompt(&format!("{system}question {n}")))
                .unwrap();
            assert_eq!(
                pick.endpoints[0], home,
                "request {n} left the cached prefix"
            );
        }
        // Other prompts are spread as before (rotation among equals).
        let others: BTreeSet<SocketAddr> = (0..6)
            .map(|n| {
                idle(&s);
                s.pick_for(
                    &Filter::All,
                    &prompt(&format!("{n} unrelated prompt {}", "x".repeat(80))),
                )
                .unwrap()
                .endpoints[0]
            })
            .collect();
        assert!(others.len() > 1, "{others:?}");
        // The prefix's endpoint overloaded: its queue beats the affinity.
        idle(&s);
        s.report(home, load(20.0, 0.2));
        let pick = s
            .pick_for(&Filter::All, &prompt(&format!("{system}one more")))
            .unwrap();
        assert_ne!(pick.endpoints[0], home);
    }

    #[test]
    fn an_endpoint_that_failed_comes_last_until_its_cooldown_ends() {
        let s = Scheduler::with_weights(
            Duration::from_secs(2),
            Weights {
                failure_cooldown: Duration::from_millis(300),
                ..Weights::default()
            },
        );
        let addresses = [addr("198.18.0.1:8000"), addr("198.18.0.2:8000")];
        s.set_endpoints(&addresses);
        // The best by load is .1, until it fails a request.
        let report = |s: &Scheduler| {
            s.report(addresses[0], load(0.0, 0.1));
            s.report(addresses[1], load(3.0, 0.5));
        };
        report(&s);
        assert_eq!(s.pick(&Filter::All).unwrap().endpoints[0], addresses[0]);
        s.mark_failed(addresses[0]);
        report(&s);
        let pick = s.pick(&Filter::All).unwrap();
        assert_eq!(
            pick.endpoints,
            [addresses[1], addresses[0]],
            "still a fallback"
        );
        std::thread::sleep(Duration::from_millis(350));
        report(&s);
        assert_eq!(s.pick(&Filter::All).unwrap().endpoints[0], addresses[0]);
    }

    #[test]
    fn the_prefix_scorer_can_be_turned_off() {
        let s = Scheduler::with_weights(
            Duration::from_secs(2),
            Weights {
                prefix: 0.0,
                ..Weights::default()
            },
        );
        let addresses = [addr("198.18.0.1:8000"), addr("198.18.0.2:8000")];
        s.set_endpoints(&addresses);
        let system = "s".repeat(640);
        let picks: BTreeSet<SocketAddr> = (0..4)
            .map(|n| {
                for a in addresses {
                    s.report(a, load(0.0, 0.2));
                }
                s.pick_for(&Filter::All, &prompt(&format!("{system}{n}")))
                    .unwrap()
                    .endpoints[0]
            })
            .collect();
        assert_eq!(
            picks.len(),
            2,
            "without affinity equal endpoints take turns"
        );
    }

    #[test]
    fn the_shortest_queue_and_emptiest_cache_wins_and_fallbacks_follow_in_order() {
        let s = scheduler(&["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]);
        s.report(addr("10.0.0.1:8000"), load(5.0, 0.9));
        s.report(addr("10.0.0.2:8000"), load(0.0, 0.1));
        s.report(addr("10.0.0.3:8000"), load(2.0, 0.5));
        let pick = s.pick(&Filter::All).unwrap();
        assert!(pick.informed);
        assert_eq!(
            pick.header_value(),
            "10.0.0.2:8000,10.0.0.3:8000,10.0.0.1:8000"
        );
    }

    #[test]
    fn picks_between_scrapes_count_as_queued() {
        let s = scheduler(&["10.0.0.1:8000", "10.0.0.2:8000"]);
        s.report(addr("10.0.0.1:8000"), load(0.0, 0.0));
        s.report(addr("10.0.0.2:8000"), load(0.0, 0.0));
        let picks: BTreeSet<SocketAddr> = (0..2)
            .map(|_| s.pick(&Filter::All).unwrap().endpoints[0])
            .collect();
        assert_eq!(picks.len(), 2, "two picks in a row go to both endpoints");
    }

    #[test]
    fn the_subset_hint_limits_the_choice_and_nothing_eligible_is_an_error() {
        let s = scheduler(&["10.0.0.1:8000", "10.0.0.2:8000"]);
        s.report(addr("10.0.0.1:8000"), load(0.0, 0.0));
        s.report(addr("10.0.0.2:8000"), load(9.0, 0.9));
        let only_busy = Filter::Subset(vec!["10.0.0.2:8000".into()]);
        assert_eq!(
            s.pick(&only_busy).unwrap().endpoints,
            [addr("10.0.0.2:8000")]
        );
        let outside = Filter::Subset(vec!["10.9.9.9:8000".into()]);
        assert!(matches!(s.pick(&outside), Err(PickError::NoneInSubset(_))));
        assert_eq!(
            scheduler(&[]).pick(&Filter::All),
            Err(PickError::NoEndpoints)
        );
    }

    #[test]
    fn without_fresh_metrics_the_endpoints_take_turns() {
        let s = scheduler(&["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]);
        let picks: Vec<_> = (0..6).map(|_| s.pick(&Filter::All).unwrap()).collect();
        assert!(picks.iter().all(|p| !p.informed));
        let firsts: BTreeSet<_> = picks.iter().map(|p| p.endpoints[0]).collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn test_steering_matches_an_ip_on_any_port_or_an_exact_ip_port() {
        let s = scheduler(&["10.0.0.1:3000", "10.0.0.1:3002", "10.0.0.2:3000"]);
        let ip = Filter::TestSteering(vec!["10.0.0.1".into()]);
        let picked: BTreeSet<_> = (0..4).map(|_| s.pick(&ip).unwrap().endpoints[0]).collect();
        assert_eq!(
            picked,
            [addr("10.0.0.1:3000"), addr("10.0.0.1:3002")].into()
        );
        let exact = Filter::TestSteering(vec!["10.0.0.1:3002".into()]);
        for _ in 0..3 {
            assert_eq!(s.pick(&exact).unwrap().endpoints[0], addr("10.0.0.1:3002"));
        }
        // Nothing matches: every endpoint is a candidate, as upstream.
        let none = Filter::TestSteering(vec!["256.256.256.256".into()]);
        assert!(s.pick(&none).is_ok());
    }

    #[test]
    fn vllm_metrics_are_read_with_labels_comments_and_the_legacy_name() {
        let text = "# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"m\",x=\"a}b\"} 3\n\
            vllm:num_requests_running{model_name=\"m\"} 2 1700000000000\n\
            vllm:gpu_cache_usage_perc 0.25\n";
        assert_eq!(
            parse_vllm_metrics(text).unwrap(),
            Load {
                waiting: 3.0,
                running: 2.0,
                kv_cache_usage: 0.25
            }
        );
        assert!(
            parse_vllm_metrics("up 1\n")
                .unwrap_err()
                .contains("num_requests_waiting")
        );
        assert!(
            parse_vllm_metrics("vllm:num_requests_waiting abc\n")
                .unwrap_err()
                .contains("not a number")
        );
    }
}
