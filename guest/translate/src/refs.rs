//! Checks every backend kind makes of a reference: where it points, and
//! whether a ReferenceGrant lets the route point there. A leaf module: the
//! backend kinds use it, it uses none of them.

use infergate_model::{BackendRef, HttpRoute};

use crate::conditions::reason;
use crate::index::{GATEWAY_GROUP, Index, RefEnd};

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
