//! Listeners, virtual hosts and routes for each Gateway's Envoy, with routes
//! in Gateway API precedence order.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use infergate_model::{GatewayIr, ListenerIr, PathMatch, RouteIr, RouteMatch, VirtualHostIr};

use crate::gateways::{Evaluated, GatewayState};
use crate::routes::{CompiledRoute, CompiledRule, RouteTable};

pub fn gateway_irs(gateways: &Evaluated, table: &RouteTable) -> Vec<GatewayIr> {
    gateways
        .gateways
        .iter()
        .filter(|g| g.accepted())
        .map(|g| gateway_ir(g, table))
        .collect()
}

fn gateway_ir(gateway: &GatewayState, table: &RouteTable) -> GatewayIr {
    // Listeners that share a port share one Envoy listener; their hostnames
    // become virtual hosts.
    let mut ports: BTreeMap<u32, BTreeMap<String, Vec<Ranked>>> = BTreeMap::new();
    let mut clusters: BTreeMap<&str, usize> = BTreeMap::new();
    for listener in gateway.listeners.iter().filter(|l| l.usable) {
        let hosts = ports.entry(listener.listener.port).or_default();
        for attachment in &listener.attachments {
            let compiled = &table.routes[attachment.route];
            for rule in &compiled.rules {
                for &cluster in &rule.clusters {
                    clusters.insert(&table.clusters[cluster].name, cluster);
                }
            }
            for host in &attachment.hostnames {
                let routes = hosts.entry(host.clone()).or_default();
                for rule in &compiled.rules {
                    for (m, route_match) in rule.matches.iter().enumerate() {
                        routes.push(Ranked::new(compiled, rule, m, route_match));
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
                    routes.sort_by(|a, b| a.key.cmp(&b.key));
                    routes.dedup_by(|a, b| a.route.name == b.route.name);
                    (host, routes.into_iter().map(|r| r.route).collect())
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
        clusters: clusters
            .into_values()
            .map(|id| table.clusters[id].clone())
            .collect(),
    }
}

/// A virtual host's name and its routes in precedence order.
type HostRoutes = (String, Vec<RouteIr>);

/// A route with its precedence key.
struct Ranked<'a> {
    key: PrecedenceKey<'a>,
    route: RouteIr,
}

/// Gateway API precedence, most specific first: exact paths, then regular
/// expressions, then prefixes (longer before shorter within each); then a
/// method match; then more header matches; then more query matches; then
/// the oldest route, then by namespace/name, then rule and match order.
type PrecedenceKey<'a> = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    &'a str,
    &'a str,
    &'a str,
    usize,
    usize,
);

impl<'a> Ranked<'a> {
    fn new(
        compiled: &CompiledRoute<'a>,
        rule: &CompiledRule,
        position: usize,
        route_match: &RouteMatch,
    ) -> Self {
        let meta = &compiled.route.meta;
        let (rank, length) = match &route_match.path {
            Some(PathMatch::Exact(p)) => (0, p.len()),
            Some(PathMatch::RegularExpression(p)) => (1, p.len()),
            Some(PathMatch::Prefix(p)) => (2, p.trim_end_matches('/').len()),
            None => (2, 0),
        };
        let key = (
            rank,
            Reverse(length),
            Reverse(route_match.method.is_some()),
            Reverse(route_match.headers.len()),
            Reverse(route_match.query_params.len()),
            meta.creation_timestamp.as_str(),
            meta.namespace.as_str(),
            meta.name.as_str(),
            rule.index,
            position,
        );
        let route = RouteIr {
            name: format!(
                "{}/{}/rule/{}/match/{}",
                meta.namespace, meta.name, rule.index, position
            ),
            matches: route_match.clone(),
            action: rule.action.clone(),
            request_headers: rule.request_headers.clone(),
            response_headers: rule.response_headers.clone(),
        };
        Ranked { key, route }
    }
}
