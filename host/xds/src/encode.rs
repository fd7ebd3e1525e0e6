//! The IR as Envoy resources: the one place that knows Envoy's protobufs.
//! Clusters use EDS (endpoint changes do not re-create clusters), listeners
//! use RDS, all over the same ADS stream.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, cluster, load_balancing_policy,
};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as mutation_rules;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue, HeaderValueOption,
    Http2ProtocolOptions, SocketAddress, TransportSocket, address, config_source, data_source,
    header_value_option, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::core::v3::{GrpcService, TypedExtensionConfig, grpc_service};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::config::route::v3::{
    self as route, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RouteConfiguration, VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher,
    redirect_action, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ExtProcOverrides, ExtProcPerRoute, ExternalProcessor, MetadataOptions, ProcessingMode,
    ext_proc_per_route, external_processor, metadata_options, processing_mode,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as header_mutation;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::override_host::v3::{
    OverrideHost, override_host,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::metadata::v3::{MetadataKey, metadata_key};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use infergate_model as ir;

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// xDS types in the order Envoy should receive them: what a resource uses
/// before the resource that uses it.
pub const TYPE_ORDER: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];

/// The cluster name a route uses for a backend that did not resolve. It is
/// never defined, so Envoy answers with the route's
/// cluster_not_found_response_code, 500, as Gateway API asks.
pub const INVALID_BACKEND_CLUSTER: &str = "infergate/invalid-backend";

/// The ext_proc filter's name in the listener and in per-route configs.
pub const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
/// The dynamic metadata namespace of the endpoint picker protocol.
pub use infergate_names::picker::{
    LB_NAMESPACE, PROTOCOL_HEADERS, SERVED as SERVED_KEY, SUBSET_NAMESPACE as SUBSET_HINT_NAMESPACE,
};
/// How long Envoy waits for the picker's answer to one message.
const PICKER_MESSAGE_TIMEOUT_SECONDS: i64 = 2;
/// Requests to an InferencePool may be buffered whole (fail-open pools
/// read the body in BUFFERED mode); prompts are large.
const POOL_REQUEST_BUFFER_BYTES: u64 = 32 << 20;

/// Every resource of one Gateway's Envoy, typed.
#[derive(Default, Clone, Debug)]
pub struct Resources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
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

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

pub fn gateway(gateway: &ir::GatewayIr) -> Resources {
    Resources {
        routes: gateway.listeners.iter().map(route_configuration).collect(),
        ..gateway_without_routes(gateway)
    }
}

/// All but the route configurations, which [`crate::Encoder`] assembles.
pub(crate) fn gateway_without_routes(gateway: &ir::GatewayIr) -> Resources {
    Resources {
        clusters: gateway.clusters.iter().map(cluster).collect(),
        endpoints: gateway.clusters.iter().map(load_assignment).collect(),
        listeners: gateway.listeners.iter().map(listener).collect(),
        routes: vec![],
    }
}

fn cluster(c: &ir::ClusterIr) -> Cluster {
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

fn metadata_key(namespace: &str, key: &str) -> MetadataKey {
    MetadataKey {
        key: namespace.to_string(),
        path: vec![metadata_key::PathSegment {
            segment: Some(metadata_key::path_segment::Segment::Key(key.to_string())),
        }],
    }
}

fn policy(name: &str, config: Any) -> LoadBalancingPolicy {
    LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: name.to_string(),
                typed_config: Some(config),
            }),
        }],
    }
}

/// Envoy's override_host policy: the endpoint the picker named in the
/// `envoy.lb` metadata (never a request header, which a client could set),
/// an ordered list walked on retries; an address outside the cluster is
/// skipped. Without a pick (the picker failed open) round robin. The endpoint
/// used is written back to `envoy.lb` for the picker's response path.
fn override_host_policy(key: &str) -> LoadBalancingPolicy {
    let config = OverrideHost {
        override_host_sources: vec![override_host::OverrideHostSource {
            metadata: Some(metadata_key(LB_NAMESPACE, key)),
            ..Default::default()
        }],
        selected_host_key: Some(metadata_key(LB_NAMESPACE, SERVED_KEY)),
        fallback_policy: Some(policy(
            "envoy.load_balancing_policies.round_robin",
            pack_any(RoundRobin::default()),
        )),
    };
    policy(
        "envoy.load_balancing_policies.override_host",
        pack_any(config),
    )
}

fn upstream_tls(tls: &ir::UpstreamTls, protocol: ir::UpstreamProtocol) -> TransportSocket {
    let validation = tls.ca_pem.as_ref().map(|pem| {
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(pem.clone())),
                ..Default::default()
            }),
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

fn load_assignment(c: &ir::ClusterIr) -> ClusterLoadAssignment {
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

fn socket(address: &str, port: u32) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn listener(l: &ir::ListenerIr) -> Listener {
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
fn http_filters(l: &ir::ListenerIr) -> Vec<HttpFilter> {
    let typed = |name: &str, config: Any, disabled: bool| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        disabled,
        ..Default::default()
    };
    let strip = header_mutation::HeaderMutation {
        mutations: Some(header_mutation::Mutations {
            request_mutations: PROTOCOL_HEADERS
                .iter()
                .map(|h| mutation_rules::HeaderMutation {
                    action: Some(mutation_rules::header_mutation::Action::Remove(
                        h.to_string(),
                    )),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut filters = vec![typed(
        "envoy.filters.http.header_mutation",
        pack_any(strip),
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

/// Every endpoint picker the listener's routes call.
fn pickers(l: &ir::ListenerIr) -> impl Iterator<Item = &ir::EndpointPickerIr> {
    l.virtual_hosts
        .iter()
        .flat_map(|vh| &vh.rules)
        .filter_map(|r| match &r.action {
            ir::RouteAction::Forward(f) => Some(&f.clusters),
            _ => None,
        })
        .flatten()
        .filter_map(|w| w.endpoint_picker.as_ref())
}

fn grpc_service(cluster: &str) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: cluster.to_string(),
                // Envoy's default :authority is the cluster name, whose
                // slashes gRPC servers reject as a malformed authority.
                authority: cluster.replace('/', "."),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// What Envoy sends the picker. FailClose pools stream the request body
/// full-duplex (the reference setup); FailOpen pools buffer it, because
/// Envoy 1.40 does not fail open with a full-duplex body (measured: 500 with
/// FULL_DUPLEX_STREAMED, a pool endpoint with BUFFERED). Response headers go
/// to the picker (with the served endpoint); the response body does not, so
/// streamed completions are not held up.
fn processing_mode(picker: &ir::EndpointPickerIr) -> ProcessingMode {
    use processing_mode::{BodySendMode, HeaderSendMode};
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: if picker.fail_open {
            BodySendMode::Buffered as i32
        } else {
            BodySendMode::FullDuplexStreamed as i32
        },
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Send as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

fn ext_proc(picker: &ir::EndpointPickerIr) -> ExternalProcessor {
    let namespaces = |names: &[&str]| metadata_options::MetadataNamespaces {
        untyped: names.iter().map(|n| n.to_string()).collect(),
        typed: vec![],
    };
    ExternalProcessor {
        grpc_service: Some(grpc_service(&picker.cluster)),
        processing_mode: Some(processing_mode(picker)),
        message_timeout: Some(seconds(PICKER_MESSAGE_TIMEOUT_SECONDS)),
        metadata_options: Some(MetadataOptions {
            forwarding_namespaces: Some(namespaces(&[LB_NAMESPACE, SUBSET_HINT_NAMESPACE])),
            // Only the picker protocol's namespace may be written by the picker.
            receiving_namespaces: Some(namespaces(&[LB_NAMESPACE])),
            ..Default::default()
        }),
        // The route (and the weighted cluster) stays as chosen before the
        // picker ran, so a split across pools keeps each pool's own pick.
        route_cache_action: external_processor::RouteCacheAction::Retain as i32,
        stat_prefix: "endpoint_picker".into(),
        ..Default::default()
    }
}

/// The per-route (or per-weighted-cluster) config that switches the
/// ext_proc filter on with `picker`, or keeps it off.
fn ext_proc_per_route(picker: Option<&ir::EndpointPickerIr>) -> Any {
    let config = picker.map(|picker| {
        pack_any(ExtProcPerRoute {
            r#override: Some(ext_proc_per_route::Override::Overrides(ExtProcOverrides {
                processing_mode: Some(processing_mode(picker)),
                grpc_service: Some(grpc_service(&picker.cluster)),
                failure_mode_allow: Some(BoolValue {
                    value: picker.fail_open,
                }),
                ..Default::default()
            })),
        })
    });
    pack_any(FilterConfig {
        disabled: config.is_none(),
        config,
        is_optional: false,
    })
}

fn route_configuration(l: &ir::ListenerIr) -> RouteConfiguration {
    RouteConfiguration {
        virtual_hosts: l.virtual_hosts.iter().map(virtual_host).collect(),
        ..route_configuration_without_hosts(l)
    }
}

/// The listener's route configuration but for its virtual hosts.
pub(crate) fn route_configuration_without_hosts(l: &ir::ListenerIr) -> RouteConfiguration {
    RouteConfiguration {
        name: l.name.clone(),
        ..Default::default()
    }
}

pub(crate) fn virtual_host(vh: &ir::VirtualHostIr) -> VirtualHost {
    VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh
            .routes
            .iter()
            .map(|r| route(r, vh.rules.get(r.rule as usize)))
            .collect(),
        ..Default::default()
    }
}

fn string_matcher(match_type: ir::StringMatchType, value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match match_type {
            ir::StringMatchType::Exact => string_matcher::MatchPattern::Exact(value.to_string()),
            ir::StringMatchType::RegularExpression => {
                string_matcher::MatchPattern::SafeRegex(regex(value))
            }
        }),
        ignore_case: false,
    }
}

fn regex(value: &str) -> RegexMatcher {
    RegexMatcher {
        regex: value.to_string(),
        ..Default::default()
    }
}

fn route_match(m: &ir::RouteMatch) -> route::RouteMatch {
    let path = match &m.path {
        Some(ir::PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(ir::PathMatch::RegularExpression(p)) => {
            route_match::PathSpecifier::SafeRegex(regex(p))
        }
        Some(ir::PathMatch::Prefix(p)) => prefix(p),
        None => prefix("/"),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(h.match_type, &h.value),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(method) = &m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(ir::StringMatchType::Exact, method),
            )),
            ..Default::default()
        });
    }
    route::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(q.match_type, &q.value),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

/// Gateway API prefixes match whole path segments: `/api` matches `/api` and
/// `/api/x`, never `/apix`. A trailing slash in the prefix is ignored.
fn prefix(p: &str) -> route_match::PathSpecifier {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        route_match::PathSpecifier::Prefix("/".into())
    } else {
        route_match::PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
    }
}

fn header_options(m: &ir::HeaderModifier) -> Vec<HeaderValueOption> {
    let option =
        |h: &ir::HeaderValue, action: header_value_option::HeaderAppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                value: h.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
    m.set
        .iter()
        .map(|h| {
            option(
                h,
                header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .chain(m.add.iter().map(|h| {
            option(
                h,
                header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
            )
        }))
        .collect()
}

/// The Envoy route for match `r` of `rule`. The runtime rejects output whose
/// routes name a rule their virtual host does not have; should one get here
/// anyway, its route answers 500 rather than taking the controller down.
fn route(r: &ir::RouteIr, rule: Option<&ir::RuleIr>) -> route::Route {
    let Some(rule) = rule else {
        return route::Route {
            name: format!("missing-rule/{}/match/{}", r.rule, r.match_index),
            r#match: Some(route_match(&r.matches)),
            action: Some(route::route::Action::DirectResponse(DirectResponseAction {
                status: 500,
                ..Default::default()
            })),
            ..Default::default()
        };
    };
    let action = match &rule.action {
        ir::RouteAction::Forward(forward) => {
            route::route::Action::Route(forward_action(forward, &r.matches))
        }
        ir::RouteAction::Redirect(redirect) => {
            route::route::Action::Redirect(redirect_action(redirect, &r.matches))
        }
        ir::RouteAction::DirectResponse(d) => {
            route::route::Action::DirectResponse(DirectResponseAction {
                status: d.status,
                body: (!d.body.is_empty()).then(|| DataSource {
                    specifier: Some(data_source::Specifier::InlineString(d.body.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    };
    let mut out = route::Route {
        name: format!("{}/match/{}", rule.name, r.match_index),
        r#match: Some(route_match(&r.matches)),
        action: Some(action),
        request_headers_to_add: header_options(&rule.request_headers),
        request_headers_to_remove: rule.request_headers.remove.clone(),
        response_headers_to_add: header_options(&rule.response_headers),
        response_headers_to_remove: rule.response_headers.remove.clone(),
        ..Default::default()
    };
    // A route to InferencePools turns the picker on (each weighted cluster
    // says which picker, or none for a plain Service among them).
    if let ir::RouteAction::Forward(forward) = &rule.action
        && let Some(first) = forward
            .clusters
            .iter()
            .find_map(|w| w.endpoint_picker.as_ref())
    {
        out.typed_per_filter_config
            .insert(EXT_PROC_FILTER.into(), ext_proc_per_route(Some(first)));
        out.request_body_buffer_limit = Some(UInt64Value {
            value: POOL_REQUEST_BUFFER_BYTES,
        });
    }
    out
}

fn cluster_name(w: &ir::WeightedCluster) -> String {
    w.cluster
        .clone()
        .unwrap_or_else(|| INVALID_BACKEND_CLUSTER.to_string())
}

fn forward_action(forward: &ir::ForwardAction, m: &ir::RouteMatch) -> route::RouteAction {
    let specifier = if forward.clusters.len() == 1 {
        route_action::ClusterSpecifier::Cluster(cluster_name(&forward.clusters[0]))
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: forward
                .clusters
                .iter()
                .map(|w| {
                    let mut weight = weighted_cluster::ClusterWeight {
                        name: cluster_name(w),
                        weight: Some(UInt32Value { value: w.weight }),
                        ..Default::default()
                    };
                    if forward.clusters.iter().any(|c| c.endpoint_picker.is_some()) {
                        weight.typed_per_filter_config.insert(
                            EXT_PROC_FILTER.into(),
                            ext_proc_per_route(w.endpoint_picker.as_ref()),
                        );
                    }
                    weight
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut action = route::RouteAction {
        cluster_specifier: Some(specifier),
        cluster_not_found_response_code:
            route_action::ClusterNotFoundResponseCode::InternalServerError as i32,
        // Completions stream for minutes: no route timeout by default.
        timeout: Some(seconds(0)),
        ..Default::default()
    };
    if let Some(rewrite) = &forward.rewrite {
        if let Some(host) = &rewrite.hostname {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
            );
        }
        match &rewrite.path {
            Some(ir::PathModifier::ReplaceFullPath(path)) => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("^/.*$")),
                    substitution: path.clone(),
                });
            }
            Some(ir::PathModifier::ReplacePrefixMatch(replacement)) => {
                let (pattern, substitution) = prefix_rewrite(m, replacement);
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&pattern)),
                    substitution,
                });
            }
            None => {}
        }
    }
    action
}

/// Gateway API ReplacePrefixMatch as an RE2 rewrite: the matched prefix
/// (whole segments) is replaced, the rest of the path kept, without doubling
/// or dropping the slash between them.
fn prefix_rewrite(m: &ir::RouteMatch, replacement: &str) -> (String, String) {
    let matched = match &m.path {
        Some(ir::PathMatch::Prefix(p)) => p.trim_end_matches('/').to_string(),
        _ => String::new(),
    };
    let replacement = replacement.trim_end_matches('/');
    let escaped: String = matched
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect();
    let pattern = format!("^{escaped}(/.*)?$");
    let substitution = if replacement.is_empty() {
        "/\\1".to_string()
    } else {
        format!("{replacement}\\1")
    };
    (pattern, substitution)
}

fn redirect_action(r: &ir::RequestRedirect, m: &ir::RouteMatch) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let response_code = match r.status_code {
        Some(301) => Code::MovedPermanently,
        Some(303) => Code::SeeOther,
        Some(307) => Code::TemporaryRedirect,
        Some(308) => Code::PermanentRedirect,
        _ => Code::Found,
    };
    let path_rewrite_specifier = match &r.path {
        Some(ir::PathModifier::ReplaceFullPath(p)) => Some(
            redirect_action::PathRewriteSpecifier::PathRedirect(p.clone()),
        ),
        Some(ir::PathModifier::ReplacePrefixMatch(replacement)) => {
            let (pattern, substitution) = prefix_rewrite(m, replacement);
            Some(redirect_action::PathRewriteSpecifier::RegexRewrite(
                RegexMatchAndSubstitute {
                    pattern: Some(regex(&pattern)),
                    substitution,
                },
            ))
        }
        None => None,
    };
    RedirectAction {
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: r.hostname.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
        path_rewrite_specifier,
        response_code: response_code as i32,
        ..Default::default()
    }
}
