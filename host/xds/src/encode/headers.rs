//! Header mutations: the filter that removes client-set picker protocol
//! headers, and Gateway API header modifiers on routes.

use envoy_types::pb::envoy::config::common::mutation_rules::v3 as mutation_rules;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as header_mutation;
use infergate_model as ir;

use super::ext_proc::PROTOCOL_HEADERS;

/// The first HTTP filter of every listener: removes the picker protocol's
/// headers and the model header a client sent, so that only the picker can
/// steer a request, and only the body can name its model.
pub(super) fn protocol_headers_removed() -> header_mutation::HeaderMutation {
    header_mutation::HeaderMutation {
        mutations: Some(header_mutation::Mutations {
            request_mutations: PROTOCOL_HEADERS
                .iter()
                .chain([&infergate_names::model::HEADER])
                .map(|h| mutation_rules::HeaderMutation {
                    action: Some(mutation_rules::header_mutation::Action::Remove(
                        h.to_string(),
                    )),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Gateway API header modifiers (set, add) as Envoy header options; removals
/// are plain name lists on the route.
pub(super) fn header_options(m: &ir::HeaderModifier) -> Vec<HeaderValueOption> {
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
