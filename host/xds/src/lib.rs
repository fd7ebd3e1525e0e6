//! xDS for infergate: the IR as Envoy resources ([`encode`]; [`encoder`]
//! re-uses what did not change), a snapshot per Envoy node ([`cache`]) and a
//! state-of-the-world ADS server ([`server`]).

pub mod cache;
pub mod encode;
pub mod encoder;
pub mod feedback;
pub mod json;
pub mod server;
pub mod tls;

pub use cache::SnapshotCache;
pub use encoder::{EncodeStats, Encoder};
pub use feedback::Verdict;
pub use server::AdsServer;
