//! The core backend kind: Services, through their EndpointSlices.

use infergate_model::{BackendRef, ClusterIr, HttpRoute, LoadBalancer, RefKind, UpstreamProtocol};

use crate::backends::{BackendKind, Resolved};
use crate::conditions::reason;
use crate::index::Index;
use crate::refs::{Problem, check_grant, describe, target_namespace};

/// Core Services, through their EndpointSlices.
pub struct ServiceBackend;

impl BackendKind for ServiceBackend {
    fn handles(&self, kind: &RefKind) -> bool {
        matches!(kind, RefKind::Service)
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
            reports_parents: false,
        })
    }
}
