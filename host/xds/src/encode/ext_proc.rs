//! The endpoint picker's Envoy side, all in one place: the ext_proc filter
//! (off by default in each listener), the per-route config that switches it
//! on with a pool's picker, and the override_host load balancing policy
//! that sends the request to the endpoint the picker chose.

use super::clusters::{metadata_key, policy};
use super::seconds;
use envoy_types::pb::envoy::config::cluster::v3::LoadBalancingPolicy;
use envoy_types::pb::envoy::config::core::v3::{GrpcService, HeaderValue, grpc_service};
use envoy_types::pb::envoy::config::route::v3::{self as route, FilterConfig};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ExtProcOverrides, ExtProcPerRoute, ExternalProcessor, MetadataOptions, ProcessingMode,
    ext_proc_per_route, external_processor, metadata_options, processing_mode,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::override_host::v3::{
    OverrideHost, override_host,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt64Value};
use envoy_types::util::pack_any;
use infergate_model as ir;

/// The ext_proc filter's name in the listener and in per-route configs.
pub const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
/// The dynamic metadata namespace of the endpoint picker protocol.
pub use infergate_names::picker::{
    LB_NAMESPACE, MODEL_REWRITES, PROTOCOL_HEADERS, ROUTE_MODELS, SERVED as SERVED_KEY,
    SUBSET_NAMESPACE as SUBSET_HINT_NAMESPACE,
};
/// How long Envoy waits for the picker's answer to one message.
pub(super) const PICKER_MESSAGE_TIMEOUT_SECONDS: i64 = 2;
/// Requests to an InferencePool may be buffered whole (fail-open pools
/// read the body in BUFFERED mode); prompts are large.
const POOL_REQUEST_BUFFER_BYTES: u64 = 32 << 20;

/// Envoy's override_host policy: the endpoint the picker named in the
/// `envoy.lb` metadata (never a request header, which a client could set),
/// an ordered list walked on retries; an address outside the cluster is
/// skipped. Without a pick (the picker failed open) round robin. The endpoint
/// used is written back to `envoy.lb` for the picker's response path.
pub(super) fn override_host_policy(key: &str) -> LoadBalancingPolicy {
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

/// Every endpoint picker the listener's routes call.
pub(super) fn pickers(chain: &ir::FilterChainIr) -> impl Iterator<Item = &ir::EndpointPickerIr> {
    chain
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.rules)
        .filter_map(|r| match &r.action {
            ir::RouteAction::Forward(f) => Some(&f.clusters),
            _ => None,
        })
        .flatten()
        .filter_map(|w| w.endpoint_picker.as_ref())
}

pub(super) fn grpc_service(cluster: &str) -> GrpcService {
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
/// FULL_DUPLEX_STREAMED, a pool endpoint with BUFFERED). Response headers
/// go to the picker (with the served endpoint), and the response body too,
/// chunk by chunk as it comes (streamed completions token by token): the
/// picker reads the usage and timing for its per-model metrics and puts a
/// rewritten model's name back. Full duplex for FailClose pools; FailOpen
/// pools stream it chunk for chunk (STREAMED), which fails open.
pub(super) fn processing_mode(picker: &ir::EndpointPickerIr) -> ProcessingMode {
    use processing_mode::{BodySendMode, HeaderSendMode};
    let (request_body, response_body) = if picker.fail_open {
        (BodySendMode::Buffered, BodySendMode::Streamed)
    } else {
        (
            BodySendMode::FullDuplexStreamed,
            BodySendMode::FullDuplexStreamed,
        )
    };
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: request_body as i32,
        response_body_mode: response_body as i32,
        request_trailer_mode: HeaderSendMode::Send as i32,
        // Envoy takes full-duplex bodies only with their trailers.
        response_trailer_mode: if picker.fail_open {
            HeaderSendMode::Skip as i32
        } else {
            HeaderSendMode::Send as i32
        },
    }
}

/// What the picker learns of the route it serves, as gRPC metadata of its
/// stream ([`infergate_names::picker::ROUTE_MODELS`], `MODEL_REWRITES`).
fn route_metadata(picker: &ir::EndpointPickerIr) -> Vec<HeaderValue> {
    let mut metadata = vec![];
    if !picker.models.is_empty() {
        metadata.push(HeaderValue {
            key: ROUTE_MODELS.into(),
            value: ascii_json(&serde_json::json!(picker.models)),
            ..Default::default()
        });
    }
    if !picker.model_rewrites.is_empty() {
        let rewrites: Vec<serde_json::Value> = picker
            .model_rewrites
            .iter()
            .map(|r| {
                let targets: Vec<(&str, u32)> = r
                    .targets
                    .iter()
                    .map(|t| (t.model.as_str(), t.weight))
                    .collect();
                serde_json::json!([r.model, targets])
            })
            .collect();
        metadata.push(HeaderValue {
            key: MODEL_REWRITES.into(),
            value: ascii_json(&serde_json::Value::Array(rewrites)),
            ..Default::default()
        });
    }
    metadata
}

/// JSON in printable ASCII, as gRPC metadata must be: every other
/// character (they occur only inside strings) escaped as `\uXXXX`.
fn ascii_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

pub(super) fn ext_proc(picker: &ir::EndpointPickerIr) -> ExternalProcessor {
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
pub(super) fn ext_proc_per_route(picker: Option<&ir::EndpointPickerIr>) -> Any {
    let config = picker.map(|picker| {
        pack_any(ExtProcPerRoute {
            r#override: Some(ext_proc_per_route::Override::Overrides(ExtProcOverrides {
                processing_mode: Some(processing_mode(picker)),
                grpc_service: Some(grpc_service(&picker.cluster)),
                failure_mode_allow: Some(BoolValue {
                    value: picker.fail_open,
                }),
                grpc_initial_metadata: route_metadata(picker),
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

/// The ext_proc filter in every request's filter chain, off until the route
/// says otherwise. For chains that route by model: Envoy builds a request's
/// filter chain for the route chosen from its headers alone and leaves out
/// a filter that route disables, so when reading the model moves the
/// request to a route with a picker, that picker would never be called.
/// Set on the route configuration, under every virtual host and route.
pub(super) fn picker_off_until_routed() -> Any {
    pack_any(ExtProcPerRoute {
        r#override: Some(ext_proc_per_route::Override::Disabled(true)),
    })
}

/// A route to InferencePools turns the picker on (each weighted cluster
/// says which picker, or none for a plain Service among them), and may
/// buffer a whole prompt.
pub(super) fn switch_on_picker(route: &mut route::Route, forward: &ir::ForwardAction) {
    let Some(first) = forward
        .clusters
        .iter()
        .find_map(|w| w.endpoint_picker.as_ref())
    else {
        return;
    };
    route
        .typed_per_filter_config
        .insert(EXT_PROC_FILTER.into(), ext_proc_per_route(Some(first)));
    route.request_body_buffer_limit = Some(UInt64Value {
        value: POOL_REQUEST_BUFFER_BYTES,
    });
}
