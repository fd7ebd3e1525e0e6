//! xDS for infergate: the IR as Envoy resources ([`encode`]), a snapshot per
//! Envoy node ([`cache`]) and a state-of-the-world ADS server ([`server`]).

pub mod cache;
pub mod encode;
pub mod json;
pub mod server;

pub use cache::SnapshotCache;
pub use server::AdsServer;
