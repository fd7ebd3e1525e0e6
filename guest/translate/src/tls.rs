//! HTTPS listeners: their `tls.certificateRefs` resolved to Secrets.
//!
//! The component never sees a certificate or key: the host checks each
//! Secret and says only whether it can serve (`tls-secret.problem`). A
//! listener's usable certificates are named in the IR as "<namespace>/<name>",
//! which the host serves to Envoy.

use infergate_model::{Gateway, Listener, RefKind};

use crate::conditions::reason;
use crate::index::{GATEWAY_GROUP, Index, RefEnd};
use crate::refs::Problem;

/// What a listener's certificate references came to.
#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    /// The Secrets that can serve, "<namespace>/<name>", in reference order.
    pub certificates: Vec<String>,
    /// One per reference that cannot, in reference order.
    pub problems: Vec<Problem>,
}

/// Resolve `listener`'s certificate references (an HTTPS listener in
/// Terminate mode; the caller checks that). A reference must name a core
/// Secret; one in another namespace needs a ReferenceGrant there (checked
/// before whether the Secret exists, so a missing grant is reported as such
/// either way); the Secret must exist and hold a usable certificate.
pub fn resolve(index: &Index, gateway: &Gateway, listener: &Listener) -> Resolved {
    let mut resolved = Resolved::default();
    let refs = listener
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    for (i, r) in refs.iter().enumerate() {
        let namespace = r.namespace.as_deref().unwrap_or(&gateway.meta.namespace);
        let field = format!("listener {:?}: tls.certificateRefs[{i}]", listener.name);
        if !matches!(r.kind, RefKind::Secret) {
            resolved.problems.push(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!(
                    "{field}: {} {namespace}/{} is not supported; certificates come from core Secrets (group \"\", kind Secret)",
                    describe_kind(&r.kind),
                    r.name
                ),
            ));
            continue;
        }
        let from = RefEnd {
            group: GATEWAY_GROUP,
            kind: "Gateway",
            namespace: &gateway.meta.namespace,
            name: &gateway.meta.name,
        };
        let to = RefEnd {
            group: "",
            kind: "Secret",
            namespace,
            name: &r.name,
        };
        if !index.reference_permitted(&from, &to) {
            resolved.problems.push(Problem::new(
                reason::REF_NOT_PERMITTED,
                format!(
                    "{field}: Secret {namespace}/{}: no ReferenceGrant in namespace {namespace:?} allows Gateways from {:?} to refer to it",
                    r.name, gateway.meta.namespace
                ),
            ));
            continue;
        }
        match index.tls_secret(namespace, &r.name) {
            None => resolved.problems.push(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!(
                    "{field}: Secret {namespace}/{} not found (certificates come from Secrets of type kubernetes.io/tls)",
                    r.name
                ),
            )),
            Some(secret) => match &secret.problem {
                Some(why) => resolved.problems.push(Problem::new(
                    reason::INVALID_CERTIFICATE_REF,
                    format!("{field}: Secret {namespace}/{} cannot serve: {why}", r.name),
                )),
                None => {
                    let name = format!("{namespace}/{}", r.name);
                    if !resolved.certificates.contains(&name) {
                        resolved.certificates.push(name);
                    }
                }
            },
        }
    }
    if refs.is_empty() {
        resolved.problems.push(Problem::new(
            reason::INVALID_CERTIFICATE_REF,
            format!(
                "listener {:?}: tls.certificateRefs is empty; an HTTPS listener terminates TLS with a certificate from a Secret",
                listener.name
            ),
        ));
    }
    resolved
}

fn describe_kind(kind: &RefKind) -> String {
    if kind.group().is_empty() {
        format!("kind {}", kind.kind())
    } else {
        format!("{}/{}", kind.group(), kind.kind())
    }
}
