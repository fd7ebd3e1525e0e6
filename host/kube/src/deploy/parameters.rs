//! Per-class and per-Gateway settings of the deployed Envoys, through the
//! standard hooks: GatewayClass `spec.parametersRef` and Gateway
//! `spec.infrastructure.parametersRef`, each naming a ConfigMap (group "",
//! kind ConfigMap) whose data keys are below. The flags of `infergate run`
//! come first, then the class's ConfigMap, then the Gateway's.
//!
//! | key | value |
//! |---|---|
//! | `replicas` | Envoy replicas, 1-100 |
//! | `autoscaling` | `true`: replicas are left to an autoscaler (the deployer neither sets nor restores them) |
//! | `image` | the Envoy image |
//! | `imagePullPolicy` | Always, IfNotPresent or Never |
//! | `serviceType` | ClusterIP, NodePort or LoadBalancer |
//! | `cpuRequest`, `memoryRequest`, `memoryLimit` | Kubernetes quantities |
//! | `drainSeconds` | seconds an Envoy drains before it stops, 0-600 |
//!
//! Unknown keys are refused (a misspelt key would otherwise do nothing).

use std::collections::BTreeMap;

use super::manifests::EnvoySettings;

pub const KEYS: [&str; 9] = [
    "replicas",
    "autoscaling",
    "image",
    "imagePullPolicy",
    "serviceType",
    "cpuRequest",
    "memoryRequest",
    "memoryLimit",
    "drainSeconds",
];

/// A parametersRef as the deployer follows it: a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParametersRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// The ConfigMap's namespace: the GatewayClass's `parametersRef.namespace`
    /// or the Gateway's own.
    pub namespace: Option<String>,
}

impl ParametersRef {
    /// Where to read it from, or why it cannot be followed.
    pub fn config_map(&self, what: &str) -> Result<(String, String), String> {
        if !(self.group.is_empty() || self.group == "core") || self.kind != "ConfigMap" {
            return Err(format!(
                "{what}: {}/{} {} is not supported; infergate takes its parameters from a ConfigMap (group \"\", kind ConfigMap)",
                if self.group.is_empty() {
                    "core"
                } else {
                    &self.group
                },
                self.kind,
                self.name
            ));
        }
        let namespace = self
            .namespace
            .clone()
            .ok_or_else(|| format!("{what}: namespace is required (a ConfigMap is namespaced)"))?;
        Ok((namespace, self.name.clone()))
    }
}

/// `settings` with the ConfigMap's `data` applied; an error names the
/// ConfigMap (`source`) and the key.
pub fn apply(
    settings: &EnvoySettings,
    data: &BTreeMap<String, String>,
    source: &str,
) -> Result<EnvoySettings, String> {
    let mut out = settings.clone();
    let mut problems = Vec::new();
    for (key, value) in data {
        let value = value.trim();
        let result: Result<(), String> = match key.as_str() {
            "replicas" => match value.parse::<i32>() {
                Ok(n) if (1..=100).contains(&n) => {
                    out.replicas = n;
                    Ok(())
                }
                _ => Err("a whole number from 1 to 100".into()),
            },
            "autoscaling" => match value {
                "true" => {
                    out.autoscaling = true;
                    Ok(())
                }
                "false" => {
                    out.autoscaling = false;
                    Ok(())
                }
                _ => Err("true or false".into()),
            },
            "image" if !value.is_empty() && !value.contains(char::is_whitespace) => {
                out.image = value.to_string();
                Ok(())
            }
            "image" => Err("an image reference without spaces".into()),
            "imagePullPolicy" if ["Always", "IfNotPresent", "Never"].contains(&value) => {
                out.image_pull_policy = value.to_string();
                Ok(())
            }
            "imagePullPolicy" => Err("Always, IfNotPresent or Never".into()),
            "serviceType" if ["ClusterIP", "NodePort", "LoadBalancer"].contains(&value) => {
                out.service_type = value.to_string();
                Ok(())
            }
            "serviceType" => Err("ClusterIP, NodePort or LoadBalancer".into()),
            "cpuRequest" | "memoryRequest" | "memoryLimit"
                if super::picker_manifests::is_quantity(value) =>
            {
                *match key.as_str() {
                    "cpuRequest" => &mut out.cpu_request,
                    "memoryRequest" => &mut out.memory_request,
                    _ => &mut out.memory_limit,
                } = value.to_string();
                Ok(())
            }
            "cpuRequest" | "memoryRequest" | "memoryLimit" => {
                Err("a Kubernetes quantity such as 250m, 1, 128Mi or 2Gi".into())
            }
            "drainSeconds" => match value.parse::<u32>() {
                Ok(n) if n <= 600 => {
                    out.drain_seconds = n;
                    Ok(())
                }
                _ => Err("a whole number of seconds from 0 to 600".into()),
            },
            _ => Err(format!("one of the keys {}", KEYS.join(", "))),
        };
        if let Err(expected) = result {
            problems.push(format!(
                "{source}: key {key}: {value:?} is not valid, expected {expected}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn class_then_gateway_parameters_override_the_flags() {
        let flags = EnvoySettings::default();
        let class = apply(
            &flags,
            &data(&[("replicas", "3"), ("serviceType", "LoadBalancer")]),
            "ConfigMap infra/class",
        )
        .unwrap();
        let gateway = apply(
            &class,
            &data(&[
                ("replicas", "2"),
                ("memoryLimit", "2Gi"),
                ("autoscaling", "true"),
            ]),
            "ConfigMap team/gw",
        )
        .unwrap();
        assert_eq!(gateway.replicas, 2);
        assert_eq!(gateway.service_type, "LoadBalancer");
        assert_eq!(gateway.memory_limit, "2Gi");
        assert!(gateway.autoscaling);
        assert_eq!(gateway.image, flags.image);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_by_name() {
        let err = apply(
            &EnvoySettings::default(),
            &data(&[
                ("replicas", "0"),
                ("replica", "2"),
                ("serviceType", "Ingress"),
            ]),
            "ConfigMap team/gw",
        )
        .unwrap_err();
        assert!(
            err.contains("ConfigMap team/gw: key replicas: \"0\""),
            "{err}"
        );
        assert!(
            err.contains("key replica:") && err.contains("one of the keys replicas"),
            "{err}"
        );
        assert!(err.contains("key serviceType"), "{err}");
    }

    #[test]
    fn only_config_maps_are_followed_and_class_refs_need_a_namespace() {
        let mut r = ParametersRef {
            group: "".into(),
            kind: "ConfigMap".into(),
            name: "envoy".into(),
            namespace: Some("infra".into()),
        };
        assert_eq!(
            r.config_map("x").unwrap(),
            ("infra".to_string(), "envoy".to_string())
        );
        r.namespace = None;
        assert!(
            r.config_map("GatewayClass c parametersRef")
                .unwrap_err()
                .contains("namespace is required")
        );
        r.kind = "EnvoyProxy".into();
        r.group = "gateway.envoyproxy.io".into();
        assert!(r.config_map("x").unwrap_err().contains("not supported"));
    }
}
