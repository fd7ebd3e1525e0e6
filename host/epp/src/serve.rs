//! Wiring: the gRPC servers, the health services, /metrics and the scraper.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::extproc::{Counters, Picker};
use crate::scheduler::{Scheduler, parse_vllm_metrics};

/// How the ext_proc port is secured.
#[derive(Clone, Debug)]
pub enum Tls {
    /// A certificate generated in memory at start-up (the default, as the
    /// reference picker does); clients skip verification.
    SelfSigned,
    /// `tls.crt` and `tls.key` from this directory.
    Files(PathBuf),
    /// No TLS.
    Plaintext,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub bind_address: IpAddr,
    /// 0 picks a free port (tests).
    pub grpc_port: u16,
    pub grpc_health_port: u16,
    pub metrics_port: u16,
    pub tls: Tls,
    pub endpoints: Vec<SocketAddr>,
    pub pool: String,
    pub test_header_steering: bool,
    pub refresh_metrics_interval: Duration,
    pub metrics_staleness_threshold: Duration,
    pub scrape_timeout: Duration,
    pub max_body_bytes: usize,
    /// The scorers' weights.
    pub weights: crate::scheduler::Weights,
    /// Connections and read timeouts of the metrics server.
    pub metrics_limits: infergate_serving::Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 9002,
            grpc_health_port: 9003,
            metrics_port: 9090,
            tls: Tls::SelfSigned,
            endpoints: vec![],
            pool: "default/pool".into(),
            test_header_steering: false,
            refresh_metrics_interval: Duration::from_millis(50),
            metrics_staleness_threshold: Duration::from_secs(2),
            scrape_timeout: Duration::from_secs(1),
            max_body_bytes: 16 << 20,
            weights: crate::scheduler::Weights::default(),
            metrics_limits: infergate_serving::Limits::default(),
        }
    }
}

/// A running picker. Dropping it stops its servers.
pub struct Handle {
    pub grpc: SocketAddr,
    pub grpc_health: SocketAddr,
    pub metrics: SocketAddr,
    pub scheduler: Arc<Scheduler>,
    reporter: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
}

impl Handle {
    /// Set the readiness health services (`readiness` and the ext_proc
    /// service): serving once the pool has endpoints.
    pub async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in HEALTH_SERVICES.iter().filter(|s| **s != "liveness") {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The gRPC health service names the picker answers for. All but
/// `liveness` follow readiness; `inference-extension` is the upstream
/// picker's service, which its manifests probe (the conformance suite's).
pub const HEALTH_SERVICES: [&str; 4] = [
    "liveness",
    "readiness",
    "envoy.service.ext_proc.v3.ExternalProcessor",
    "inference-extension",
];

async fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("binding the {what} port {ip}:{port}"))
}

pub async fn start(config: Config) -> anyhow::Result<Handle> {
    let identity = match &config.tls {
        Tls::SelfSigned => {
            let (cert, key) = crate::tls::self_signed()?;
            Some(Identity::from_pem(cert, key))
        }
        Tls::Files(dir) => {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            };
            Some(Identity::from_pem(read("tls.crt")?, read("tls.key")?))
        }
        Tls::Plaintext => None,
    };
    let grpc = bind(config.bind_address, config.grpc_port, "gRPC").await?;
    let health = bind(config.bind_address, config.grpc_health_port, "gRPC health").await?;
    let metrics = bind(config.bind_address, config.metrics_port, "metrics").await?;
    let addresses = (
        grpc.local_addr()?,
        health.local_addr()?,
        metrics.local_addr()?,
    );

    let scheduler = Arc::new(Scheduler::with_weights(
        config.metrics_staleness_threshold,
        config.weights,
    ));
    scheduler.set_endpoints(&config.endpoints);
    let counters = Arc::new(Counters::default());
    let picker = Picker {
        scheduler: scheduler.clone(),
        counters: counters.clone(),
        splits: Default::default(),
        test_header_steering: config.test_header_steering,
        max_body_bytes: config.max_body_bytes,
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = if config.endpoints.is_empty() {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    for service in HEALTH_SERVICES {
        let status = if service == "liveness" {
            ServingStatus::Serving
        } else {
            readiness
        };
        reporter.set_service_status(service, status).await;
    }

    let (stop, stopped) = watch::channel(false);
    let shutdown = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };

    let mut builder = Server::builder();
    if let Some(identity) = identity {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .context("configuring TLS")?;
    }
    let router = builder
        .add_service(ExternalProcessorServer::new(picker))
        .add_service(health_service.clone());
    tokio::spawn(router.serve_with_incoming_shutdown(
        infergate_serving::incoming(grpc),
        shutdown(stopped.clone()),
    ));
    tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                infergate_serving::incoming(health),
                shutdown(stopped.clone()),
            ),
    );
    tokio::spawn(serve_metrics(
        metrics,
        config.metrics_limits,
        crate::metrics::registry(&config.pool, &counters, scheduler.clone()),
        stopped.clone(),
    ));
    tokio::spawn(scrape(
        scheduler.clone(),
        config.refresh_metrics_interval,
        config.scrape_timeout,
        stopped,
    ));
    Ok(Handle {
        grpc: addresses.0,
        grpc_health: addresses.1,
        metrics: addresses.2,
        scheduler,
        reporter,
        stop,
    })
}

/// Read every endpoint's /metrics every `interval`. Each endpoint is
/// scraped on its own, so one that hangs delays nobody else; a scrape still
/// running when the next tick comes is not started twice.
async fn scrape(
    scheduler: Arc<Scheduler>,
    interval: Duration,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let in_flight = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        for address in scheduler.addresses() {
            if !in_flight.lock().expect("in-flight lock").insert(address) {
                continue;
            }
            let (client, scheduler, in_flight) =
                (client.clone(), scheduler.clone(), in_flight.clone());
            tokio::spawn(async move {
                let outcome = scrape_one(&client, address).await;
                if let Err(error) = &outcome {
                    tracing::debug!("{error}");
                }
                scheduler.report(address, outcome);
                in_flight.lock().expect("in-flight lock").remove(&address);
            });
        }
    }
}

async fn scrape_one(
    client: &reqwest::Client,
    address: SocketAddr,
) -> Result<crate::scheduler::Load, String> {
    let response = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .map_err(|e| format!("scraping {address}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("scraping {address}: HTTP {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("scraping {address}: {e}"))?;
    parse_vllm_metrics(&text).map_err(|e| format!("{address}/metrics: {e}"))
}

async fn serve_metrics(
    listener: TcpListener,
    limits: infergate_serving::Limits,
    registry: prometheus_client::registry::Registry,
    mut stopped: watch::Receiver<bool>,
) {
    use infergate_serving::telemetry;
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    telemetry::serve_pages(listener, limits, stop, "try /metrics", move |path| {
        (path == "/metrics")
            .then(|| telemetry::Page::ok(telemetry::OPENMETRICS, telemetry::encode(&registry)))
    })
    .await
}
