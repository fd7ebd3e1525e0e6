//! backendRef resolution. Each kind of backend is a [`BackendKind`]; the
//! Service kind lives here, the InferencePool kind in the inference plugin.

use infergate_model::{
    BackendRef, ClusterIr, EndpointPickerIr, HttpRoute, LoadBalancer, UpstreamProtocol,
};

use crate::conditions::reason;
use crate::index::{GATEWAY_GROUP, Index, RefEnd};

/// A backendRef that resolved: the cluster to send to, and the endpoint
/// picker to consult first (with the cluster that reaches it), if any.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub cluster: ClusterIr,
    pub endpoint_picker: Option<(EndpointPickerIr, ClusterIr)>,
    /// The reference itself resolved, but its traffic cannot be served
    /// (an InferencePool whose endpoint picker reference is invalid): it
    /// gets a 500 and the problem is reported on the backend's own status.
    pub unservable: bool,
}

/// Why a backendRef did not resolve: a ResolvedRefs reason and a message
/// naming the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// A kind of backend a route may refer to.
pub trait BackendKind {
    /// Whether this kind handles refs of `group`/`kind`.
    fn handles(&self, group: &str, kind: &str) -> bool;
    /// Resolve `backend`, referred to by `route`.
    fn resolve(
        &self,
        index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem>;
}

/// The kinds this translation knows, given the snapshot's settings.
pub fn kinds(index: &Index) -> Vec<Box<dyn BackendKind>> {
    let mut kinds: Vec<Box<dyn BackendKind>> = vec![Box::new(ServiceBackend)];
    if index.snapshot.settings.inference_extension {
        kinds.push(Box::new(crate::inference::InferencePoolBackend));
    }
    kinds
}

pub fn resolve(
    kinds: &[Box<dyn BackendKind>],
    index: &Index,
    route: &HttpRoute,
    backend: &BackendRef,
) -> Result<Resolved, Problem> {
    match kinds
        .iter()
        .find(|k| k.handles(backend.kind.group(), backend.kind.kind()))
    {
        Some(kind) => kind.resolve(index, route, backend),
        None => {
            let hint = if backend
                .kind
                .is(crate::index::INFERENCE_GROUP, "InferencePool")
            {
                "; InferencePool backends need the inference extension (--enable-inference-extension, Helm value inferenceExtension.enabled)"
            } else {
                ""
            };
            Err(Problem::new(
                reason::INVALID_KIND,
                format!(
                    "backendRef {}: kind {} is not supported{hint}",
                    describe(route, backend),
                    backend.kind
                ),
            ))
        }
    }
}

/// `namespace/name` of the object a backendRef points at.
pub fn describe(route: &HttpRoute, backend: &BackendRef) -> String {
    format!("{}/{}", target_namespace(route, backend), backend.name)
}

pub fn target_namespace<'a>(route: &'a HttpRoute, backend: &'a BackendRef) -> &'a str {
    backend
        .namespace
        .as_deref()
        .unwrap_or(&route.meta.namespace)
}

/// A cross-namespace reference from an HTTPRoute must be granted.
pub fn check_grant(index: &Index, route: &HttpRoute, backend: &BackendRef) -> Result<(), Problem> {
    let from = RefEnd {
        group: GATEWAY_GROUP,
        kind: "HTTPRoute",
        namespace: &route.meta.namespace,
        name: &route.meta.name,
    };
    let to = RefEnd {
        group: backend.kind.group(),
        kind: backend.kind.kind(),
        namespace: target_namespace(route, backend),
        name: &backend.name,
    };
    if index.reference_permitted(&from, &to) {
        Ok(())
    } else {
        Err(Problem::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "backendRef {}: no ReferenceGrant in namespace {:?} allows HTTPRoutes from {:?} to refer to it",
                describe(route, backend),
                to.namespace,
                from.namespace
            ),
        ))
    }
}

/// Core Services, through their EndpointSlices.
pub struct ServiceBackend;

impl BackendKind for ServiceBackend {
    fn handles(&self, group: &str, kind: &str) -> bool {
        group.is_empty() && kind == "Service"
    }

    fn resolve(
        &self,
        index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem> {
        check_grant(index, route, backend)?;
        let what = describe(route, backend);
        let namespace = target_namespace(route, backend);
        let service = index.service(namespace, &backend.name).ok_or_else(|| {
            Problem::new(
                reason::BACKEND_NOT_FOUND,
                format!("backendRef {what}: Service not found"),
            )
        })?;
        if service.service_type == "ExternalName" {
            return Err(Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!(
                    "backendRef {what}: Service is of type ExternalName, which infergate does not route to (it would let a Service owner send gateway traffic to any host)"
                ),
            ));
        }
        let port_number = backend.port.ok_or_else(|| {
            Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!("backendRef {what}: port is required for a Service backend"),
            )
        })?;
        let port = service
            .ports
            .iter()
            .find(|p| p.port == port_number)
            .ok_or_else(|| {
                Problem::new(
                    reason::BACKEND_NOT_FOUND,
                    format!("backendRef {what}: Service has no port {port_number}"),
                )
            })?;
        let protocol = match port.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http1,
        };
        Ok(Resolved {
            cluster: ClusterIr {
                name: format!("service/{namespace}/{}/{port_number}", backend.name),
                endpoints: index.ready_endpoints(service, port),
                protocol,
                tls: None,
                load_balancer: LoadBalancer::RoundRobin,
            },
            endpoint_picker: None,
            unservable: false,
        })
    }
}
