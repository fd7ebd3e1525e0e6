//! `infergate-bench schedule`: how much the endpoint picker's scheduling is
//! worth on a simulated load. N simulated model servers (`infergate-sim`
//! with its latency model: prefill time per uncached prompt token, a prefix
//! cache in blocks, a batch of `--max-num-seqs` with a queue behind it,
//! LoRA adapters with a load cost) behind Envoy and three InferencePools
//! over the same servers:
//!
//! - `round-robin`: a pool without a picker (Envoy's round robin);
//! - `queue+kv`: `infergate-epp` with only its queue and KV-cache scorers
//!   (the picker before prefix, running-requests and LoRA scoring);
//! - `picker`: `infergate-epp` with its default scorers.
//!
//! An open-loop generator sends streamed completions with Poisson arrivals
//! (seeded) at each rate, for each workload: `shared-prefix` (groups of
//! prompts sharing a long system prompt), `no-sharing` (unique prompts of the
//! same length) and `lora` (short prompts, each for one of many adapters).
//! Servers and pickers are restarted before every run, so that every run
//! starts with cold caches. Printed per run: TTFT p50/p90, inter-token
//! latency p50, end-to-end p90, output tokens/s, the servers' prefix-cache
//! hit rate, adapter loads, and the spread of requests over servers (busiest
//! server's share over an even share).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use infergate_e2e::{Process, Standalone, TempDir, free_port, sim};

/// The three configurations compared, in the order printed.
pub const CONFIGS: [&str; 3] = ["round-robin", "queue+kv", "picker"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    SharedPrefix,
    NoSharing,
    Lora,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SharedPrefix => "shared-prefix",
            Workload::NoSharing => "no-sharing",
            Workload::Lora => "lora",
        }
    }
}

pub struct Options {
    pub servers: usize,
    pub rates: Vec<f64>,
    pub seconds: f64,
    pub workloads: Vec<Workload>,
    pub seed: u64,
    pub output_tokens: usize,
    pub plot: Option<std::path::PathBuf>,
    /// Which of [`CONFIGS`] to run.
    pub configs: Vec<String>,
    /// Extra flags for the `picker` configuration.
    pub picker_flags: Vec<String>,
}

/// What the simulated servers are like: 2 requests at once, 0.6 ms prefill
/// per uncached token (a 1,000-token prompt: 0.6 s), 20 ms per output token
/// (1.5 times slower with a full batch), a prefix cache of 400 blocks of 16
/// tokens (about six of the shared-prefix workload's system prompts), 2 of
/// the adapters loaded at once, 500 ms to load another, 5% jitter.
const SIM_FLAGS: &[&str] = &[
    "--max-num-seqs",
    "2",
    "--ttft-ms",
    "10",
    "--prefill-us-per-token",
    "600",
    "--inter-token-ms",
    "20",
    "--time-factor-under-load",
    "1.5",
    "--prefix-cache-blocks",
    PREFIX_CACHE_BLOCKS,
    "--kv-cache-tokens",
    "16384",
    "--max-loras",
    "2",
    "--lora-load-ms",
    "500",
    "--latency-jitter",
    "0.05",
];
const PREFIX_CACHE_BLOCKS: &str = "400";
const ADAPTERS: usize = 12;
const SYSTEM_PROMPT_BYTES: usize = 4000;
const GROUPS: usize = 40;
const QUESTIONS_PER_GROUP: usize = 5;

/// One request of a workload: its model and prompt.
#[derive(Clone)]
struct Prompt {
    model: String,
    text: String,
}

fn filler(seed: u64, bytes: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let words = [
        "gateway", "route", "token", "cache", "model", "server", "prompt", "queue", "latency",
        "envoy", "picker", "adapter", "batch", "decode", "prefill", "pool",
    ];
    let mut text = String::with_capacity(bytes + 16);
    while text.len() < bytes {
        text.push_str(words[rng.usize(..words.len())]);
        text.push(' ');
    }
    text.truncate(bytes);
    text
}

/// The requests of a run, in order, for `count` arrivals.
fn prompts(workload: Workload, count: usize, seed: u64) -> Vec<Prompt> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = |text: String| Prompt {
        model: "sim-model".into(),
        text,
    };
    match workload {
        Workload::SharedPrefix => {
            let systems: Vec<String> = (0..GROUPS)
                .map(|g| filler(1000 + g as u64, SYSTEM_PROMPT_BYTES))
                .collect();
            (0..count)
                .map(|n| {
                    let g = rng.usize(..GROUPS);
                    let q = rng.usize(..QUESTIONS_PER_GROUP);
                    base(format!(
                        "{}\nQuestion {q} (request {n}): {}",
                        systems[g],
                        filler(n as u64, 60)
                    ))
                })
                .collect()
        }
        Workload::NoSharing => (0..count)
            .map(|n| base(filler(1_000_000 + n as u64, SYSTEM_PROMPT_BYTES + 80)))
            .collect(),
        Workload::Lora => (0..count)
            .map(|n| Prompt {
                model: format!("adapter-{}", rng.usize(..ADAPTERS)),
                text: filler(2_000_000 + n as u64, 800),
            })
            .collect(),
    }
}

/// What one request saw.
#[derive(Clone, Debug, Default)]
struct Outcome {
    ok: bool,
    ttft: Duration,
    itl: Option<Duration>,
    e2e: Duration,
    tokens: usize,
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    sent: usize,
    failed: usize,
    ttft_p50: f64,
    pub ttft_p90: f64,
    itl_p50: f64,
    e2e_p90: f64,
    tokens_per_second: f64,
    prefix_hit_rate: f64,
    spread: f64,
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * q).round() as usize]
}

/// One streamed completion through the gateway.
async fn complete(
    client: &reqwest::Client,
    url: &str,
    config: &str,
    prompt: &Prompt,
    output_tokens: usize,
) -> Outcome {
    let started = Instant::now();
    let body = serde_json::json!({
        "model": prompt.model,
        "prompt": prompt.text,
        "max_tokens": output_tokens,
        "stream": true,
    });
    let response = client
        .post(url)
        .header("x-config", config)
        .json(&body)
        .send()
        .await;
    let Ok(mut response) = response else {
        return Outcome::default();
    };
    if !response.status().is_success() {
        return Outcome::default();
    }
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut tokens = 0;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let text = String::from_utf8_lossy(&chunk);
                let events = text.matches("data: {").count();
                if events > 0 {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = now;
                    tokens += events;
                }
            }
            Ok(None) => break,
            Err(_) => return Outcome::default(),
        }
    }
    let Some(first) = first else {
        return Outcome::default();
    };
    Outcome {
        ok: true,
        ttft: first - started,
        itl: (tokens > 1).then(|| (last - first) / (tokens as u32 - 1)),
        e2e: started.elapsed(),
        tokens,
    }
}

/// Sum of a counter over the servers' `/metrics`, per server.
fn counter(addresses: &[String], name: &str) -> Vec<f64> {
    addresses
        .iter()
        .map(|address| {
            let text = infergate_e2e::request_at(
                address.split(':').next().unwrap_or_default(),
                address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
                "sim",
                "GET",
                "/metrics",
                &[],
                &[],
            )
            .map(|r| r.body)
            .unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

struct Fleet {
    work: TempDir,
    addresses: Vec<String>,
    sims: Vec<Process>,
    pickers: Vec<Process>,
    picker_ports: [u16; 2],
    picker_flags: Vec<String>,
}

impl Fleet {
    /// (Re)start the servers and both pickers: cold caches.
    fn restart(&mut self, seed: u64) -> anyhow::Result<()> {
        self.sims.clear();
        self.pickers.clear();
        let adapters: Vec<String> = (0..ADAPTERS).map(|a| format!("adapter-{a}")).collect();
        let adapters = adapters.join(",");
        for (i, address) in self.addresses.iter().enumerate() {
            let seed = (seed * 100 + i as u64 + 1).to_string();
            let mut flags: Vec<&str> = SIM_FLAGS.to_vec();
            flags.extend(["--lora", &adapters, "--seed", &seed]);
            self.sims
                .push(sim(address, &format!("sim-{i}"), &self.work.0, &flags));
        }
        let disabled = [
            "--prefix-weight",
            "0",
            "--running-weight",
            "0",
            "--lora-weight",
            "0",
        ];
        // The picker remembers as many prompt blocks per server as a server
        // caches (what an operator sets from vLLM's cache size).
        let mut full = vec!["--prefix-blocks-per-endpoint", PREFIX_CACHE_BLOCKS];
        full.extend(self.picker_flags.iter().map(String::as_str));
        for (n, extra) in [&disabled[..], &full[..]].into_iter().enumerate() {
            self.pickers.push(infergate_e2e::epp_with(
                self.picker_ports[n],
                &self.addresses,
                &self.work.0,
                extra,
            ));
        }
        Ok(())
    }
}

fn config_yaml(listener: u16, servers: &[String], port: u16, picker_ports: [u16; 2]) -> String {
    let mut yaml = infergate_e2e::gateway_yaml(listener);
    for (i, address) in servers.iter().enumerate() {
        let ip = address.split(':').next().unwrap_or_default();
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: sim-{i}, labels: {{app: sim}}}}
status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}
"
        ));
    }
    let mut rules = String::new();
    for (n, config) in CONFIGS.iter().enumerate() {
        let pool = format!("pool-{n}");
        let picker = match n {
            0 => String::new(),
            _ => format!("  endpointPickerRef: {{name: epp-{n}, port: {{number: 9002}}}}\n"),
        };
        yaml.push_str(&format!(
            "---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {pool}}}
spec:
  selector: {{matchLabels: {{app: sim}}}}
  targetPorts: [{{number: {port}}}]
{picker}"
        ));
        if n > 0 {
            yaml.push_str(&format!(
                "---
apiVersion: v1
kind: Service
metadata: {{name: epp-{n}}}
spec: {{ports: [{{name: grpc, port: 9002}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: epp-{n}-1, labels: {{kubernetes.io/service-name: epp-{n}}}}}
addressType: IPv4
ports: [{{name: grpc, port: {}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
",
                picker_ports[n - 1]
            ));
        }
        rules.push_str(&format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: x-config, value: \"{config}\"}}]}}]
    backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: {pool}}}]
"
        ));
    }
    yaml.push_str(&format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: routes}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
{rules}"
    ));
    yaml
}

pub fn run(options: Options) -> anyhow::Result<()> {
    for config in &options.configs {
        anyhow::ensure!(
            CONFIGS.contains(&config.as_str()),
            "--configs: {config:?} is not one of {}",
            CONFIGS.join(", ")
        );
    }
    let work = TempDir::new("bench-schedule");
    let config = TempDir::new("bench-schedule-config");
    let port = free_port();
    let addresses: Vec<String> = (0..options.servers)
        .map(|i| format!("127.0.0.{}:{port}", 100 + i))
        .collect();
    let picker_ports = [free_port(), free_port()];
    let listener = free_port();
    std::fs::write(
        config.0.join("all.yaml"),
        config_yaml(listener, &addresses, port, picker_ports),
    )?;
    let mut fleet = Fleet {
        work,
        addresses: addresses.clone(),
        sims: vec![],
        pickers: vec![],
        picker_ports,
        picker_flags: options.picker_flags.clone(),
    };
    fleet.restart(options.seed)?;
    let mut infergate = Standalone::start(
        &config.0,
        &fleet.work.0,
        free_port(),
        &["--enable-inference-extension"],
    );
    let url = format!("http://127.0.0.1:{listener}/v1/completions");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    ready(&runtime, &client, &url, &infergate)?;

    println!(
        "{} servers; {}; {} output tokens per request; {} s of arrivals per run; seed {}; picker flags: {}",
        options.servers,
        SIM_FLAGS.join(" "),
        options.output_tokens,
        options.seconds,
        options.seed,
        options.picker_flags.join(" ")
    );
    let mut results: BTreeMap<(&'static str, &'static str), Vec<(f64, Figures)>> = BTreeMap::new();
    for workload in &options.workloads {
        println!("\n== workload {}", workload.name());
        println!(
            "{:>12} {:>6} | {:>5} {:>4} | {:>8} {:>8} | {:>7} | {:>8} | {:>9} | {:>7} | {:>6}",
            "config",
            "rate/s",
            "sent",
            "fail",
            "TTFT p50",
            "TTFT p90",
            "ITL p50",
            "e2e p90",
            "tokens/s",
            "prefix",
            "spread"
        );
        for &rate in &options.rates {
            for config in CONFIGS
                .into_iter()
                .filter(|c| options.configs.iter().any(|o| o == c))
            {
                fleet.restart(options.seed)?;
                ready(&runtime, &client, &url, &infergate)?;
                let before_hits = counter(&addresses, "vllm:prefix_cache_hits_total");
                let before_queries = counter(&addresses, "vllm:prefix_cache_queries_total");
                let before_done = counter(&addresses, "vllm:request_success_total");
                let figures =
                    runtime.block_on(load(&client, &url, config, *workload, rate, &options))?;
                let delta = |after: Vec<f64>, before: &[f64]| -> Vec<f64> {
                    after.iter().zip(before).map(|(a, b)| a - b).collect()
                };
                let hits: f64 = delta(
                    counter(&addresses, "vllm:prefix_cache_hits_total"),
                    &before_hits,
                )
                .iter()
                .sum();
                let queries: f64 = delta(
                    counter(&addresses, "vllm:prefix_cache_queries_total"),
                    &before_queries,
                )
                .iter()
                .sum();
                let done = delta(
                    counter(&addresses, "vllm:request_success_total"),
                    &before_done,
                );
                let total: f64 = done.iter().sum();
                let busiest = done.iter().copied().fold(0.0, f64::max);
                let figures = Figures {
                    prefix_hit_rate: if queries > 0.0 { hits / queries } else { 0.0 },
                    spread: if total > 0.0 {
                        busiest / (total / addresses.len() as f64)
                    } else {
                        f64::NAN
                    },
                    ..figures
                };
                println!(
                    "{:>12} {:>6.1} | {:>5} {:>4} | {:>6.0}ms {:>6.0}ms | {:>5.0}ms | {:>6.0}ms | {:>9.0} | {:>6.1}% | {:>6.2}",
                    config,
                    rate,
                    figures.sent,
                    figures.failed,
                    figures.ttft_p50,
                    figures.ttft_p90,
                    figures.itl_p50,
                    figures.e2e_p90,
                    figures.tokens_per_second,
                    figures.prefix_hit_rate * 100.0,
                    figures.spread
                );
                results
                    .entry((workload.name(), config))
                    .or_default()
                    .push((rate, figures));
            }
        }
        // The targets, checked on the highest rate of the run.
        let last = |config| {
            results
                .get(&(workload.name(), config))
                .and_then(|v| v.last())
                .map(|(_, f)| f.clone())
        };
        if let (Some(rr), Some(qkv), Some(new)) =
            (last("round-robin"), last("queue+kv"), last("picker"))
        {
            println!(
                "at {:.1}/s: picker vs round robin: TTFT p90 {:+.0}%, output tokens/s x{:.2}; picker vs queue+kv: TTFT p90 {:+.0}%, tokens/s x{:.2}",
                options.rates.last().copied().unwrap_or_default(),
                (new.ttft_p90 / rr.ttft_p90 - 1.0) * 100.0,
                new.tokens_per_second / rr.tokens_per_second,
                (new.ttft_p90 / qkv.ttft_p90 - 1.0) * 100.0,
                new.tokens_per_second / qkv.tokens_per_second,
            );
        }
    }
    infergate.stop();
    if let Some(path) = &options.plot {
        crate::plot::ttft_p90(path, &results).context("drawing the plot")?;
        println!("\nplot: {}", path.display());
    }
    Ok(())
}

/// Every configuration answers a probe (after a restart: the pickers have
/// scraped the servers and Envoy reaches them).
fn ready(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    infergate: &Standalone,
) -> anyhow::Result<()> {
    for config in CONFIGS {
        let probe = Prompt {
            model: "sim-model".into(),
            text: "probe".into(),
        };
        let ok = infergate_e2e::wait_until(Duration::from_secs(60), || {
            runtime
                .block_on(complete(client, url, config, &probe, 1))
                .ok
        });
        anyhow::ensure!(ok, "{config} never answered:\n{}", infergate.log_text());
    }
    Ok(())
}

/// An open-loop run: Poisson arrivals at `rate` for `options.seconds`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    config: &'static str,
    workload: Workload,
    rate: f64,
    options: &Options,
) -> anyhow::Result<Figures> {
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut arrivals = vec![];
    let mut t = 0.0;
    loop {
        // Exponential gaps: -ln(U) / rate.
        t += -(1.0 - rng.f64()).ln() / rate;
        if t >= options.seconds {
            break;
        }
        arrivals.push(t);
    }
    let prompts = prompts(workload, arrivals.len(), options.seed);
    let client = Arc::new(client.clone());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(arrivals.len());
    for (at, prompt) in arrivals.iter().zip(prompts) {
        tokio::time::sleep_until((start + Duration::from_secs_f64(*at)).into()).await;
        let client = client.clone();
        let url = url.to_string();
        let tokens = options.output_tokens;
        tasks.push(tokio::spawn(async move {
            complete(&client, &url, config, &prompt, tokens).await
        }));
    }
    let mut outcomes = vec![];
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut ttft: Vec<f64> = ok.iter().map(|o| ms(o.ttft)).collect();
    let mut itl: Vec<f64> = ok.iter().filter_map(|o| o.itl.map(ms)).collect();
    let mut e2e: Vec<f64> = ok.iter().map(|o| ms(o.e2e)).collect();
    let tokens: usize = ok.iter().map(|o| o.tokens).sum();
    Ok(Figures {
        sent: outcomes.len(),
        failed: outcomes.len() - ok.len(),
        ttft_p50: quantile(&mut ttft, 0.5),
        ttft_p90: quantile(&mut ttft, 0.9),
        itl_p50: quantile(&mut itl, 0.5),
        e2e_p90: quantile(&mut e2e, 0.9),
        tokens_per_second: tokens as f64 / elapsed,
        prefix_hit_rate: 0.0,
        spread: 0.0,
    })
}
