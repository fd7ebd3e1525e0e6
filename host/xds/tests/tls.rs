//! The ADS server behind mutual TLS (what deployed Envoys reach): a client
//! needs a certificate of the controller's CA, and gets only the node its
//! certificate names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use infergate_model as ir;
use infergate_xds::encode::{self, CLUSTER_TYPE};
use infergate_xds::{AdsServer, SnapshotCache};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_stream::wrappers::ReceiverStream;

const SERVER_NAME: &str = "infergate.infergate-system.svc";

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) PEM.
    fn issue(&self, sans: Vec<SanType>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn gateway(&self, namespace: &str, name: &str) -> (String, String) {
        let uri = infergate_names::xds_identity::gateway_uri(namespace, name);
        self.issue(vec![SanType::URI(uri.try_into().unwrap())])
    }
}

async fn serve(pki: &Pki, cache: Arc<SnapshotCache>) -> SocketAddr {
    let (cert, key) = pki.issue(vec![SanType::DnsName(SERVER_NAME.try_into().unwrap())]);
    let config = infergate_xds::tls::server_config(&cert, &key, &pki.ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::authenticated(cache).into_service())
            .serve_with_incoming(infergate_xds::tls::incoming(listener, config)),
    );
    address
}

fn client_config(ca_pem: &str, identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Open a stream as `node` and return the first thing the server says
/// within two seconds: Ok(type_url) of a response, Err(what went wrong),
/// or Ok("") when it says nothing.
async fn first_answer(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    node: &str,
) -> Result<String, String> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://xds.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            node: Some(Node {
                id: node.to_string(),
                ..Default::default()
            }),
            type_url: CLUSTER_TYPE.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let call = async {
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
            .into_inner();
        match responses.message().await {
            Ok(Some(r)) => Ok(r.type_url),
            Ok(None) => Err("closed".to_string()),
            Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(answer) => answer,
        Err(_) => Ok(String::new()),
    }
}

fn snapshot_for(node: &str) -> encode::Resources {
    encode::gateway(
        &ir::GatewayIr {
            node_id: node.to_string(),
            listeners: vec![],
            clusters: vec![],
        },
        &Default::default(),
    )
}

#[tokio::test]
async fn a_gateway_certificate_gets_its_own_node_and_nothing_else() {
    let pki = Pki::new();
    let cache = SnapshotCache::new();
    cache.replace_all(vec![
        ("team/gw".to_string(), snapshot_for("team/gw")),
        ("team/other".to_string(), snapshot_for("team/other")),
    ]);
    let address = serve(&pki, cache).await;
    let gw = client_config(&pki.ca_pem, Some(pki.gateway("team", "gw")));

    assert_eq!(
        first_answer(address, gw.clone(), "team/gw").await,
        Ok(CLUSTER_TYPE.to_string())
    );
    let refused = first_answer(address, gw, "team/other").await.unwrap_err();
    assert!(
        refused.contains("PermissionDenied") && refused.contains("team/gw"),
        "{refused}"
    );
    // A certificate of the CA that names no Gateway gets nothing either.
    let nameless = client_config(
        &pki.ca_pem,
        Some(pki.issue(vec![SanType::DnsName("envoy.example".try_into().unwrap())])),
    );
    let refused = first_answer(address, nameless, "team/gw")
        .await
        .unwrap_err();
    assert!(refused.contains("names no Gateway"), "{refused}");
}

#[tokio::test]
async fn no_configuration_without_a_certificate_of_the_ca() {
    let pki = Pki::new();
    let cache = SnapshotCache::new();
    cache.replace_all(vec![("team/gw".to_string(), snapshot_for("team/gw"))]);
    let address = serve(&pki, cache).await;

    let anonymous = client_config(&pki.ca_pem, None);
    assert!(
        first_answer(address, anonymous, "team/gw").await.is_err(),
        "a client without a certificate got an answer"
    );
    let stranger = Pki::new();
    let forged = client_config(&pki.ca_pem, Some(stranger.gateway("team", "gw")));
    assert!(
        first_answer(address, forged, "team/gw").await.is_err(),
        "a certificate of another CA got an answer"
    );
    // Cleartext gRPC to the TLS port gets nothing.
    let plain = AggregatedDiscoveryServiceClient::connect(format!("http://{address}")).await;
    if let Ok(mut client) = plain {
        let (_tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await;
        assert!(
            !matches!(answer, Ok(Ok(_))),
            "a cleartext client got a stream"
        );
    }
}

/// The certificate a TLS handshake with `address` shows.
async fn served_certificate(address: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let cache = SnapshotCache::new();
    cache.replace_all(vec![("team/gw".to_string(), snapshot_for("team/gw"))]);
    let san = || vec![SanType::DnsName(SERVER_NAME.try_into().unwrap())];
    let (cert, key) = pki.issue(san());
    let (config, certificate) =
        infergate_xds::tls::rotating_server_config(&cert, &key, &pki.ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::authenticated(cache).into_service())
            .serve_with_incoming(infergate_xds::tls::incoming(listener, config)),
    );
    let client = client_config(&pki.ca_pem, Some(pki.gateway("team", "gw")));
    let der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_eq!(
        served_certificate(address, client.clone()).await,
        der(&cert)
    );

    let (renewed, renewed_key) = pki.issue(san());
    certificate.replace(&renewed, &renewed_key).unwrap();
    assert_eq!(
        served_certificate(address, client.clone()).await,
        der(&renewed)
    );
    assert_eq!(
        first_answer(address, client, "team/gw").await,
        Ok(CLUSTER_TYPE.to_string()),
        "configuration is served with the renewed certificate"
    );
    // A key that is not the certificate's is refused, the served one kept.
    assert!(certificate.replace(&cert, &renewed_key).is_err());
}
