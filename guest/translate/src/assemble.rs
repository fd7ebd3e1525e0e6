//! Listeners, virtual hosts and routes for each Gateway's Envoy, with routes
//! in Gateway API precedence order.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use infergate_model::{GatewayIr, ListenerIr, PathMatch, RouteIr, RouteMatch, VirtualHostIr};

use crate::gateways::{Evaluated, GatewayState};
use crate::routes::{CompiledRoute, CompiledRule, RouteTable};

pub fn gateway_irs(gateways: &Evaluated, table: &RouteTable) -> Vec<GatewayIr> {
    let ages = route_ages(table);
    gateways
        .gateways
        .iter()
        .filter(|g| g.accepted())
        .map(|g| gateway_ir(g, table, &ages))
        .collect()
}

/// Each route's place in the last precedence tie-breakers: oldest first, then
/// by namespace/name. Indexed like [`RouteTable::routes`].
fn route_ages(table: &RouteTable) -> Vec<usize> {
    let mut order: Vec<usize> = (0..table.routes.len()).collect();
    order.sort_by_key(|&i| {
        let meta = &table.routes[i].route.meta;
        (
            meta.creation_timestamp.as_str(),
            meta.namespace.as_str(),
            meta.name.as_str(),
        )
    });
    let mut ages = vec![0; order.len()];
    for (age, i) in order.into_iter().enumerate() {
        ages[i] = age;
    }
    ages
}

fn gateway_ir(gateway: &GatewayState, table: &RouteTable, ages: &[usize]) -> GatewayIr {
    // Listeners that share a port share one Envoy listener; their hostnames
    // become virtual hosts.
    let mut ports: BTreeMap<u32, BTreeMap<&str, Vec<Ranked>>> = BTreeMap::new();
    let mut clusters: Vec<usize> = Vec::new();
    for listener in gateway.listeners.iter().filter(|l| l.usable) {
        let hosts = ports.entry(listener.listener.port).or_default();
        for attachment in &listener.attachments {
            let compiled = &table.routes[attachment.route];
            for rule in &compiled.rules {
                clusters.extend(&rule.clusters);
            }
            for host in &attachment.hostnames {
                let routes = hosts.entry(host.as_str()).or_default();
                for (r, rule) in compiled.rules.iter().enumerate() {
                    for (m, route_match) in rule.matches().iter().enumerate() {
                        routes.push(Ranked {
                            key: precedence(route_match, ages[attachment.route], r, m),
                            route: attachment.route,
                        });
                    }
                }
            }
        }
    }

    // Each virtual host's routes in precedence order, once for all addresses.
    let mut ports: Vec<(u32, Vec<HostRoutes>)> = ports
        .into_iter()
        .map(|(port, hosts)| {
            let hosts = hosts
                .into_iter()
                .map(|(host, mut routes)| {
                    // A route attached through two listeners with the same
                    // hostname appears twice; equal keys are the same match.
                    routes.sort_unstable_by_key(|r| r.key);
                    routes.dedup_by_key(|r| r.key);
                    let routes = routes
                        .iter()
                        .map(|r| route_ir(&table.routes[r.route], r.key))
                        .collect();
                    (host.to_string(), routes)
                })
                .collect();
            (port, hosts)
        })
        .collect();
    let mut listeners = Vec::new();
    for (a, address) in gateway.addresses.iter().enumerate() {
        let last = a + 1 == gateway.addresses.len();
        for (port, hosts) in &mut ports {
            let virtual_hosts = hosts
                .iter_mut()
                .map(|(host, routes)| VirtualHostIr {
                    name: format!("{address}:{port}/{host}"),
                    domains: vec![host.clone()],
                    // The last address takes the routes, the others copy them.
                    routes: if last {
                        std::mem::take(routes)
                    } else {
                        routes.clone()
                    },
                })
                .collect();
            listeners.push(ListenerIr {
                name: format!("{address}:{port}"),
                address: address.clone(),
                port: *port,
                virtual_hosts,
            });
        }
    }
    GatewayIr {
        node_id: format!("{}/{}", gateway.namespace(), gateway.name()),
        listeners,
        clusters: {
            // Each cluster once, by name.
            clusters.sort_unstable();
            clusters.dedup();
            clusters.sort_unstable_by_key(|&id| table.clusters[id].name.as_str());
            clusters
                .into_iter()
                .map(|id| table.clusters[id].clone())
                .collect()
        },
    }
}

/// A virtual host's name and its routes in precedence order.
type HostRoutes = (String, Vec<RouteIr>);

/// An Envoy route to be: its precedence key (which also says which rule and
/// match it is) and its route's index in [`RouteTable::routes`].
struct Ranked {
    key: PrecedenceKey,
    route: usize,
}

/// Gateway API precedence, most specific first: exact paths, then regular
/// expressions, then prefixes (longer before shorter within each); then a
/// method match; then more header matches; then more query matches; then
/// the oldest route, then by namespace/name (the route's age from
/// [`route_ages`]), then rule and match order. Integers only, so sorting
/// tens of thousands of routes compares no strings.
type PrecedenceKey = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

fn precedence(route_match: &RouteMatch, age: usize, rule: usize, position: usize) -> PrecedenceKey {
    let (rank, length) = match &route_match.path {
        Some(PathMatch::Exact(p)) => (0, p.len()),
        Some(PathMatch::RegularExpression(p)) => (1, p.len()),
        Some(PathMatch::Prefix(p)) => (2, p.trim_end_matches('/').len()),
        None => (2, 0),
    };
    (
        rank,
        Reverse(length),
        Reverse(route_match.method.is_some()),
        Reverse(route_match.headers.len()),
        Reverse(route_match.query_params.len()),
        age,
        rule,
        position,
    )
}

/// The Envoy route for the rule and match that `key` names.
fn route_ir(compiled: &CompiledRoute, key: PrecedenceKey) -> RouteIr {
    let (rule_position, position) = (key.6, key.7);
    let rule: &CompiledRule = &compiled.rules[rule_position];
    let meta = &compiled.route.meta;
    RouteIr {
        name: format!(
            "{}/{}/rule/{}/match/{}",
            meta.namespace, meta.name, rule.index, position
        ),
        matches: rule.matches()[position].clone(),
        action: rule.action.clone(),
        request_headers: rule.request_headers.clone(),
        response_headers: rule.response_headers.clone(),
    }
}
