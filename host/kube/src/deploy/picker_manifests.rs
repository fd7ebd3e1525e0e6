//! The objects of one managed endpoint picker, as pure functions of its
//! InferencePool and the settings: a ServiceAccount with a Role that can
//! read only the pool's namespace's Pods and InferencePools, a Secret with
//! the picker's serving certificate (issued by the controller's CA, which
//! Envoy verifies), the `infergate-epp` Deployment and its Service. All are
//! named `infergate-epp-<pool>` (`infergate_names::objects::picker`), live in
//! the pool's namespace and are owned by the pool.

use std::collections::BTreeMap;

use infergate_names::inference_pool as pool_names;
use infergate_names::objects::PICKER_PORT;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, GRPCAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Secret, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifests::{COMPONENT, MANAGED_BY, MANAGER};

/// The component label of a managed picker's objects.
pub const PICKER_COMPONENT: &str = "endpoint-picker";
/// The pool a managed picker's objects belong to.
pub const POOL_LABEL: &str = "infergate.dev/inference-pool";
/// The Pod annotation with the expiry (Unix seconds) of the picker's serving
/// certificate: the deployer renews it before then.
pub const CERTIFICATE_EXPIRY: &str = "infergate.dev/serving-certificate-expiry";
const HEALTH_PORT: i32 = 9003;
const METRICS_PORT: i32 = 9090;
const TLS_DIR: &str = "/etc/infergate-epp/tls";

/// Annotations on an InferencePool that override the deployer's settings
/// for that pool's picker.
pub mod annotations {
    pub const PREFIX: &str = "picker.infergate.dev/";
    pub const IMAGE: &str = "picker.infergate.dev/image";
    pub const REPLICAS: &str = "picker.infergate.dev/replicas";
    pub const CPU_REQUEST: &str = "picker.infergate.dev/cpu-request";
    pub const MEMORY_REQUEST: &str = "picker.infergate.dev/memory-request";
    pub const MEMORY_LIMIT: &str = "picker.infergate.dev/memory-limit";
    pub const REFRESH_METRICS_INTERVAL: &str = "picker.infergate.dev/refresh-metrics-interval";
    pub const METRICS_STALENESS_THRESHOLD: &str =
        "picker.infergate.dev/metrics-staleness-threshold";
}

/// How managed pickers are deployed (flags of `infergate run`, chart
/// values), before a pool's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerSettings {
    pub image: String,
    pub image_pull_policy: String,
    pub replicas: i32,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The scorer's inputs: how often each model server's metrics are read,
    /// and when they are too old to count (`infergate-epp` flags).
    pub refresh_metrics_interval: String,
    pub metrics_staleness_threshold: String,
    /// text or json.
    pub log_format: String,
}

impl Default for PickerSettings {
    fn default() -> Self {
        PickerSettings {
            image: format!(
                "infergate.local/infergate-epp:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".into(),
            replicas: 1,
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "512Mi".into(),
            refresh_metrics_interval: "50ms".into(),
            metrics_staleness_threshold: "2s".into(),
            log_format: "text".into(),
        }
    }
}

impl PickerSettings {
    /// These settings with a pool's annotations applied. A value that is
    /// not valid is left out (the setting keeps its value) and explained in
    /// the returned messages, which name the annotation.
    pub fn with_overrides(
        &self,
        pool_annotations: &BTreeMap<String, String>,
    ) -> (Self, Vec<String>) {
        use annotations::*;
        let mut settings = self.clone();
        let mut problems = Vec::new();
        for (key, value) in pool_annotations
            .iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
        {
            let value = value.trim();
            let field: Result<(), String> = match key.as_str() {
                IMAGE if !value.is_empty() && !value.contains(char::is_whitespace) => {
                    settings.image = value.to_string();
                    Ok(())
                }
                IMAGE => Err("an image reference without spaces".into()),
                REPLICAS => match value.parse::<i32>() {
                    Ok(n) if (0..=100).contains(&n) => {
                        settings.replicas = n;
                        Ok(())
                    }
                    _ => Err("a whole number from 0 to 100".into()),
                },
                CPU_REQUEST | MEMORY_REQUEST | MEMORY_LIMIT if is_quantity(value) => {
                    let target = match key.as_str() {
                        CPU_REQUEST => &mut settings.cpu_request,
                        MEMORY_REQUEST => &mut settings.memory_request,
                        _ => &mut settings.memory_limit,
                    };
                    *target = value.to_string();
                    Ok(())
                }
                CPU_REQUEST | MEMORY_REQUEST | MEMORY_LIMIT => {
                    Err("a Kubernetes quantity such as 250m, 1, 128Mi or 2Gi".into())
                }
                REFRESH_METRICS_INTERVAL | METRICS_STALENESS_THRESHOLD if is_duration(value) => {
                    if key == REFRESH_METRICS_INTERVAL {
                        settings.refresh_metrics_interval = value.to_string();
                    } else {
                        settings.metrics_staleness_threshold = value.to_string();
                    }
                    Ok(())
                }
                REFRESH_METRICS_INTERVAL | METRICS_STALENESS_THRESHOLD => {
                    Err("a duration such as 50ms or 2s".into())
                }
                _ => Err(format!(
                    "a known annotation: {IMAGE}, {REPLICAS}, {CPU_REQUEST}, {MEMORY_REQUEST}, {MEMORY_LIMIT}, {REFRESH_METRICS_INTERVAL} or {METRICS_STALENESS_THRESHOLD}"
                )),
            };
            if let Err(expected) = field {
                problems.push(format!(
                    "annotation {key}: {value:?} is not valid, expected {expected}; ignored"
                ));
            }
        }
        (settings, problems)
    }
}

impl PickerSettings {
    /// What is wrong with these settings (flags of `infergate run`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (flag, value) in [
            ("--picker-cpu-request", &self.cpu_request),
            ("--picker-memory-request", &self.memory_request),
            ("--picker-memory-limit", &self.memory_limit),
        ] {
            if !is_quantity(value) {
                problems.push(format!(
                    "{flag} {value:?}: expected a Kubernetes quantity such as 250m, 1, 128Mi or 2Gi"
                ));
            }
        }
        for (flag, value) in [
            (
                "--picker-refresh-metrics-interval",
                &self.refresh_metrics_interval,
            ),
            (
                "--picker-metrics-staleness-threshold",
                &self.metrics_staleness_threshold,
            ),
        ] {
            if !is_duration(value) {
                problems.push(format!(
                    "{flag} {value:?}: expected a duration such as 50ms or 2s"
                ));
            }
        }
        problems
    }
}

/// A decimal number with an optional Kubernetes suffix (m, k, M, G, T, P, E,
/// Ki, Mi, Gi, Ti, Pi, Ei).
pub(crate) fn is_quantity(value: &str) -> bool {
    let number_end = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

/// A positive whole number of ms or s (what `infergate-epp` takes).
fn is_duration(value: &str) -> bool {
    let number = value.strip_suffix("ms").or_else(|| value.strip_suffix('s'));
    number.is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
}

/// One InferencePool to deploy a picker for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
}

/// The name of the pool's picker objects.
pub fn object_name(pool: &PoolRef) -> String {
    infergate_names::objects::picker(&pool.name)
}

/// The DNS names the picker's certificate carries (Envoy sends the first
/// as SNI and checks it).
pub fn dns_names(pool: &PoolRef) -> Vec<String> {
    let name = object_name(pool);
    let ns = &pool.namespace;
    vec![
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        format!("{name}.{ns}"),
        name,
    ]
}

/// Labels on every object of the pool's picker; the Pods' selector is
/// [`selector`].
pub fn labels(pool: &PoolRef) -> BTreeMap<String, String> {
    let mut labels = selector(pool);
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels.insert("app.kubernetes.io/name".into(), "infergate-epp".into());
    labels
}

fn selector(pool: &PoolRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (COMPONENT.to_string(), PICKER_COMPONENT.to_string()),
        // A label value may not be as long as a pool name may be.
        (
            POOL_LABEL.to_string(),
            object_name(pool)["infergate-epp-".len().min(object_name(pool).len())..].to_string(),
        ),
    ])
}

fn meta(pool: &PoolRef) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name(pool)),
        namespace: Some(pool.namespace.clone()),
        labels: Some(labels(pool)),
        owner_references: Some(vec![OwnerReference {
            api_version: format!("{}/{}", pool_names::GROUP, pool_names::VERSION),
            kind: pool_names::KIND.into(),
            name: pool.name.clone(),
            uid: pool.uid.clone(),
            controller: Some(true),
            // Not blocking: that would need update rights on the pool's
            // finalizers where OwnerReferencesPermissionEnforcement runs.
            block_owner_deletion: None,
        }]),
        ..Default::default()
    }
}

pub fn service_account(pool: &PoolRef) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(pool),
        ..Default::default()
    }
}

/// Reads the pool's namespace's InferencePools and Pods, nothing else
/// (`crate::rbac::picker_rules`).
pub fn role(pool: &PoolRef) -> Role {
    Role {
        metadata: meta(pool),
        rules: Some(crate::rbac::picker_rules()),
    }
}

pub fn role_binding(pool: &PoolRef) -> RoleBinding {
    RoleBinding {
        metadata: meta(pool),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: object_name(pool),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: object_name(pool),
            namespace: Some(pool.namespace.clone()),
            ..Default::default()
        }]),
    }
}

/// The picker's serving certificate and key (type kubernetes.io/tls).
pub fn secret(pool: &PoolRef, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        metadata: meta(pool),
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), cert_pem.to_string()),
            ("tls.key".to_string(), key_pem.to_string()),
        ])),
        ..Default::default()
    }
}

/// The Service Envoy reaches the picker by: gRPC over TLS (appProtocol
/// http2), and the metrics port.
pub fn service(pool: &PoolRef) -> Service {
    Service {
        metadata: meta(pool),
        spec: Some(ServiceSpec {
            selector: Some(selector(pool)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: PICKER_PORT as i32,
                    target_port: Some(IntOrString::Int(PICKER_PORT as i32)),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http2".into()),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::Int(METRICS_PORT)),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn grpc_probe(service: &str, period: i32, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: HEALTH_PORT,
            service: Some(service.into()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The `infergate-epp` Deployment. `certificate_expiry` is a Pod annotation,
/// so a renewed certificate rolls the pickers.
pub fn deployment(
    pool: &PoolRef,
    settings: &PickerSettings,
    certificate_expiry: i64,
) -> Deployment {
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let container = Container {
        name: "epp".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec![
            format!("--pool-name={}", pool.name),
            format!("--pool-namespace={}", pool.namespace),
            format!("--grpc-port={PICKER_PORT}"),
            format!("--grpc-health-port={HEALTH_PORT}"),
            format!("--metrics-port={METRICS_PORT}"),
            format!("--cert-path={TLS_DIR}"),
            format!(
                "--refresh-metrics-interval={}",
                settings.refresh_metrics_interval
            ),
            format!(
                "--metrics-staleness-threshold={}",
                settings.metrics_staleness_threshold
            ),
            format!("--log-format={}", settings.log_format),
        ]),
        ports: Some(vec![
            port("grpc", PICKER_PORT as i32),
            port("grpc-health", HEALTH_PORT),
            port("metrics", METRICS_PORT),
        ]),
        // Ready once the pool has endpoints to pick from.
        readiness_probe: Some(grpc_probe("readiness", 2, 3)),
        liveness_probe: Some(grpc_probe("liveness", 10, 3)),
        resources: Some(ResourceRequirements {
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
        }),
        security_context: Some(super::manifests::locked_down()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let labels = labels(pool);
    Deployment {
        metadata: meta(pool),
        spec: Some(DeploymentSpec {
            replicas: Some(settings.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(pool)),
                ..Default::default()
            },
            // A pool is fail-close: never fewer ready pickers than asked for.
            strategy: Some(super::manifests::never_below_replicas()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CERTIFICATE_EXPIRY.to_string(),
                        certificate_expiry.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: Some(object_name(pool)),
                    // It watches its pool and Pods with this token.
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(super::manifests::non_root_pod()),
                    volumes: Some(vec![Volume {
                        name: "tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(object_name(pool)),
                            default_mode: Some(0o440),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(annotations: &[(&str, &str)]) -> PoolRef {
        PoolRef {
            namespace: "llm".into(),
            name: "llama".into(),
            uid: "u-1".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_pools_annotations_override_the_settings_and_bad_values_are_named_and_ignored() {
        let defaults = PickerSettings::default();
        let (s, problems) = defaults.with_overrides(
            &pool(&[
                (annotations::REPLICAS, "3"),
                (annotations::IMAGE, "registry.example/epp:2"),
                (annotations::MEMORY_LIMIT, "1Gi"),
                (annotations::REFRESH_METRICS_INTERVAL, "100ms"),
                ("unrelated.example/key", "anything"),
            ])
            .annotations,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.image, "registry.example/epp:2");
        assert_eq!(s.memory_limit, "1Gi");
        assert_eq!(s.refresh_metrics_interval, "100ms");
        assert_eq!(s.cpu_request, defaults.cpu_request);

        let (s, problems) = defaults.with_overrides(
            &pool(&[
                (annotations::REPLICAS, "many"),
                (annotations::CPU_REQUEST, "lots"),
                (annotations::METRICS_STALENESS_THRESHOLD, "2 minutes"),
                ("picker.infergate.dev/replica", "2"),
            ])
            .annotations,
        );
        assert_eq!(s, defaults, "nothing invalid is taken");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].contains(annotations::CPU_REQUEST),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("picker.infergate.dev/replica:")
                    && p.contains(annotations::REPLICAS)),
            "a misspelt key is named with the right ones: {problems:?}"
        );
    }

    #[test]
    fn the_picker_is_locked_down_serves_its_certificate_and_belongs_to_its_pool() {
        let p = pool(&[]);
        let d = deployment(&p, &PickerSettings::default(), 7);
        let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("infergate-epp-llama")
        );
        let c = &spec.containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--pool-name=llama".to_string()), "{args:?}");
        assert!(
            args.contains(&"--pool-namespace=llm".to_string()),
            "{args:?}"
        );
        assert!(
            args.iter().any(|a| a.starts_with("--cert-path=")),
            "{args:?}"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            spec.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("InferencePool", "u-1")
        );
        let svc = service(&p);
        let grpc = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(grpc.port, PICKER_PORT as i32);
        assert_eq!(grpc.app_protocol.as_deref(), Some("http2"));
        assert_eq!(dns_names(&p)[0], "infergate-epp-llama.llm.svc");
        let binding = role_binding(&p);
        assert_eq!(binding.role_ref.name, "infergate-epp-llama");
        let rules = role(&p).rules.unwrap();
        assert!(rules.iter().all(|r| {
            r.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        }));
    }
}
