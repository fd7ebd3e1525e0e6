//! infergate's benchmarks. They print figures; nothing here passes or fails.
//!
//! `scripts/bench.sh` builds what they need in release mode and runs them;
//! `docs/benchmarks.md` records the figures with the command.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
mod kube;
mod models;
mod plot;
mod schedule;

use clap::{Parser, Subcommand};
use infergate_e2e::{NamedServer, Standalone, TempDir, free_port};
use infergate_model::{Settings, Snapshot};
use infergate_runtime::{Limits, Runtime};
use infergate_xds::encode;

#[derive(Parser)]
#[command(about = "infergate benchmarks (they print figures)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translation through the component vs the native library, and IR ->
    /// Envoy encoding, on generated snapshots.
    Translate {
        /// Route counts to measure, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        routes: Vec<usize>,
        /// Runs per measurement; the median is reported.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// The translation component (default: $INFERGATE_COMPONENT).
        #[arg(long, env = "INFERGATE_COMPONENT")]
        component: std::path::PathBuf,
    },
    /// Latency the endpoint picker adds: the same completions through Envoy
    /// straight to a model server and through an InferencePool and its
    /// picker, interleaved at a fixed rate (simulator delays zero).
    Picker {
        /// Requests per path.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Requests per second, both paths together.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Prompt size in bytes (0: a one-line prompt). The picker reads
        /// every prompt whole (JSON, then block hashes for prefix affinity):
        /// e.g. 204800 measures what a 200 KB prompt costs it.
        #[arg(long, default_value_t = 0)]
        prompt_bytes: usize,
        /// Stream completions of this many tokens (the simulator sends one
        /// every 2 ms) and measure the gaps between tokens at the client
        /// instead: every streamed token passes through the picker.
        #[arg(long, default_value_t = 0)]
        stream_tokens: usize,
    },
    /// Latency routing by model adds: the same completions on a listener
    /// whose routes match X-Gateway-Model-Name (Envoy reads each JSON body
    /// first) and on one whose routes do not, to a Service and to an
    /// InferencePool with its picker, interleaved at a fixed rate.
    ModelRouting {
        /// Requests per path and body size.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Requests per second, all paths together.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Prompt sizes in bytes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1024,307200")]
        prompt_bytes: Vec<usize>,
    },
    /// Component swaps: compiling a component, the fixed cost of a
    /// translation (fresh Store, instantiation), and file change -> Envoy
    /// serving the new component's configuration.
    /// The endpoint picker's scheduling against round robin and the
    /// queue+KV picker on simulated model servers (Poisson load at several
    /// rates; shared-prefix, no-sharing and LoRA workloads); prints the
    /// figures per run and draws TTFT p90 against the rate.
    Schedule {
        /// Simulated model servers.
        #[arg(long, default_value_t = 8)]
        servers: usize,
        /// Request rates to run, per second.
        #[arg(long, value_delimiter = ',', default_value = "4,8,12,16,20")]
        rates: Vec<f64>,
        /// Seconds of arrivals per run.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Workloads to run.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "shared-prefix,no-sharing,lora"
        )]
        workloads: Vec<schedule::Workload>,
        /// Seed of the arrivals, prompts and simulator jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Tokens each request generates.
        #[arg(long, default_value_t = 32)]
        output_tokens: usize,
        /// Where to draw TTFT p90 against the rate (PNG).
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Configurations to run (round-robin, queue+kv, picker); the same
        /// seed gives the same arrivals, so a tuning run can skip the baselines.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "round-robin,queue+kv,picker"
        )]
        configs: Vec<String>,
        /// A flag for the `picker` configuration's infergate-epp (repeat it),
        /// e.g. `--picker-flag=--affinity-max-extra-queue=4`.
        #[arg(long = "picker-flag", allow_hyphen_values = true)]
        picker_flags: Vec<String>,
    },
    Swap {
        /// The translation component (default: $INFERGATE_COMPONENT).
        #[arg(long, env = "INFERGATE_COMPONENT")]
        component: std::path::PathBuf,
        /// A second component to swap to and fro (the test component that
        /// marks responses; `cargo xtask test-components` builds it).
        #[arg(long)]
        other: std::path::PathBuf,
        /// Swaps to time.
        #[arg(long, default_value_t = 6)]
        swaps: usize,
    },
    /// Write the generated configuration (the one the benchmarks use) into a
    /// directory, to run `infergate standalone` or `translate` on it.
    Generate {
        #[arg(long, default_value_t = 1000)]
        routes: usize,
        /// The Gateway listener's port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Translate in a loop, for a profiler (perf record ...): natively, or
    /// through the component with --component.
    Profile {
        #[arg(long, default_value_t = 10000)]
        routes: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Translate through this component instead of the native library.
        #[arg(long)]
        component: Option<std::path::PathBuf>,
    },
    /// Time from a file change to Envoy serving the change, with
    /// `infergate standalone` and a real Envoy (INFERGATE_BIN, INFERGATE_ENVOY).
    /// Kubernetes mode on the tests' real kube-apiserver: Pod ready -> Envoy
    /// latency, controller memory, status writes per change.
    Kube {
        #[arg(long, default_value_t = 1000)]
        routes: usize,
        #[arg(long, default_value_t = 100)]
        pools: usize,
        #[arg(long, default_value_t = 3000)]
        pods: usize,
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    Apply {
        /// HTTPRoutes in the configuration besides the probe route.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        routes: Vec<usize>,
        /// Changes to time per route count.
        #[arg(long, default_value_t = 10)]
        changes: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Translate {
            routes,
            runs,
            component,
        } => translate(&routes, runs, &component),
        Command::Apply { routes, changes } => apply(&routes, changes),
        Command::Kube {
            routes,
            pools,
            pods,
            changes,
        } => kube::run(routes, pools, pods, changes),
        Command::Picker {
            requests,
            rate,
            prompt_bytes,
            stream_tokens: 0,
        } => picker(requests, rate, prompt_bytes),
        Command::Picker {
            requests,
            stream_tokens,
            ..
        } => token_gaps(requests, stream_tokens),
        Command::ModelRouting {
            requests,
            rate,
            prompt_bytes,
        } => models::run(requests, rate, &prompt_bytes),
        Command::Schedule {
            servers,
            rates,
            seconds,
            workloads,
            seed,
            output_tokens,
            plot,
            configs,
            picker_flags,
        } => schedule::run(schedule::Options {
            servers,
            rates,
            seconds,
            workloads,
            seed,
            output_tokens,
            plot,
            configs,
            picker_flags,
        }),
        Command::Swap {
            component,
            other,
            swaps,
        } => swap(&component, &other, swaps),
        Command::Generate { routes, port, out } => {
            std::fs::create_dir_all(&out)?;
            for (name, text) in generate(routes, port) {
                std::fs::write(out.join(name), text)?;
            }
            Ok(())
        }
        Command::Profile {
            routes,
            runs,
            component,
        } => {
            let snapshot = snapshot(&generate(routes, 8080))?;
            match component {
                None => {
                    for _ in 0..runs {
                        std::hint::black_box(infergate_translate::translate(&snapshot).ok());
                    }
                }
                Some(path) => {
                    let runtime = Runtime::new(Limits::default())?;
                    let translator = runtime.load(&std::fs::read(&path)?)?;
                    for _ in 0..runs {
                        std::hint::black_box(runtime.translate(&translator, &snapshot).ok());
                    }
                }
            }
            Ok(())
        }
    }
}

// ------------------------------------------------------------ generation

/// A configuration of `routes` HTTPRoutes as YAML files (name, text): one
/// Gateway, a hostname per 100 routes, a Service per 10 routes with three
/// endpoints each; every route has two matches, a header filter and a 90/10
/// split over two Services.
fn generate(routes: usize, listener_port: u16) -> Vec<(String, String)> {
    let services = (routes / 10).max(1);
    let mut files = vec![(
        "gateway.yaml".to_string(),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: infergate}}
spec: {{controllerName: infergate.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: infergate
  listeners: [{{name: http, port: {listener_port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]
"
        ),
    )];
    let mut text = String::new();
    for s in 0..services {
        let (a, b) = (s / 250, s % 250);
        text.push_str(&format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: svc-{s}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{s}-1, labels: {{kubernetes.io/service-name: svc-{s}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.{a}.{b}.1]}}, {{addresses: [10.{a}.{b}.2]}}, {{addresses: [10.{a}.{b}.3]}}]
"
        ));
    }
    files.push(("services.yaml".to_string(), text));
    for (chunk, start) in (0..routes).step_by(1000).enumerate() {
        let mut text = String::new();
        for i in start..(start + 1000).min(routes) {
            let (first, second) = (i % services, (i + 1) % services);
            text.push_str(&format!(
                "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route-{i}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [h{host}.example.com]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /r{i}/}}
      headers: [{{name: x-tenant, value: t{tenant}}}]
    - path: {{type: Exact, value: /r{i}}}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-route, value: r{i}}}]}}
    backendRefs:
    - {{name: svc-{first}, port: 80, weight: 90}}
    - {{name: svc-{second}, port: 80, weight: 10}}
",
                host = i / 100,
                tenant = i % 7,
            ));
        }
        files.push((format!("routes-{chunk}.yaml"), text));
    }
    files
}

fn snapshot(files: &[(String, String)]) -> anyhow::Result<Snapshot> {
    snapshot_of(files, infergate_resources::Resources::default())
}

/// As standalone mode reads files: each document checked against its CRD.
fn checked_snapshot(files: &[(String, String)]) -> anyhow::Result<Snapshot> {
    snapshot_of(files, infergate_resources::Resources::checked())
}

fn snapshot_of(
    files: &[(String, String)],
    mut resources: infergate_resources::Resources,
) -> anyhow::Result<Snapshot> {
    for (name, text) in files {
        resources
            .add_yaml(name, text)
            .map_err(|e| anyhow::anyhow!("{} errors, first: {}", e.len(), e[0]))?;
    }
    resources
        .to_snapshot(Settings::new(infergate_names::DEFAULT_CONTROLLER_NAME))
        .map_err(|e| anyhow::anyhow!("{} errors, first: {}", e.len(), e[0]))
}

// ------------------------------------------------------------ measuring

/// Run `f` `runs` times and return the median duration.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    middle(
        (0..runs.max(1))
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(f());
                started.elapsed()
            })
            .collect(),
    )
}

/// Run `a` and `b` in turns, `runs` times each; their median durations.
fn median_pair<A, B>(
    runs: usize,
    mut a: impl FnMut() -> A,
    mut b: impl FnMut() -> B,
) -> (Duration, Duration) {
    let mut times_a = Vec::new();
    let mut times_b = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        std::hint::black_box(a());
        times_a.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(b());
        times_b.push(started.elapsed());
    }
    (middle(times_a), middle(times_b))
}

/// The median of `times` (not empty).
fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn translate(routes: &[usize], runs: usize, component: &Path) -> anyhow::Result<()> {
    let runtime = Runtime::new(Limits::default())?;
    let bytes = std::fs::read(component)
        .with_context(|| format!("reading the component {}", component.display()))?;
    let translator = runtime.load(&bytes)?;
    println!(
        "component {} ({} KiB), median of {runs} runs",
        component.display(),
        bytes.len() / 1024
    );
    println!(
        "{:>7} | {:>10} | {:>14} | {:>10} | {:>10} | {:>6} | {:>12} | {:>12}",
        "routes",
        "parse",
        "+ CRD checks",
        "native",
        "component",
        "ratio",
        "guest memory",
        "envoy encode"
    );
    for &n in routes {
        let files = generate(n, 8080);
        // Interleaved, as below: parsing alone, and as standalone mode
        // parses (with the CRDs' schema and CEL checks).
        let (parse, checked) = median_pair(
            runs.min(3),
            || snapshot(&files).expect("generated input parses"),
            || checked_snapshot(&files).expect("generated input passes the CRD checks"),
        );
        let snapshot = snapshot(&files)?;
        let native_output = infergate_translate::translate(&snapshot)
            .map_err(|e| anyhow::anyhow!("native translation: {}", e.message))?;
        let (component_output, usage) = runtime.translate_measured(&translator, &snapshot);
        let component_output = component_output?;
        anyhow::ensure!(
            native_output == component_output,
            "the component and the native library disagree on {n} routes"
        );
        let routes_out: usize = native_output
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| l.virtual_hosts())
            .map(|v| v.routes.len())
            .sum();
        anyhow::ensure!(
            routes_out == 2 * n,
            "expected {} Envoy routes, got {routes_out}",
            2 * n
        );
        // Interleaved, so that both see the same machine (it is noisy).
        let (native, wasm) = median_pair(
            runs,
            || infergate_translate::translate(&snapshot),
            || runtime.translate(&translator, &snapshot),
        );
        let encoding = median(runs, || {
            native_output
                .gateways
                .iter()
                .map(|g| encode::gateway(g, &Default::default()).into_packed().len())
                .sum::<usize>()
        });
        println!(
            "{n:>7} | {:>10} | {:>14} | {:>10} | {:>10} | {:>5.2}x | {:>8} MiB | {:>12}",
            ms(parse),
            ms(checked),
            ms(native),
            ms(wasm),
            wasm.as_secs_f64() / native.as_secs_f64(),
            usage.memory_peak_bytes >> 20,
            ms(encoding)
        );
    }
    Ok(())
}

// ------------------------------------------------------------ apply latency

const PROBE: &str = "probe.yaml";

fn probe_yaml(version: usize) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: probe}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /probe}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-probe, value: v{version}}}]}}
    backendRefs: [{{name: probe, port: 80}}]
"
    )
}

/// The x-probe response header of GET /probe, if the request got through.
fn probe(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /probe HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-probe: ")
            .map(|v| v.trim().to_string())
    })
}

fn apply(routes: &[usize], changes: usize) -> anyhow::Result<()> {
    let server = NamedServer::start("probe");
    println!("file change -> Envoy serving it (infergate standalone, debounce 50 ms, real Envoy)");
    println!(
        "{:>7} | {:>12} | {:>10} | {:>10} | {:>16} | {:>16} | {:>7}",
        "routes", "first config", "p50", "max", "controller p50", "Envoy p50", "changes"
    );
    for &n in routes {
        let config = TempDir::new("bench-config");
        let work = TempDir::new("bench-work");
        let listener = free_port();
        for (name, text) in generate(n, listener) {
            std::fs::write(config.0.join(name), text)?;
        }
        std::fs::write(
            config.0.join("probe-service.yaml"),
            infergate_e2e::service_yaml("probe", server.port),
        )?;
        std::fs::write(config.0.join(PROBE), probe_yaml(0))?;
        let started = Instant::now();
        let mut infergate = Standalone::start(&config.0, &work.0, free_port(), &[]);
        wait_for(&mut infergate, listener, "v0", Duration::from_secs(120))?;
        let first = started.elapsed();
        let mut latencies = vec![];
        // Write -> the controller's "configuration applied" line (in our xDS
        // cache), and from there -> Envoy serving it.
        let (mut controller, mut envoy) = (vec![], vec![]);
        for version in 1..=changes {
            let expected = format!("v{version}");
            let applied_before = applied_times(&infergate.log_text()).len();
            let written = seconds_of_day(std::time::SystemTime::now());
            std::fs::write(config.0.join(PROBE), probe_yaml(version))?;
            let latency = wait_for(&mut infergate, listener, &expected, Duration::from_secs(30))?;
            latencies.push(latency);
            if let Some(&applied) = applied_times(&infergate.log_text()).get(applied_before) {
                let published = Duration::from_secs_f64((applied - written).max(0.0));
                controller.push(published);
                envoy.push(latency.saturating_sub(published));
            }
            // Let the watcher settle so changes do not merge.
            std::thread::sleep(Duration::from_millis(300));
        }
        latencies.sort();
        if std::env::var_os("INFERGATE_BENCH_LOG").is_some() {
            eprintln!("{}", infergate.log_text());
        }
        let split = |times: Vec<Duration>| {
            if times.is_empty() {
                "-".to_string()
            } else {
                ms(middle(times))
            }
        };
        println!(
            "{n:>7} | {:>12} | {:>10} | {:>10} | {:>16} | {:>16} | {:>7}",
            ms(first),
            ms(latencies[latencies.len() / 2]),
            ms(*latencies.last().expect("at least one change")),
            split(controller),
            split(envoy),
            latencies.len()
        );
    }
    Ok(())
}

/// When (seconds into the UTC day) each "configuration applied" line of
/// the controller's log was written.
fn applied_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("configuration applied"))
        .filter_map(|l| {
            // 2026-11-26T16:27:17.962267Z ...
            let time = l
                .split_whitespace()
                .next()?
                .split('T')
                .nth(1)?
                .strip_suffix('Z')?;
            let mut parts = time.split(':');
            let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect()
}

fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    (since.as_secs() % 86_400) as f64 + f64::from(since.subsec_micros()) / 1e6
}

/// Poll the probe route until it answers with `expected`; return how long it took.
fn wait_for(
    infergate: &mut Standalone,
    port: u16,
    expected: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if probe(port).as_deref() == Some(expected) {
            return Ok(started.elapsed());
        }
        if let Ok(Some(status)) = infergate.child.try_wait() {
            anyhow::bail!("infergate exited ({status}):\n{}", infergate.log_text());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    anyhow::bail!(
        "Envoy did not serve {expected} within {timeout:?}; infergate's log:\n{}",
        infergate.log_text()
    )
}

// ------------------------------------------------------------ picker latency

/// A completion request whose prompt is about `bytes` long (varied text, so
/// that its blocks differ), or the tests' one-line completion.
fn completion_body(bytes: usize) -> Vec<u8> {
    if bytes == 0 {
        return infergate_e2e::COMPLETION.as_bytes().to_vec();
    }
    let mut prompt = String::with_capacity(bytes + 32);
    let mut n = 0u64;
    while prompt.len() < bytes {
        prompt.push_str(&format!("sentence {n} of a long document. "));
        n += 1;
    }
    prompt.truncate(bytes);
    serde_json::to_vec(
        &serde_json::json!({"model": "sim-model", "prompt": prompt, "max_tokens": 1}),
    )
    .expect("a JSON body")
}

/// One model server at `ip:port` behind both a Service `direct` and an
/// InferencePool `pool` (its Pod `bench`), whose picker Service `epp` is
/// served at 127.0.0.1:`epp_port`.
fn server_and_pool_yaml(ip: &str, port: u16, epp_port: u16) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: direct}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: direct-1, labels: {{kubernetes.io/service-name: direct}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [{ip}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bench, labels: {{app: bench}}}}
status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: pool}}
spec:
  selector: {{matchLabels: {{app: bench}}}}
  targetPorts: [{{number: {port}}}]
  endpointPickerRef: {{name: epp, port: {{number: 9002}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: epp}}
spec: {{ports: [{{name: grpc, port: 9002}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: epp-1, labels: {{kubernetes.io/service-name: epp}}}}
addressType: IPv4
ports: [{{name: grpc, port: {epp_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

/// The picker's own work on one request body, in process: JSON, the prompt,
/// its block hashes (the median of `runs`).
fn picker_work(body: &[u8], runs: usize) -> Duration {
    let times = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
            let prompt = infergate_serving::prompt::prompt_text(&json).unwrap_or_default();
            let blocks = infergate_serving::prompt::block_hashes(&prompt);
            std::hint::black_box(blocks);
            started.elapsed()
        })
        .collect();
    middle(times)
}

/// One simulator (its delays from `sim_flags`) behind a Service and behind
/// an InferencePool with a picker, on one listener: the header `x-path`
/// says which (`direct`, `picked`). Returns once both answer.
struct PickerSetup {
    listener: u16,
    infergate: Standalone,
    _processes: Vec<infergate_e2e::Process>,
    _dirs: (TempDir, TempDir),
}

fn picker_setup(sim_flags: &[&str]) -> anyhow::Result<PickerSetup> {
    use infergate_e2e::{epp, sim};
    let work = TempDir::new("bench-picker");
    let config = TempDir::new("bench-picker-config");
    let port = free_port();
    let address = format!("127.0.0.70:{port}");
    let sim = sim(&address, "bench", &work.0, sim_flags);
    let epp_port = free_port();
    let epp = epp(epp_port, std::slice::from_ref(&address), &work.0);
    let listener = free_port();
    let yaml = format!(
        "{gateway}{backends}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: routes}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: x-path, value: direct}}]}}]
    backendRefs: [{{name: direct, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: x-path, value: picked}}]}}]
    backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}]
",
        gateway = infergate_e2e::gateway_yaml(listener),
        backends = server_and_pool_yaml("127.0.0.70", port, epp_port),
    );
    std::fs::write(config.0.join("all.yaml"), yaml)?;
    let infergate = Standalone::start(
        &config.0,
        &work.0,
        free_port(),
        &["--enable-inference-extension"],
    );
    let body = completion_body(0);
    for path in ["direct", "picked"] {
        let ok = infergate_e2e::wait_until(Duration::from_secs(60), || {
            infergate_e2e::request(
                listener,
                "POST",
                "/v1/completions",
                &[("x-path", path), ("content-type", "application/json")],
                &body,
            )
            .is_some_and(|r| r.status == 200)
        });
        anyhow::ensure!(ok, "{path} never answered 200:\n{}", infergate.log_text());
    }
    Ok(PickerSetup {
        listener,
        infergate,
        _processes: vec![sim, epp],
        _dirs: (work, config),
    })
}

fn picker(requests: usize, rate: u32, prompt_bytes: usize) -> anyhow::Result<()> {
    let body = completion_body(prompt_bytes);
    let complete = |port: u16, path: &str, headers: &[(&str, &str)]| {
        let mut with_type = headers.to_vec();
        with_type.push(("content-type", "application/json"));
        infergate_e2e::request(port, "POST", path, &with_type, &body)
    };
    let setup = picker_setup(&["--ttft-ms", "0", "--inter-token-ms", "0"])?;
    let (listener, mut infergate) = (setup.listener, setup.infergate);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut times: [Vec<Duration>; 2] = [vec![], vec![]];
    let mut next = Instant::now();
    for i in 0..requests * 2 {
        let which = i % 2;
        let path = ["direct", "picked"][which];
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        let started = Instant::now();
        let response = complete(listener, "/v1/completions", &[("x-path", path)]);
        let elapsed = started.elapsed();
        anyhow::ensure!(
            response.as_ref().is_some_and(|r| r.status == 200),
            "{path}: {response:?}"
        );
        times[which].push(elapsed);
    }
    infergate.stop();
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * q).round() as usize]
    };
    println!(
        "completions through Envoy, {requests} per path, {rate} requests/s, simulator delays 0, request body {} bytes",
        body.len()
    );
    println!("{:>22} | {:>9} | {:>9}", "path", "p50", "p99");
    let mut rows = vec![];
    for (which, name) in ["straight to the server", "through the picker"]
        .iter()
        .enumerate()
    {
        let p50 = quantile(&mut times[which], 0.5);
        let p99 = quantile(&mut times[which], 0.99);
        rows.push((p50, p99));
        println!("{name:>22} | {:>9} | {:>9}", ms(p50), ms(p99));
    }
    let added = |a: Duration, b: Duration| b.as_secs_f64() * 1000.0 - a.as_secs_f64() * 1000.0;
    println!(
        "{:>22} | {:>6.2} ms | {:>6.2} ms",
        "added by the picker",
        added(rows[0].0, rows[1].0),
        added(rows[0].1, rows[1].1)
    );
    println!(
        "the picker's own work on this body (JSON, prompt, block hashes), in process, median of 50: {}",
        ms(picker_work(&body, 50))
    );
    Ok(())
}

/// The gaps between streamed tokens at the client, straight to the server
/// and through the picker (which every token of a pool's response passes),
/// `requests` streams of `tokens` tokens per path, interleaved.
fn token_gaps(requests: usize, tokens: usize) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let setup = picker_setup(&[
        "--ttft-ms",
        "0",
        "--inter-token-ms",
        "2",
        "--max-num-seqs",
        "64",
    ])?;
    let body = serde_json::json!({"model": "sim-model", "prompt": "Hello", "max_tokens": tokens, "stream": true})
        .to_string();
    let stream = |path: &str| -> anyhow::Result<Vec<Duration>> {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", setup.listener))?;
        socket.set_nodelay(true)?;
        write!(
            socket,
            "POST /v1/completions HTTP/1.1\r\nhost: example.com\r\nx-path: {path}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let (mut gaps, mut last, mut buffer) = (vec![], None, [0u8; 65536]);
        loop {
            let n = socket.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            let now = Instant::now();
            // A read that holds exactly one event: the time since the last.
            let events = buffer[..n].windows(6).filter(|w| w == b"data: ").count();
            if let Some(last) = last
                && events == 1
            {
                gaps.push(now - last);
            }
            last = Some(now);
        }
        Ok(gaps)
    };
    let mut gaps: [Vec<Duration>; 2] = [vec![], vec![]];
    for _ in 0..requests {
        for (which, path) in ["direct", "picked"].iter().enumerate() {
            gaps[which].extend(stream(path)?);
        }
    }
    println!(
        "streamed completions through Envoy, {requests} per path of {tokens} tokens, the simulator sending one every 2 ms: gaps between tokens at the client"
    );
    println!(
        "{:>22} | {:>9} | {:>9} | {:>9} | {:>6}",
        "path", "p50", "p99", "mean", "gaps"
    );
    for (which, name) in ["straight to the server", "through the picker"]
        .iter()
        .enumerate()
    {
        let g = &mut gaps[which];
        g.sort();
        let mean = g.iter().sum::<Duration>() / g.len().max(1) as u32;
        println!(
            "{name:>22} | {:>9} | {:>9} | {:>9} | {:>6}",
            format!("{:.3} ms", g[g.len() / 2].as_secs_f64() * 1000.0),
            format!("{:.3} ms", g[g.len() * 99 / 100].as_secs_f64() * 1000.0),
            format!("{:.3} ms", mean.as_secs_f64() * 1000.0),
            g.len()
        );
    }
    Ok(())
}

// ------------------------------------------------------------ swaps

fn swap(component: &Path, other: &Path, swaps: usize) -> anyhow::Result<()> {
    let runtime = Runtime::new(Limits::default())?;
    let bytes = std::fs::read(component)?;
    let compile = median(5, || runtime.load(&bytes).expect("the component loads"));
    let cache = TempDir::new("bench-swap-cache");
    runtime.load_cached(&bytes, Some(&cache.0))?;
    let cached = median(5, || {
        runtime
            .load_cached(&bytes, Some(&cache.0))
            .expect("the component loads")
    });
    let translator = runtime.load(&bytes)?;
    let empty = snapshot(&[])?;
    let fixed = median(51, || {
        runtime.translate(&translator, &empty).expect("translates")
    });
    let native = median(51, || infergate_translate::translate(&empty));
    println!(
        "component {} ({} KiB)",
        component.display(),
        bytes.len() / 1024
    );
    println!(
        "  compile (load + checks + pre-instantiate), median of 5: {}",
        ms(compile)
    );
    println!(
        "  the same from the compiled-component cache, median of 5: {}",
        ms(cached)
    );
    println!(
        "  one translation of an empty snapshot (fresh Store, instantiate, call), median of 51: {} (native: {:.3} ms)",
        ms(fixed),
        native.as_secs_f64() * 1000.0
    );

    let backend = NamedServer::start("backend");
    let config = TempDir::new("bench-swap-config");
    let work = TempDir::new("bench-swap-work");
    let listener = free_port();
    std::fs::write(
        config.0.join("all.yaml"),
        infergate_e2e::single_backend_yaml(listener, backend.port),
    )?;
    let active = work.0.join("component.wasm");
    std::fs::copy(component, &active)?;
    let swap_cache = TempDir::new("bench-swap-cache-2");
    let mut infergate = Standalone::start(
        &config.0,
        &work.0,
        free_port(),
        &[
            "--component",
            active.to_str().expect("a UTF-8 path"),
            "--component-cache-dir",
            swap_cache.0.to_str().expect("a UTF-8 path"),
        ],
    );
    let marked = || {
        infergate_e2e::request(listener, "GET", "/", &[], b"")
            .filter(|r| r.status == 200)
            .map(|r| r.header("x-infergate-component") == Some("test"))
    };
    let ok = infergate_e2e::wait_until(Duration::from_secs(60), || marked() == Some(false));
    anyhow::ensure!(ok, "never served:\n{}", infergate.log_text());
    let mut times = vec![];
    for i in 0..swaps {
        let (from, want) = if i % 2 == 0 {
            (other, true)
        } else {
            (component, false)
        };
        let started = Instant::now();
        std::fs::copy(from, &active)?;
        while marked() != Some(want) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "swap {i} never took effect:\n{}",
                infergate.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    infergate.stop();
    // The first swap compiles the other component (cold); the rest find
    // both components compiled in the (fresh) cache (warm).
    let cold = times[0];
    let mut warm = times[1..].to_vec();
    warm.sort();
    println!(
        "  file copied -> Envoy serving the new component's configuration (debounce 200 ms included): cold {}, warm p50 {} max {} ({} swaps)",
        ms(cold),
        ms(warm[warm.len() / 2]),
        ms(*warm.last().expect("a warm swap")),
        warm.len()
    );
    Ok(())
}
