//! The inference plugin: InferencePool backends (Gateway API Inference
//! Extension, `inference.networking.k8s.io/v1`).

use infergate_model::{BackendRef, HttpRoute};

use crate::backends::{BackendKind, Problem, Resolved};
use crate::conditions::reason;
use crate::index::{INFERENCE_GROUP, Index};

pub struct InferencePoolBackend;

impl BackendKind for InferencePoolBackend {
    fn handles(&self, group: &str, kind: &str) -> bool {
        group == INFERENCE_GROUP && kind == "InferencePool"
    }

    fn resolve(
        &self,
        _index: &Index,
        route: &HttpRoute,
        backend: &BackendRef,
    ) -> Result<Resolved, Problem> {
        Err(Problem::new(
            reason::INVALID_KIND,
            format!(
                "backendRef {}: InferencePool backends are not translated by this version yet",
                crate::backends::describe(route, backend)
            ),
        ))
    }
}
