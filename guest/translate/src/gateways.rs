//! Which GatewayClasses and Gateways are ours, and the state of each listener.

use infergate_model::{
    Condition, FromNamespaces, Gateway, GatewayClassStatus, GatewayStatus, GroupKind, Listener,
    ListenerStatus,
};

use crate::conditions::{self as c, fail, ok, reason, set};
use crate::index::{GATEWAY_GROUP, Index};
use crate::{hostname, selector, tls, validate};

/// The Gateway API features this translation supports, by their conformance
/// names, sorted: what GatewayClass `status.supportedFeatures` says and the
/// conformance suite runs. Only what the upstream suite passes is claimed
/// (conformance/README.md).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// The GatewayClasses and Gateways this controller owns, evaluated.
pub struct Evaluated<'a> {
    pub class_statuses: Vec<GatewayClassStatus>,
    pub gateways: Vec<GatewayState<'a>>,
}

pub struct GatewayState<'a> {
    pub gateway: &'a Gateway,
    /// The addresses Envoy binds; empty when the Gateway is not accepted.
    pub addresses: Vec<String>,
    /// Why the Gateway as a whole is not accepted, if it is not.
    pub rejection: Option<(&'static str, String)>,
    pub listeners: Vec<ListenerState<'a>>,
}

pub struct ListenerState<'a> {
    pub listener: &'a Listener,
    pub supported_kinds: Vec<GroupKind>,
    pub conditions: Vec<Condition>,
    /// The listener itself is valid (conflicts are judged among these).
    pub accepted: bool,
    /// Accepted and not conflicted: routes may attach (and count in its
    /// status) even when it cannot be served.
    pub usable: bool,
    /// HTTPS without a usable certificate: routes attach, nothing is served
    /// (Programmed False).
    pub certificate_missing: bool,
    /// HTTPS: the Secrets of its usable certificates, "<namespace>/<name>".
    pub certificates: Vec<String>,
    pub attachments: Vec<Attachment>,
}

/// A route attached to a listener, with the hostnames it serves there.
pub struct Attachment {
    /// Index into [`crate::routes::RouteTable::routes`].
    pub route: usize,
    pub hostnames: Vec<String>,
}

pub fn evaluate<'a>(index: &Index<'a>) -> Evaluated<'a> {
    let snapshot = index.snapshot;
    let ours: Vec<_> = snapshot
        .gateway_classes
        .iter()
        .filter(|gc| gc.controller_name == snapshot.settings.controller_name)
        .collect();
    let class_statuses = ours
        .iter()
        .map(|gc| GatewayClassStatus {
            name: gc.name.clone(),
            conditions: vec![ok(
                c::ACCEPTED,
                reason::ACCEPTED,
                "accepted by infergate",
                gc.generation,
            )],
            supported_features: SUPPORTED_FEATURES.iter().map(|f| f.to_string()).collect(),
        })
        .collect();
    let mut gateways: Vec<GatewayState<'a>> = snapshot
        .gateways
        .iter()
        .filter(|gw| ours.iter().any(|gc| gc.name == gw.gateway_class_name))
        .map(|gw| evaluate_gateway(index, gw, &snapshot.settings.default_address))
        .collect();
    gateways.sort_by(|a, b| {
        (&a.gateway.meta.namespace, &a.gateway.meta.name)
            .cmp(&(&b.gateway.meta.namespace, &b.gateway.meta.name))
    });
    if !snapshot.settings.isolated_gateways {
        mark_port_conflicts(&mut gateways);
    }
    Evaluated {
        class_statuses,
        gateways,
    }
}

fn evaluate_gateway<'a>(
    index: &Index,
    gateway: &'a Gateway,
    default_address: &str,
) -> GatewayState<'a> {
    let generation = gateway.meta.generation;
    let mut rejection = None;
    let addresses = if gateway.addresses.is_empty() {
        vec![default_address.to_string()]
    } else {
        gateway.addresses.clone()
    };
    if let Some(bad) = addresses
        .iter()
        .find(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        rejection = Some((
            reason::UNSUPPORTED_ADDRESS,
            format!(
                "spec.addresses: {bad:?} is not an IP address; infergate binds listeners to IP addresses only"
            ),
        ));
    }

    let mut listeners: Vec<ListenerState<'a>> = gateway
        .listeners
        .iter()
        .map(|l| evaluate_listener(index, gateway, l))
        .collect();
    mark_conflicts(&mut listeners, generation);

    GatewayState {
        gateway,
        addresses: if rejection.is_some() {
            vec![]
        } else {
            addresses
        },
        rejection,
        listeners,
    }
}

fn evaluate_listener<'a>(
    index: &Index,
    gateway: &Gateway,
    listener: &'a Listener,
) -> ListenerState<'a> {
    let generation = gateway.meta.generation;
    let mut conditions = Vec::new();
    let mut accepted = true;
    let https = listener.protocol == "HTTPS";
    if listener.protocol != "HTTP" && !https {
        accepted = false;
        conditions.push(fail(
            c::ACCEPTED,
            reason::UNSUPPORTED_PROTOCOL,
            format!(
                "listener {:?}: protocol {:?} is not supported; use HTTP or HTTPS",
                listener.name, listener.protocol
            ),
            generation,
        ));
    } else if https && listener.tls.as_ref().is_none_or(|t| t.mode != "Terminate") {
        accepted = false;
        conditions.push(fail(
            c::ACCEPTED,
            reason::UNSUPPORTED_VALUE,
            format!(
                "listener {:?}: an HTTPS listener needs tls with mode Terminate (infergate terminates TLS with certificates from Secrets)",
                listener.name
            ),
            generation,
        ));
    } else if let Some(Err(why)) = listener
        .hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(|h| validate::hostname(h, true))
    {
        accepted = false;
        conditions.push(fail(
            c::ACCEPTED,
            reason::UNSUPPORTED_VALUE,
            format!("listener {:?}: hostname: {why}", listener.name),
            generation,
        ));
    } else if !(1..=65535).contains(&listener.port) {
        accepted = false;
        conditions.push(fail(
            c::ACCEPTED,
            reason::PORT_UNAVAILABLE,
            format!(
                "listener {:?}: port {} is out of range 1-65535",
                listener.name, listener.port
            ),
            generation,
        ));
    } else {
        conditions.push(ok(
            c::ACCEPTED,
            reason::ACCEPTED,
            "listener accepted",
            generation,
        ));
    }

    let http_route = GroupKind {
        group: GATEWAY_GROUP.into(),
        kind: "HTTPRoute".into(),
    };
    let requested = &listener.allowed_routes.kinds;
    let unsupported_protocol = listener.protocol != "HTTP" && !https;
    let (supported_kinds, invalid): (Vec<_>, Vec<_>) = if unsupported_protocol {
        // A protocol this version does not serve supports no route kind.
        (vec![], vec![])
    } else if requested.is_empty() {
        (vec![http_route], vec![])
    } else {
        requested.iter().cloned().partition(|k| *k == http_route)
    };
    // (reason, message) of each reference that did not resolve.
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if !invalid.is_empty() {
        let names: Vec<String> = invalid
            .iter()
            .map(|k| format!("{}/{}", k.group, k.kind))
            .collect();
        problems.push((
            reason::INVALID_ROUTE_KINDS,
            format!(
                "listener {:?}: allowedRoutes.kinds {} not supported; infergate serves gateway.networking.k8s.io/HTTPRoute",
                listener.name,
                names.join(", ")
            ),
        ));
    }
    let mut certificates = Vec::new();
    let mut certificate_missing = false;
    if https && accepted {
        let resolved = tls::resolve(index, gateway, listener);
        problems.extend(resolved.problems.into_iter().map(|p| (p.reason, p.message)));
        // Served with the certificates that resolved; without any, not at all.
        certificate_missing = resolved.certificates.is_empty();
        certificates = resolved.certificates;
    }
    match problems.first() {
        None => conditions.push(ok(
            c::RESOLVED_REFS,
            reason::RESOLVED_REFS,
            "all references resolved",
            generation,
        )),
        Some((why, _)) => {
            let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            conditions.push(fail(c::RESOLVED_REFS, why, messages.join("; "), generation));
        }
    }
    ListenerState {
        listener,
        supported_kinds,
        conditions,
        accepted,
        usable: accepted,
        certificate_missing,
        certificates,
        attachments: vec![],
    }
}

/// Listeners on one port must speak one protocol (HTTP and HTTPS cannot
/// share it), and listeners of one protocol on one port with the same
/// hostname cannot be told apart. Only accepted listeners are compared.
fn mark_conflicts(listeners: &mut [ListenerState], generation: i64) {
    let keys: Vec<_> = listeners
        .iter()
        .map(|l| {
            (
                l.accepted,
                l.listener.port,
                l.listener.protocol.clone(),
                l.listener.hostname.clone().unwrap_or_default(),
            )
        })
        .collect();
    for (i, state) in listeners.iter_mut().enumerate() {
        let (accepted, port, protocol, host) = &keys[i];
        let others = || {
            keys.iter()
                .enumerate()
                .filter(move |(j, (a, p, _, _))| *j != i && *a && p == port)
                .map(|(_, key)| key)
        };
        let other_protocol = others().find(|(_, _, pr, _)| pr != protocol);
        let same_host = others().any(|(_, _, pr, h)| pr == protocol && h == host);
        if let (true, Some((_, _, other, _))) = (*accepted, other_protocol) {
            state.usable = false;
            state.conditions.push(Condition::new(
                c::CONFLICTED,
                true,
                reason::PROTOCOL_CONFLICT,
                format!(
                    "listener {:?}: port {port} is also used with protocol {other} by another listener; a port serves one protocol",
                    state.listener.name
                ),
                generation,
            ));
        } else if *accepted && same_host {
            state.usable = false;
            state.conditions.push(Condition::new(
                c::CONFLICTED,
                true,
                reason::HOSTNAME_CONFLICT,
                format!("another listener on port {port} has the same hostname {host:?}"),
                generation,
            ));
        } else {
            state.conditions.push(fail(
                c::CONFLICTED,
                reason::NO_CONFLICTS,
                "no conflicts",
                generation,
            ));
        }
        let programmed = if state.served() {
            ok(
                c::PROGRAMMED,
                reason::PROGRAMMED,
                "listener programmed",
                generation,
            )
        } else {
            let why = if !state.accepted {
                "listener is not accepted"
            } else if state.conditions.iter().any(|c| {
                c.condition_type == c::CONFLICTED
                    && c.status == infergate_model::ConditionStatus::True
            }) {
                "listener conflicts with another"
            } else {
                "listener has no usable certificate (see ResolvedRefs)"
            };
            fail(c::PROGRAMMED, reason::INVALID, why, generation)
        };
        state.conditions.push(programmed);
    }
}

/// Two Gateways' Envoys on one host (standalone, `--local-envoy`; not with
/// the Gateway deployer, whose Envoys have a Pod each) cannot share an
/// address and port: with SO_REUSEPORT
/// both would bind and the kernel would split the traffic between them. The
/// older Gateway (then the first by namespace/name) keeps the port; the
/// newer one's listener there is not accepted, with reason PortUnavailable.
/// An unspecified address (0.0.0.0, ::) overlaps every address.
fn mark_port_conflicts(gateways: &mut [GatewayState]) {
    let mut order: Vec<usize> = (0..gateways.len()).collect();
    order.sort_by_key(|&i| {
        let meta = &gateways[i].gateway.meta;
        (meta.creation_timestamp, &meta.namespace, &meta.name)
    });
    // (address, port, "namespace/name") of the ports already taken.
    let mut taken: Vec<(std::net::IpAddr, u32, String)> = Vec::new();
    for i in order {
        let gateway = &mut gateways[i];
        let owner = format!("{}/{}", gateway.namespace(), gateway.name());
        let generation = gateway.gateway.meta.generation;
        let addresses: Vec<std::net::IpAddr> = gateway
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let mut claimed = Vec::new();
        for state in gateway.listeners.iter_mut().filter(|l| l.usable) {
            let port = state.listener.port;
            let clash = taken.iter().find(|(address, p, _)| {
                *p == port && addresses.iter().any(|a| overlaps(a, address))
            });
            if let Some((address, _, other)) = clash {
                state.accepted = false;
                state.usable = false;
                let message = format!(
                    "listener {:?}: port {port} on {address} is already used by Gateway {other}",
                    state.listener.name
                );
                set(
                    &mut state.conditions,
                    fail(c::ACCEPTED, reason::PORT_UNAVAILABLE, message, generation),
                );
                set(
                    &mut state.conditions,
                    fail(
                        c::PROGRAMMED,
                        reason::INVALID,
                        "listener is not accepted",
                        generation,
                    ),
                );
            } else {
                claimed.extend(addresses.iter().map(|a| (*a, port, owner.clone())));
            }
        }
        taken.extend(claimed);
    }
}

fn overlaps(a: &std::net::IpAddr, b: &std::net::IpAddr) -> bool {
    a == b
        || (a.is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || (b.is_unspecified() && a.is_ipv4() == b.is_ipv4())
}

impl ListenerState<'_> {
    /// Envoy serves it: routes may attach and (HTTPS) it has a certificate.
    pub fn served(&self) -> bool {
        self.usable && !self.certificate_missing
    }
}

impl GatewayState<'_> {
    pub fn accepted(&self) -> bool {
        self.rejection.is_none()
    }

    pub fn namespace(&self) -> &str {
        &self.gateway.meta.namespace
    }

    pub fn name(&self) -> &str {
        &self.gateway.meta.name
    }

    /// Whether a route in `route_namespace` may attach to listener `l`.
    pub fn allows_namespace(
        &self,
        index: &Index,
        l: &ListenerState,
        route_namespace: &str,
    ) -> bool {
        match &l.listener.allowed_routes.namespaces {
            FromNamespaces::All => true,
            FromNamespaces::Same => route_namespace == self.namespace(),
            FromNamespaces::Selector(sel) => {
                selector::matches(sel, index.namespace_labels(route_namespace))
            }
        }
    }

    /// The hostnames a route with `hostnames` serves on listener `l`.
    pub fn effective_hostnames(l: &ListenerState, hostnames: &[String]) -> Vec<String> {
        hostname::effective(l.listener.hostname.as_deref(), hostnames)
    }

    pub fn status(&self) -> GatewayStatus {
        let generation = self.gateway.meta.generation;
        let usable = self.listeners.iter().filter(|l| l.served()).count();
        let conditions = match &self.rejection {
            Some((why, message)) => vec![
                fail(c::ACCEPTED, why, message.clone(), generation),
                fail(
                    c::PROGRAMMED,
                    reason::INVALID,
                    "gateway is not accepted",
                    generation,
                ),
            ],
            None if usable == self.listeners.len() => vec![
                ok(
                    c::ACCEPTED,
                    reason::ACCEPTED,
                    "gateway accepted",
                    generation,
                ),
                ok(
                    c::PROGRAMMED,
                    reason::PROGRAMMED,
                    "gateway programmed",
                    generation,
                ),
            ],
            None => {
                let message = format!(
                    "{} of {} listeners are not valid",
                    self.listeners.len() - usable,
                    self.listeners.len()
                );
                vec![
                    Condition::new(
                        c::ACCEPTED,
                        usable > 0,
                        reason::LISTENERS_NOT_VALID,
                        message.clone(),
                        generation,
                    ),
                    Condition::new(
                        c::PROGRAMMED,
                        usable > 0,
                        if usable > 0 {
                            reason::PROGRAMMED
                        } else {
                            reason::INVALID
                        },
                        message,
                        generation,
                    ),
                ]
            }
        };
        GatewayStatus {
            gateway: self.gateway.meta.object_ref(),
            addresses: self.addresses.clone(),
            conditions,
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.listener.name.clone(),
                    supported_kinds: l.supported_kinds.clone(),
                    attached_routes: l.attachments.len() as u32,
                    conditions: l.conditions.clone(),
                })
                .collect(),
        }
    }
}
