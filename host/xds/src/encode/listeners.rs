//! Listeners: an HTTP connection manager with its routes from RDS and its
//! HTTP filters in order.

use super::ext_proc::{EXT_PROC_FILTER, ext_proc, pickers};
use super::headers::protocol_headers_removed;
use super::{ads, socket};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use infergate_model as ir;

pub(super) fn listener(l: &ir::ListenerIr) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: l.name.replace([':', '/'], "_"),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: l.name.clone(),
        })),
        // Gateway API matches hostnames without the port.
        strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
            true,
        )),
        http_filters: http_filters(l),
        ..Default::default()
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket(&l.address, l.port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The listener's HTTP filters: client-set picker headers removed first;
/// the ext_proc filter, disabled unless a route to an InferencePool enables
/// it with that pool's picker, when the listener has such routes; the router.
pub(super) fn http_filters(l: &ir::ListenerIr) -> Vec<HttpFilter> {
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
    if let Some(picker) = pickers(l).next() {
        filters.push(typed(EXT_PROC_FILTER, pack_any(ext_proc(picker)), true));
    }
    filters.push(typed(
        "envoy.filters.http.router",
        pack_any(Router::default()),
        false,
    ));
    filters
}
