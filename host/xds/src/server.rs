//! A state-of-the-world ADS server.
//!
//! Per stream and per type it remembers what it sent (version and nonce) and
//! what Envoy asked for. ACKs and NACKs are recorded in the cache's
//! [`crate::feedback::Feedback`], where the controller reads them; a NACK is
//! also logged with Envoy's error detail, and the rejected version is not sent
//! again (it would only be rejected again) until the configuration changes.
//! Types are always pushed in [`TYPE_ORDER`], clusters and endpoints before
//! the listeners and routes that use them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::SnapshotCache;
use crate::encode::TYPE_ORDER;

/// Numbers the ADS streams of this process.
static STREAMS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    /// Serve a stream only the node its TLS client certificate names
    /// ([`crate::tls::PeerGateway`]).
    authenticated: bool,
}

impl AdsServer {
    /// Any client gets any node's configuration (loopback, local Envoys).
    pub fn new(cache: Arc<SnapshotCache>) -> Self {
        AdsServer {
            cache,
            authenticated: false,
        }
    }

    /// Behind [`crate::tls::incoming`]: each stream gets only the
    /// configuration of the Gateway its client certificate names.
    pub fn authenticated(cache: Arc<SnapshotCache>) -> Self {
        AdsServer {
            cache,
            authenticated: true,
        }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let allowed = if self.authenticated {
            let peer = request
                .extensions()
                .get::<crate::tls::PeerGateway>()
                .and_then(|p| p.0.clone());
            Allowed::Only(peer)
        } else {
            Allowed::Any
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_stream(
            self.cache.clone(),
            request.into_inner(),
            tx,
            allowed,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "infergate serves state-of-the-world ADS; configure Envoy with api_type GRPC",
        ))
    }
}

/// What one stream knows about one resource type.
#[derive(Default)]
struct Subscription {
    /// Resource names Envoy asked for; empty means all (wildcard).
    names: Vec<String>,
    /// The version last sent on this stream, if any.
    sent_version: Option<String>,
    nonce: String,
}

/// Which node a stream may ask for.
enum Allowed {
    Any,
    /// The node its certificate names; None: its certificate names none.
    Only(Option<String>),
}

async fn serve_stream(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    allowed: Allowed,
) {
    let mut changes = cache.subscribe();
    let stream = STREAMS.fetch_add(1, Ordering::Relaxed);
    let mut node = String::new();
    let mut subscriptions: HashMap<String, Subscription> = HashMap::new();
    let mut nonces: u64 = 0;
    'serve: loop {
        tokio::select! {
            request = requests.next() => {
                let Some(Ok(request)) = request else { break };
                if node.is_empty() {
                    let asked = request.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                    if let Allowed::Only(certified) = &allowed
                        && certified.as_deref() != Some(asked.as_str())
                    {
                        let message = match certified {
                            Some(gateway) => format!(
                                "node {asked:?} refused: this client's certificate is for Gateway {gateway}"
                            ),
                            None => format!("node {asked:?} refused: this client's certificate names no Gateway"),
                        };
                        tracing::warn!("xDS stream refused: {message}");
                        let _ = tx.send(Err(Status::permission_denied(message))).await;
                        return;
                    }
                    node = asked;
                    tracing::info!(node = %node, "Envoy connected");
                    cache.record(|f| f.connected(stream, &node));
                }
                let subscription = subscriptions.entry(request.type_url.clone()).or_default();
                if !request.response_nonce.is_empty() && request.response_nonce != subscription.nonce {
                    continue; // answers an older response; a newer one is on its way
                }
                if let Some(error) = &request.error_detail {
                    let rejected = subscription.sent_version.clone().unwrap_or_default();
                    cache.record(|f| f.nack(stream, &request.type_url, &rejected, &error.message));
                    tracing::warn!(
                        node = %node,
                        type_url = %request.type_url,
                        rejected_version = %subscription.sent_version.clone().unwrap_or_default(),
                        "Envoy rejected the configuration (NACK): {}",
                        error.message
                    );
                    subscription.names = request.resource_names;
                    continue;
                }
                if request.response_nonce.is_empty() {
                    cache.record(|f| f.subscribed(stream, &request.type_url));
                } else {
                    cache.record(|f| f.ack(stream, &request.type_url, &request.version_info));
                }
                if request.response_nonce.is_empty() || subscription.names != request.resource_names {
                    subscription.sent_version = None; // a new or changed subscription gets the current state
                }
                subscription.names = request.resource_names;
            }
            changed = changes.changed() => {
                if changed.is_err() { break }
            }
        }
        if node.is_empty() {
            continue;
        }
        let Some(snapshot) = cache.get(&node) else {
            continue;
        };
        for type_url in TYPE_ORDER {
            let Some(subscription) = subscriptions.get_mut(type_url) else {
                continue;
            };
            let current = snapshot.types.get(type_url).cloned().unwrap_or_default();
            if subscription.sent_version.as_deref() == Some(current.version.as_str()) {
                continue;
            }
            nonces += 1;
            let resources = current
                .resources
                .iter()
                .filter(|(name, _)| {
                    subscription.names.is_empty() || subscription.names.contains(name)
                })
                .map(|(_, any)| any.clone())
                .collect();
            let response = DiscoveryResponse {
                version_info: current.version.clone(),
                resources,
                type_url: type_url.to_string(),
                nonce: nonces.to_string(),
                ..Default::default()
            };
            subscription.sent_version = Some(current.version.clone());
            subscription.nonce = nonces.to_string();
            if tx.send(Ok(response)).await.is_err() {
                break 'serve;
            }
        }
    }
    if !node.is_empty() {
        cache.record(|f| f.disconnected(stream));
        tracing::info!(node = %node, "Envoy disconnected");
    }
}
