//! The servers both modes run: xDS (ADS) for the Envoys, and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use infergate_xds::{AdsServer, SnapshotCache};

use crate::metrics::Metrics;

/// A running server; `stop()` ends it.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        match self.stop.take() {
            Some(stop) => {
                let _ = stop.send(());
            }
            None => self.task.abort(),
        }
        let _ = (&mut self.task).await;
    }
}

/// Serve ADS from `cache` on `address` (`flag` names the option, for errors):
/// in cleartext, or with `tls` only to clients with a certificate of its CA,
/// each given only the Gateway its certificate names.
pub async fn xds(
    address: SocketAddr,
    cache: Arc<SnapshotCache>,
    flag: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the xDS server to {address} ({flag})"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        "xDS server listening"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let served = match tls {
            None => {
                tonic::transport::Server::builder()
                    .add_service(AdsServer::new(cache).into_service())
                    .serve_with_incoming_shutdown(infergate_serving::incoming(listener), stopped)
                    .await
            }
            Some(tls) => {
                tonic::transport::Server::builder()
                    .add_service(AdsServer::authenticated(cache).into_service())
                    .serve_with_incoming_shutdown(
                        infergate_xds::tls::incoming(listener, tls),
                        stopped,
                    )
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!("xDS server failed: {e}");
        }
    });
    Ok(Running {
        stop: Some(stop),
        task,
    })
}

/// Serve /metrics and /info on `address`.
pub async fn metrics(address: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics server to {address} (--metrics-address)"))?;
    tracing::info!(address = %listener.local_addr()?, "metrics on /metrics, the active component on /info");
    let task = tokio::spawn(crate::metrics::serve(listener, metrics));
    Ok(Running { stop: None, task })
}
