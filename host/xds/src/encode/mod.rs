//! The IR as Envoy resources: the one place that knows Envoy's protobufs,
//! one module per Envoy concept. Clusters use EDS (endpoint changes do not
//! re-create clusters), listeners use RDS, all over the same ADS stream.
//!
//! - [`listeners`]: listeners, their filter chains (SNI, TLS), HTTP connection
//!   managers and HTTP filters;
//! - [`secrets`]: the listeners' certificates, for SDS;
//! - [`routes`]: route configurations, virtual hosts, matches, forwarding,
//!   rewrites and redirects;
//! - [`clusters`]: clusters, their endpoints, load balancing and upstream TLS;
//! - [`ext_proc`]: the endpoint picker's Envoy side (the ext_proc filter, its
//!   per-route switch, the override_host policy that reads the pick);
//! - [`models`]: routing by the model a JSON body names (the filter that reads
//!   it, route matches on it, errors in the OpenAI API's shape);
//! - [`headers`]: header mutations;
//! - [`bootstrap`]: the bootstrap that points an Envoy at our ADS server.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;
use infergate_model as ir;

mod bootstrap;
mod clusters;
mod ext_proc;
mod headers;
mod listeners;
mod models;
mod routes;
mod secrets;

pub use bootstrap::{BootstrapSettings, XDS_CLUSTER, XdsTls, bootstrap};
use clusters::{cluster, load_assignment};
pub use ext_proc::{
    EXT_PROC_FILTER, LB_NAMESPACE, PROTOCOL_HEADERS, SERVED_KEY, SUBSET_HINT_NAMESPACE,
};
pub use infergate_resources::Certificates;
use listeners::listener;
use routes::route_configuration;
pub(crate) use routes::{route_configuration_without_hosts, virtual_host};
pub use secrets::redacted;
use secrets::secrets;

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// xDS types in the order Envoy should receive them: what a resource uses
/// before the resource that uses it.
pub const TYPE_ORDER: [&str; 5] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    SECRET_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
];

/// The cluster name a route uses for a backend that did not resolve. It is
/// never defined, so Envoy answers with the route's
/// cluster_not_found_response_code, 500, as Gateway API asks.
pub const INVALID_BACKEND_CLUSTER: &str = "infergate/invalid-backend";

/// Every resource of one Gateway's Envoy, typed.
#[derive(Default, Clone, Debug)]
pub struct Resources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// The certificates of the listeners' TLS chains (with private keys).
    pub secrets: Vec<Secret>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// Resources packed for xDS: (type URL, [(name, packed)]) in [`TYPE_ORDER`].
pub type Packed = Vec<(&'static str, Vec<(String, Any)>)>;

impl From<Resources> for Packed {
    fn from(resources: Resources) -> Packed {
        resources.into_packed()
    }
}

impl Resources {
    /// (type URL, [(name, packed)]) in [`TYPE_ORDER`].
    pub fn into_packed(self) -> Packed {
        vec![
            (
                CLUSTER_TYPE,
                self.clusters
                    .into_iter()
                    .map(|c| (c.name.clone(), pack_any(c)))
                    .collect(),
            ),
            (
                ENDPOINT_TYPE,
                self.endpoints
                    .into_iter()
                    .map(|e| (e.cluster_name.clone(), pack_any(e)))
                    .collect(),
            ),
            (
                SECRET_TYPE,
                self.secrets
                    .into_iter()
                    .map(|s| (s.name.clone(), pack_any(s)))
                    .collect(),
            ),
            (
                LISTENER_TYPE,
                self.listeners
                    .into_iter()
                    .map(|l| (l.name.clone(), pack_any(l)))
                    .collect(),
            ),
            (
                ROUTE_TYPE,
                self.routes
                    .into_iter()
                    .map(|r| (r.name.clone(), pack_any(r)))
                    .collect(),
            ),
        ]
    }
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub(super) fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

/// Every resource of one Gateway's Envoy; its listeners' certificates from
/// `certificates` (by the names in the IR).
pub fn gateway(gateway: &ir::GatewayIr, certificates: &Certificates) -> Resources {
    Resources {
        routes: gateway
            .listeners
            .iter()
            .flat_map(|l| &l.filter_chains)
            .map(route_configuration)
            .collect(),
        ..gateway_without_routes(gateway, certificates)
    }
}

/// All but the route configurations, which [`crate::Encoder`] assembles.
pub(crate) fn gateway_without_routes(
    gateway: &ir::GatewayIr,
    certificates: &Certificates,
) -> Resources {
    Resources {
        clusters: gateway.clusters.iter().map(cluster).collect(),
        endpoints: gateway.clusters.iter().map(load_assignment).collect(),
        secrets: secrets(gateway, certificates),
        listeners: gateway.listeners.iter().map(listener).collect(),
        routes: vec![],
    }
}

pub(super) fn socket(
    address: &str,
    port: u32,
) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}
