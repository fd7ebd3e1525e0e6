//! Listeners, virtual hosts and routes for each Gateway's Envoy, with routes
//! in Gateway API precedence order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use infergate_model::{
    DownstreamTls, FilterChainIr, GatewayIr, ListenerIr, PathMatch, RouteAction, RouteIr,
    RouteMatch, RuleIr, VirtualHostIr,
};

use crate::gateways::{Evaluated, GatewayState};
use crate::models;
use crate::routes::{CompiledRoute, CompiledRule, RouteTable};

/// `max_model_body_bytes`: how much of a request body filter chains that
/// route by model read ([`crate::models`]).
pub fn gateway_irs(
    gateways: &Evaluated,
    table: &RouteTable,
    max_model_body_bytes: u32,
) -> Vec<GatewayIr> {
    let ages = route_ages(table);
    gateways
        .gateways
        .iter()
        .filter(|g| g.accepted())
        .map(|g| gateway_ir(g, table, &ages, max_model_body_bytes))
        .collect()
}

/// Each route's place in the last precedence tie-breakers: oldest first, then
/// by namespace/name. Indexed like [`RouteTable::routes`].
fn route_ages(table: &RouteTable) -> Vec<usize> {
    let mut order: Vec<usize> = (0..table.routes.len()).collect();
    order.sort_by_key(|&i| {
        let meta = &table.routes[i].route.meta;
        (
            meta.creation_timestamp,
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

/// A filter chain to be, within its port.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ChainKey {
    /// HTTP listeners on a port share one cleartext chain; their hostnames
    /// become virtual hosts.
    Cleartext,
    /// Each HTTPS listener has its own chain, selected by SNI: the index
    /// of the Gateway listener.
    Tls(usize),
}

/// A filter chain's routes by hostname.
type ChainHosts<'a> = BTreeMap<&'a str, Vec<Ranked>>;

/// A port's filter chains, each with its virtual hosts in order.
type PortChains = (u32, Vec<(ChainKey, Vec<HostRoutes>)>);

fn gateway_ir(
    gateway: &GatewayState,
    table: &RouteTable,
    ages: &[usize],
    max_model_body_bytes: u32,
) -> GatewayIr {
    // Listeners that share a port share one Envoy listener.
    let mut ports: BTreeMap<u32, BTreeMap<ChainKey, ChainHosts>> = BTreeMap::new();
    let mut clusters: Vec<usize> = Vec::new();
    // The hostnames of the HTTP listeners on each port, which share one
    // route table: each virtual host takes only the routes of the listener
    // that owns its requests (listener isolation).
    let mut cleartext: BTreeMap<u32, Vec<Option<&str>>> = BTreeMap::new();
    for listener in gateway.listeners.iter().filter(|l| l.served()) {
        if listener.listener.protocol != "HTTPS" {
            cleartext
                .entry(listener.listener.port)
                .or_default()
                .push(listener.listener.hostname.as_deref());
        }
    }
    for (index, listener) in gateway.listeners.iter().enumerate() {
        if !listener.served() {
            continue;
        }
        let key = if listener.listener.protocol == "HTTPS" {
            ChainKey::Tls(index)
        } else {
            ChainKey::Cleartext
        };
        let hosts = ports
            .entry(listener.listener.port)
            .or_default()
            .entry(key)
            .or_default();
        if key == ChainKey::Cleartext
            && let Some(own) = listener
                .listener
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
        {
            // Its hosts are its own even when no route serves them: a
            // request for them finds no route here (404) rather than the
            // routes of a less specific listener's virtual host.
            hosts.entry(own).or_default();
        }
        for attachment in &listener.attachments {
            let compiled = &table.routes[attachment.route];
            for rule in &compiled.rules {
                clusters.extend(&rule.clusters);
            }
            for host in &attachment.hostnames {
                if key == ChainKey::Cleartext {
                    let sharing = &cleartext[&listener.listener.port];
                    let owner = crate::hostname::owner(sharing, host).map(|i| sharing[i]);
                    if owner != Some(listener.listener.hostname.as_deref()) {
                        continue; // a more specific listener serves these requests
                    }
                }
                let routes = hosts.entry(host.as_str()).or_default();
                for (r, rule) in compiled.rules.iter().enumerate() {
                    if rule.left_out {
                        continue;
                    }
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
    let mut ports: Vec<PortChains> = ports
        .into_iter()
        .map(|(port, chains)| {
            let chains = chains
                .into_iter()
                .map(|(key, hosts)| {
                    let hosts = hosts
                        .into_iter()
                        .map(|(host, mut routes)| {
                            // A route attached through two listeners with the
                            // same hostname appears twice; equal keys are the
                            // same match.
                            routes.sort_unstable_by_key(|r| r.key);
                            routes.dedup_by_key(|r| r.key);
                            let (mut rules, mut routes) = host_routes(table, &routes);
                            redirect_ports(&mut rules, port, key);
                            models::complete_virtual_host(&mut rules, &mut routes);
                            (host.to_string(), rules, routes)
                        })
                        .collect();
                    (key, hosts)
                })
                .collect();
            (port, chains)
        })
        .collect();
    let mut listeners = Vec::new();
    for (a, address) in gateway.addresses.iter().enumerate() {
        let last = a + 1 == gateway.addresses.len();
        for (port, chains) in &mut ports {
            let listener_name = format!("{address}:{port}");
            let filter_chains = chains
                .iter_mut()
                .map(|(key, hosts)| {
                    let (name, server_names, tls) = match *key {
                        ChainKey::Cleartext => (listener_name.clone(), vec![], None),
                        ChainKey::Tls(index) => {
                            let l = &gateway.listeners[index];
                            (
                                format!("{listener_name}/{}", l.listener.name),
                                l.listener
                                    .hostname
                                    .iter()
                                    .filter(|h| !h.is_empty())
                                    .cloned()
                                    .collect(),
                                Some(DownstreamTls {
                                    certificates: l.certificates.clone(),
                                }),
                            )
                        }
                    };
                    let virtual_hosts = hosts
                        .iter_mut()
                        .map(|(host, rules, routes)| VirtualHostIr {
                            name: format!("{name}/{host}"),
                            domains: vec![host.clone()],
                            // The last address takes the routes, the others
                            // copy them.
                            rules: if last {
                                std::mem::take(rules)
                            } else {
                                rules.clone()
                            },
                            routes: if last {
                                std::mem::take(routes)
                            } else {
                                routes.clone()
                            },
                        })
                        .collect::<Vec<_>>();
                    FilterChainIr {
                        name,
                        server_names,
                        tls,
                        model_routing: models::chain_routing(&virtual_hosts, max_model_body_bytes),
                        virtual_hosts,
                    }
                })
                .collect();
            listeners.push(ListenerIr {
                name: listener_name,
                address: address.clone(),
                port: *port,
                filter_chains,
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

/// Gateway API: a redirect that names neither scheme nor port keeps the
/// listener's port (a request to a listener on 8080 is redirected to 8080).
/// Envoy would drop the port whenever the redirect names a hostname, so the
/// port is written into the redirect unless it is the scheme's own (80 for
/// HTTP, 443 for HTTPS), which URLs leave out.
fn redirect_ports(rules: &mut [RuleIr], port: u32, chain: ChainKey) {
    let default_port = match chain {
        ChainKey::Cleartext => 80,
        ChainKey::Tls(_) => 443,
    };
    if port == default_port {
        return;
    }
    for rule in rules {
        if let RouteAction::Redirect(redirect) = &mut rule.action
            && redirect.scheme.is_none()
            && redirect.port.is_none()
        {
            redirect.port = Some(port);
        }
    }
}

/// A virtual host's name, its rules, and its routes in precedence order.
type HostRoutes = (String, Vec<RuleIr>, Vec<RouteIr>);

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

/// A virtual host's routes, `ranked` in precedence order, and the rules they
/// belong to, each once, in the order of their first route.
fn host_routes(table: &RouteTable, ranked: &[Ranked]) -> (Vec<RuleIr>, Vec<RouteIr>) {
    let mut rules = Vec::new();
    let mut rule_ids: HashMap<(usize, usize), u32, BuildHasherDefault<PairHasher>> =
        HashMap::default();
    let routes = ranked
        .iter()
        .map(|r| {
            let compiled = &table.routes[r.route];
            let (rule, position) = (r.key.6, r.key.7);
            let id = *rule_ids.entry((r.route, rule)).or_insert_with(|| {
                rules.push(rule_ir(compiled, &compiled.rules[rule]));
                (rules.len() - 1) as u32
            });
            let (matches, model) = models::split(&compiled.rules[rule].matches()[position]);
            RouteIr {
                matches,
                model,
                rule: id,
                match_index: position as u32,
            }
        })
        .collect();
    (rules, routes)
}

fn rule_ir(compiled: &CompiledRoute, rule: &CompiledRule) -> RuleIr {
    let meta = &compiled.route.meta;
    RuleIr {
        name: format!("{}/{}/rule/{}", meta.namespace, meta.name, rule.index),
        action: rule.action.clone(),
        request_headers: rule.request_headers.clone(),
        response_headers: rule.response_headers.clone(),
    }
}

/// Hashes the (route, rule) index pairs of [`host_routes`]: two small
/// integers need no SipHash.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
