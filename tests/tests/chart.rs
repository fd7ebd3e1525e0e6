//! The Helm chart (`charts/infergate`), with the real `helm` CLI
//! (scripts/kube-tools.sh --node builds it): lint, rendered manifests
//! against golden files, RBAC equal to what `infergate rbac` prints, and
//! the values schema refusing what it should. Installing, upgrading and
//! uninstalling on a real cluster is in tests/cluster.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/infergate")
}

fn helm() -> PathBuf {
    let helm = infergate_e2e::kube::tools_dir().join("helm");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/kube-tools.sh --node (scripts/setup.sh does)",
        helm.display()
    );
    helm
}

/// `helm <args>`: (success, stdout, stderr).
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(args)
        // No user configuration or cache of this machine's.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("infergate-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("infergate-helm-cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("infergate-helm-data"),
        )
        .output()
        .expect("running helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The chart rendered as release `infergate` in `infergate-system`.
fn template(sets: &[&str]) -> String {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "infergate", &chart, "-n", "infergate-system"];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm template {sets:?} failed:\n{err}");
    out
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn the_chart_lints_strictly() {
    let chart = chart().display().to_string();
    for sets in [vec![], vec!["inferenceExtension.enabled=true,replicas=3"]] {
        let mut args = vec!["lint", "--strict", &chart];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, out, err) = run_helm(&args);
        assert!(ok, "helm lint --strict {sets:?}:\n{out}{err}");
    }
}

/// Rendered manifests for a few value sets, against
/// charts/infergate/tests/golden/<case>.yaml (INFERGATE_UPDATE_GOLDEN=1
/// rewrites them; review the diff).
#[test]
fn rendered_manifests_match_the_golden_files() {
    let cases: &[(&str, &[&str])] = &[
        ("default", &[]),
        (
            "inference-ha",
            &[
                "inferenceExtension.enabled=true",
                "replicas=3",
                "logging.format=json",
                "translator.component=my-translator",
                "metrics.serviceMonitor.enabled=true",
                "image.tag=dev",
            ],
        ),
    ];
    let update = std::env::var_os("INFERGATE_UPDATE_GOLDEN").is_some();
    let mut stale = vec![];
    for (case, sets) in cases {
        let rendered = template(sets);
        let file = chart().join(format!("tests/golden/{case}.yaml"));
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &rendered).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&file).unwrap_or_else(|_| {
            panic!(
                "{} is missing; create it with INFERGATE_UPDATE_GOLDEN=1 and review it",
                file.display()
            )
        });
        if golden != rendered {
            let first = golden
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(golden.lines().count().min(rendered.lines().count()));
            stale.push(format!(
                "{case}: differs from line {}: golden {:?}, rendered {:?}",
                first + 1,
                golden.lines().nth(first),
                rendered.lines().nth(first)
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n(scripts/update-golden.sh accepts an intended change)",
        stale.join("\n")
    );
}

/// The chart's ClusterRole and namespaced Role have exactly the rules
/// `infergate rbac` prints, with the inference extension and the Envoy
/// deployer on and off.
#[test]
fn the_charts_rbac_is_what_infergate_rbac_prints() {
    for (inference, deploy, pickers) in [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (true, true, true),
    ] {
        let mut args = vec!["rbac", "--namespace", "infergate-system"];
        if inference {
            args.push("--enable-inference-extension");
        }
        if deploy {
            args.push("--deploy-envoys");
        }
        if pickers {
            args.push("--manage-pickers");
        }
        let printed = Command::new(infergate_e2e::infergate_binary())
            .args(&args)
            .output()
            .expect("infergate rbac");
        assert!(printed.status.success());
        let printed = documents(&String::from_utf8_lossy(&printed.stdout));
        let rendered = documents(&template(&[&format!(
            "inferenceExtension.enabled={inference},gatewayDeployer.enabled={deploy},inferenceExtension.managedPicker.enabled={pickers}"
        )]));
        assert_eq!(
            find(&rendered, "ClusterRole", "infergate")["rules"],
            find(&printed, "ClusterRole", "infergate")["rules"],
            "ClusterRole rules (inference extension {inference}, Envoy deployer {deploy}, managed pickers {pickers})"
        );
        assert_eq!(
            find(&rendered, "Role", "infergate-controller")["rules"],
            find(&printed, "Role", "infergate-controller")["rules"],
            "the controller's namespaced Role rules"
        );
        // Bound to the controller's ServiceAccount, nothing more.
        let binding = find(&rendered, "ClusterRoleBinding", "infergate");
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "infergate", "namespace": "infergate-system"}])
        );
    }
}

#[test]
fn the_controller_runs_locked_down_and_is_told_its_settings() {
    let docs = documents(&template(&[
        "inferenceExtension.enabled=true",
        "controllerName=example.com/gw",
    ]));
    let deployment = find(&docs, "Deployment", "infergate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--enable-inference-extension"), "{args:?}");
    assert!(
        args.contains(&"--controller-name=example.com/gw"),
        "{args:?}"
    );
    // Pickers are managed by default with the inference extension, and
    // never without the Gateway deployer (its CA signs their certificates).
    assert!(args.contains(&"--manage-pickers"), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a.starts_with("--picker-image=infergate.local/infergate-epp:")),
        "{args:?}"
    );
    let without_deployer = documents(&template(&[
        "inferenceExtension.enabled=true",
        "gatewayDeployer.enabled=false",
    ]));
    let args = &find(&without_deployer, "Deployment", "infergate")["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert!(
        !args
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--manage-pickers"),
        "{args}"
    );
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in ["POD_NAME", "POD_NAMESPACE"] {
        assert!(env.contains(&name), "{name} from the downward API: {env:?}");
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        find(&docs, "GatewayClass", "infergate")["spec"]["controllerName"],
        "example.com/gw"
    );
    // One replica: no PodDisruptionBudget (it would block every drain).
    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let ha = documents(&template(&["replicas=2"]));
    assert_eq!(
        find(&ha, "PodDisruptionBudget", "infergate")["spec"]["minAvailable"],
        1
    );
}

/// The chart's crds/ folder holds every CRD of the repository's crds/
/// (Helm creates them on install, never deletes them), and nothing else:
/// the Gateway API bundle's ValidatingAdmissionPolicy is not a CRD.
#[test]
fn the_chart_carries_every_crd_of_the_repository() {
    let chart = chart().display().to_string();
    let (ok, out, err) = run_helm(&["show", "crds", &chart]);
    assert!(ok, "helm show crds:\n{err}");
    let docs = documents(&out);
    let mut names: Vec<&str> = docs
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut wanted = vec![];
    for dir in std::fs::read_dir(infergate_e2e::kube::crds_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            wanted.extend(
                documents(&text)
                    .iter()
                    .filter(|d| d["kind"] == "CustomResourceDefinition")
                    .map(|d| d["metadata"]["name"].as_str().unwrap().to_string()),
            );
        }
    }
    wanted.sort();
    assert_eq!(names, wanted);
    // Not among the templates: upgrades and uninstalls leave them alone.
    assert!(
        !documents(&template(&[]))
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition")
    );
}

#[test]
fn the_schema_refuses_bad_values_naming_them() {
    let chart = chart().display().to_string();
    for (set, named) in [
        ("logging.format=yaml", "/logging/format"),
        ("replicas=0", "/replicas"),
        ("inferenceExtension.enabeld=true", "enabeld"),
        ("controllerName=no-path", "/controllerName"),
        ("xds.port=70000", "/xds/port"),
        (
            "inferenceExtension.managedPicker.resources.memoryLimit=lots",
            "/inferenceExtension/managedPicker/resources/memoryLimit",
        ),
        (
            "inferenceExtension.managedPicker.refreshMetricsInterval=often",
            "/inferenceExtension/managedPicker/refreshMetricsInterval",
        ),
    ] {
        let (ok, _, err) = run_helm(&["template", "infergate", &chart, "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(
            err.contains(named),
            "--set {set}: the error does not name {named}:\n{err}"
        );
    }
}
