//! Condition types and reasons of Gateway API and the Inference Extension,
//! and the one place that builds a condition.

use infergate_model::{Condition, ConditionType};

pub const ACCEPTED: ConditionType = ConditionType::Accepted;
pub const PROGRAMMED: ConditionType = ConditionType::Programmed;
pub const RESOLVED_REFS: ConditionType = ConditionType::ResolvedRefs;
pub const CONFLICTED: ConditionType = ConditionType::Conflicted;
pub const PARTIALLY_INVALID: ConditionType = ConditionType::PartiallyInvalid;

pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID: &str = "Invalid";
    // Gateway
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    // Listener
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    // Route
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    // InferencePool parents
    pub const HTTP_ROUTE_NOT_ACCEPTED: &str = "HTTPRouteNotAccepted";
    pub const INVALID_EXTENSION_REF: &str = "InvalidExtensionRef";
}

/// A condition that is True with `reason`.
pub fn ok(
    condition_type: ConditionType,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) -> Condition {
    Condition::new(condition_type, true, reason, message, generation)
}

/// A condition that is False with `reason`.
pub fn fail(
    condition_type: ConditionType,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) -> Condition {
    Condition::new(condition_type, false, reason, message, generation)
}

/// Replace the condition of `condition`'s type in place (or add it).
pub fn set(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions
        .iter_mut()
        .find(|c| c.condition_type == condition.condition_type)
    {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}
