//! The picker driven by the generated ext_proc client over loopback, the
//! way Envoy drives it, with simulated model servers behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, body_mutation, processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use infergate_epp::extproc::{DESTINATION_HEADER, MAX_CHUNK, TEST_SERVED_HEADER};
use infergate_epp::{Config, Handle, Tls};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const EXPECT: Duration = Duration::from_secs(5);
/// Long enough for a reply that should not come to have come.
const QUIET: Duration = Duration::from_millis(300);

async fn picker(endpoints: &[SocketAddr], tls: Tls, test_header_steering: bool) -> Handle {
    infergate_epp::start(Config {
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        tls,
        endpoints: endpoints.to_vec(),
        test_header_steering,
        ..Config::default()
    })
    .await
    .expect("the picker starts")
}

/// Endpoints nobody listens on: the picker has no metrics for them and
/// takes turns.
fn unreachable_endpoints() -> Vec<SocketAddr> {
    vec![
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    ]
}

/// Accepts TLS from a server whose certificate it does not check, as
/// Envoy is configured to for the picker's self-signed certificate.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel over TLS with ALPN h2 that skips certificate verification.
async fn tls_channel(address: SocketAddr) -> Channel {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("a TLS connection to the picker")
}

async fn plain_channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("a connection to the picker")
}

/// One ext_proc stream, as Envoy holds one per HTTP request.
struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(channel: Channel) -> Stream {
        let (tx, requests) = mpsc::channel(64);
        let rx = ExternalProcessorClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .process(ReceiverStream::new(requests))
            .await
            .expect("the stream opens")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, request: ProcessingRequest) {
        self.tx.send(request).await.expect("the stream is open");
    }

    async fn next(&mut self) -> ProcessingResponse {
        tokio::time::timeout(EXPECT, self.rx.message())
            .await
            .expect("the picker should answer")
            .expect("no stream error")
            .expect("the stream should stay open")
    }

    async fn assert_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no reply yet, got {message:?}");
        }
    }
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool, mode: BodySendMode) -> ProcessingRequest {
    let mut all = vec![(":method", "POST"), (":path", "/v1/completions")];
    all.extend_from_slice(pairs);
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: all
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream,
            ..Default::default()
        })),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode as i32,
            response_body_mode: mode as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn with_metadata(
    mut request: ProcessingRequest,
    namespace: &str,
    key: &str,
    value: Value,
) -> ProcessingRequest {
    request.metadata_context = Some(Metadata {
        filter_metadata: [(
            namespace.to_string(),
            Struct {
                fields: [(key.to_string(), value)].into(),
            },
        )]
        .into(),
        ..Default::default()
    });
    request
}

fn response_headers() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: ":status".into(),
                    raw_value: b"200".to_vec(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

const COMPLETION: &[u8] =
    br#"{"model":"sim-model","prompt":"Write as if you were a critic: San Francisco"}"#;

/// The header mutation's value for `key`, if set.
fn set_header(common: &CommonResponse, key: &str) -> Option<String> {
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == key)
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
}

fn lb_destination(response: &ProcessingResponse) -> Option<String> {
    let lb = response.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    let Some(Kind::StructValue(lb)) = &lb.kind else {
        return None;
    };
    match &lb.fields.get(DESTINATION_HEADER)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The request-headers reply of a pick: (common response, destination).
fn picked(response: &ProcessingResponse) -> (CommonResponse, String) {
    let Some(processing_response::Response::RequestHeaders(h)) = &response.response else {
        panic!("expected a request-headers reply, got {response:?}");
    };
    let common = h.response.clone().expect("a common response");
    let destination = set_header(&common, DESTINATION_HEADER).expect("the destination header");
    assert_eq!(
        lb_destination(response).as_deref(),
        Some(destination.as_str()),
        "the envoy.lb metadata names the same endpoint as the header"
    );
    (common, destination)
}

fn streamed_chunk(response: &ProcessingResponse) -> (Vec<u8>, bool) {
    let body = match &response.response {
        Some(processing_response::Response::RequestBody(b))
        | Some(processing_response::Response::ResponseBody(b)) => b,
        other => panic!("expected a body reply, got {other:?}"),
    };
    match body
        .response
        .as_ref()
        .and_then(|c| c.body_mutation.as_ref())
        .and_then(|m| m.mutation.as_ref())
    {
        Some(body_mutation::Mutation::StreamedResponse(s)) => (s.body.clone(), s.end_of_stream),
        other => panic!("expected a streamed body, got {other:?}"),
    }
}

fn immediate_status(response: &ProcessingResponse) -> u16 {
    match &response.response {
        Some(processing_response::Response::ImmediateResponse(r)) => {
            r.status.as_ref().unwrap().code as u16
        }
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

/// Send a full-duplex request with `payload` in `chunk`-sized pieces and
/// return the pick and the body the picker streamed back.
async fn full_duplex(
    stream: &mut Stream,
    extra: &[(&str, &str)],
    payload: &[u8],
    chunk: usize,
) -> (CommonResponse, String, Vec<Vec<u8>>) {
    stream
        .send(headers(extra, false, BodySendMode::FullDuplexStreamed))
        .await;
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        if i + 1 < pieces.len() {
            stream.send(body(piece, false)).await;
        }
    }
    // The header reply is held until the body has ended.
    stream.assert_quiet().await;
    stream.send(body(pieces[pieces.len() - 1], true)).await;
    let (common, destination) = picked(&stream.next().await);
    let mut chunks = vec![];
    loop {
        let (bytes, end) = streamed_chunk(&stream.next().await);
        chunks.push(bytes);
        if end {
            break;
        }
    }
    (common, destination, chunks)
}

#[tokio::test]
async fn full_duplex_over_tls_holds_the_header_reply_until_the_body_ends() {
    let endpoints = unreachable_endpoints();
    let handle = picker(&endpoints, Tls::SelfSigned, false).await;
    let mut stream = Stream::open(tls_channel(handle.grpc).await).await;
    let (common, destination, chunks) = full_duplex(&mut stream, &[], COMPLETION, 20).await;
    assert!(common.clear_route_cache, "the route must be picked again");
    assert_eq!(
        set_header(&common, "content-length").as_deref(),
        Some(COMPLETION.len().to_string().as_str())
    );
    let first: SocketAddr = destination.split(',').next().unwrap().parse().unwrap();
    assert!(
        endpoints.contains(&first),
        "{destination} is not in the pool"
    );
    assert_eq!(chunks.concat(), COMPLETION, "the body comes back unchanged");
}

#[tokio::test]
async fn a_one_mebibyte_prompt_comes_back_in_chunks_under_62000_bytes() {
    let handle = picker(&unreachable_endpoints(), Tls::Plaintext, false).await;
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    let prompt = "x".repeat(1 << 20);
    let payload = format!(r#"{{"model":"sim-model","prompt":"{prompt}"}}"#).into_bytes();
    let (common, _, chunks) = full_duplex(&mut stream, &[], &payload, 64 * 1024).await;
    assert_eq!(
        set_header(&common, "content-length"),
        Some(payload.len().to_string())
    );
    assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK));
    assert_eq!(chunks.len(), payload.len().div_ceil(MAX_CHUNK));
    assert_eq!(chunks.concat(), payload);
}

#[tokio::test]
async fn buffered_mode_answers_headers_at_once_and_picks_on_the_body() {
    let endpoints = unreachable_endpoints();
    let handle = picker(&endpoints, Tls::Plaintext, false).await;
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    stream
        .send(headers(&[], false, BodySendMode::Buffered))
        .await;
    match stream.next().await.response {
        Some(processing_response::Response::RequestHeaders(h)) => {
            assert!(h.response.is_none(), "headers pass unchanged: {h:?}")
        }
        other => panic!("expected a request-headers reply, got {other:?}"),
    }
    stream.send(body(COMPLETION, true)).await;
    let reply = stream.next().await;
    let Some(processing_response::Response::RequestBody(b)) = &reply.response else {
        panic!("expected a body reply, got {reply:?}");
    };
    let common = b.response.as_ref().unwrap();
    assert!(common.clear_route_cache);
    assert!(common.body_mutation.is_none(), "the body is left as it is");
    let destination = set_header(common, DESTINATION_HEADER).unwrap();
    assert_eq!(lb_destination(&reply), Some(destination.clone()));
    assert!(endpoints.contains(&destination.split(',').next().unwrap().parse().unwrap()));
}

#[tokio::test]
async fn a_request_without_body_is_picked_on_its_headers() {
    let handle = picker(&unreachable_endpoints(), Tls::Plaintext, false).await;
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    stream
        .send(headers(&[], true, BodySendMode::FullDuplexStreamed))
        .await;
    let (common, _) = picked(&stream.next().await);
    assert_eq!(set_header(&common, "content-length"), None);
}

#[tokio::test]
async fn trailers_end_the_body_in_full_duplex_mode() {
    let handle = picker(&unreachable_endpoints(), Tls::Plaintext, false).await;
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    stream
        .send(headers(&[], false, BodySendMode::FullDuplexStreamed))
        .await;
    stream.send(body(COMPLETION, false)).await;
    stream
        .send(ProcessingRequest {
            request: Some(processing_request::Request::RequestTrailers(
                HttpTrailers::default(),
            )),
            ..Default::default()
        })
        .await;
    picked(&stream.next().await);
    let (bytes, end) = streamed_chunk(&stream.next().await);
    assert_eq!(bytes, COMPLETION);
    assert!(!end, "the trailers, not the body, end the stream");
    assert!(matches!(
        stream.next().await.response,
        Some(processing_response::Response::RequestTrailers(_))
    ));
}

#[tokio::test]
async fn the_subset_hint_limits_the_pick_and_an_empty_intersection_gets_503() {
    let endpoints: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.0.1:{i}").parse().unwrap())
        .collect();
    let handle = picker(&endpoints, Tls::Plaintext, false).await;
    let channel = plain_channel(handle.grpc).await;
    for _ in 0..4 {
        let mut stream = Stream::open(channel.clone()).await;
        let hint = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![string("127.0.0.1:2")],
            })),
        };
        stream
            .send(with_metadata(
                headers(&[], true, BodySendMode::FullDuplexStreamed),
                "envoy.lb.subset_hint",
                "x-gateway-destination-endpoint-subset",
                hint,
            ))
            .await;
        let (_, destination) = picked(&stream.next().await);
        assert_eq!(destination, "127.0.0.1:2");
    }
    let mut stream = Stream::open(channel).await;
    stream
        .send(with_metadata(
            headers(&[], true, BodySendMode::FullDuplexStreamed),
            "envoy.lb.subset_hint",
            "x-gateway-destination-endpoint-subset",
            string("10.9.9.9:8000,10.9.9.8:8000"),
        ))
        .await;
    assert_eq!(immediate_status(&stream.next().await), 503);
}

#[tokio::test]
async fn a_pool_without_endpoints_answers_503_and_is_not_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let handle = picker(&[], Tls::Plaintext, false).await;
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    stream
        .send(headers(&[], false, BodySendMode::FullDuplexStreamed))
        .await;
    stream.send(body(COMPLETION, true)).await;
    assert_eq!(immediate_status(&stream.next().await), 503);

    let mut health = HealthClient::new(plain_channel(handle.grpc_health).await);
    let status = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    let live = health.check(status("liveness")).await.unwrap().into_inner();
    assert_eq!(live.status, ServingStatus::Serving as i32);
    let ready = health
        .check(status("readiness"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn health_services_answer_on_the_health_port_and_the_tls_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let handle = picker(&unreachable_endpoints(), Tls::SelfSigned, false).await;
    for channel in [
        plain_channel(handle.grpc_health).await,
        tls_channel(handle.grpc).await,
    ] {
        let mut health = HealthClient::new(channel);
        for service in [
            "liveness",
            "readiness",
            "envoy.service.ext_proc.v3.ExternalProcessor",
        ] {
            let reply = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("{service}: {e}"))
                .into_inner();
            assert_eq!(reply.status, ServingStatus::Serving as i32, "{service}");
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await;
        assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn test_mode_follows_the_selection_header_and_echoes_the_served_endpoint() {
    let endpoints: Vec<SocketAddr> = ["127.0.0.1:3000", "127.0.0.1:3002", "127.0.0.2:3000"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let handle = picker(&endpoints, Tls::Plaintext, true).await;
    let channel = plain_channel(handle.grpc).await;
    // An IP selects each of its ports in turn.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let mut stream = Stream::open(channel.clone()).await;
        let (_, destination, _) = full_duplex(
            &mut stream,
            &[("test-epp-endpoint-selection", "127.0.0.1")],
            COMPLETION,
            1024,
        )
        .await;
        seen.insert(destination.split(',').next().unwrap().to_string());
    }
    assert_eq!(
        seen,
        ["127.0.0.1:3000".to_string(), "127.0.0.1:3002".to_string()].into()
    );
    // An exact ip:port, and the served endpoint comes back on the response.
    let mut stream = Stream::open(channel.clone()).await;
    let (_, destination, _) = full_duplex(
        &mut stream,
        &[("test-epp-endpoint-selection", "127.0.0.2:3000")],
        COMPLETION,
        1024,
    )
    .await;
    assert!(destination.starts_with("127.0.0.2:3000"));
    stream
        .send(with_metadata(
            response_headers(),
            "envoy.lb",
            "x-gateway-destination-endpoint-served",
            string("127.0.0.2:3000"),
        ))
        .await;
    let reply = stream.next().await;
    let Some(processing_response::Response::ResponseHeaders(h)) = &reply.response else {
        panic!("expected a response-headers reply, got {reply:?}");
    };
    assert_eq!(
        set_header(h.response.as_ref().unwrap(), TEST_SERVED_HEADER).as_deref(),
        Some("127.0.0.2:3000")
    );
    // The response body streams through chunk by chunk.
    for (chunk, end) in [
        (&b"data: 1\n\n"[..], false),
        (&b"data: [DONE]\n\n"[..], true),
    ] {
        stream.send(response_body(chunk, end)).await;
        assert_eq!(streamed_chunk(&stream.next().await), (chunk.to_vec(), end));
    }
}

#[tokio::test]
async fn without_test_mode_the_selection_header_is_ignored_and_nothing_is_echoed() {
    let endpoints: Vec<SocketAddr> = ["127.0.0.1:3000", "127.0.0.2:3000"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let handle = picker(&endpoints, Tls::Plaintext, false).await;
    let channel = plain_channel(handle.grpc).await;
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let mut stream = Stream::open(channel.clone()).await;
        let (_, destination, _) = full_duplex(
            &mut stream,
            &[("test-epp-endpoint-selection", "127.0.0.2:3000")],
            COMPLETION,
            1024,
        )
        .await;
        firsts.insert(destination.split(',').next().unwrap().to_string());
        stream
            .send(with_metadata(
                response_headers(),
                "envoy.lb",
                "x-gateway-destination-endpoint-served",
                string("127.0.0.2:3000"),
            ))
            .await;
        let reply = stream.next().await;
        let Some(processing_response::Response::ResponseHeaders(h)) = &reply.response else {
            panic!("expected a response-headers reply, got {reply:?}");
        };
        assert!(h.response.is_none(), "nothing added: {h:?}");
    }
    assert_eq!(firsts.len(), 2, "the header did not steer: {firsts:?}");
}

async fn sim(address: &str, name: &str, max_num_seqs: usize) -> infergate_sim::Handle {
    infergate_sim::start(
        address.parse().unwrap(),
        infergate_sim::Config {
            name: name.into(),
            max_num_seqs,
            time_to_first_token: Duration::from_secs(3),
            inter_token_latency: Duration::from_millis(1),
            kv_cache_tokens: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Start `n` completions on a simulator and leave them running.
fn load(address: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let _ = reqwest::Client::new()
                    .post(format!("http://{address}/v1/completions"))
                    .body(r#"{"model":"sim-model","prompt":"a prompt of about twenty-five tokens, long enough to show up in the cache figures","max_tokens":4}"#)
                    .send()
                    .await;
            })
        })
        .collect()
}

async fn metrics_text(handle: &Handle) -> String {
    reqwest::get(format!("http://{}/metrics", handle.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_emptiest_model_server_is_picked() {
    // busy: one slot, three requests (1 running, 2 waiting); warm: one
    // running request (KV cache in use, no queue); idle: nothing.
    let busy = sim("127.0.0.1:0", "busy", 1).await;
    let warm = sim("127.0.0.1:0", "warm", 4).await;
    let idle = sim("127.0.0.1:0", "idle", 4).await;
    let _busy_load = load(busy.address, 3);
    let _warm_load = load(warm.address, 1);
    let handle = picker(
        &[busy.address, warm.address, idle.address],
        Tls::Plaintext,
        false,
    )
    .await;
    // Wait until the picker has seen the queue.
    let mut seen = false;
    for _ in 0..100 {
        let text = metrics_text(&handle).await;
        if text.contains(&format!(
            "infergate_epp_endpoint_queue{{pool=\"default/pool\",endpoint=\"{}\"}} 2",
            busy.address
        )) && text.contains(&format!(
            "infergate_epp_endpoint_kv_cache_usage{{pool=\"default/pool\",endpoint=\"{}\"}} 0.0",
            warm.address
        )) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the picker never saw the load:\n{}",
        metrics_text(&handle).await
    );
    let mut stream = Stream::open(plain_channel(handle.grpc).await).await;
    let (_, destination, _) = full_duplex(&mut stream, &[], COMPLETION, 1024).await;
    assert_eq!(
        destination,
        format!("{},{},{}", idle.address, warm.address, busy.address),
        "idle first, then the one with KV cache in use, then the queued one"
    );
}

#[tokio::test]
async fn a_model_server_that_stops_answering_its_metrics_is_not_picked() {
    // A server that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_address = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let healthy = sim("127.0.0.1:0", "healthy", 4).await;
    let handle = picker(&[hung_address, healthy.address], Tls::Plaintext, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = plain_channel(handle.grpc).await;
    for _ in 0..6 {
        let mut stream = Stream::open(channel.clone()).await;
        stream
            .send(headers(&[], true, BodySendMode::FullDuplexStreamed))
            .await;
        let (_, destination) = picked(&stream.next().await);
        assert_eq!(destination, healthy.address.to_string());
    }
    let text = metrics_text(&handle).await;
    assert!(
        text.contains(&format!(
            "infergate_epp_endpoint_fresh{{pool=\"default/pool\",endpoint=\"{hung_address}\"}} 0"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn bodies_that_are_not_openai_requests_get_400_and_oversized_ones_413() {
    let handle = infergate_epp::start(Config {
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        tls: Tls::Plaintext,
        endpoints: unreachable_endpoints(),
        max_body_bytes: 1000,
        ..Config::default()
    })
    .await
    .unwrap();
    let channel = plain_channel(handle.grpc).await;
    for payload in [&b"not json"[..], br#"{"prompt":"no model"}"#] {
        let mut stream = Stream::open(channel.clone()).await;
        stream
            .send(headers(&[], false, BodySendMode::FullDuplexStreamed))
            .await;
        stream.send(body(payload, true)).await;
        assert_eq!(immediate_status(&stream.next().await), 400);
    }
    let mut stream = Stream::open(channel).await;
    stream
        .send(headers(&[], false, BodySendMode::FullDuplexStreamed))
        .await;
    stream.send(body(&[b' '; 600], false)).await;
    stream.send(body(&[b' '; 600], true)).await;
    assert_eq!(immediate_status(&stream.next().await), 413);
    assert!(
        metrics_text(&handle)
            .await
            .contains("infergate_epp_too_large_total{pool=\"default/pool\"} 1")
    );
}

#[tokio::test]
async fn malformed_messages_end_that_stream_only() {
    let handle = picker(&unreachable_endpoints(), Tls::Plaintext, false).await;
    let channel = plain_channel(handle.grpc).await;
    for bad in [
        vec![ProcessingRequest::default()],
        vec![body(COMPLETION, true)],
        vec![
            headers(&[], false, BodySendMode::Buffered),
            headers(&[], false, BodySendMode::Buffered),
        ],
    ] {
        let mut stream = Stream::open(channel.clone()).await;
        for message in bad {
            stream.send(message).await;
        }
        let outcome = tokio::time::timeout(EXPECT, async {
            loop {
                match stream.rx.message().await {
                    Ok(Some(_)) => continue, // a reply to a valid first message
                    other => return other,
                }
            }
        })
        .await
        .expect("the picker should end the stream");
        assert_eq!(outcome.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
    // The picker still serves.
    let mut stream = Stream::open(channel).await;
    stream
        .send(headers(&[], true, BodySendMode::FullDuplexStreamed))
        .await;
    picked(&stream.next().await);
}

#[tokio::test]
async fn a_picker_killed_mid_stream_ends_the_stream_with_an_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infergate-epp"))
        .args([
            "--bind-address",
            "127.0.0.1",
            "--grpc-port",
            &port.to_string(),
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
            "--secure-serving=false",
            "--endpoints",
            "127.0.0.1:1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut channel = None;
    for _ in 0..100 {
        if let Ok(c) = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
        {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = Stream::open(channel.expect("the picker binary listens")).await;
    stream
        .send(headers(&[], false, BodySendMode::FullDuplexStreamed))
        .await;
    stream.send(body(b"{\"model\":", false)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let outcome = tokio::time::timeout(EXPECT, stream.rx.message())
        .await
        .expect("the client learns at once");
    assert!(
        outcome.is_err(),
        "a killed picker is an error, not a clean end: {outcome:?}"
    );
}

#[tokio::test]
async fn a_certificate_of_your_own_is_served_and_verifies() {
    let dir = std::env::temp_dir().join(format!("infergate-epp-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["picker.example".to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
    let handle = picker(&unreachable_endpoints(), Tls::Files(dir.clone()), false).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            certified.cert.pem(),
        ))
        .domain_name("picker.example");
    let channel = Endpoint::from_shared(format!("https://{}", handle.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("the picker's certificate verifies against its CA");
    let mut stream = Stream::open(channel).await;
    stream
        .send(headers(&[], true, BodySendMode::FullDuplexStreamed))
        .await;
    picked(&stream.next().await);

    // A client that trusts another CA is refused.
    let other = rcgen::generate_simple_self_signed(vec!["picker.example".to_string()]).unwrap();
    let refused = Endpoint::from_shared(format!("https://{}", handle.grpc))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(other.cert.pem()))
                .domain_name("picker.example"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must not verify"
    );
    let _ = std::fs::remove_dir_all(dir);

    // A missing certificate is a start-up error naming the file.
    let missing = infergate_epp::start(Config {
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        tls: Tls::Files("/nonexistent".into()),
        endpoints: unreachable_endpoints(),
        ..Config::default()
    })
    .await;
    let error = format!("{:#}", missing.err().expect("no certificate, no start"));
    assert!(error.contains("/nonexistent/tls.crt"), "{error}");
}

/// Idle clients of the metrics port cannot starve the picker: over its
/// connection limit they wait in the backlog, silent ones are dropped after
/// the header read timeout, and the ext_proc port answers throughout.
#[tokio::test]
async fn idle_metrics_clients_starve_neither_the_metrics_nor_the_ext_proc_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let handle = infergate_epp::start(Config {
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        endpoints: unreachable_endpoints(),
        metrics_limits: infergate_serving::Limits {
            max_connections: 16,
            header_read_timeout: Duration::from_millis(500),
        },
        ..Config::default()
    })
    .await
    .expect("the picker starts");
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(
            tokio::net::TcpStream::connect(handle.metrics)
                .await
                .expect("connect"),
        );
    }
    let mut health = HealthClient::new(tls_channel(handle.grpc).await);
    let reply = tokio::time::timeout(
        EXPECT,
        health.check(HealthCheckRequest {
            service: "liveness".into(),
        }),
    )
    .await
    .expect("the ext_proc port answers while the metrics port is flooded")
    .expect("a health answer");
    assert_eq!(reply.into_inner().status, ServingStatus::Serving as i32);
    // The idle connections are dropped in turn, and /metrics answers again
    // while they are still open on the client's side.
    let text = tokio::time::timeout(Duration::from_secs(30), metrics_text(&handle))
        .await
        .expect("/metrics answers once the silent clients are dropped");
    assert!(text.contains("infergate_epp_picks_total"), "{text}");
    drop(idle);
}

#[tokio::test]
async fn a_request_served_by_a_fallback_sends_the_chosen_endpoint_last_for_a_while() {
    let endpoints: Vec<SocketAddr> = ["127.0.0.1:3000", "127.0.0.2:3000"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let handle = picker(&endpoints, Tls::Plaintext, false).await;
    let channel = plain_channel(handle.grpc).await;
    // No metrics (nothing listens there): picks take turns.
    let mut stream = Stream::open(channel.clone()).await;
    let (_, destination, _) = full_duplex(&mut stream, &[], COMPLETION, 1024).await;
    let (chosen, fallback) = destination.split_once(',').unwrap();
    let (chosen, fallback) = (chosen.to_string(), fallback.to_string());
    // The gateway's retry served it elsewhere: the chosen one failed.
    stream
        .send(with_metadata(
            response_headers(),
            "envoy.lb",
            "x-gateway-destination-endpoint-served",
            string(&fallback),
        ))
        .await;
    stream.next().await;
    assert!(
        metrics_text(&handle)
            .await
            .contains("infergate_epp_served_elsewhere_total{pool=\"default/pool\"} 1"),
        "{}",
        metrics_text(&handle).await
    );
    // Within the cooldown it is never first, whatever the turn.
    for _ in 0..4 {
        let mut stream = Stream::open(channel.clone()).await;
        let (_, destination, _) = full_duplex(&mut stream, &[], COMPLETION, 1024).await;
        assert_eq!(destination, format!("{fallback},{chosen}"));
    }
}
