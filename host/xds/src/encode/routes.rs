//! Route configurations: virtual hosts, matches in Gateway API precedence,
//! forwarding to (weighted) clusters, rewrites and redirects.

use super::ext_proc::{
    EXT_PROC_FILTER, ext_proc_per_route, picker_off_until_routed, pickers, switch_on_picker,
};
use super::headers::header_options;
use super::models::{api_error, model_header, model_matcher};
use super::{INVALID_BACKEND_CLUSTER, seconds};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{
    self as route, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, RouteConfiguration, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use infergate_model as ir;

pub(super) fn route_configuration(chain: &ir::FilterChainIr) -> RouteConfiguration {
    RouteConfiguration {
        virtual_hosts: chain.virtual_hosts.iter().map(virtual_host).collect(),
        ..route_configuration_without_hosts(chain)
    }
}

/// A filter chain's route configuration but for its virtual hosts.
pub(crate) fn route_configuration_without_hosts(chain: &ir::FilterChainIr) -> RouteConfiguration {
    let mut config = RouteConfiguration {
        name: chain.name.clone(),
        // Gateway API matches hostnames without the port, and the backend
        // gets the Host header as the client sent it (port included).
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    if chain.model_routing.is_some() && pickers(chain).next().is_some() {
        config
            .typed_per_filter_config
            .insert(EXT_PROC_FILTER.into(), picker_off_until_routed());
    }
    config
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

pub(super) fn string_matcher(match_type: ir::StringMatchType, value: &str) -> StringMatcher {
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

pub(super) fn regex(value: &str) -> RegexMatcher {
    RegexMatcher {
        regex: value.to_string(),
        ..Default::default()
    }
}

pub(super) fn route_match(m: &ir::RouteMatch) -> route::RouteMatch {
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
pub(super) fn prefix(p: &str) -> route_match::PathSpecifier {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        route_match::PathSpecifier::Prefix("/".into())
    } else {
        route_match::PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
    }
}

/// The Envoy route for match `r` of `rule`. The runtime rejects output whose
/// routes name a rule their virtual host does not have; should one get here
/// anyway, its route answers 500 rather than taking the controller down.
pub(super) fn route(r: &ir::RouteIr, rule: Option<&ir::RuleIr>) -> route::Route {
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
        ir::RouteAction::ApiError(e) => route::route::Action::DirectResponse(api_error(e)),
    };
    let mut matches = route_match(&r.matches);
    let mut request_headers_to_add = header_options(&rule.request_headers);
    if let Some(model) = &r.model {
        matches.dynamic_metadata.push(model_matcher(model));
        request_headers_to_add.push(model_header());
    }
    let mut out = route::Route {
        name: format!("{}/match/{}", rule.name, r.match_index),
        r#match: Some(matches),
        action: Some(action),
        request_headers_to_add,
        request_headers_to_remove: rule.request_headers.remove.clone(),
        response_headers_to_add: header_options(&rule.response_headers),
        response_headers_to_remove: rule.response_headers.remove.clone(),
        ..Default::default()
    };
    if let ir::RouteAction::Forward(forward) = &rule.action {
        switch_on_picker(&mut out, forward);
    }
    out
}

pub(super) fn cluster_name(w: &ir::WeightedCluster) -> String {
    w.cluster
        .clone()
        .unwrap_or_else(|| INVALID_BACKEND_CLUSTER.to_string())
}

pub(super) fn forward_action(
    forward: &ir::ForwardAction,
    m: &ir::RouteMatch,
) -> route::RouteAction {
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
    if forward.clusters.iter().any(|c| c.endpoint_picker.is_some()) {
        action.retry_policy = Some(picker_retries());
    }
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

/// Retries of a request to a pool whose picker chose: the override_host
/// policy tries the picker's endpoints in order, so a retry goes to the
/// next best endpoint. Only failures before any response began (no
/// connection, a reset before the response headers, a refused HTTP/2
/// stream): a completion that started streaming is never sent twice.
fn picker_retries() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,reset,refused-stream".into(),
        num_retries: Some(UInt32Value {
            value: infergate_names::picker::FALLBACKS,
        }),
        ..Default::default()
    }
}

/// Gateway API ReplacePrefixMatch as an RE2 rewrite: the matched prefix
/// (whole segments) is replaced, the rest of the path kept, without doubling
/// or dropping the slash between them (with `/` as the replacement,
/// `/prefix/rest` becomes `/rest`, not `//rest`).
pub(super) fn prefix_rewrite(m: &ir::RouteMatch, replacement: &str) -> (String, String) {
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
    if replacement.is_empty() {
        // The rest without its leading slash, after the replacement's.
        (format!("^{escaped}(?:/(.*))?$"), "/\\1".to_string())
    } else {
        (format!("^{escaped}(/.*)?$"), format!("{replacement}\\1"))
    }
}

pub(super) fn redirect_action(r: &ir::RequestRedirect, m: &ir::RouteMatch) -> RedirectAction {
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
