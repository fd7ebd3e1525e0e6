//! infergate's endpoint picker: an Envoy ext_proc server that chooses, for
//! each inference request, the model-server endpoint of its pool by weighted
//! scores ([`scorers`]: queue, KV cache, running requests, prefix-cache and
//! LoRA affinity), with fallbacks in order. On the way it serves a model
//! under the names its pool's rewrites give ([`models`], [`request_body`]),
//! and reads each response ([`response_body`]) for per-model metrics.
//!
//! [`start`] runs everything a deployment needs: the ext_proc gRPC server
//! (TLS with a self-signed certificate by default, ALPN h2), the gRPC health
//! services on their own port, an OpenMetrics `/metrics` endpoint, and the
//! scraper that reads each model server's `/metrics`.

pub mod discovery;
pub mod extproc;
pub mod metrics;
pub mod models;
pub mod request_body;
pub mod response_body;
pub mod scheduler;
pub mod scorers;
mod serve;
mod tls;

pub use serve::{Config, Handle, Tls, start};
