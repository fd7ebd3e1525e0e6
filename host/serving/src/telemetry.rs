//! What the three binaries (controller, picker, simulator) share for being
//! observed: logs (`tracing`, text or JSON lines, filtered by `RUST_LOG`),
//! and a small HTTP server for `/metrics` (OpenMetrics text from a
//! prometheus-client registry) and any other read-only page.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use prometheus_client::registry::Registry;

use crate::Limits;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            // "console": zap's name for it (the upstream picker's --zap-encoder).
            "text" | "console" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Send this process's logs to stderr, filtered by `RUST_LOG` (default
/// `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves when the process is asked to stop: SIGTERM (what Kubernetes
/// and process supervisors send) or SIGINT (Ctrl-C). As PID 1 of a
/// container a process that does not handle SIGTERM is not stopped by it at
/// all, and waits out the Pod's whole grace period.
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let which = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!("{which}: stopping");
}

/// The content type of [`encode`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

/// One page: HTTP status, content type and body.
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    /// 200 with this content.
    pub fn ok(content_type: &'static str, body: String) -> Page {
        Page {
            status: 200,
            content_type,
            body,
        }
    }

    /// 503 in plain text: a probe that fails, saying why.
    pub fn unavailable(why: &str) -> Page {
        Page {
            status: 503,
            content_type: "text/plain",
            body: format!("{why}\n"),
        }
    }
}

/// Serve GET pages on `listener` until `stop` resolves: `page(path)` says
/// what a path shows, None is a 404 that names `hint`.
pub async fn serve_pages<P>(
    listener: tokio::net::TcpListener,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
    hint: &'static str,
    page: P,
) where
    P: Fn(&str) -> Option<Page> + Send + Sync + 'static,
{
    let page = Arc::new(page);
    crate::accept_loop(listener, limits, stop, move |stream| {
        let page = page.clone();
        async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let Page {
                        status,
                        content_type: kind,
                        body,
                    } = page(request.uri().path()).unwrap_or_else(|| Page {
                        status: 404,
                        content_type: "text/plain",
                        body: format!("{hint}\n"),
                    });
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", kind)
                                .body(Full::new(bytes::Bytes::from(body)))
                                .expect("a response"),
                        )
                    }
                },
            );
            let _ = crate::http1(limits)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_print_back() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("text or json")
        );
    }
}
