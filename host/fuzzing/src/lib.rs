//! What each fuzz target does with its input. The targets in `fuzz/` (run by
//! `scripts/fuzz.sh` with cargo-fuzz on nightly) are one line each; the same
//! functions replay the committed corpus in `fuzz/corpus/<target>/` and every
//! crash found so far (`fuzz/regressions/<target>/`) as an ordinary test.
//!
//! A target fails by panicking (libFuzzer turns a panic into a crash, in any
//! thread); the servers' targets also fail when the server stops answering.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use infergate_model::Settings;
use infergate_resources::Resources;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// YAML text -> resources -> snapshot -> translation -> Envoy protobufs.
/// Invariants: nothing panics; translation is deterministic.
pub fn yaml_translate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut resources = Resources::default();
    if resources.add_yaml("fuzz.yaml", text).is_err() {
        return;
    }
    for inference_extension in [false, true] {
        let Ok(snapshot) = resources.to_snapshot(Settings {
            inference_extension,
            ..Settings::new(infergate_names::DEFAULT_CONTROLLER_NAME)
        }) else {
            return;
        };
        let Ok(output) = infergate_translate::translate(&snapshot) else {
            return;
        };
        let again = infergate_translate::translate(&snapshot).expect("translated once");
        assert!(output == again, "translation is not deterministic");
        for gateway in &output.gateways {
            let _ = infergate_xds::encode::gateway(gateway, &Default::default());
        }
    }
}

/// A runtime for the servers' targets, kept across inputs.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // A Rust main ignores SIGPIPE (a write to a closed connection is an
        // error); libFuzzer's main does not, and the signal would end the
        // run as if it were a crash.
        // SAFETY: setting a signal's disposition to SIG_IGN, before any
        // thread of ours writes to a socket.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Raw bytes sent to the simulator as an HTTP request. Invariant: the
/// simulator keeps answering its health check.
pub fn sim_http(data: &[u8]) {
    static SIM: OnceLock<(SocketAddr, infergate_sim::Handle)> = OnceLock::new();
    let (address, _) = SIM.get_or_init(|| {
        let handle = runtime()
            .block_on(infergate_sim::start(
                "127.0.0.1:0".parse().expect("an address"),
                infergate_sim::Config {
                    time_to_first_token: Duration::ZERO,
                    inter_token_latency: Duration::ZERO,
                    ..Default::default()
                },
            ))
            .expect("the simulator starts");
        (handle.address, handle)
    });
    runtime().block_on(async {
        exchange(*address, data).await;
        let health = exchange(
            *address,
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(
            health.starts_with(b"HTTP/1.1 200"),
            "the simulator stopped answering: {:?}",
            String::from_utf8_lossy(&health)
        );
    });
}

/// Send `request` and read what comes back until the server closes the
/// connection or is quiet for 100 ms. (The sending side stays open: a
/// client that closes it has gone away, and the simulator drops its request.)
async fn exchange(address: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the simulator");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await
    {
        answer.extend_from_slice(&buffer[..n]);
    }
    answer
}

/// A sequence of ext_proc messages (each a 2-byte big-endian length and a
/// ProcessingRequest protobuf; undecodable ones are skipped) sent to the
/// picker on one stream. Invariant: the picker keeps serving new streams.
pub fn picker_extproc(data: &[u8]) {
    static PICKER: OnceLock<(SocketAddr, infergate_epp::Handle)> = OnceLock::new();
    let (address, _) = PICKER.get_or_init(|| {
        let handle = runtime()
            .block_on(infergate_epp::start(infergate_epp::Config {
                grpc_port: 0,
                grpc_health_port: 0,
                metrics_port: 0,
                tls: infergate_epp::Tls::Plaintext,
                endpoints: vec![
                    "127.0.0.1:1".parse().expect("an address"),
                    "127.0.0.1:2".parse().expect("an address"),
                ],
                test_header_steering: true,
                max_body_bytes: 1 << 16,
                ..Default::default()
            }))
            .expect("the picker starts");
        (handle.grpc, handle)
    });
    let messages = split_messages(data);
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("a connection to the picker");
        let mut client = ExternalProcessorClient::new(channel.clone());
        let outbound = tokio_stream::iter(messages);
        if let Ok(response) = client.process(outbound).await {
            let mut inbound = response.into_inner();
            // Until the picker ends the stream or is quiet for 200 ms.
            while let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_millis(200), inbound.message()).await
            {
            }
        }
        // A fresh stream with one well-formed message is still answered.
        let mut client = ExternalProcessorClient::new(channel);
        let probe = tokio_stream::iter(vec![ProcessingRequest::default()]);
        let answered = tokio::time::timeout(Duration::from_secs(5), client.process(probe)).await;
        assert!(answered.is_ok(), "the picker stopped answering new streams");
    });
}

fn split_messages(mut data: &[u8]) -> Vec<ProcessingRequest> {
    let mut messages = Vec::new();
    while data.len() >= 2 && messages.len() < 64 {
        let length = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let end = (2 + length).min(data.len());
        if let Ok(message) = ProcessingRequest::decode(&data[2..end]) {
            messages.push(message);
        }
        data = &data[end..];
    }
    messages
}

/// One message as a corpus entry piece, for making seeds.
pub fn frame(message: &ProcessingRequest) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend(bytes);
    out
}
