//! The permissions infergate needs, stated once. `infergate rbac` prints them
//! as Kubernetes objects; the Kubernetes tests run the controller and the
//! picker as users bound to exactly these, so a missing or surplus rule shows.

use infergate_names::inference_pool as pool;
use infergate_names::model_rewrite as rewrite;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// What the controller is run to do, as far as its permissions go.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// InferencePools and Pods (`--enable-inference-extension`).
    pub inference_extension: bool,
    /// An Envoy Deployment, Service and ConfigMap per Gateway
    /// (`--deploy-envoys`).
    pub deploy_envoys: bool,
    /// An endpoint picker per InferencePool without one (`--manage-pickers`,
    /// which needs the two above): its ServiceAccount, Role and RoleBinding.
    pub manage_pickers: bool,
}

/// Cluster-wide rules of the controller (`infergate run`). With the inference
/// extension off, no rule names InferencePools or Pods; without the Envoy
/// deployer, nothing is written but statuses and Events.
pub fn controller_rules(needs: Needs) -> Vec<PolicyRule> {
    let mut rules = vec![
        rule(
            "gateway.networking.k8s.io",
            &[
                "gatewayclasses",
                "gateways",
                "httproutes",
                "referencegrants",
            ],
            READ,
        ),
        // Server-side apply of status is a PATCH of the status subresource.
        rule(
            "gateway.networking.k8s.io",
            &[
                "gatewayclasses/status",
                "gateways/status",
                "httproutes/status",
            ],
            &["patch"],
        ),
        rule("", &["namespaces", "services"], READ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        // HTTPS listeners' certificates. The watch asks only for Secrets of
        // type kubernetes.io/tls (a field selector; RBAC cannot narrow a
        // rule by type), and their keys go to Envoy only.
        rule("", &["secrets"], READ),
        // Warning Events on objects whose translation reports a problem.
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ];
    if needs.deploy_envoys {
        // Server-side apply creates and patches; objects of Gateways no
        // longer ours are deleted (the rest goes with its Gateway).
        let write = &["get", "list", "watch", "create", "patch", "delete"];
        rules.push(rule("apps", &["deployments"], write));
        // Each Gateway's xDS client certificate: written, never read.
        rules.push(rule(
            "",
            &["services", "configmaps", "secrets"],
            &["create", "patch", "delete"],
        ));
        rules.push(rule("", &["configmaps"], READ));
    }
    if needs.inference_extension {
        rules.push(rule(pool::GROUP, &[pool::PLURAL], READ));
        rules.push(rule(
            pool::GROUP,
            &[&format!("{}/status", pool::PLURAL)],
            &["patch"],
        ));
        rules.push(rule("", &["pods"], READ));
        // Models served under other names; their Accepted condition.
        rules.push(rule(rewrite::GROUP, &[rewrite::PLURAL], READ));
        rules.push(rule(
            rewrite::GROUP,
            &[&format!("{}/status", rewrite::PLURAL)],
            &["patch"],
        ));
    }
    if needs.manage_pickers && needs.deploy_envoys && needs.inference_extension {
        // Deployments, Services and Secrets are the Envoy deployer's rules.
        // The Role it gives each picker grants only what the rules above
        // grant this controller (RBAC refuses to let it grant more).
        rules.push(rule(
            "",
            &["serviceaccounts"],
            &["create", "patch", "delete"],
        ));
        rules.push(rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["create", "patch", "delete"],
        ));
    }
    rules
}

/// Rules in the controller's own namespace: its leader-election Lease and,
/// with the Envoy deployer, the Secret that keeps the xDS CA.
pub fn namespace_rules(needs: Needs) -> Vec<PolicyRule> {
    let mut rules = vec![rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    )];
    if needs.deploy_envoys {
        rules.push(rule("", &["secrets"], &["get", "create"]));
    }
    rules
}

/// Rules of an endpoint picker, in its pool's namespace: its InferencePool
/// and the Pods that pool selects.
pub fn picker_rules() -> Vec<PolicyRule> {
    vec![
        rule(pool::GROUP, &[pool::PLURAL], READ),
        rule("", &["pods"], READ),
    ]
}

pub fn controller_cluster_role(name: &str, needs: Needs) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        rules: Some(controller_rules(needs)),
        ..Default::default()
    }
}

pub fn namespace_role(name: &str, namespace: &str, needs: Needs) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        rules: Some(namespace_rules(needs)),
    }
}

pub fn picker_role(name: &str, namespace: &str) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        rules: Some(picker_rules()),
    }
}

/// All three as YAML documents (what `infergate rbac` prints).
pub fn yaml(namespace: &str, needs: Needs) -> String {
    let docs = [
        with_kind(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            &controller_cluster_role("infergate", needs),
        ),
        with_kind(
            "rbac.authorization.k8s.io/v1",
            "Role",
            &namespace_role("infergate-controller", namespace, needs),
        ),
        with_kind(
            "rbac.authorization.k8s.io/v1",
            "Role",
            &picker_role("infergate-endpoint-picker", namespace),
        ),
    ];
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn with_kind<T: serde::Serialize>(api_version: &str, kind: &str, object: &T) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feature_off_needs_no_inference_pool_or_pod_permission() {
        let off = controller_rules(Needs::default());
        let names = |rules: &[PolicyRule]| -> Vec<String> {
            rules
                .iter()
                .flat_map(|r| r.resources.clone().unwrap_or_default())
                .collect()
        };
        assert!(
            !names(&off)
                .iter()
                .any(|r| r.starts_with("inferencepools") || r == "pods")
        );
        let on = controller_rules(Needs {
            inference_extension: true,
            deploy_envoys: false,
            manage_pickers: false,
        });
        assert!(names(&on).contains(&"inferencepools/status".to_string()));
        assert!(names(&on).contains(&"pods".to_string()));
        // Nothing may write specs or delete anything.
        for rule in off.iter().chain(&on) {
            for verb in &rule.verbs {
                assert!(
                    !matches!(
                        verb.as_str(),
                        "delete" | "deletecollection" | "*" | "update"
                    ) || rule
                        .resources
                        .as_ref()
                        .is_some_and(|r| r.iter().any(|r| r == "leases")),
                    "unexpected verb {verb} in {rule:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_envoy_deployer_writes_objects_and_only_its_own_kinds() {
        let names = |rules: &[PolicyRule]| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.verbs.iter().any(|v| v == "create" || v == "delete"))
                .flat_map(|r| r.resources.clone().unwrap_or_default())
                .collect()
        };
        assert_eq!(
            names(&controller_rules(Needs::default())),
            ["events"],
            "without the deployer only Events are created"
        );
        let mut deploying = names(&controller_rules(Needs {
            inference_extension: true,
            deploy_envoys: true,
            manage_pickers: false,
        }));
        deploying.sort();
        assert_eq!(
            deploying,
            ["configmaps", "deployments", "events", "secrets", "services"]
        );
        let mut managing = names(&controller_rules(Needs {
            inference_extension: true,
            deploy_envoys: true,
            manage_pickers: true,
        }));
        managing.sort();
        assert_eq!(
            managing,
            [
                "configmaps",
                "deployments",
                "events",
                "rolebindings",
                "roles",
                "secrets",
                "serviceaccounts",
                "services"
            ]
        );
        // The pickers' Roles grant nothing the controller does not hold.
        let held = controller_rules(Needs {
            inference_extension: true,
            deploy_envoys: true,
            manage_pickers: true,
        });
        for granted in picker_rules() {
            for (resource, verb) in granted
                .resources
                .iter()
                .flatten()
                .flat_map(|r| granted.verbs.iter().map(move |v| (r, v)))
            {
                assert!(
                    held.iter().any(|h| h.api_groups == granted.api_groups
                        && h.resources.iter().flatten().any(|r| r == resource)
                        && h.verbs.contains(verb)),
                    "the controller may not grant {verb} on {resource}"
                );
            }
        }
        // Secrets are read cluster-wide by one rule (listener certificates)
        // that grants nothing else.
        let reading: Vec<PolicyRule> = controller_rules(Needs {
            inference_extension: true,
            deploy_envoys: true,
            manage_pickers: false,
        })
        .into_iter()
        .filter(|rule| {
            rule.resources.iter().flatten().any(|r| r == "secrets")
                && rule
                    .verbs
                    .iter()
                    .any(|v| matches!(v.as_str(), "get" | "list" | "watch"))
        })
        .collect();
        assert_eq!(reading, [rule("", &["secrets"], READ)]);
    }

    #[test]
    fn printed_rbac_is_yaml_the_api_objects_read_back_from() {
        let needs = Needs {
            inference_extension: true,
            deploy_envoys: true,
            manage_pickers: false,
        };
        let text = yaml("infergate-system", needs);
        let docs: Vec<serde_json::Value> = text
            .split("---\n")
            .map(|d| serde_yaml_ng::from_str(d).expect("valid YAML"))
            .collect();
        assert_eq!(docs.len(), 3);
        let role: ClusterRole = serde_json::from_value(docs[0].clone()).expect("a ClusterRole");
        assert_eq!(role.rules, Some(controller_rules(needs)));
        let lease: Role = serde_json::from_value(docs[1].clone()).expect("a Role");
        assert_eq!(
            lease.metadata.namespace.as_deref(),
            Some("infergate-system")
        );
    }
}
