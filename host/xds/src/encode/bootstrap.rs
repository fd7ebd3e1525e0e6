//! The bootstrap of an Envoy that takes everything from our ADS server: its
//! node (one per Gateway), the xDS cluster (built like any other HTTP/2
//! cluster, with its endpoint inline), the admin listener on loopback, and a
//! runtime layer that raises RE2's program-size limit to what the
//! translation's regex check allows, so that no accepted regular
//! expression, and no generated prefix rewrite, is refused by Envoy.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap, LayeredRuntime, RuntimeLayer, bootstrap, runtime_layer,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, Node, TransportSocket,
    api_config_source, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::util::pack_any;
use infergate_model as ir;

use super::clusters::{cluster, load_assignment};
use super::ext_proc::grpc_service;
use super::{ads, seconds, socket};

/// The static cluster every Envoy of ours reaches the controller by.
pub const XDS_CLUSTER: &str = "infergate-xds";

/// What an Envoy needs to find us.
#[derive(Clone, Debug)]
pub struct BootstrapSettings {
    /// The xDS node id: the Gateway, `namespace/name`.
    pub node: String,
    /// Our ADS server.
    pub xds: SocketAddr,
    /// The admin listener's port on 127.0.0.1 (0: any free port).
    pub admin_port: u16,
    /// RE2's program-size limit (`re2.max_program_size.error_level`).
    pub re2_max_program_size: u32,
    /// Mutual TLS to the xDS server (deployed Envoys); None: cleartext
    /// (Envoys the controller starts next to itself, on loopback).
    pub tls: Option<XdsTls>,
}

/// Files of the mutual TLS an Envoy reaches xDS with (mounted from its
/// Gateway's Secret), and the name the server's certificate must carry.
#[derive(Clone, Debug)]
pub struct XdsTls {
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    pub server_name: String,
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// The xDS cluster's TLS: our client certificate, the server's verified
/// against the controller's CA and its DNS name.
fn xds_tls(tls: &XdsTls) -> TransportSocket {
    let context = UpstreamTlsContext {
        sni: tls.server_name.clone(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into()],
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file(&tls.cert_file)),
                private_key: Some(file(&tls.key_file)),
                ..Default::default()
            }],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(&tls.ca_file)),
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: subject_alt_name_matcher::SanType::Dns as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(
                                    tls.server_name.clone(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

pub fn bootstrap(settings: &BootstrapSettings) -> Bootstrap {
    // Envoy waits for its first clusters and listeners without a time limit
    // (not the default 15 s), so that it reports ready (admin /ready, the
    // deployed Envoys' readiness) only once it has its Gateway's
    // configuration.
    let first_fetch_unbounded = ConfigSource {
        initial_fetch_timeout: Some(seconds(0)),
        ..ads()
    };
    let xds = ir::ClusterIr {
        name: XDS_CLUSTER.into(),
        endpoints: vec![ir::SocketAddress {
            address: settings.xds.ip().to_string(),
            port: u32::from(settings.xds.port()),
        }],
        protocol: ir::UpstreamProtocol::H2c,
        tls: None,
        load_balancer: ir::LoadBalancer::RoundRobin,
    };
    let xds_cluster = envoy_types::pb::envoy::config::cluster::v3::Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        eds_cluster_config: None,
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(load_assignment(&xds)),
        transport_socket: settings.tls.as_ref().map(xds_tls),
        ..cluster(&xds)
    };
    let runtime = Struct {
        fields: [(
            "re2.max_program_size.error_level".to_string(),
            Value {
                kind: Some(value::Kind::NumberValue(f64::from(
                    settings.re2_max_program_size,
                ))),
            },
        )]
        .into(),
    };
    Bootstrap {
        node: Some(Node {
            id: settings.node.clone(),
            cluster: "infergate".into(),
            ..Default::default()
        }),
        layered_runtime: Some(LayeredRuntime {
            layers: vec![RuntimeLayer {
                name: "infergate".into(),
                layer_specifier: Some(runtime_layer::LayerSpecifier::StaticLayer(runtime)),
            }],
        }),
        admin: Some(Admin {
            address: Some(socket("127.0.0.1", u32::from(settings.admin_port))),
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![grpc_service(XDS_CLUSTER)],
                ..Default::default()
            }),
            cds_config: Some(first_fetch_unbounded.clone()),
            lds_config: Some(first_fetch_unbounded),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            clusters: vec![xds_cluster],
            ..Default::default()
        }),
        ..Default::default()
    }
}
