//! The endpoints of one pool, what their model servers last reported, and
//! the choice among them.
//!
//! The candidates with fresh metrics are scored by every scorer
//! ([`crate::scorers`]: queue, KV cache, running requests, prefix affinity,
//! LoRA affinity), each score weighted ([`Weights`]); the highest total wins,
//! equal totals are broken at random, and the rest follow as fallbacks in
//! order. Each pick says what decided it ([`Decision`]). Without fresh
//! metrics the candidates take turns (round robin), those the prompt went to
//! before first.
//! Picks made since an endpoint's last scrape count as queued there, so a
//! burst between two scrapes spreads out instead of piling onto one server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use infergate_serving::prompt::BlockCache;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::scorers::{Scorer, Scores, kv_cache, lora, prefix, queue, running};

/// What a model server's `/metrics` said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    pub waiting: f64,
    pub running: f64,
    /// 0..1.
    pub kv_cache_usage: f64,
    /// The models it serves (the `model_name` labels of its series).
    pub base_models: Vec<String>,
    /// Its LoRA adapters (`vllm:lora_requests_info`), if it reports them.
    pub adapters: Option<lora::Adapters>,
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
    /// LoRA adapters sent there, most recent first, each once (at most
    /// [`ADAPTERS_REMEMBERED`]).
    adapters_sent: Vec<String>,
    /// When a request chosen for it was served by a fallback instead.
    failed_at: Option<Instant>,
}

/// How much each scorer counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub queue: f64,
    pub kv_cache: f64,
    pub running: f64,
    pub prefix: f64,
    pub lora: f64,
    /// An endpoint whose server reports more requests waiting than the
    /// shortest queue among the candidates by more than this gets no prefix
    /// or LoRA credit
    /// ([`prefix`], [`lora`]: relative, so that affinity survives when every
    /// server is busy).
    pub affinity_max_extra_queue: f64,
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
            running: 1.0,
            prefix: 3.0,
            lora: 3.0,
            affinity_max_extra_queue: 4.0,
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
    /// The body's `model`: a base model or a LoRA adapter.
    pub model: Option<String>,
}

impl Weights {
    /// Indexed like [`Scorer::ALL`].
    pub fn of_scorers(&self) -> Scores {
        [
            self.queue,
            self.kv_cache,
            self.running,
            self.prefix,
            self.lora,
        ]
    }
}

/// What decided a pick, for the debug log and the
/// `infergate_epp_picks_decided_total{decided_by}` counter (a bounded set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The scorer whose weighted score most separated the chosen endpoint
    /// from the next best.
    Scorer(Scorer),
    /// The best totals were equal: chosen at random among them.
    Tie,
    /// One candidate with fresh metrics.
    OnlyCandidate,
    /// No candidate had fresh metrics: round robin.
    Uninformed,
    /// The conformance test header chose (round robin among its endpoints).
    TestHeader,
    /// The best endpoint failed a request lately and went last.
    FailureCooldown,
}

impl Decision {
    pub const ALL: [Decision; 10] = [
        Decision::Scorer(Scorer::Queue),
        Decision::Scorer(Scorer::KvCache),
        Decision::Scorer(Scorer::Running),
        Decision::Scorer(Scorer::Prefix),
        Decision::Scorer(Scorer::Lora),
        Decision::Tie,
        Decision::OnlyCandidate,
        Decision::Uninformed,
        Decision::TestHeader,
        Decision::FailureCooldown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Decision::Scorer(s) => s.name(),
            Decision::Tie => "tie",
            Decision::OnlyCandidate => "only_candidate",
            Decision::Uninformed => "uninformed",
            Decision::TestHeader => "test_header",
            Decision::FailureCooldown => "failure_cooldown",
        }
    }
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
    pub decided_by: Decision,
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

/// LoRA adapters remembered per endpoint: more than any server's
/// `max_lora` in practice (vLLM's default is 1, large deployments use tens).
pub const ADAPTERS_REMEMBERED: usize = 64;

impl Endpoint {
    /// `model` was sent here: if it is an adapter (not one of the base
    /// models the server reported), it is now the most recently used one.
    fn remember_adapter(&mut self, model: Option<&str>) {
        let Some(model) = model else { return };
        let Some((load, _)) = &self.load else { return };
        if load.base_models.iter().any(|m| m == model) {
            return;
        }
        self.adapters_sent.retain(|a| a != model);
        self.adapters_sent.insert(0, model.to_string());
        self.adapters_sent.truncate(ADAPTERS_REMEMBERED);
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
                    adapters_sent: Vec::new(),
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
                load: e.load.as_ref().map(|(l, _)| l.clone()),
                fresh: e
                    .load
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() <= self.staleness),
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
        // Rotate the starting point so that uninformed picks take turns.
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let shift = turn % candidates.len();
        candidates.rotate_left(shift);

        let cached_blocks = |i: usize| endpoints[i].prefixes.cached_prefix(&request.blocks);
        let mut fresh: Vec<(usize, &Load)> = candidates
            .iter()
            .filter_map(|&i| {
                let (load, at) = endpoints[i].load.as_ref()?;
                (at.elapsed() <= self.staleness).then_some((i, load))
            })
            .collect();
        let (order, informed, decided_by) = if matches!(filter, Filter::TestSteering(_)) {
            // The test header asks for plain round robin.
            (candidates, false, Decision::TestHeader)
        } else if fresh.is_empty() {
            // No load figures: take turns, where the prompt was sent before
            // first.
            let mut by_prefix: Vec<(usize, usize)> =
                candidates.iter().map(|&i| (i, cached_blocks(i))).collect();
            by_prefix.sort_by_key(|&(_, cached)| std::cmp::Reverse(cached));
            let order = by_prefix.into_iter().map(|(i, _)| i).collect();
            (order, false, Decision::Uninformed)
        } else {
            let w = self.weights;
            let weights = w.of_scorers();
            let queued = |i: usize, load: &Load| load.waiting + f64::from(endpoints[i].pending);
            let range = |value: &dyn Fn(usize, &Load) -> f64| {
                fresh.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (i, l)| {
                    let v = value(*i, l);
                    (lo.min(v), hi.max(v))
                })
            };
            let (min_q, max_q) = range(&queued);
            // The affinity limit looks at the queues the servers reported,
            // not at the picks made since: those are a guess (a quick
            // request may be done already), and a guess must not throw away
            // a cached prefix or a loaded adapter. A real queue shows in the
            // next scrape.
            let (min_waiting, _) = range(&|_, l: &Load| l.waiting);
            let (min_r, max_r) = range(&|_, l: &Load| l.running);
            // Ties are broken at random: shuffle, then sort stably.
            fastrand::shuffle(&mut fresh);
            let mut scored: Vec<(usize, Scores, f64)> = fresh
                .iter()
                .map(|&(i, load)| {
                    let q = queued(i, load);
                    let scores: Scores = [
                        queue::score(q, min_q, max_q),
                        kv_cache::score(load.kv_cache_usage),
                        running::score(load.running, min_r, max_r),
                        prefix::score(
                            cached_blocks(i),
                            request.blocks.len(),
                            load.waiting - min_waiting,
                            w.affinity_max_extra_queue,
                        ),
                        lora::score(
                            request.model.as_deref(),
                            &load.base_models,
                            load.adapters.as_ref(),
                            &endpoints[i].adapters_sent,
                            load.waiting - min_waiting,
                            w.affinity_max_extra_queue,
                        ),
                    ];
                    let total: f64 = scores.iter().zip(weights).map(|(s, w)| s * w).sum();
                    tracing::debug!(
                        endpoint = %endpoints[i].address,
                        queue = scores[0],
                        kv_cache = scores[1],
                        running = scores[2],
                        prefix = scores[3],
                        lora = scores[4],
                        total,
                        "scored"
                    );
                    (i, scores, total)
                })
                .collect();
            scored.sort_by(|a, b| b.2.total_cmp(&a.2));
            let decided_by = match scored.as_slice() {
                [first, second, ..] if first.2 - second.2 <= 1e-9 => Decision::Tie,
                [first, second, ..] => {
                    let margin = |k: usize| weights[k] * (first.1[k] - second.1[k]);
                    let k = (0..Scorer::ALL.len())
                        .max_by(|a, b| margin(*a).total_cmp(&margin(*b)))
                        .unwrap_or(0);
                    Decision::Scorer(Scorer::ALL[k])
                }
                _ => Decision::OnlyCandidate,
            };
            (
                scored.into_iter().map(|(i, _, _)| i).collect(),
                true,
                decided_by,
            )
        };
        // Endpoints that failed lately go last, in their order.
        let cooldown = self.weights.failure_cooldown;
        let failed_lately = |i: &usize| {
            endpoints[*i]
                .failed_at
                .is_some_and(|at| at.elapsed() < cooldown)
        };
        let best = order[0];
        let (mut order, failed): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|i| !failed_lately(i));
        order.extend(failed);
        let chosen = order[0];
        let decided_by = if chosen == best {
            decided_by
        } else {
            Decision::FailureCooldown
        };
        endpoints[chosen].pending += 1;
        endpoints[chosen].prefixes.insert(&request.blocks);
        endpoints[chosen].remember_adapter(request.model.as_deref());
        Ok(Pick {
            endpoints: order
                .iter()
                .take(1 + MAX_FALLBACKS)
                .map(|&i| endpoints[i].address)
                .collect(),
            informed,
            decided_by,
        })
    }
}

/// Read the load figures from Prometheus text, under vLLM's names (and the
/// KV-cache name vLLM used before 0.10). Series of the same name are summed
/// (one per model); the `model_name` labels are the base models; of the
/// `vllm:lora_requests_info` series (their value is a timestamp) the latest
/// names the adapters.
pub fn parse_vllm_metrics(text: &str) -> Result<Load, String> {
    let mut waiting = None;
    let mut running = None;
    let mut kv = None;
    let mut kv_legacy = None;
    let mut base_models: Vec<String> = Vec::new();
    let mut adapters: Option<(f64, lora::Adapters)> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        if !name.starts_with("vllm:") {
            continue;
        }
        let (labels, value_text) = if rest.starts_with('{') {
            match rest.rfind('}') {
                Some(end) => (&rest[1..end], &rest[end + 1..]),
                None => return Err(format!("unterminated labels in line {line:?}")),
            }
        } else {
            ("", rest)
        };
        let Some(value) = value_text.split_whitespace().next() else {
            return Err(format!("no value in line {line:?}"));
        };
        let value: f64 = value
            .parse()
            .map_err(|_| format!("{name} has a value that is not a number: {value:?}"))?;
        let labels = parse_labels(labels).map_err(|e| format!("{name}: {e}"))?;
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some(model) = label("model_name")
            && !base_models.iter().any(|m| m == model)
        {
            base_models.push(model.to_string());
        }
        if name == "vllm:lora_requests_info" {
            let list = |key: &str| -> Vec<String> {
                label(key)
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            let max = label("max_lora")
                .and_then(|m| m.parse().ok())
                .ok_or("vllm:lora_requests_info has no numeric max_lora label")?;
            if adapters.as_ref().is_none_or(|(at, _)| value >= *at) {
                let report = lora::Adapters {
                    running: list("running_lora_adapters"),
                    waiting: list("waiting_lora_adapters"),
                    max,
                };
                adapters = Some((value, report));
            }
            continue;
        }
        let slot = match name {
            "vllm:num_requests_waiting" => &mut waiting,
            "vllm:num_requests_running" => &mut running,
            "vllm:kv_cache_usage_perc" => &mut kv,
            "vllm:gpu_cache_usage_perc" => &mut kv_legacy,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    Ok(Load {
        waiting: waiting.ok_or("no vllm:num_requests_waiting metric")?,
        running: running.unwrap_or(0.0),
        kv_cache_usage: kv
            .or(kv_legacy)
            .ok_or("no vllm:kv_cache_usage_perc (or vllm:gpu_cache_usage_perc) metric")?,
        base_models,
        adapters: adapters.map(|(_, a)| a),
    })
}

/// `key="value",...` (Prometheus text: values escape `\\`, `\"` and `\n`).
fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("a label without a value in {{{text}}}"))?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key} has an unquoted value"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label {key} has an unterminated value"))?;
        labels.push((key, value));
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(labels)
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
            kv_cache_usage: kv,
            ..Load::default()
        })
    }

    fn prompt(text: &str) -> Request {
        Request {
            blocks: infergate_serving::prompt::block_hashes(text),
            model: None,
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
        // Other prompts are spread as before (ties broken at random).
        let others: BTreeSet<SocketAddr> = (0..30)
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
    fn when_every_server_is_busy_a_prompt_still_goes_where_its_prefix_went() {
        let addresses = ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"];
        let s = scheduler(&addresses);
        let busy = |s: &Scheduler, home_queue: f64, home: Option<SocketAddr>| {
            for a in addresses {
                let queue = if Some(addr(a)) == home {
                    home_queue
                } else {
                    20.0
                };
                s.report(addr(a), load(queue, 0.9));
            }
        };
        busy(&s, 20.0, None);
        let system = "You answer questions about inference gateways. ".repeat(20);
        let home = s
            .pick_for(&Filter::All, &prompt(&format!("{system}Q0")))
            .unwrap()
            .endpoints[0];
        // Every queue is long (20), the prefix's a little longer: far over
        // the limit in absolute terms, yet the cache is still worth it.
        for n in 1..6 {
            busy(&s, 23.0, Some(home));
            let pick = s
                .pick_for(&Filter::All, &prompt(&format!("{system}Q{n}")))
                .unwrap();
            assert_eq!(pick.endpoints[0], home, "request {n}");
            assert_eq!(pick.decided_by, Decision::Scorer(Scorer::Prefix));
        }
        // Far longer than the others': the prompt spills over.
        busy(&s, 29.0, Some(home));
        let spilled = s
            .pick_for(&Filter::All, &prompt(&format!("{system}Q6")))
            .unwrap()
            .endpoints[0];
        assert_ne!(spilled, home);
        // ... and both servers now count as holding the prefix: the shorter
        // queue of the two wins, not a third server.
        for a in addresses {
            let queue = if addr(a) == spilled { 21.0 } else { 22.0 };
            s.report(addr(a), load(queue, 0.9));
        }
        s.report(home, load(26.0, 0.9));
        let pick = s
            .pick_for(&Filter::All, &prompt(&format!("{system}Q7")))
            .unwrap();
        assert_eq!(pick.endpoints[0], spilled);
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
        let picks: BTreeSet<SocketAddr> = (0..40)
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
            "without affinity equal endpoints share the picks"
        );
    }

    #[test]
    fn ties_are_broken_at_random_and_counted_as_ties() {
        let s = scheduler(&["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"]);
        let mut firsts = std::collections::BTreeMap::<SocketAddr, u32>::new();
        for _ in 0..300 {
            for a in ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"] {
                s.report(addr(a), load(1.0, 0.5));
            }
            let pick = s.pick(&Filter::All).unwrap();
            assert_eq!(pick.decided_by, Decision::Tie);
            *firsts.entry(pick.endpoints[0]).or_default() += 1;
        }
        // Each of three equal endpoints gets about 100 of 300 (a fixed
        // order would give one all of them); 50 is over seven standard
        // deviations below 100.
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert!(firsts.values().all(|&n| n > 50), "{firsts:?}");
    }

    #[test]
    fn an_adapter_goes_where_it_is_loaded_unless_that_server_is_overloaded() {
        let s = scheduler(&["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"]);
        let serving = |running: &[&str], waiting: f64| Load {
            waiting,
            kv_cache_usage: 0.3,
            base_models: vec!["base".into()],
            adapters: Some(lora::Adapters {
                running: running.iter().map(|a| a.to_string()).collect(),
                waiting: vec![],
                max: 2,
            }),
            ..Load::default()
        };
        let report = |s: &Scheduler, sql_queue: f64| {
            s.report(addr("198.18.0.1:8000"), Ok(serving(&["chat", "code"], 0.0)));
            s.report(
                addr("198.18.0.2:8000"),
                Ok(serving(&["sql", "chat"], sql_queue)),
            );
            s.report(addr("198.18.0.3:8000"), Ok(serving(&["chat", "code"], 0.0)));
        };
        let sql = Request {
            model: Some("sql".into()),
            ..Request::default()
        };
        for _ in 0..10 {
            report(&s, 1.0);
            let pick = s.pick_for(&Filter::All, &sql).unwrap();
            assert_eq!(pick.endpoints[0], addr("198.18.0.2:8000"));
            assert_eq!(pick.decided_by, Decision::Scorer(Scorer::Lora));
        }
        // A base-model request is not drawn there: the shorter queues win.
        let base = Request {
            model: Some("base".into()),
            ..Request::default()
        };
        report(&s, 1.0);
        assert_ne!(
            s.pick_for(&Filter::All, &base).unwrap().endpoints[0],
            addr("198.18.0.2:8000")
        );
        // Its queue far longer than the others': loading the adapter
        // elsewhere is cheaper than waiting.
        report(&s, 30.0);
        s.report(addr("198.18.0.2:8000"), {
            let mut l = serving(&["sql", "chat"], 30.0);
            l.kv_cache_usage = 0.95;
            l.running = 40.0;
            Ok(l)
        });
        assert_ne!(
            s.pick_for(&Filter::All, &sql).unwrap().endpoints[0],
            addr("198.18.0.2:8000")
        );
    }

    #[test]
    fn an_adapter_goes_back_where_it_was_sent_after_its_requests_end() {
        let addresses = ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"];
        let s = scheduler(&addresses);
        // What vLLM reports between requests: nothing running, room for 2.
        let idle = |s: &Scheduler| {
            for a in addresses {
                s.report(
                    addr(a),
                    Ok(Load {
                        kv_cache_usage: 0.1,
                        base_models: vec!["base".into()],
                        adapters: Some(lora::Adapters {
                            max: 2,
                            ..Default::default()
                        }),
                        ..Load::default()
                    }),
                );
            }
        };
        let adapter = |name: &str| Request {
            model: Some(name.into()),
            ..Request::default()
        };
        idle(&s);
        let sql_home = s.pick_for(&Filter::All, &adapter("sql")).unwrap().endpoints[0];
        for _ in 0..10 {
            idle(&s);
            let pick = s.pick_for(&Filter::All, &adapter("sql")).unwrap();
            assert_eq!(pick.endpoints[0], sql_home);
            assert_eq!(pick.decided_by, Decision::Scorer(Scorer::Lora));
        }
        // Two other adapters sent there since (forced by the subset hint):
        // the server has unloaded sql by now, and the picker knows it.
        for other in ["chat", "code"] {
            idle(&s);
            s.pick_for(&Filter::Subset(vec![sql_home.to_string()]), &adapter(other))
                .unwrap();
        }
        idle(&s);
        let pick = s.pick_for(&Filter::All, &adapter("sql")).unwrap();
        assert_ne!(pick.endpoints[0], sql_home, "where there is room");
        // Base-model requests leave no trace.
        let base = Request {
            model: Some("base".into()),
            ..Request::default()
        };
        idle(&s);
        let home = s.pick_for(&Filter::All, &base).unwrap().endpoints[0];
        let ep = s.endpoints.lock().unwrap();
        let sent = &ep.iter().find(|e| e.address == home).unwrap().adapters_sent;
        assert!(!sent.iter().any(|a| a == "base"), "{sent:?}");
    }

    #[test]
    fn among_equal_queues_the_server_running_fewest_requests_wins() {
        let s = scheduler(&["198.18.0.1:8000", "198.18.0.2:8000"]);
        let running = |n: f64| {
            Ok(Load {
                running: n,
                kv_cache_usage: 0.5,
                ..Load::default()
            })
        };
        for _ in 0..10 {
            s.report(addr("198.18.0.1:8000"), running(12.0));
            s.report(addr("198.18.0.2:8000"), running(3.0));
            let pick = s.pick(&Filter::All).unwrap();
            assert_eq!(pick.endpoints[0], addr("198.18.0.2:8000"));
            assert_eq!(pick.decided_by, Decision::Scorer(Scorer::Running));
        }
    }

    #[test]
    fn what_decided_a_pick_is_the_scorer_that_separated_it_most() {
        let s = scheduler(&["198.18.0.1:8000", "198.18.0.2:8000"]);
        s.report(addr("198.18.0.1:8000"), load(0.0, 0.5));
        s.report(addr("198.18.0.2:8000"), load(6.0, 0.4));
        let pick = s.pick(&Filter::All).unwrap();
        assert_eq!(pick.endpoints[0], addr("198.18.0.1:8000"));
        assert_eq!(pick.decided_by, Decision::Scorer(Scorer::Queue));
        s.report(addr("198.18.0.1:8000"), load(0.0, 0.9));
        s.report(addr("198.18.0.2:8000"), load(0.0, 0.1));
        let pick = s.pick(&Filter::All).unwrap();
        assert_eq!(pick.endpoints[0], addr("198.18.0.2:8000"));
        assert_eq!(pick.decided_by, Decision::Scorer(Scorer::KvCache));
        let single = scheduler(&["198.18.0.1:8000"]);
        single.report(addr("198.18.0.1:8000"), load(0.0, 0.5));
        assert_eq!(
            single.pick(&Filter::All).unwrap().decided_by,
            Decision::OnlyCandidate
        );
        assert_eq!(
            scheduler(&["198.18.0.1:8000"])
                .pick(&Filter::All)
                .unwrap()
                .decided_by,
            Decision::Uninformed
        );
    }

    #[test]
    fn adapters_and_base_models_are_read_from_vllm_metrics() {
        let text = r#"
# HELP vllm:lora_requests_info Running stats on LoRA requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters="x"} 1.6e9
vllm:num_requests_waiting{model_name="meta/llama \"3\""} 2
vllm:num_requests_running{model_name="meta/llama \"3\""} 5
vllm:kv_cache_usage_perc{model_name="meta/llama \"3\""} 0.5
"#;
        let load = parse_vllm_metrics(text).unwrap();
        assert_eq!(load.base_models, ["meta/llama \"3\""]);
        assert_eq!(
            load.adapters,
            Some(lora::Adapters {
                running: vec!["sql".into(), "chat".into()],
                waiting: vec![],
                max: 4,
            }),
            "the latest series (largest timestamp) counts"
        );
        assert_eq!(load.running, 5.0);
        let bad = "vllm:num_requests_waiting{model_name=\"m} 2\n";
        assert!(parse_vllm_metrics(bad).is_err());
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
    fn picks_since_the_last_scrape_do_not_cost_a_prompt_its_cached_prefix() {
        // Quick requests one after the other, no scrape in between (a slow
        // scrape loop): each pick counts as queued at the prefix's server,
        // yet what the servers reported says no queue anywhere.
        let addresses = ["198.18.0.1:8000", "198.18.0.2:8000", "198.18.0.3:8000"];
        let s = scheduler(&addresses);
        for a in addresses {
            s.report(addr(a), load(0.0, 0.1));
        }
        let system = "Answer in the voice of the gateway's runbook. ".repeat(20);
        let home = s
            .pick_for(&Filter::All, &prompt(&format!("{system}Q0")))
            .unwrap()
            .endpoints[0];
        for n in 1..12 {
            let pick = s
                .pick_for(&Filter::All, &prompt(&format!("{system}Q{n}")))
                .unwrap();
            assert_eq!(pick.endpoints[0], home, "request {n}");
        }
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
                kv_cache_usage: 0.25,
                base_models: vec!["m".into()],
                adapters: None,
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
