//! Mutual TLS for the ADS server: only clients whose certificate the
//! controller's CA signed get a TLS session, and each connection carries the
//! Gateway its certificate names ([`PeerGateway`]), which the ADS server
//! compares with the node id the client asks for.
//!
//! Handshakes run on tasks of their own (at most [`MAX_HANDSHAKES`] at a
//! time, each within [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never
//! holds up the connections behind it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HANDSHAKES: usize = 64;

/// The Gateway (`namespace/name`) a client's certificate names, when it
/// names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerGateway(pub Option<String>);

/// A TLS connection with its peer's Gateway, for tonic.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerGateway,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerGateway;
    fn connect_info(&self) -> PeerGateway {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The server's certificate, replaceable while the server runs: new
/// handshakes get the latest one, connections made before keep theirs.
#[derive(Debug)]
pub struct ServerCertificate {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertificate {
    fn certified_key(
        provider: &rustls::crypto::CryptoProvider,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
            chain, key, provider,
        )?))
    }

    /// Serve this certificate (PEM) and key from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let key = Self::certified_key(&self.provider, cert_pem, key_pem)?;
        *self.current.write().expect("certificate lock") = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServerCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// The server's TLS: its certificate and key (PEM), clients verified against
/// `ca_pem`, HTTP/2 by ALPN.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(rotating_server_config(cert_pem, key_pem, ca_pem)?.0)
}

/// [`server_config`] whose certificate can be replaced (renewed) while the
/// server runs, through the [`ServerCertificate`] returned with it.
pub fn rotating_server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<ServerCertificate>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let certificate = Arc::new(ServerCertificate {
        current: std::sync::RwLock::new(ServerCertificate::certified_key(
            &provider, cert_pem, key_pem,
        )?),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), certificate))
}

/// The Gateway a certificate's URI SAN names (`infergate_names::xds_identity`).
pub fn peer_gateway(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            infergate_names::xds_identity::gateway_of_uri(uri).map(str::to_string)
        }
        _ => None,
    })
}

/// The TLS connections of `listener`: accepted, handshaken on their own
/// tasks; failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<TlsConnection>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConnection>>(MAX_HANDSHAKES);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(infergate_serving::incoming(listener));
        while let Some(stream) = futures::StreamExt::next(&mut accepted).await {
            let Ok(stream) = stream else { continue };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let remote = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(peer_gateway);
                        drop(permit);
                        let _ = tx
                            .send(Ok(TlsConnection {
                                stream,
                                peer: PeerGateway(peer),
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(?remote, "xDS client refused: TLS handshake failed: {e}");
                    }
                    Err(_) => {
                        tracing::warn!(
                            ?remote,
                            "xDS client refused: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                        );
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
