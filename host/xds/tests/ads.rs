//! The ADS server driven in-process by the generated ADS client, the way
//! Envoy drives it: subscribe, ACK, NACK, stale nonces, per-node snapshots
//! and the order of types on a change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use infergate_model as ir;
use infergate_xds::encode::{self, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use infergate_xds::{AdsServer, SnapshotCache};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// How long to wait for a response that must come.
const EXPECT: Duration = Duration::from_secs(5);
/// How long to listen for a response that must not come. A real server
/// answers in well under a millisecond on loopback.
const QUIET: Duration = Duration::from_millis(300);

fn gateway(node: &str, backends: &[(&str, u32)]) -> encode::Resources {
    let cluster = |name: &str, port: u32| ir::ClusterIr {
        name: name.to_string(),
        endpoints: vec![ir::SocketAddress {
            address: "127.0.0.1".to_string(),
            port,
        }],
        protocol: ir::UpstreamProtocol::Http1,
        tls: None,
        load_balancer: ir::LoadBalancer::RoundRobin,
    };
    encode::gateway(
        &ir::GatewayIr {
            node_id: node.to_string(),
            listeners: vec![ir::ListenerIr {
                name: "127.0.0.1:8080".to_string(),
                address: "127.0.0.1".to_string(),
                port: 8080,
                filter_chains: vec![ir::FilterChainIr {
                    name: "127.0.0.1:8080".to_string(),
                    server_names: vec![],
                    tls: None,
                    model_routing: None,
                    virtual_hosts: vec![],
                }],
            }],
            clusters: backends.iter().map(|(n, p)| cluster(n, *p)).collect(),
        },
        &Default::default(),
    )
}

async fn serve(cache: Arc<SnapshotCache>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// One ADS stream, as one Envoy holds it.
struct Stream {
    node: String,
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn open(address: SocketAddr, node: &str) -> Stream {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream {
            node: node.to_string(),
            requests,
            responses,
        }
    }

    async fn send(&self, type_url: &str, version: &str, nonce: &str, error: Option<&str>) {
        self.requests
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: self.node.clone(),
                    ..Default::default()
                }),
                type_url: type_url.to_string(),
                version_info: version.to_string(),
                response_nonce: nonce.to_string(),
                error_detail: error.map(|message| RpcStatus {
                    code: 3,
                    message: message.to_string(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn subscribe(&self, type_url: &str) {
        self.send(type_url, "", "", None).await;
    }

    async fn ack(&self, response: &DiscoveryResponse) {
        self.send(
            &response.type_url,
            &response.version_info,
            &response.nonce,
            None,
        )
        .await;
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(EXPECT, self.responses.message())
            .await
            .expect("the server should have answered")
            .unwrap()
            .expect("the stream should stay open")
    }

    async fn assert_quiet(&mut self) {
        if let Ok(response) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!(
                "expected no response, got {:?}",
                response.map(|r| r.map(|r| r.type_url))
            );
        }
    }

    /// Subscribe to all four types and ACK what comes back.
    async fn subscribe_all(&mut self) -> Vec<DiscoveryResponse> {
        let mut got = vec![];
        for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
            self.subscribe(type_url).await;
            let response = self.next().await;
            assert_eq!(response.type_url, type_url);
            self.ack(&response).await;
            got.push(response);
        }
        got
    }
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_slice()).unwrap().name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn subscription_gets_the_current_state_and_an_ack_gets_nothing() {
    let cache = SnapshotCache::new();
    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("a", 1)]),
    )]);
    let mut stream = Stream::open(serve(cache).await, "default/gw").await;

    let responses = stream.subscribe_all().await;
    assert_eq!(cluster_names(&responses[0]), ["a"]);
    assert_eq!(responses[2].resources.len(), 1, "one listener");
    let nonces: std::collections::HashSet<_> = responses.iter().map(|r| &r.nonce).collect();
    assert_eq!(nonces.len(), 4, "every response has its own nonce");
    stream.assert_quiet().await;
}

#[tokio::test]
async fn a_change_is_pushed_clusters_and_endpoints_before_listeners_and_routes() {
    let cache = SnapshotCache::new();
    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("a", 1)]),
    )]);
    let mut stream = Stream::open(serve(cache.clone()).await, "default/gw").await;
    let first = stream.subscribe_all().await;

    // A new cluster, and a listener whose port changes, in one change.
    let mut next = gateway("default/gw", &[("a", 1), ("b", 2)]);
    next.listeners[0].name = "127.0.0.1:9090".to_string();
    cache.replace_all(vec![("default/gw".into(), next)]);

    let mut order = vec![];
    for _ in 0..3 {
        let response = stream.next().await;
        stream.ack(&response).await;
        order.push(response);
    }
    let types: Vec<&str> = order.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE]);
    assert_eq!(cluster_names(&order[0]), ["a", "b"]);
    assert_ne!(order[0].version_info, first[0].version_info);
    // Routes did not change, so they are not sent again.
    stream.assert_quiet().await;
}

#[tokio::test]
async fn a_nack_is_not_answered_with_the_same_configuration_again() {
    let cache = SnapshotCache::new();
    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("a", 1)]),
    )]);
    let mut stream = Stream::open(serve(cache.clone()).await, "default/gw").await;
    let first = stream.subscribe_all().await;

    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("bad", 1)]),
    )]);
    let rejected = stream.next().await;
    assert_eq!(rejected.type_url, CLUSTER_TYPE);
    let _endpoints = stream.next().await;
    // Envoy rejects the clusters: it repeats the last version it accepted
    // with the nonce it is answering and the error.
    stream
        .send(
            CLUSTER_TYPE,
            &first[0].version_info,
            &rejected.nonce,
            Some("cluster 'bad': invalid"),
        )
        .await;
    stream.assert_quiet().await;

    // The next change is sent.
    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("good", 1)]),
    )]);
    let fixed = stream.next().await;
    assert_eq!(fixed.type_url, CLUSTER_TYPE);
    assert_eq!(cluster_names(&fixed), ["good"]);
}

#[tokio::test]
async fn a_request_answering_an_older_nonce_is_ignored() {
    let cache = SnapshotCache::new();
    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("a", 1)]),
    )]);
    let mut stream = Stream::open(serve(cache.clone()).await, "default/gw").await;
    stream.subscribe(CLUSTER_TYPE).await;
    let old = stream.next().await;

    cache.replace_all(vec![(
        "default/gw".into(),
        gateway("default/gw", &[("b", 1)]),
    )]);
    let new = stream.next().await;
    assert_eq!(cluster_names(&new), ["b"]);
    // A late NACK of the first response must not stop the newer one or
    // trigger anything.
    stream
        .send(CLUSTER_TYPE, "", &old.nonce, Some("late rejection"))
        .await;
    stream.assert_quiet().await;
    stream.ack(&new).await;
    stream.assert_quiet().await;
}

#[tokio::test]
async fn each_node_gets_its_own_gateway_and_a_removed_gateway_empties() {
    let cache = SnapshotCache::new();
    cache.replace_all(vec![
        ("default/one".into(), gateway("default/one", &[("one", 1)])),
        ("default/two".into(), gateway("default/two", &[("two", 2)])),
    ]);
    let address = serve(cache.clone()).await;
    let mut one = Stream::open(address, "default/one").await;
    let mut two = Stream::open(address, "default/two").await;
    let mut unknown = Stream::open(address, "default/unknown").await;

    assert_eq!(cluster_names(&one.subscribe_all().await[0]), ["one"]);
    assert_eq!(cluster_names(&two.subscribe_all().await[0]), ["two"]);
    unknown.subscribe(CLUSTER_TYPE).await;
    unknown.assert_quiet().await;

    // Gateway "two" is deleted: its Envoy is told to drop everything; "one"
    // hears nothing because nothing of it changed.
    cache.replace_all(vec![(
        "default/one".into(),
        gateway("default/one", &[("one", 1)]),
    )]);
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE] {
        let response = two.next().await;
        assert_eq!(response.type_url, type_url);
        assert!(response.resources.is_empty(), "{type_url} should be empty");
        two.ack(&response).await;
    }
    one.assert_quiet().await;
}
