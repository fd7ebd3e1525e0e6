//! Listeners: one filter chain per IR chain, each an HTTP connection manager
//! with its routes from RDS and its HTTP filters in order; TLS chains are
//! selected by SNI (the TLS inspector reads it) and take their certificates
//! from SDS, so that a renewed certificate reaches Envoy without touching
//! the listener.

use super::ext_proc::{EXT_PROC_FILTER, ext_proc, pickers};
use super::headers::protocol_headers_removed;
use super::models::{
    JSON_TO_METADATA_FILTER, http2_options, json_to_metadata, listener_buffer_limit, local_replies,
};
use super::{ads, socket};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use infergate_model as ir;

pub(super) fn listener(l: &ir::ListenerIr) -> Listener {
    let tls = l.filter_chains.iter().any(|c| c.tls.is_some());
    Listener {
        name: l.name.clone(),
        address: Some(socket(&l.address, l.port)),
        // SNI is read before a chain is chosen.
        listener_filters: if tls {
            vec![ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                    TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        } else {
            vec![]
        },
        filter_chains: l.filter_chains.iter().map(filter_chain).collect(),
        per_connection_buffer_limit_bytes: listener_buffer_limit(l),
        ..Default::default()
    }
}

fn filter_chain(chain: &ir::FilterChainIr) -> FilterChain {
    let manager = HttpConnectionManager {
        stat_prefix: chain.name.replace([':', '/'], "_"),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: chain.name.clone(),
        })),
        http_filters: http_filters(chain),
        // WebSocket upgrades pass through to backends that accept them, as
        // Gateway API expects of a backend port with appProtocol
        // kubernetes.io/ws; other backends answer the upgrade request as
        // any request (no backend is upgraded against its will).
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        http2_protocol_options: chain.model_routing.as_ref().map(http2_options),
        local_reply_config: chain.model_routing.as_ref().map(local_replies),
        ..Default::default()
    };
    FilterChain {
        name: chain.name.clone(),
        filter_chain_match: (!chain.server_names.is_empty()).then(|| FilterChainMatch {
            server_names: chain.server_names.clone(),
            ..Default::default()
        }),
        transport_socket: chain.tls.as_ref().map(downstream_tls),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
        }],
        ..Default::default()
    }
}

/// TLS termination with the chain's certificates, served by SDS under their
/// Secrets' names ([`super::secrets`]); HTTP/2 and HTTP/1.1 by ALPN.
fn downstream_tls(tls: &ir::DownstreamTls) -> TransportSocket {
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: tls
                .certificates
                .iter()
                .map(|name| SdsSecretConfig {
                    name: name.clone(),
                    sds_config: Some(ads()),
                })
                .collect(),
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

/// The chain's HTTP filters: client-set picker and model headers removed
/// first; when the chain routes by model, the filter that reads the model
/// of a JSON body (before the route is chosen anew); the ext_proc filter,
/// disabled unless a route to an InferencePool enables it with that pool's
/// picker, when the chain has such routes; the router.
pub(super) fn http_filters(chain: &ir::FilterChainIr) -> Vec<HttpFilter> {
    let typed = |name: &str, config: Any, disabled: bool| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        disabled,
        ..Default::default()
    };
    let mut filters = vec![typed(
        "envoy.filters.http.header_mutation",
        pack_any(protocol_headers_removed()),
        false,
    )];
    if chain.model_routing.is_some() {
        filters.push(typed(
            JSON_TO_METADATA_FILTER,
            pack_any(json_to_metadata()),
            false,
        ));
    }
    if let Some(picker) = pickers(chain).next() {
        filters.push(typed(EXT_PROC_FILTER, pack_any(ext_proc(picker)), true));
    }
    filters.push(typed(
        "envoy.filters.http.router",
        pack_any(Router::default()),
        false,
    ));
    filters
}
