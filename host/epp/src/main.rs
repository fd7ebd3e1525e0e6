//! `infergate-epp`: the endpoint picker. Flags are named like the upstream
//! picker's where they overlap.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use infergate_epp::{Config, Tls};

/// An Envoy ext_proc endpoint picker for an InferencePool: picks the
/// model-server endpoint by weighted scores (queue, KV cache, running
/// requests, prefix-cache affinity, LoRA affinity).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address the gRPC, health and metrics servers listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The ext_proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    grpc_port: u16,
    /// The gRPC health port (plaintext): services liveness, readiness and
    /// envoy.service.ext_proc.v3.ExternalProcessor.
    #[arg(long, default_value_t = 9003)]
    grpc_health_port: u16,
    /// The Prometheus /metrics port.
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    /// The pool's name (for logs and metrics).
    #[arg(long, default_value = "pool")]
    pool_name: String,
    /// The pool's namespace.
    #[arg(long, default_value = "default")]
    pool_namespace: String,
    /// The pool's endpoints, `ip:port,...` (standalone). Without it, the
    /// picker watches its InferencePool and that pool's ready Pods in
    /// Kubernetes (--kubeconfig, $KUBECONFIG or the in-cluster service account).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<SocketAddr>,
    /// Kubeconfig for pool discovery. Default: $KUBECONFIG, ~/.kube/config, else in-cluster.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve TLS (a self-signed certificate unless --cert-path is given).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    secure_serving: bool,
    /// A directory with tls.crt and tls.key to serve instead of a generated certificate.
    #[arg(long)]
    cert_path: Option<PathBuf>,
    /// Follow the test-epp-endpoint-selection request header and echo the
    /// served endpoint in x-conformance-test-served-endpoint. For
    /// conformance tests only: any client could steer its own requests.
    #[arg(long)]
    test_header_steering: bool,
    /// How often to read each endpoint's /metrics, e.g. 50ms.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    refresh_metrics_interval: Duration,
    /// Metrics older than this do not count, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    metrics_staleness_threshold: Duration,
    /// Weight of the queue scorer (shortest queue of waiting requests wins).
    #[arg(long, default_value_t = 2.0)]
    queue_weight: f64,
    /// Weight of the KV-cache scorer (emptiest cache wins).
    #[arg(long, default_value_t = 2.0)]
    kv_cache_weight: f64,
    /// Weight of the running-requests scorer (the server decoding fewest requests wins).
    #[arg(long, default_value_t = 1.0)]
    running_weight: f64,
    /// Weight of the LoRA-affinity scorer (a request for an adapter goes where it is loaded, then
    /// where there is room to load it).
    #[arg(long, default_value_t = 3.0)]
    lora_weight: f64,
    /// Weight of the prefix-affinity scorer (the endpoint this prompt's leading blocks were last
    /// sent to wins); 0 turns it off.
    #[arg(long, default_value_t = 3.0)]
    prefix_weight: f64,
    /// An endpoint whose reported queue is longer than the shortest candidate's by more than this
    /// many requests gets no prefix or LoRA-adapter credit (relative: when every server is busy,
    /// affinity stays; a prefix or adapter busier than its servers spills over).
    #[arg(long, default_value_t = 4.0)]
    affinity_max_extra_queue: f64,
    /// Prompt blocks (16 tokens each) remembered per endpoint, least recently used first out.
    #[arg(long, default_value_t = 16384)]
    prefix_blocks_per_endpoint: usize,
    /// An endpoint that failed a request (the gateway's retry served it elsewhere) is chosen only
    /// after every other for this long, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    failure_cooldown: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Log lines as text or as JSON objects (one per line). RUST_LOG filters them (default: info).
    /// `--zap-encoder json|console`, the upstream picker's flag, means the same.
    #[arg(
        long,
        env = "INFERGATE_LOG_FORMAT",
        default_value = "text",
        alias = "zap-encoder"
    )]
    log_format: infergate_serving::telemetry::LogFormat,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 50ms or 2s"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infergate_serving::telemetry::init_logs(args.log_format);
    // Without --endpoints, the pool comes from Kubernetes: connect first, so
    // that a missing configuration is an error before anything listens.
    let client = if args.endpoints.is_empty() {
        Some(infergate_kube::client(args.kubeconfig.as_deref()).await.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(no --endpoints given: the picker discovers InferencePool {}/{} in Kubernetes)",
                args.pool_namespace,
                args.pool_name
            )
        })?)
    } else {
        None
    };
    let tls = match (args.secure_serving, args.cert_path) {
        (false, Some(_)) => bail!("--cert-path needs --secure-serving=true"),
        (false, None) => Tls::Plaintext,
        (true, Some(dir)) => Tls::Files(dir),
        (true, None) => Tls::SelfSigned,
    };
    let handle = std::sync::Arc::new(
        infergate_epp::start(Config {
            bind_address: args.bind_address,
            grpc_port: args.grpc_port,
            grpc_health_port: args.grpc_health_port,
            metrics_port: args.metrics_port,
            tls: tls.clone(),
            endpoints: args.endpoints.clone(),
            pool: format!("{}/{}", args.pool_namespace, args.pool_name),
            test_header_steering: args.test_header_steering,
            refresh_metrics_interval: args.refresh_metrics_interval,
            metrics_staleness_threshold: args.metrics_staleness_threshold,
            scrape_timeout: args.metrics_staleness_threshold.min(Duration::from_secs(1)),
            max_body_bytes: args.max_body_bytes,
            weights: infergate_epp::scheduler::Weights {
                queue: args.queue_weight,
                kv_cache: args.kv_cache_weight,
                running: args.running_weight,
                prefix: args.prefix_weight,
                lora: args.lora_weight,
                affinity_max_extra_queue: args.affinity_max_extra_queue,
                prefix_blocks_per_endpoint: args.prefix_blocks_per_endpoint,
                failure_cooldown: args.failure_cooldown,
            },
            metrics_limits: infergate_serving::Limits::default(),
        })
        .await?,
    );
    tracing::info!(
        pool = %format!("{}/{}", args.pool_namespace, args.pool_name),
        grpc = %handle.grpc,
        health = %handle.grpc_health,
        metrics = %handle.metrics,
        tls = ?tls,
        endpoints = ?args.endpoints,
        test_header_steering = args.test_header_steering,
        "endpoint picker listening"
    );
    if let Some(client) = client {
        tokio::spawn(infergate_epp::discovery::run(
            client,
            args.pool_namespace.clone(),
            args.pool_name.clone(),
            handle.clone(),
        ));
    }
    if args.test_header_steering {
        tracing::warn!(
            "--test-header-steering is on: clients can choose their endpoint; use it for tests only"
        );
    }
    infergate_serving::telemetry::stop_requested().await;
    Ok(())
}
