//! The objects that make one Gateway's data plane, as pure functions of the
//! Gateway and the deployer's settings: a ConfigMap with the Envoy's
//! bootstrap, a Deployment of Envoy, and a Service in front of it, all in
//! the Gateway's namespace and owned by it (deleting the Gateway deletes
//! them).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Sysctl, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Labels on everything the deployer makes; the deployer watches objects
/// with [`MANAGED_BY`] = [`MANAGER`] only.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "infergate";
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// The Gateway's name, as Gateway API implementations label their data plane.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// The bootstrap file in the ConfigMap and in the Envoy container.
const BOOTSTRAP_KEY: &str = "bootstrap.pb";
const BOOTSTRAP_DIR: &str = "/etc/envoy";
/// Where the Envoy finds its xDS client certificate, key and the CA (the
/// Gateway's Secret); the bootstrap names these files.
pub const XDS_TLS_DIR: &str = "/etc/envoy/xds-tls";
/// The Envoys' admin port, on the Pod's loopback (the bootstrap's).
pub const ENVOY_ADMIN_PORT: u16 = 19000;
/// The drain hook in the Envoy image (`infergate-envoy-drain`).
pub const DRAIN_HOOK: &str = "/usr/local/bin/infergate-envoy-drain";
/// Seconds a terminating Envoy waits, after draining, for requests in
/// flight (streamed completions) before it stops.
pub const IN_FLIGHT_GRACE_SECONDS: u32 = 20;

/// The Pod annotation with the expiry (Unix seconds) of the certificate
/// its Envoys reach xDS with: the deployer renews it before then.
pub const CERTIFICATE_EXPIRY: &str = "infergate.dev/xds-certificate-expiry";

/// One Gateway to deploy an Envoy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The ports its Envoy listens on (one per distinct listener port).
    pub ports: Vec<u16>,
    /// `spec.infrastructure.labels` and `.annotations`: put on everything
    /// made for the Gateway, Pods included (ours win where keys collide).
    pub infrastructure_labels: BTreeMap<String, String>,
    pub infrastructure_annotations: BTreeMap<String, String>,
}

/// How Envoys are deployed (flags of `infergate run`, chart values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoySettings {
    pub image: String,
    pub image_pull_policy: String,
    pub replicas: i32,
    /// ClusterIP, NodePort or LoadBalancer.
    pub service_type: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// Seconds Envoy keeps serving after its Pod is deleted, so that Services
    /// and load balancers stop sending before it stops.
    pub drain_seconds: u32,
    /// Replicas are an autoscaler's: the Deployment is applied without them.
    pub autoscaling: bool,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            image: format!("infergate.local/envoy:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            replicas: 1,
            service_type: "ClusterIP".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "1Gi".into(),
            drain_seconds: 5,
            autoscaling: false,
        }
    }
}

/// The name of every object of `gateway`'s data plane: `infergate-<gateway>`,
/// shortened with a hash of the full name when that is longer than a
/// Service name may be (63).
pub fn object_name(gateway: &str) -> String {
    infergate_names::objects::bounded(infergate_names::objects::ENVOY_PREFIX, gateway)
}

/// The Gateway's infrastructure labels, then ours (ours win).
pub fn labels(gateway: &GatewayRef) -> BTreeMap<String, String> {
    let mut labels = gateway.infrastructure_labels.clone();
    labels.extend(own_labels(gateway));
    labels
}

fn own_labels(gateway: &GatewayRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (COMPONENT.to_string(), "envoy".to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            "infergate-envoy".to_string(),
        ),
        (GATEWAY_NAME.to_string(), label_value(&gateway.name)),
    ])
}

/// Gateway names may be 253 characters; label values 63.
fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        name.to_string()
    } else {
        object_name(name)["infergate-".len()..].to_string()
    }
}

fn meta(gateway: &GatewayRef) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name(&gateway.name)),
        namespace: Some(gateway.namespace.clone()),
        labels: Some(labels(gateway)),
        annotations: Some(gateway.infrastructure_annotations.clone()).filter(|a| !a.is_empty()),
        owner_references: Some(vec![OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: gateway.name.clone(),
            uid: gateway.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    }
}

/// The ConfigMap holding the bootstrap (binary protobuf).
pub fn config_map(gateway: &GatewayRef, bootstrap: &[u8]) -> ConfigMap {
    ConfigMap {
        metadata: meta(gateway),
        binary_data: Some(BTreeMap::from([(
            BOOTSTRAP_KEY.to_string(),
            ByteString(bootstrap.to_vec()),
        )])),
        ..Default::default()
    }
}

/// The Secret with the Envoys' xDS client certificate (type kubernetes.io/tls,
/// plus `ca.crt`).
pub fn secret(gateway: &GatewayRef, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Secret {
    Secret {
        metadata: meta(gateway),
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), cert_pem.to_string()),
            ("tls.key".to_string(), key_pem.to_string()),
            ("ca.crt".to_string(), ca_pem.to_string()),
        ])),
        ..Default::default()
    }
}

/// The Envoy Deployment. `bootstrap_digest` (of the ConfigMap's content)
/// and `certificate_expiry` (of the Secret's certificate) are Pod
/// annotations, so a new bootstrap or certificate rolls the Envoys.
pub fn deployment(
    gateway: &GatewayRef,
    settings: &EnvoySettings,
    bootstrap_digest: &str,
    certificate_expiry: i64,
) -> Deployment {
    let labels = labels(gateway);
    let selector = BTreeMap::from([
        (GATEWAY_NAME.to_string(), labels[GATEWAY_NAME].clone()),
        (COMPONENT.to_string(), "envoy".to_string()),
    ]);
    let ports: Vec<ContainerPort> = gateway
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(*p),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(settings.cpu_request.clone())),
            (
                "memory".to_string(),
                Quantity(settings.memory_request.clone()),
            ),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(settings.memory_limit.clone()),
        )])),
        ..Default::default()
    };
    // Ready once Envoy has this Gateway's configuration from xDS (its
    // admin /ready, asked by the drain hook's binary): also when none of
    // the Gateway's listeners can be served, where a probe on a listener
    // port would never succeed.
    let readiness = Some(Probe {
        exec: Some(k8s_openapi::api::core::v1::ExecAction {
            command: Some(vec![
                DRAIN_HOOK.into(),
                "--admin-port".into(),
                ENVOY_ADMIN_PORT.to_string(),
                "--ready".into(),
            ]),
        }),
        // A busy node may miss a probe now and then: one miss must not take
        // a Gateway's only Envoy out of its Service.
        period_seconds: Some(2),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    });
    let container = Container {
        name: "envoy".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec![
            "--config-path".into(),
            format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}"),
            "--ignore-unknown-dynamic-fields".into(),
            "--disable-hot-restart".into(),
            // What the drain hook's graceful drain lasts, every connection
            // told to close at once (the Pod is leaving its Service).
            "--drain-time-s".into(),
            settings.drain_seconds.to_string(),
            "--drain-strategy".into(),
            "immediate".into(),
            "--log-level".into(),
            "warn".into(),
        ]),
        ports: Some(ports),
        readiness_probe: readiness,
        resources: Some(resources),
        lifecycle: Some(k8s_openapi::api::core::v1::Lifecycle {
            // Drain gracefully while the endpoint is removed from the
            // Service (clients told to reconnect, new connections still
            // served), then wait for requests in flight; SIGTERM follows.
            pre_stop: Some(k8s_openapi::api::core::v1::LifecycleHandler {
                exec: Some(k8s_openapi::api::core::v1::ExecAction {
                    command: Some(vec![
                        DRAIN_HOOK.into(),
                        "--admin-port".into(),
                        ENVOY_ADMIN_PORT.to_string(),
                        "--drain-seconds".into(),
                        settings.drain_seconds.to_string(),
                        "--max-wait-seconds".into(),
                        (settings.drain_seconds + IN_FLIGHT_GRACE_SECONDS).to_string(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(locked_down()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "bootstrap".into(),
                mount_path: BOOTSTRAP_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "xds-tls".into(),
                mount_path: XDS_TLS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(gateway),
        spec: Some(DeploymentSpec {
            // Left out, our field manager lets go of them and an autoscaler
            // sets them.
            replicas: (!settings.autoscaling).then_some(settings.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // Never fewer ready Envoys than asked for during a rollout.
            strategy: Some(never_below_replicas()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some({
                        let mut annotations = gateway.infrastructure_annotations.clone();
                        annotations.extend([
                            (
                                "infergate.dev/bootstrap-digest".to_string(),
                                bootstrap_digest.to_string(),
                            ),
                            (
                                CERTIFICATE_EXPIRY.to_string(),
                                certificate_expiry.to_string(),
                            ),
                        ]);
                        annotations
                    }),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(
                        i64::from(settings.drain_seconds + IN_FLIGHT_GRACE_SECONDS) + 10,
                    ),
                    security_context: Some(PodSecurityContext {
                        // Listeners on ports below 1024 without a capability.
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".into(),
                            value: "0".into(),
                        }]),
                        ..non_root_pod()
                    }),
                    volumes: Some(vec![
                        Volume {
                            name: "bootstrap".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: object_name(&gateway.name),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "xds-tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(object_name(&gateway.name)),
                                // Readable by the Envoy's group (65532) only.
                                default_mode: Some(0o440),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container that cannot gain privileges, write its root filesystem or
/// use any capability.
pub(crate) fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Pod of user and group 65532 (the images' nonroot), whose Secret
/// volumes are readable by that group, with the runtime's seccomp profile.
pub(crate) fn non_root_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Rolling updates that never go below the replicas asked for.
pub(crate) fn never_below_replicas() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

/// The Service in front of the Envoys: one port per listener port.
pub fn service(gateway: &GatewayRef, settings: &EnvoySettings) -> Service {
    let labels = labels(gateway);
    Service {
        metadata: meta(gateway),
        spec: Some(ServiceSpec {
            type_: Some(settings.service_type.clone()),
            selector: Some(BTreeMap::from([
                (GATEWAY_NAME.to_string(), labels[GATEWAY_NAME].clone()),
                (COMPONENT.to_string(), "envoy".to_string()),
            ])),
            ports: Some(
                gateway
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("port-{p}")),
                        port: i32::from(*p),
                        target_port: Some(IntOrString::Int(i32::from(*p))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(name: &str) -> GatewayRef {
        GatewayRef {
            namespace: "team".into(),
            name: name.into(),
            uid: "1234".into(),
            ports: vec![80, 8080],
            infrastructure_labels: BTreeMap::new(),
            infrastructure_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn the_gateways_infrastructure_labels_and_annotations_go_everywhere_but_never_over_ours() {
        let mut g = gateway("gw");
        g.infrastructure_labels = BTreeMap::from([
            ("team".to_string(), "search".to_string()),
            (MANAGED_BY.to_string(), "someone-else".to_string()),
        ]);
        g.infrastructure_annotations =
            BTreeMap::from([("cost-center".to_string(), "42".to_string())]);
        let settings = EnvoySettings::default();
        let d = deployment(&g, &settings, "d", 0);
        let pod = d.spec.as_ref().unwrap().template.metadata.clone().unwrap();
        let metas = [
            config_map(&g, b"x").metadata,
            secret(&g, "c", "k", "ca").metadata,
            service(&g, &settings).metadata,
            d.metadata,
            pod,
        ];
        for m in metas {
            let labels = m.labels.unwrap();
            assert_eq!(labels["team"], "search");
            assert_eq!(labels[MANAGED_BY], MANAGER, "ours win");
            assert_eq!(m.annotations.unwrap()["cost-center"], "42");
        }
    }

    #[test]
    fn a_terminating_envoy_drains_for_its_drain_time_then_waits_for_requests_in_flight() {
        let settings = EnvoySettings {
            drain_seconds: 7,
            ..EnvoySettings::default()
        };
        let d = deployment(&gateway("gw"), &settings, "d", 0);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let envoy = &pod.containers[0];
        let args = envoy.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--drain-time-s 7 --drain-strategy immediate"),
            "{args}"
        );
        let hook = envoy.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        let command = hook
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()
            .join(" ");
        assert_eq!(
            command,
            format!(
                "{DRAIN_HOOK} --admin-port {ENVOY_ADMIN_PORT} --drain-seconds 7 --max-wait-seconds {}",
                7 + IN_FLIGHT_GRACE_SECONDS
            )
        );
        // Kubernetes waits for the hook and Envoy's exit within the grace period.
        assert!(
            pod.termination_grace_period_seconds.unwrap() > i64::from(7 + IN_FLIGHT_GRACE_SECONDS)
        );
        let autoscaled = EnvoySettings {
            autoscaling: true,
            ..EnvoySettings::default()
        };
        let d = deployment(&gateway("gw"), &autoscaled, "d", 0);
        assert_eq!(
            d.spec.unwrap().replicas,
            None,
            "an autoscaler's replicas are left alone"
        );
    }

    #[test]
    fn names_fit_kubernetes_limits_and_stay_distinct() {
        assert_eq!(object_name("gw"), "infergate-gw");
        let long_a = "a".repeat(100);
        let long_b = format!("{}b", "a".repeat(99));
        assert!(object_name(&long_a).len() <= 63);
        assert_ne!(object_name(&long_a), object_name(&long_b));
        assert!(label_value(&long_a).len() <= 63);
    }

    #[test]
    fn everything_is_owned_by_the_gateway_and_labelled_as_ours() {
        let g = gateway("gw");
        let settings = EnvoySettings::default();
        let metas = [
            config_map(&g, b"x").metadata,
            secret(&g, "c", "k", "ca").metadata,
            deployment(&g, &settings, "d", 0).metadata,
            service(&g, &settings).metadata,
        ];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("team"));
            assert_eq!(m.name.as_deref(), Some("infergate-gw"));
            let owner = &m.owner_references.unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Gateway", "1234")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(m.labels.unwrap()[MANAGED_BY], MANAGER);
        }
    }

    #[test]
    fn the_service_selects_the_envoy_pods_on_every_listener_port() {
        let g = gateway("gw");
        let settings = EnvoySettings::default();
        let d = deployment(&g, &settings, "d", 0);
        let s = service(&g, &settings);
        let pod_labels = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in s.spec.as_ref().unwrap().selector.as_ref().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "selector {k}");
        }
        for (k, v) in d
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
        {
            assert_eq!(pod_labels.get(k), Some(v), "Deployment selector {k}");
        }
        let ports: Vec<i32> = s
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [80, 8080]);
    }

    #[test]
    fn envoy_runs_locked_down_and_drains_before_it_stops() {
        let d = deployment(&gateway("gw"), &EnvoySettings::default(), "d", 0);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        // (The drain hook: its own test.)
        assert!(
            c.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .exec
                .is_some()
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command
                .as_ref()
                .unwrap()
                .last()
                .map(String::as_str),
            Some("--ready")
        );
    }
}
