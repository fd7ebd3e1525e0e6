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

/// The InferenceModelRewrite of the Gateway API Inference Extension (v1.5;
/// its experimental group): models of a pool served under other names.
pub mod model_rewrite {
    pub const GROUP: &str = "inference.networking.x-k8s.io";
    pub const VERSION: &str = "v1alpha2";
    pub const KIND: &str = "InferenceModelRewrite";
    pub const PLURAL: &str = "inferencemodelrewrites";
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
    /// Endpoints the picker names after its choice, in order: the gateway
    /// retries a request that failed before any response on the next one.
    pub const FALLBACKS: u32 = 2;
    /// Request headers of the protocol that a client must never set: the
    /// gateway removes them before the picker runs.
    pub const PROTOCOL_HEADERS: [&str; 3] = [DESTINATION, SUBSET, SERVED];
    /// gRPC metadata of the picker's ext_proc stream, set per route by the
    /// gateway: the models the route names exactly, a JSON list of strings
    /// (ASCII, other characters escaped as `\uXXXX`). The picker's
    /// per-model metrics label other models "other".
    pub const ROUTE_MODELS: &str = "x-infergate-route-models";
    /// gRPC metadata, per route: the pool's model rewrites in precedence
    /// order, a JSON list of `[model, [[served name, weight], ...]]` where
    /// `model` is the name a request gives, or null for every model no
    /// other entry names (ASCII, as [`ROUTE_MODELS`]).
    pub const MODEL_REWRITES: &str = "x-infergate-model-rewrites";
}

/// Routing by the model a request names: the OpenAI APIs name it in the
/// JSON body's `model` field; HTTPRoutes match it as a header.
pub mod model {
    /// The request header HTTPRoutes match the model with. The gateway
    /// fills it from the body (and removes any value a client sent).
    pub const HEADER: &str = "x-gateway-model-name";
    /// The body field that names the model.
    pub const BODY_FIELD: &str = "model";
    /// Dynamic metadata namespace where Envoy keeps the model it read.
    pub const METADATA_NAMESPACE: &str = "infergate.model";
    /// Key of the model's name in [`METADATA_NAMESPACE`].
    pub const METADATA_KEY: &str = "name";
    /// How much of a JSON request body is read to find the model, by
    /// default: a 1 MB prompt fits with room for JSON's escapes.
    pub const DEFAULT_MAX_BODY_BYTES: u32 = 4 << 20;
    /// The path where the gateway lists the models its routes serve.
    pub const LIST_PATH: &str = "/v1/models";
}

/// Names of the objects infergate deploys for a Gateway or an InferencePool.
pub mod objects {
    /// The longest name a Service (a DNS-1035 label) may have.
    pub const MAX_LEN: usize = 63;
    /// Prefix of a Gateway's Envoy objects.
    pub const ENVOY_PREFIX: &str = "infergate-";
    /// Prefix of an InferencePool's managed endpoint picker objects.
    pub const PICKER_PREFIX: &str = "infergate-epp-";
    /// The port of a managed endpoint picker's Service (ext_proc, gRPC).
    pub const PICKER_PORT: u32 = 9002;

    /// `<prefix><name>` when that is a DNS-1035 label (lower-case letters,
    /// digits and '-', at most 63); else a label made of the name's
    /// characters that fit and 8 hex digits of a hash of the whole name, so
    /// that names with dots or over-long names stay distinct. Stable across
    /// releases (FNV-1a, not std's hasher).
    pub fn bounded(prefix: &str, name: &str) -> String {
        let full = format!("{prefix}{name}");
        let label_chars = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if full.len() <= MAX_LEN && full.chars().all(label_chars) && !full.ends_with('-') {
            return full;
        }
        let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let keep = MAX_LEN - 1 - 8;
        let cleaned: String = full
            .chars()
            .map(|c| if label_chars(c) { c } else { '-' })
            .take(keep)
            .collect();
        format!("{}-{:08x}", cleaned.trim_end_matches('-'), hash as u32)
    }

    /// The name of the managed picker's objects of pool `name`.
    pub fn picker(pool: &str) -> String {
        bounded(PICKER_PREFIX, pool)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_service_names_and_stay_distinct() {
            assert_eq!(picker("llama"), "infergate-epp-llama");
            let long = "p".repeat(80);
            let dotted = picker("pool.v2");
            let dashed = picker("pool-v2");
            assert_eq!(dashed, "infergate-epp-pool-v2");
            assert_ne!(dotted, dashed);
            for name in [picker(&long), dotted, picker(&format!("{long}x"))] {
                assert!(name.len() <= MAX_LEN, "{name}");
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{name}"
                );
            }
            assert_ne!(picker(&long), picker(&format!("{long}x")));
        }
    }
}

/// How a deployed Envoy proves which Gateway it serves: its client
/// certificate for xDS carries the URI `<PREFIX><namespace>/<name>`, and
/// the xDS server gives it that node's configuration only.
pub mod xds_identity {
    pub const GATEWAY_URI_PREFIX: &str = "spiffe://infergate.dev/gateway/";

    /// The URI of Gateway `namespace/name`.
    pub fn gateway_uri(namespace: &str, name: &str) -> String {
        format!("{GATEWAY_URI_PREFIX}{namespace}/{name}")
    }

    /// The Gateway (`namespace/name`, its xDS node id) a URI names.
    pub fn gateway_of_uri(uri: &str) -> Option<&str> {
        let rest = uri.strip_prefix(GATEWAY_URI_PREFIX)?;
        let (namespace, name) = rest.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some(rest)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_a_gateway_uri_names_a_gateway() {
            assert_eq!(gateway_of_uri(&gateway_uri("team", "gw")), Some("team/gw"));
            for bad in [
                "spiffe://infergate.dev/gateway/team",
                "spiffe://infergate.dev/gateway//gw",
                "spiffe://infergate.dev/gateway/team/gw/x",
                "spiffe://example.com/gateway/team/gw",
            ] {
                assert_eq!(gateway_of_uri(bad), None, "{bad}");
            }
        }
    }
}
