//! HTTPRoutes: rules compiled once, then attached to the listeners of the
//! Gateways they name, with the per-parent status that Gateway API defines.

use std::collections::HashMap;

use infergate_model::{
    BackendRef, ClusterIr, Condition, ConditionStatus, DirectResponse, EndpointPickerIr,
    ForwardAction, HeaderModifier, HttpRoute, HttpRouteStatus, ParentRef, PathMatch, PathModifier,
    RefKind, RouteAction, RouteFilter, RouteMatch, RouteParentStatus, RouteRule, UrlRewrite,
    WeightedCluster,
};

use crate::backends::{self, BackendKind, BackendUse};
use crate::conditions::{self as c, fail, ok, reason};
use crate::gateways::{Attachment, Evaluated, GatewayState};
use crate::index::{GATEWAY_GROUP, Index};
use crate::refs::{self, Problem};
use crate::validate;

/// Every HTTPRoute, compiled, and their statuses.
pub struct RouteTable<'a> {
    pub routes: Vec<CompiledRoute<'a>>,
    pub statuses: Vec<HttpRouteStatus>,
    /// Every cluster a rule refers to, once; rules hold indexes into it.
    pub clusters: Vec<ClusterIr>,
    /// Routes reaching backends that report their parents (InferencePools),
    /// by parent Gateway, in route order.
    pub backend_uses: Vec<BackendUse>,
}

pub struct CompiledRoute<'a> {
    pub route: &'a HttpRoute,
    pub rules: Vec<CompiledRule<'a>>,
    /// Why `spec.hostnames` cannot be served; such a route is not accepted.
    pub invalid_hostnames: Option<String>,
    /// Backends it reaches that report their parents: kind, namespace,
    /// name, cluster index; each once.
    pub reported_backends: Vec<(RefKind, String, String, usize)>,
}

impl CompiledRoute<'_> {
    /// Why each invalid rule is invalid, in rule order.
    pub fn invalid_rules(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter_map(|r| r.invalid.as_deref())
            .collect()
    }
}

/// One rule of a route, ready to become Envoy routes (one per match).
pub struct CompiledRule<'a> {
    pub index: usize,
    /// The rule's matches, as written.
    matches: &'a [RouteMatch],
    pub action: RouteAction,
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
    /// Clusters the action sends to (the pool and picker clusters
    /// included), as indexes into [`RouteTable::clusters`].
    pub clusters: Vec<usize>,
    /// Why the rule is not valid; such a rule answers 500, or is left out.
    pub invalid: Option<String>,
    /// The rule's matches cannot be given to Envoy: it gets no Envoy routes.
    pub left_out: bool,
}

/// A rule without matches matches every request (a `/` prefix).
static MATCH_EVERYTHING: [RouteMatch; 1] = [RouteMatch {
    path: None,
    headers: Vec::new(),
    query_params: Vec::new(),
    method: None,
}];

impl<'a> CompiledRule<'a> {
    /// The rule's matches; one that matches everything if it has none.
    pub fn matches(&self) -> &'a [RouteMatch] {
        if self.matches.is_empty() {
            &MATCH_EVERYTHING
        } else {
            self.matches
        }
    }
}

/// The response for traffic that matches a rule which cannot be served.
fn internal_error() -> RouteAction {
    RouteAction::DirectResponse(DirectResponse {
        status: 500,
        body: String::new(),
    })
}

/// What a backendRef resolution depends on: many routes refer to the same
/// backends, and each is resolved (endpoints and all) once.
type BackendKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, Option<u32>);

/// A resolution, with its clusters as indexes into the cluster table.
#[derive(Clone)]
struct ResolvedIds {
    cluster: usize,
    picker: Option<(EndpointPickerIr, usize)>,
    unservable: bool,
    reports_parents: bool,
}

/// Resolves backendRefs through the backend kinds, remembering results.
struct Resolver<'a, 'i> {
    index: &'i Index<'a>,
    kinds: Vec<Box<dyn BackendKind>>,
    cache: HashMap<BackendKey<'a>, Result<ResolvedIds, Problem>>,
    clusters: Vec<ClusterIr>,
    cluster_ids: HashMap<String, usize>,
}

impl<'a, 'i> Resolver<'a, 'i> {
    fn resolve(
        &mut self,
        route: &'a HttpRoute,
        backend: &'a BackendRef,
    ) -> Result<ResolvedIds, Problem> {
        let key = (
            route.meta.namespace.as_str(),
            backend.kind.group(),
            backend.kind.kind(),
            refs::target_namespace(route, backend),
            backend.name.as_str(),
            backend.port,
        );
        if let Some(known) = self.cache.get(&key) {
            return known.clone();
        }
        let outcome = backends::resolve(&self.kinds, self.index, route, backend).map(|resolved| {
            ResolvedIds {
                cluster: self.intern(resolved.cluster),
                picker: resolved
                    .endpoint_picker
                    .map(|(picker, cluster)| (picker, self.intern(cluster))),
                unservable: resolved.unservable,
                reports_parents: resolved.reports_parents,
            }
        });
        self.cache.insert(key, outcome.clone());
        outcome
    }

    fn intern(&mut self, cluster: ClusterIr) -> usize {
        if let Some(&id) = self.cluster_ids.get(&cluster.name) {
            return id;
        }
        let id = self.clusters.len();
        self.cluster_ids.insert(cluster.name.clone(), id);
        self.clusters.push(cluster);
        id
    }
}

/// Compile every HTTPRoute, resolving backendRefs through `kinds`, and
/// attach it to the listeners of its parent Gateways.
pub fn attach_all<'a>(
    index: &Index<'a>,
    gateways: &mut Evaluated<'a>,
    kinds: Vec<Box<dyn BackendKind>>,
) -> RouteTable<'a> {
    let mut resolver = Resolver {
        index,
        kinds,
        cache: HashMap::new(),
        clusters: Vec::new(),
        cluster_ids: HashMap::new(),
    };
    let mut routes = Vec::new();
    let mut statuses = Vec::new();
    let mut backend_uses = Vec::new();
    let mut sorted: Vec<&HttpRoute> = index.snapshot.http_routes.iter().collect();
    sorted
        .sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    for route in sorted {
        let (compiled, problem) = compile(&mut resolver, route);
        let position = routes.len();
        let parents: Vec<RouteParentStatus> = route
            .parent_refs
            .iter()
            .filter_map(|parent| {
                attach(
                    index,
                    gateways,
                    route,
                    &compiled,
                    problem.as_ref(),
                    parent,
                    position,
                )
            })
            .collect();
        for (kind, namespace, name, cluster) in &compiled.reported_backends {
            for parent in &parents {
                backend_uses.push(BackendUse {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    cluster: *cluster,
                    gateway: (
                        parent
                            .parent_ref
                            .namespace
                            .clone()
                            .unwrap_or_else(|| route.meta.namespace.clone()),
                        parent.parent_ref.name.clone(),
                    ),
                    route: format!("{}/{}", route.meta.namespace, route.meta.name),
                    accepted: parent.conditions.iter().any(|c| {
                        c.condition_type == c::ACCEPTED && c.status == ConditionStatus::True
                    }),
                });
            }
        }
        routes.push(compiled);
        if !parents.is_empty() {
            statuses.push(HttpRouteStatus {
                route: route.meta.object_ref(),
                parents,
            });
        }
    }
    RouteTable {
        routes,
        statuses,
        clusters: resolver.clusters,
        backend_uses,
    }
}

/// Compile every rule of `route`; the first backend problem is returned for
/// the ResolvedRefs condition.
fn compile<'a>(
    resolver: &mut Resolver<'a, '_>,
    route: &'a HttpRoute,
) -> (CompiledRoute<'a>, Option<Problem>) {
    let mut first_problem = None;
    let mut reported_backends = Vec::new();
    let rules = route
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            compile_rule(
                resolver,
                route,
                i,
                rule,
                &mut first_problem,
                &mut reported_backends,
            )
        })
        .collect();
    let invalid_hostnames = route.hostnames.iter().enumerate().find_map(|(i, h)| {
        validate::hostname(h, true)
            .err()
            .map(|why| format!("spec.hostnames[{i}]: {why}"))
    });
    (
        CompiledRoute {
            route,
            rules,
            invalid_hostnames,
            reported_backends,
        },
        first_problem,
    )
}

fn compile_rule<'a>(
    resolver: &mut Resolver<'a, '_>,
    route: &'a HttpRoute,
    position: usize,
    rule: &'a RouteRule,
    first_problem: &mut Option<Problem>,
    reported_backends: &mut Vec<(RefKind, String, String, usize)>,
) -> CompiledRule<'a> {
    let label = || match &rule.name {
        Some(name) => format!("rule {name:?}"),
        None => format!("rules[{position}]"),
    };
    let mut request_headers = HeaderModifier::default();
    let mut response_headers = HeaderModifier::default();
    let mut redirect = None;
    let mut rewrite: Option<UrlRewrite> = None;
    let mut invalid = None;
    for filter in &rule.filters {
        match filter {
            RouteFilter::RequestHeaderModifier(m) => merge(&mut request_headers, m),
            RouteFilter::ResponseHeaderModifier(m) => merge(&mut response_headers, m),
            RouteFilter::RequestRedirect(r) => redirect = Some(r.clone()),
            RouteFilter::UrlRewrite(r) => rewrite = Some(r.clone()),
            RouteFilter::Unsupported(kind) => {
                invalid.get_or_insert_with(|| {
                    format!("{}: filter type {kind:?} is not supported", label())
                });
            }
        }
    }
    // A match Envoy would refuse cannot be given to Envoy at all: the rule is
    // left out, so the listener's other routes are still configured.
    let mut left_out = false;
    if let Err(why) = validate::route_matches(&rule.matches) {
        invalid.get_or_insert_with(|| format!("{}: {why}", label()));
        left_out = true;
    }
    if let Err(why) = validate::filters(&rule.filters) {
        invalid.get_or_insert_with(|| format!("{}: {why}", label()));
    }
    if let Err(why) = validate::weights(&rule.backend_refs) {
        invalid.get_or_insert_with(|| format!("{}: {why}", label()));
    }
    if rewrite
        .as_ref()
        .and_then(|r| r.path.as_ref())
        .is_some_and(|p| matches!(p, PathModifier::ReplacePrefixMatch(_)))
        && rule
            .matches
            .iter()
            .any(|m| !matches!(m.path, None | Some(PathMatch::Prefix(_))))
    {
        invalid.get_or_insert_with(|| {
            format!(
                "{}: URLRewrite ReplacePrefixMatch needs PathPrefix matches only",
                label()
            )
        });
    }

    let mut clusters = Vec::new();
    let mut weighted = Vec::new();
    for backend in &rule.backend_refs {
        let resolution = resolver.resolve(route, backend);
        if let Ok(ids) = &resolution
            && ids.reports_parents
        {
            let reported = (
                backend.kind.clone(),
                refs::target_namespace(route, backend).to_string(),
                backend.name.clone(),
                ids.cluster,
            );
            if !reported_backends.contains(&reported) {
                reported_backends.push(reported);
            }
        }
        match resolution {
            Ok(resolved) if resolved.unservable => {
                if backend.weight > 0 {
                    weighted.push(WeightedCluster {
                        cluster: None,
                        weight: backend.weight,
                        endpoint_picker: None,
                    });
                }
            }
            Ok(resolved) => {
                let picker = resolved.picker.map(|(mut picker, cluster)| {
                    clusters.push(cluster);
                    picker.models = crate::models::named_exactly(&rule.matches);
                    picker
                });
                if backend.weight > 0 {
                    weighted.push(WeightedCluster {
                        cluster: Some(resolver.clusters[resolved.cluster].name.clone()),
                        weight: backend.weight,
                        endpoint_picker: picker,
                    });
                }
                clusters.push(resolved.cluster);
            }
            Err(problem) => {
                if backend.weight > 0 {
                    weighted.push(WeightedCluster {
                        cluster: None,
                        weight: backend.weight,
                        endpoint_picker: None,
                    });
                }
                first_problem.get_or_insert(problem);
            }
        }
    }

    let action = if invalid.is_some() {
        clusters.clear();
        // Nothing of an invalid rule reaches Envoy but its 500.
        request_headers = HeaderModifier::default();
        response_headers = HeaderModifier::default();
        internal_error()
    } else if let Some(r) = redirect {
        clusters.clear();
        RouteAction::Redirect(r)
    } else if weighted.is_empty() {
        // No backends, or every weight is 0: Gateway API asks for a 500.
        internal_error()
    } else {
        RouteAction::Forward(ForwardAction {
            clusters: weighted,
            rewrite,
        })
    };
    CompiledRule {
        index: position,
        matches: &rule.matches,
        action,
        request_headers,
        response_headers,
        clusters,
        invalid,
        left_out,
    }
}

fn merge(into: &mut HeaderModifier, from: &HeaderModifier) {
    into.set.extend(from.set.iter().cloned());
    into.add.extend(from.add.iter().cloned());
    into.remove.extend(from.remove.iter().cloned());
}

/// Attach `route` through `parent`. Returns None when the parent is not a
/// Gateway of ours: its status belongs to another controller.
#[allow(clippy::too_many_arguments)]
fn attach(
    index: &Index,
    gateways: &mut Evaluated,
    route: &HttpRoute,
    compiled: &CompiledRoute,
    problem: Option<&Problem>,
    parent: &ParentRef,
    position: usize,
) -> Option<RouteParentStatus> {
    if !parent.kind.is(GATEWAY_GROUP, "Gateway") {
        return None;
    }
    let namespace = parent.namespace.as_deref().unwrap_or(&route.meta.namespace);
    let gateway = gateways
        .gateways
        .iter_mut()
        .find(|g| g.namespace() == namespace && g.name() == parent.name)?;
    let generation = route.meta.generation;
    let accepted = accept(index, gateway, route, compiled, parent, position);
    let mut conditions: Vec<Condition> = vec![match accepted {
        Ok(()) => ok(c::ACCEPTED, reason::ACCEPTED, "route accepted", generation),
        Err((why, message)) => fail(c::ACCEPTED, why, message, generation),
    }];
    conditions.push(match problem {
        None => ok(
            c::RESOLVED_REFS,
            reason::RESOLVED_REFS,
            "all references resolved",
            generation,
        ),
        Some(p) => fail(c::RESOLVED_REFS, p.reason, p.message.clone(), generation),
    });
    let invalid: Vec<String> = compiled
        .rules
        .iter()
        .filter_map(|r| {
            let what = if r.left_out {
                "the rule is left out"
            } else {
                "the rule answers 500"
            };
            r.invalid.as_ref().map(|why| format!("{why}; {what}"))
        })
        .collect();
    if !invalid.is_empty() && invalid.len() < compiled.rules.len() {
        conditions.push(Condition::new(
            c::PARTIALLY_INVALID,
            true,
            reason::UNSUPPORTED_VALUE,
            invalid.join("; "),
            generation,
        ));
    }
    Some(RouteParentStatus {
        parent_ref: parent.clone(),
        conditions,
    })
}

fn accept(
    index: &Index,
    gateway: &mut GatewayState,
    route: &HttpRoute,
    compiled: &CompiledRoute,
    parent: &ParentRef,
    position: usize,
) -> Result<(), (&'static str, String)> {
    if !gateway.accepted() {
        return Err((
            reason::NO_MATCHING_PARENT,
            format!(
                "Gateway {}/{} is not accepted",
                gateway.namespace(),
                gateway.name()
            ),
        ));
    }
    if let Some(why) = &compiled.invalid_hostnames {
        return Err((reason::UNSUPPORTED_VALUE, why.clone()));
    }
    let candidates: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            parent
                .section_name
                .as_deref()
                .is_none_or(|s| s == l.listener.name)
        })
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.listener.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let mut what = Vec::new();
        if let Some(s) = &parent.section_name {
            what.push(format!("named {s:?}"));
        }
        if let Some(p) = parent.port {
            what.push(format!("on port {p}"));
        }
        return Err((
            reason::NO_MATCHING_PARENT,
            format!(
                "Gateway {}/{} has no listener {}",
                gateway.namespace(),
                gateway.name(),
                what.join(" ")
            ),
        ));
    }
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| {
            let l = &gateway.listeners[i];
            l.usable
                && l.supported_kinds
                    .iter()
                    .any(|k| k.group == GATEWAY_GROUP && k.kind == "HTTPRoute")
                && gateway.allows_namespace(index, l, &route.meta.namespace)
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "no listener of Gateway {}/{} that this parentRef selects allows HTTPRoutes from namespace {:?}",
                gateway.namespace(),
                gateway.name(),
                route.meta.namespace
            ),
        ));
    }
    let with_hosts: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .map(|i| {
            (
                i,
                GatewayState::effective_hostnames(&gateway.listeners[i], &route.hostnames),
            )
        })
        .filter(|(_, h)| !h.is_empty())
        .collect();
    if with_hosts.is_empty() {
        return Err((
            reason::NO_MATCHING_LISTENER_HOSTNAME,
            format!(
                "none of the route's hostnames {:?} matches a listener hostname of Gateway {}/{}",
                route.hostnames,
                gateway.namespace(),
                gateway.name()
            ),
        ));
    }
    let invalid = compiled.invalid_rules();
    if !compiled.rules.is_empty() && invalid.len() == compiled.rules.len() {
        return Err((reason::UNSUPPORTED_VALUE, invalid.join("; ")));
    }
    for (i, hostnames) in with_hosts {
        gateway.listeners[i].attachments.push(Attachment {
            route: position,
            hostnames,
        });
    }
    Ok(())
}
