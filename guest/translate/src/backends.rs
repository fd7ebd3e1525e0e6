//! backendRef resolution. Each kind of backend is a [`BackendKind`]: the
//! Service kind is core Gateway API (`services.rs`), the InferencePool kind
//! belongs to the inference plugin (`inference.rs`); which kinds a
//! translation knows is decided where the stages are put together
//! (`translate` in `lib.rs`). Dispatch is on the reference's [`RefKind`].

use infergate_model::{BackendRef, ClusterIr, EndpointPickerIr, HttpRoute, RefKind};

use crate::conditions::reason;
use crate::index::Index;
use crate::refs::{Problem, describe};

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
    /// The backend's own status lists the Gateways that routes reach it
    /// through (InferencePools do): attachment records a [`BackendUse`].
    pub reports_parents: bool,
}

/// A kind of backend a route may refer to.
pub trait BackendKind {
    /// Whether this kind handles references of `kind`.
    fn handles(&self, kind: &RefKind) -> bool;
    /// Resolve `backend`, referred to by `route`.
    fn resolve(
        &self,
        index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem>;
}

/// A route of ours reaching a backend that reports its parents, through one
/// of its parent Gateways: recorded while routes are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendUse {
    pub kind: RefKind,
    /// The backend's namespace and name.
    pub namespace: String,
    pub name: String,
    /// The backend's cluster, an index into the route table's clusters.
    pub cluster: usize,
    /// The parent Gateway's namespace and name.
    pub gateway: (String, String),
    /// The route, "namespace/name".
    pub route: String,
    /// The Gateway accepted the route.
    pub accepted: bool,
}

pub fn resolve(
    kinds: &[Box<dyn BackendKind>],
    index: &Index,
    route: &HttpRoute,
    backend: &BackendRef,
) -> Result<Resolved, Problem> {
    match kinds.iter().find(|k| k.handles(&backend.kind)) {
        Some(kind) => kind.resolve(index, route, backend),
        None => Err(unsupported(route, backend, "")),
    }
}

/// The problem of a reference to a kind this translation does not serve;
/// `hint` (empty, or starting with "; ") says what would.
pub fn unsupported(route: &HttpRoute, backend: &BackendRef, hint: &str) -> Problem {
    Problem::new(
        reason::INVALID_KIND,
        format!(
            "backendRef {}: kind {} is not supported{hint}",
            describe(route, backend),
            backend.kind
        ),
    )
}
