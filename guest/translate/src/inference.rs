//! The inference plugin: InferencePool backends (Gateway API Inference
//! Extension, `inference.networking.k8s.io/v1`) and the pools' statuses.
//!
//! A pool becomes two clusters: the pool's endpoints (every ready Pod IP
//! matched by the selector x every target port), balanced by Envoy's
//! override_host policy from the endpoint the picker chose, and the picker
//! itself (HTTP/2, TLS without verification unless the picker Service's port
//! says `appProtocol: kubernetes.io/h2c`). The route calls the pool's
//! picker first. A pool without a picker reference is routed through the
//! picker infergate deploys for it when the host manages pickers
//! (`settings.managed-picker`: TLS verified with the host's CA), else
//! balanced round robin.

use std::collections::BTreeMap;

use infergate_model::{
    BackendRef, ClusterIr, EndpointPickerIr, FailureMode, HttpRoute, InferencePool,
    InferencePoolStatus, LoadBalancer, ManagedPicker, ObjectRef, PoolParentStatus, RefKind,
    SocketAddress, UpstreamProtocol, UpstreamTls,
};

use crate::backends::{self, BackendKind, BackendUse, Resolved};
use crate::conditions::{self as c, fail, ok, reason};
use crate::index::Index;
use crate::refs::{self, Problem};
use crate::selector;

/// The header (and `envoy.lb` metadata key) naming the picked endpoint.
pub const DESTINATION_KEY: &str = infergate_names::picker::DESTINATION;
pub const H2C: &str = "kubernetes.io/h2c";

pub struct InferencePoolBackend;

impl BackendKind for InferencePoolBackend {
    fn handles(&self, kind: &RefKind) -> bool {
        matches!(kind, RefKind::InferencePool)
    }

    fn resolve(
        &self,
        index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem> {
        refs::check_grant(index, route, backend)?;
        let namespace = refs::target_namespace(route, backend);
        // backendRef.port is ignored: the pool's targetPorts say where to go.
        let pool = index
            .inference_pool(namespace, &backend.name)
            .ok_or_else(|| {
                Problem::new(
                    reason::BACKEND_NOT_FOUND,
                    format!(
                        "backendRef {}: InferencePool not found",
                        refs::describe(route, backend)
                    ),
                )
            })?;
        let mut picker = picker(index, pool);
        if let Ok(Some((picker, _))) = &mut picker {
            picker.model_rewrites = crate::rewrites::for_pool(index, namespace, &pool.meta.name);
        }
        Ok(Resolved {
            cluster: pool_cluster(index, pool, matches!(picker, Ok(Some(_)))),
            unservable: picker.is_err(),
            endpoint_picker: picker.ok().flatten(),
            reports_parents: true,
        })
    }
}

/// With the inference extension off, references to InferencePools are
/// refused with a hint on how to turn it on.
pub struct DisabledInferencePools;

impl BackendKind for DisabledInferencePools {
    fn handles(&self, kind: &RefKind) -> bool {
        matches!(kind, RefKind::InferencePool)
    }

    fn resolve(
        &self,
        _index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem> {
        Err(backends::unsupported(
            route,
            backend,
            "; InferencePool backends need the inference extension (--enable-inference-extension, Helm value inferenceExtension.enabled)",
        ))
    }
}

fn pool_cluster(index: &Index, pool: &InferencePool, picked: bool) -> ClusterIr {
    let mut endpoints: Vec<SocketAddress> = index
        .pods(&pool.meta.namespace)
        .iter()
        .filter(|pod| pod.ready && selector::matches_labels(&pool.selector, &pod.labels))
        .flat_map(|pod| {
            // An IP that is not one would make Envoy refuse every endpoint.
            let ips = pod
                .ips
                .iter()
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
            ips.flat_map(|ip| {
                pool.target_ports.iter().map(|&port| SocketAddress {
                    address: ip.clone(),
                    port,
                })
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    endpoints.dedup();
    ClusterIr {
        name: format!("inferencepool/{}/{}", pool.meta.namespace, pool.meta.name),
        endpoints,
        protocol: if pool.app_protocol.as_deref() == Some(H2C) {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::Http1
        },
        tls: None,
        load_balancer: if picked {
            LoadBalancer::OverrideHost(DESTINATION_KEY.to_string())
        } else {
            LoadBalancer::RoundRobin
        },
    }
}

/// The pool's endpoint picker and the cluster that reaches it; None for a
/// pool without endpointPickerRef; Err says why the reference is invalid.
pub fn picker(
    index: &Index,
    pool: &InferencePool,
) -> Result<Option<(EndpointPickerIr, ClusterIr)>, String> {
    let namespace = &pool.meta.namespace;
    let Some(r) = &pool.endpoint_picker else {
        return Ok(index
            .snapshot
            .settings
            .managed_picker
            .as_ref()
            .map(|managed| managed_picker(index, pool, managed)));
    };
    if !r.kind.is("", "Service") {
        return Err(format!(
            "endpointPickerRef: kind {} is not supported; the picker must be a core Service",
            r.kind
        ));
    }
    let Some(number) = r.port else {
        return Err("endpointPickerRef.port is required for a Service".to_string());
    };
    let service = index.service(namespace, &r.name).ok_or_else(|| {
        format!(
            "endpointPickerRef: Service {namespace}/{} not found",
            r.name
        )
    })?;
    if service.service_type == "ExternalName" {
        return Err(format!(
            "endpointPickerRef: Service {namespace}/{} is of type ExternalName, which infergate does not call",
            r.name
        ));
    }
    let port = service
        .ports
        .iter()
        .find(|p| p.port == number)
        .ok_or_else(|| {
            format!(
                "endpointPickerRef: Service {namespace}/{} has no port {number}",
                r.name
            )
        })?;
    let plaintext = port.app_protocol.as_deref() == Some(H2C);
    let cluster = ClusterIr {
        name: format!("endpointpicker/{namespace}/{}/{number}", r.name),
        endpoints: index.ready_endpoints(service, port),
        protocol: if plaintext {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::H2Tls
        },
        // The reference picker serves a self-signed certificate.
        tls: (!plaintext).then(|| UpstreamTls {
            sni: Some(format!("{}.{namespace}.svc", r.name)),
            ca_pem: None,
        }),
        load_balancer: LoadBalancer::RoundRobin,
    };
    Ok(Some((
        EndpointPickerIr {
            cluster: cluster.name.clone(),
            fail_open: r.failure_mode == FailureMode::FailOpen,
            models: Vec::new(),
            model_rewrites: Vec::new(),
        },
        cluster,
    )))
}

/// The picker infergate deploys for `pool`: its Service
/// `infergate-epp-<pool>` (no endpoints until the host has made it and a
/// picker Pod is ready), TLS verified with the host's CA, fail-close (the
/// Inference Extension's default).
fn managed_picker(
    index: &Index,
    pool: &InferencePool,
    managed: &ManagedPicker,
) -> (EndpointPickerIr, ClusterIr) {
    let namespace = &pool.meta.namespace;
    let name = infergate_names::objects::picker(&pool.meta.name);
    let endpoints = index
        .service(namespace, &name)
        .and_then(|service| {
            let port = service.ports.iter().find(|p| p.port == managed.port)?;
            Some(index.ready_endpoints(service, port))
        })
        .unwrap_or_default();
    let cluster = ClusterIr {
        name: format!("endpointpicker/{namespace}/{name}/{}", managed.port),
        endpoints,
        protocol: UpstreamProtocol::H2Tls,
        tls: Some(UpstreamTls {
            sni: Some(format!("{name}.{namespace}.svc")),
            ca_pem: Some(managed.ca_pem.clone()),
        }),
        load_balancer: LoadBalancer::RoundRobin,
    };
    (
        EndpointPickerIr {
            cluster: cluster.name.clone(),
            fail_open: false,
            models: Vec::new(),
            model_rewrites: Vec::new(),
        },
        cluster,
    )
}

/// The pools that need a managed picker: without a picker reference, used
/// by a route of ours that a Gateway of ours accepted. Empty unless the host
/// manages pickers.
pub fn managed_pickers(index: &Index, uses: &[BackendUse]) -> Vec<ObjectRef> {
    if index.snapshot.settings.managed_picker.is_none() {
        return Vec::new();
    }
    let mut pools: Vec<ObjectRef> = uses
        .iter()
        .filter(|u| u.kind == RefKind::InferencePool && u.accepted)
        .filter_map(|u| index.inference_pool(&u.namespace, &u.name))
        .filter(|pool| pool.endpoint_picker.is_none())
        .map(|pool| ObjectRef {
            namespace: pool.meta.namespace.clone(),
            name: pool.meta.name.clone(),
        })
        .collect();
    pools.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pools.dedup();
    pools
}

/// For one pool: by Gateway (namespace, name), whether a route through it
/// is accepted, and the routes (namespace/name).
type GatewayUses = BTreeMap<(String, String), (bool, Vec<String>)>;

/// One status entry per (pool, Gateway of ours) that an HTTPRoute connects:
/// Accepted while some route through that Gateway is accepted, ResolvedRefs
/// from the picker reference. `uses` are what route attachment recorded;
/// `clusters` the route table's. Pools no route of ours refers to get no
/// entry (the host then removes entries it wrote earlier).
pub fn pool_statuses(
    index: &Index,
    uses: &[BackendUse],
    clusters: &[ClusterIr],
) -> Vec<InferencePoolStatus> {
    let mut parents: BTreeMap<(&str, &str), (usize, GatewayUses)> = BTreeMap::new();
    for used in uses.iter().filter(|u| u.kind == RefKind::InferencePool) {
        let (_, gateways) = parents
            .entry((used.namespace.as_str(), used.name.as_str()))
            .or_insert_with(|| (used.cluster, GatewayUses::new()));
        let entry = gateways.entry(used.gateway.clone()).or_default();
        entry.0 |= used.accepted;
        if !entry.1.contains(&used.route) {
            entry.1.push(used.route.clone());
        }
    }
    parents
        .into_iter()
        .filter_map(|((namespace, name), (cluster, gateways))| {
            let pool = index.inference_pool(namespace, name)?;
            let generation = pool.meta.generation;
            // Said in the status rather than left to be found out from 503s.
            let empty = if clusters[cluster].endpoints.is_empty() {
                "; no ready Pod matches the pool's selector, so requests to it get 503 until one does"
            } else {
                ""
            };
            let mut resolved = match picker(index, pool) {
                Ok(Some((_, cluster))) if pool.endpoint_picker.is_none() => ok(
                    c::RESOLVED_REFS,
                    reason::RESOLVED_REFS,
                    if !gateways.values().any(|(accepted, _)| *accepted) {
                        format!(
                            "no endpointPickerRef: infergate deploys an endpoint picker for this pool (Service {}) once a Gateway of ours accepts a route to it",
                            infergate_names::objects::picker(name)
                        )
                    } else if cluster.endpoints.is_empty() {
                        format!(
                            "no endpointPickerRef: infergate deploys an endpoint picker for this pool (Service {}); until one is ready, requests to the pool get 500",
                            infergate_names::objects::picker(name)
                        )
                    } else {
                        format!(
                            "no endpointPickerRef: routed through the endpoint picker infergate deployed for this pool (Service {})",
                            infergate_names::objects::picker(name)
                        )
                    },
                    generation,
                ),
                Ok(Some((p, _))) => ok(
                    c::RESOLVED_REFS,
                    reason::RESOLVED_REFS,
                    format!("endpoint picker reached through cluster {}", p.cluster),
                    generation,
                ),
                Ok(None) => ok(
                    c::RESOLVED_REFS,
                    reason::RESOLVED_REFS,
                    "no endpointPickerRef: requests are balanced round robin over the pool's endpoints",
                    generation,
                ),
                Err(why) => fail(
                    c::RESOLVED_REFS,
                    reason::INVALID_EXTENSION_REF,
                    format!("{why}; requests to this pool get 500"),
                    generation,
                ),
            };
            resolved.message.push_str(empty);
            Some(InferencePoolStatus {
                pool: ObjectRef {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                },
                parents: gateways
                    .into_iter()
                    .map(|((gw_namespace, gw_name), (accepted, routes))| {
                        let routes = routes.join(", ");
                        let accepted = if accepted {
                            ok(
                                c::ACCEPTED,
                                reason::ACCEPTED,
                                format!("referenced by HTTPRoute {routes}"),
                                generation,
                            )
                        } else {
                            fail(
                                c::ACCEPTED,
                                reason::HTTP_ROUTE_NOT_ACCEPTED,
                                format!("HTTPRoute {routes} is not accepted by this Gateway"),
                                generation,
                            )
                        };
                        PoolParentStatus {
                            gateway: ObjectRef {
                                namespace: gw_namespace,
                                name: gw_name,
                            },
                            conditions: vec![accepted, resolved.clone()],
                        }
                    })
                    .collect(),
            })
        })
        .collect()
}
