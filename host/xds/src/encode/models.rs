//! Routing by model, Envoy's side, all in one place: the filter that reads
//! the `model` of a JSON request body into dynamic metadata before a route
//! is chosen (Envoy's json_to_metadata, which clears the route cache when it
//! sets metadata), the route matches on that metadata, the header that
//! passes the model on to backends, errors in the OpenAI API's shape, and
//! the buffer limits that bound how much of a body is read.
//!
//! Chosen over a separate body-based-routing server (one more hop and one
//! more deployment) and over Lua (a JSON parser of its own per request);
//! `docs/model-routing.md` has the measurements.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, StatusCodeFilter, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, Http2ProtocolOptions, RuntimeUInt32,
    SubstitutionFormatString, data_source, header_value_option, substitution_format_string,
};
use envoy_types::pb::envoy::config::route::v3::DirectResponseAction;
use envoy_types::pb::envoy::extensions::filters::http::json_to_metadata::v3::{
    JsonToMetadata, json_to_metadata,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    LocalReplyConfig, ResponseMapper,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, ValueMatcher, metadata_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use infergate_model as ir;
use infergate_names::model::{BODY_FIELD, HEADER, METADATA_KEY, METADATA_NAMESPACE};

use super::routes::{regex, string_matcher};

pub(super) const JSON_TO_METADATA_FILTER: &str = "envoy.filters.http.json_to_metadata";

/// `%DYNAMIC_METADATA(...)%`: the model, in Envoy's format strings.
fn model_command() -> String {
    format!("%DYNAMIC_METADATA({METADATA_NAMESPACE}:{METADATA_KEY})%")
}

/// The filter that reads the body's `model` into the metadata routes match.
/// Only JSON bodies are read (`application/json`, with parameters or not);
/// others stream on untouched and match no model.
pub(super) fn json_to_metadata() -> JsonToMetadata {
    use json_to_metadata::{KeyValuePair, MatchRules, Rule, Selector, ValueType, selector};
    JsonToMetadata {
        request_rules: Some(MatchRules {
            rules: vec![Rule {
                selectors: vec![Selector {
                    selector: Some(selector::Selector::Key(BODY_FIELD.into())),
                }],
                on_present: Some(KeyValuePair {
                    metadata_namespace: METADATA_NAMESPACE.into(),
                    key: METADATA_KEY.into(),
                    r#type: ValueType::String as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            allow_content_types_regex: Some(regex(r"(?i)application/json\s*(;.*)?")),
            ..Default::default()
        }),
        response_rules: None,
    }
}

/// A route's match on the model the body named.
pub(super) fn model_matcher(m: &ir::ModelMatch) -> MetadataMatcher {
    MetadataMatcher {
        filter: METADATA_NAMESPACE.into(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(
                METADATA_KEY.into(),
            )),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(string_matcher(
                m.match_type,
                &m.value,
            ))),
        }),
        invert: false,
    }
}

/// Backends of a route by model get the model as `X-Gateway-Model-Name`
/// (the client's own was removed by the listener's first filter).
pub(super) fn model_header() -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: HEADER.into(),
            value: model_command(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// `{"error": {"message", "type", "code"}}`, where `{model}` in the message
/// is the model the body named, inserted as Envoy read it (the routes that
/// answer with it match only names that JSON needs no escape for). OpenAI's
/// errors also carry `param`, often null; clients treat it as optional.
///
/// A text format, not a JSON format: Envoy's JSON formats are
/// `google.protobuf.Struct`s, whose fields prost encodes in a random order,
/// so every encoding would be new to Envoy's xDS versions.
fn api_error_body(message: &str, error_type: &str, code: &str) -> SubstitutionFormatString {
    let body = serde_json::json!({
        "error": {"message": message, "type": error_type, "code": code}
    });
    let text = body
        .to_string()
        .replace('%', "%%")
        .replace("{model}", &model_command());
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..Default::default()
            },
        )),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

pub(super) fn api_error(e: &ir::ApiError) -> DirectResponseAction {
    DirectResponseAction {
        status: e.status,
        body: None,
        body_format: Some(api_error_body(&e.message, &e.error_type, &e.code)),
    }
}

/// A body over the limit is answered 413 by Envoy itself: in the API's
/// shape, on chains that route by model.
pub(super) fn local_replies(routing: &ir::ModelRouting) -> LocalReplyConfig {
    LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(
                    StatusCodeFilter {
                        comparison: Some(ComparisonFilter {
                            op: comparison_filter::Op::Eq as i32,
                            value: Some(RuntimeUInt32 {
                                default_value: 413,
                                runtime_key: "infergate.model_routing.too_large_status".into(),
                            }),
                        }),
                    },
                )),
            }),
            body_format_override: Some(api_error_body(
                &format!(
                    "The request body is larger than {} bytes, the most this gateway reads \
                     to find the model a request names",
                    routing.max_body_bytes
                ),
                "invalid_request_error",
                "request_too_large",
            )),
            ..Default::default()
        }],
        body_format: None,
    }
}

/// What Envoy buffers of an HTTP/2 request is bounded by the stream's flow
/// control window (HTTP/1 requests by the listener's buffer limit, set with
/// [`listener_buffer_limit`]).
pub(super) fn http2_options(routing: &ir::ModelRouting) -> Http2ProtocolOptions {
    Http2ProtocolOptions {
        initial_stream_window_size: Some(UInt32Value {
            value: routing.max_body_bytes,
        }),
        ..Default::default()
    }
}

/// The listener's per-connection buffer limit: the largest body any of its
/// chains reads (Envoy's default, 1 MiB, when none routes by model).
pub(super) fn listener_buffer_limit(listener: &ir::ListenerIr) -> Option<UInt32Value> {
    listener
        .filter_chains
        .iter()
        .filter_map(|c| c.model_routing.as_ref())
        .map(|r| r.max_body_bytes)
        .max()
        .map(|value| UInt32Value { value })
}
