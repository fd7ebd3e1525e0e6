//! Routing by model. The OpenAI APIs name the model in the JSON request
//! body; HTTPRoutes match it as a header, `X-Gateway-Model-Name`, as the
//! Inference Extension's body-based routing does. Such a header match
//! becomes a [`ModelMatch`] on the body's `model`, which Envoy reads before
//! it chooses a route, on the filter chains that have one (and only there:
//! elsewhere bodies stream untouched).
//!
//! A virtual host that routes by model also answers, after the routes of
//! its HTTPRoutes (so that a route of the user's own takes precedence):
//! - `GET /v1/models` with the models its routes name, in the OpenAI list
//!   shape;
//! - any other request with a 404 in the OpenAI error shape, which names the
//!   model the body asked for, or says what routes by model need.

use std::collections::BTreeSet;

use infergate_model::{
    ApiError, DirectResponse, HeaderModifier, HeaderValue, ModelMatch, ModelRouting, PathMatch,
    RouteAction, RouteIr, RouteMatch, RuleIr, StringMatchType, VirtualHostIr,
};
use infergate_names::model::{HEADER, LIST_PATH};

/// `m` without its header match on the model header, and that match as a
/// model match.
pub fn split(m: &RouteMatch) -> (RouteMatch, Option<ModelMatch>) {
    let Some(position) = m
        .headers
        .iter()
        .position(|h| h.name.eq_ignore_ascii_case(HEADER))
    else {
        return (m.clone(), None);
    };
    let mut rest = m.clone();
    let header = rest.headers.remove(position);
    let model = ModelMatch {
        match_type: header.match_type,
        value: header.value,
    };
    (rest, Some(model))
}

/// The models `matches` name exactly (a header match on the model header
/// of type Exact), sorted, each once: the labels of the picker's metrics.
pub fn named_exactly(matches: &[RouteMatch]) -> Vec<String> {
    let names: BTreeSet<&str> = matches
        .iter()
        .flat_map(|m| &m.headers)
        .filter(|h| h.name.eq_ignore_ascii_case(HEADER) && h.match_type == StringMatchType::Exact)
        .map(|h| h.value.as_str())
        .collect();
    names.into_iter().map(str::to_string).collect()
}

/// Whether any of `routes` matches a model.
pub fn routes_by_model(routes: &[RouteIr]) -> bool {
    routes.iter().any(|r| r.model.is_some())
}

/// The model routing of a filter chain whose virtual hosts are `hosts`:
/// None unless one of them routes by model.
pub fn chain_routing(hosts: &[VirtualHostIr], max_body_bytes: u32) -> Option<ModelRouting> {
    hosts
        .iter()
        .any(|vh| routes_by_model(&vh.routes))
        .then_some(ModelRouting { max_body_bytes })
}

/// Rule names of the routes added here: a namespace has no ':', so they
/// never meet the names of HTTPRoute rules (`<namespace>/<route>/rule/<i>`).
const LIST_RULE: &str = "infergate:model-list";
const NOT_SERVED_RULE: &str = "infergate:model-not-served";
const NO_MODEL_RULE: &str = "infergate:no-model";

/// Model names that an error may repeat inside a JSON string unescaped: no
/// quote, backslash or control character.
const ECHOED_MODEL: &str = r#"[^"\\\p{Cc}]+"#;

/// Append the model list and the 404s to a virtual host's routes (in
/// precedence order, so they come last) when one of its routes matches a
/// model.
pub fn complete_virtual_host(rules: &mut Vec<RuleIr>, routes: &mut Vec<RouteIr>) {
    if !routes_by_model(routes) {
        return;
    }
    let models: BTreeSet<&str> = routes
        .iter()
        .filter_map(|r| r.model.as_ref())
        .filter(|m| m.match_type == StringMatchType::Exact)
        .map(|m| m.value.as_str())
        .collect();
    let list = RuleIr {
        name: LIST_RULE.into(),
        action: RouteAction::DirectResponse(DirectResponse {
            status: 200,
            body: model_list(&models),
        }),
        request_headers: HeaderModifier::default(),
        response_headers: json_content(),
    };
    let not_served = RuleIr {
        name: NOT_SERVED_RULE.into(),
        action: RouteAction::ApiError(ApiError {
            status: 404,
            message: "The model `{model}` is not served at this address and path; \
                      GET /v1/models lists the models that are"
                .into(),
            error_type: "invalid_request_error".into(),
            code: "model_not_found".into(),
        }),
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    };
    let no_model = RuleIr {
        name: NO_MODEL_RULE.into(),
        action: RouteAction::ApiError(ApiError {
            status: 404,
            message: "No route matches this request. Routes by model take a JSON request \
                      body (Content-Type: application/json) whose `model` field names a \
                      model they serve; GET /v1/models lists them"
                .into(),
            error_type: "invalid_request_error".into(),
            code: "model_not_found".into(),
        }),
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    };
    let first = rules.len() as u32;
    rules.extend([list, not_served, no_model]);
    let everything = RouteMatch {
        path: None,
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    };
    routes.extend([
        RouteIr {
            matches: RouteMatch {
                path: Some(PathMatch::Exact(LIST_PATH.into())),
                method: Some("GET".into()),
                ..everything.clone()
            },
            model: None,
            rule: first,
            match_index: 0,
        },
        RouteIr {
            matches: everything.clone(),
            // Any model whose name can go into a JSON string as it is (the
            // error names it); others get the error that names none.
            model: Some(ModelMatch {
                match_type: StringMatchType::RegularExpression,
                value: ECHOED_MODEL.into(),
            }),
            rule: first + 1,
            match_index: 0,
        },
        RouteIr {
            matches: everything,
            model: None,
            rule: first + 2,
            match_index: 0,
        },
    ]);
}

fn json_content() -> HeaderModifier {
    HeaderModifier {
        set: vec![HeaderValue {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        add: Vec::new(),
        remove: Vec::new(),
    }
}

/// The OpenAI API's model list: `{"object": "list", "data": [...]}`.
fn model_list(models: &BTreeSet<&str>) -> String {
    let data: Vec<String> = models
        .iter()
        .map(|id| {
            format!(
                r#"{{"id":{},"object":"model","created":0,"owned_by":"infergate"}}"#,
                json_string(id)
            )
        })
        .collect();
    format!(r#"{{"object":"list","data":[{}]}}"#, data.join(","))
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_model::HeaderMatch;

    fn header(name: &str, value: &str) -> HeaderMatch {
        HeaderMatch {
            match_type: StringMatchType::Exact,
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_model_header_match_becomes_a_model_match_whatever_its_case() {
        let m = RouteMatch {
            path: None,
            headers: vec![
                header("X-Gateway-Model-Name", "llama"),
                header("x-team", "a"),
            ],
            query_params: vec![],
            method: None,
        };
        let (rest, model) = split(&m);
        assert_eq!(rest.headers, vec![header("x-team", "a")]);
        assert_eq!(
            model,
            Some(ModelMatch {
                match_type: StringMatchType::Exact,
                value: "llama".into()
            })
        );
        let (same, none) = split(&rest);
        assert_eq!((same, none), (rest, None));
    }

    #[test]
    fn model_names_are_escaped_in_the_list() {
        let models: BTreeSet<&str> = ["a\"b", "c\\d\n"].into_iter().collect();
        assert_eq!(
            model_list(&models),
            r#"{"object":"list","data":[{"id":"a\"b","object":"model","created":0,"owned_by":"infergate"},{"id":"c\\d\u000a","object":"model","created":0,"owned_by":"infergate"}]}"#
        );
    }
}
