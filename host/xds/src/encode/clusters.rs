//! Clusters: one per IR cluster, endpoints by EDS, load balancing (round
//! robin, or the picker's override_host), HTTP/2 and upstream TLS.

use super::ext_proc::override_host_policy;
use super::{ads, seconds, socket};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, cluster, load_balancing_policy,
};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::metadata::v3::{MetadataKey, metadata_key};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use infergate_model as ir;

pub(super) fn cluster(c: &ir::ClusterIr) -> Cluster {
    let mut out = Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(seconds(5)),
        ..Default::default()
    };
    if matches!(
        c.protocol,
        ir::UpstreamProtocol::H2c | ir::UpstreamProtocol::H2Tls
    ) {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        out.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(options),
        );
    }
    if let Some(tls) = &c.tls {
        out.transport_socket = Some(upstream_tls(tls, c.protocol));
    }
    if let ir::LoadBalancer::OverrideHost(key) = &c.load_balancer {
        out.load_balancing_policy = Some(override_host_policy(key));
    }
    out
}

pub(super) fn metadata_key(namespace: &str, key: &str) -> MetadataKey {
    MetadataKey {
        key: namespace.to_string(),
        path: vec![metadata_key::PathSegment {
            segment: Some(metadata_key::path_segment::Segment::Key(key.to_string())),
        }],
    }
}

pub(super) fn policy(name: &str, config: Any) -> LoadBalancingPolicy {
    LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: name.to_string(),
                typed_config: Some(config),
            }),
        }],
    }
}

pub(super) fn upstream_tls(
    tls: &ir::UpstreamTls,
    protocol: ir::UpstreamProtocol,
) -> TransportSocket {
    // A certificate of the CA is not enough: it must also name the server
    // asked for (the CA may issue certificates to others, e.g. every pool's
    // picker).
    let validation = tls.ca_pem.as_ref().map(|pem| {
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(pem.clone())),
                ..Default::default()
            }),
            match_typed_subject_alt_names: tls
                .sni
                .iter()
                .map(|name| SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(name.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    });
    let context = UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: if protocol == ir::UpstreamProtocol::H2Tls {
                vec!["h2".into()]
            } else {
                vec![]
            },
            validation_context_type: validation,
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

pub(super) fn load_assignment(c: &ir::ClusterIr) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: c
                .endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&e.address, e.port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
