//! How infergate's small HTTP servers (the controller's metrics, the
//! picker's metrics, the simulator) take connections, so that no client can
//! starve them:
//!
//! - at most [`Limits::max_connections`] at once; more wait in the kernel's
//!   backlog instead of taking memory and file descriptors, and a server on
//!   another port of the same process is not affected;
//! - a client that does not send a whole request head within
//!   [`Limits::header_read_timeout`] (also between requests on a kept-alive
//!   connection) is disconnected;
//! - an error from `accept` (out of file descriptors) is retried after a
//!   back-off that doubles up to a second, instead of at once in a hot loop
//!   (also for the gRPC servers, through [`incoming`]).

pub mod prompt;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bounds of one server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Accept connections on `listener` until `stop` completes, and run
/// `serve(stream)` for each on its own task, within `limits`.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    stop: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(stop);
    loop {
        let (permit, stream) = tokio::select! {
            _ = &mut stop => return,
            accepted = async {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                (permit, accept(&listener).await)
            } => accepted,
        };
        let connection = serve(stream);
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

/// `listener`'s connections as a stream for tonic's `serve_with_incoming`,
/// with the same back-off on accept errors: tonic itself retries a failed
/// accept at once, spinning while file descriptors run out.
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let stream = accept(&listener).await;
        Some((Ok(stream), listener))
    })
}

/// The next connection, with Nagle's algorithm off (servers here answer
/// with several small writes in a row, which Nagle would hold back for the
/// peer's delayed ACK). Accept errors are logged and retried after a
/// back-off that doubles from 10 ms up to a second.
async fn accept(listener: &TcpListener) -> TcpStream {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(error) => {
                tracing::warn!(
                    address = ?listener.local_addr().ok(),
                    "accepting a connection failed, retrying in {backoff:?}: {error}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// An HTTP/1 connection builder with `limits`' header read timeout.
pub fn http1(limits: Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// An HTTP/1 and HTTP/2 connection builder with `limits`' header read
/// timeout for HTTP/1 and keep-alive pings for HTTP/2.
pub fn http1_and_2(
    limits: Limits,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn hello_server(
        limits: Limits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(accept_loop(
            listener,
            limits,
            async {
                let _ = stopped.await;
            },
            move |stream| async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(String::from("hello")))
                });
                let _ = http1(limits)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            },
        ));
        (address, stop)
    }

    async fn get(address: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Reads until the server closes the connection; true if it did within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buffer = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn silent_and_idle_clients_are_disconnected_after_the_header_read_timeout() {
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(300),
        };
        let (address, _stop) = hello_server(limits).await;
        // Connects and never sends anything.
        let mut silent = TcpStream::connect(address).await.unwrap();
        // Sends half a request head.
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        // Keeps a connection alive after one request.
        let mut idle = TcpStream::connect(address).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        for (what, stream) in [
            ("silent", &mut silent),
            ("slow", &mut slow),
            ("idle", &mut idle),
        ] {
            assert!(
                closed_within(stream, Duration::from_secs(5)).await,
                "the {what} connection was not closed"
            );
        }
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_until_others_go() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(30),
        };
        let (address, _stop) = hello_server(limits).await;
        let mut hogs = Vec::new();
        for _ in 0..4 {
            hogs.push(TcpStream::connect(address).await.unwrap());
        }
        let fifth = tokio::spawn(get(address));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !fifth.is_finished(),
            "a fifth connection was served while four were held: the limit is not applied"
        );
        drop(hogs);
        let answer = tokio::time::timeout(Duration::from_secs(5), fifth)
            .await
            .expect("served once the others went")
            .unwrap();
        assert!(answer.ends_with("hello"), "{answer}");
    }
}
