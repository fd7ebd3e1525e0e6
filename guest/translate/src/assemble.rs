//! Listeners, virtual hosts and routes for each Gateway's Envoy, with routes
//! in Gateway API precedence order.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use infergate_model::{
    ClusterIr, GatewayIr, ListenerIr, PathMatch, RouteIr, RouteMatch, VirtualHostIr,
};

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
    let mut clusters: BTreeMap<String, ClusterIr> = BTreeMap::new();
    for listener in gateway.listeners.iter().filter(|l| l.usable) {
        let hosts = ports.entry(listener.listener.port).or_default();
        for attachment in &listener.attachments {
            let compiled = &table.routes[attachment.route];
            for rule in &compiled.rules {
                for cluster in &rule.clusters {
                    clusters
                        .entry(cluster.name.clone())
                        .or_insert_with(|| cluster.clone());
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

    let mut listeners = Vec::new();
    for address in &gateway.addresses {
        for (port, hosts) in &ports {
            let virtual_hosts = hosts
                .iter()
                .map(|(host, routes)| {
                    let mut routes: Vec<&Ranked> = routes.iter().collect();
                    routes.sort_by(|a, b| a.key.cmp(&b.key));
                    routes.dedup_by(|a, b| a.route.name == b.route.name);
                    VirtualHostIr {
                        name: format!("{address}:{port}/{host}"),
                        domains: vec![host.clone()],
                        routes: routes.into_iter().map(|r| r.route.clone()).collect(),
                    }
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
        clusters: clusters.into_values().collect(),
    }
}

/// A route with its precedence key.
struct Ranked {
    key: PrecedenceKey,
    route: RouteIr,
}

/// Gateway API precedence, most specific first: exact paths, then regular
/// expressions, then prefixes (longer before shorter within each); then a
/// method match; then more header matches; then more query matches; then
/// the oldest route, then by namespace/name, then rule and match order.
type PrecedenceKey = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    String,
    String,
    String,
    usize,
    usize,
);

impl Ranked {
    fn new(
        compiled: &CompiledRoute,
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
            meta.creation_timestamp.clone(),
            meta.namespace.clone(),
            meta.name.clone(),
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
