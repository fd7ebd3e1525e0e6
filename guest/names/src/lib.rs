//! Names that the translation (in WebAssembly), the host, the Kubernetes
//! watches and the endpoint picker must agree on, each defined once. No
//! dependencies, so that every part can use it, the guest and the picker
//! included.

/// The controller name infergate's GatewayClasses name by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "infergate.dev/gateway-controller";

/// The API group of Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The InferencePool of the Gateway API Inference Extension.
pub mod inference_pool {
    pub const GROUP: &str = "inference.networking.k8s.io";
    pub const VERSION: &str = "v1";
    pub const KIND: &str = "InferencePool";
    /// The resource's plural, as URLs and RBAC rules name it.
    pub const PLURAL: &str = "inferencepools";
}

/// The endpoint picker protocol (Gateway API Inference Extension): how the
/// picker names the endpoint it chose, to Envoy and back.
pub mod picker {
    /// Header (and key in [`LB_NAMESPACE`] metadata) naming the chosen
    /// endpoint(s), `ip:port`.
    pub const DESTINATION: &str = "x-gateway-destination-endpoint";
    /// Key in [`SUBSET_NAMESPACE`] metadata: the endpoints the picker may
    /// choose from.
    pub const SUBSET: &str = "x-gateway-destination-endpoint-subset";
    /// Response header naming the endpoint that served.
    pub const SERVED: &str = "x-gateway-destination-endpoint-served";
    /// Dynamic metadata namespace Envoy's override_host policy reads.
    pub const LB_NAMESPACE: &str = "envoy.lb";
    /// Dynamic metadata namespace of the subset hint.
    pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
    /// Request headers of the protocol that a client must never set: the
    /// gateway removes them before the picker runs.
    pub const PROTOCOL_HEADERS: [&str; 3] = [DESTINATION, SUBSET, SERVED];
}
