//! On a real node (scripts/cluster.sh: containerd, kubelet, kube-proxy):
//! images built here run as Pods, Services route from the host and from
//! Pods, and the endpoint picker, in a Pod, finds its pool's real Pods
//! through the API server's in-cluster Service and follows them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use infergate_e2e::cluster::{RealCluster, can_run, http_get};
use infergate_e2e::wait_until;

/// The test's cluster index: its own addresses, so a developer's cluster
/// (index 1) can stay up.
const INDEX: u32 = 9;

fn manifests(sim: &str, picker: &str, rbac: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: vllm, namespace: demo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: vllm}}}}
  template:
    metadata: {{labels: {{app: vllm}}}}
    spec:
      containers:
      - name: sim
        image: {sim}
        imagePullPolicy: Never
        args: [--bind, "0.0.0.0:8000", --name, "$(POD_NAME)", --model, sim-model]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports: [{{containerPort: 8000}}]
        readinessProbe:
          httpGet: {{path: /health, port: 8000}}
          periodSeconds: 1
        securityContext: {{runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: vllm, namespace: demo}}
spec:
  selector: {{app: vllm}}
  ports: [{{port: 80, targetPort: 8000}}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: vllm, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: vllm}}}}
  targetPorts: [{{number: 8000}}]
  endpointPickerRef: {{name: picker, port: {{number: 9002}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: picker, namespace: demo}}
---
{rbac}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: picker, namespace: demo}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: infergate-endpoint-picker}}
subjects: [{{kind: ServiceAccount, name: picker, namespace: demo}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: picker, namespace: demo}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: picker}}}}
  template:
    metadata: {{labels: {{app: picker}}}}
    spec:
      serviceAccountName: picker
      containers:
      - name: picker
        image: {picker}
        imagePullPolicy: Never
        args: [--pool-name, vllm, --pool-namespace, demo, --metrics-port, "9090"]
        ports: [{{containerPort: 9002}}, {{containerPort: 9090}}]
        securityContext: {{runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
"#
    )
}

/// The endpoints the picker reports fresh metrics for.
fn fresh_endpoints(picker: SocketAddr) -> BTreeSet<String> {
    let Some((200, text)) = http_get(picker, "/metrics") else {
        return BTreeSet::new();
    };
    text.lines()
        .filter(|l| l.starts_with("infergate_epp_endpoint_fresh{") && l.ends_with(" 1"))
        .filter_map(|l| {
            let start = l.find("endpoint=\"")? + "endpoint=\"".len();
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

/// The model servers' Pods that run and are not being deleted, as ip:port.
fn pod_ips(cluster: &RealCluster) -> BTreeSet<String> {
    let list: serde_json::Value = serde_json::from_str(
        &cluster.kubectl(&["get", "pods", "-n", "demo", "-l", "app=vllm", "-o", "json"]),
    )
    .expect("a Pod list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running")
        .filter_map(|p| p["status"]["podIP"].as_str().map(|ip| format!("{ip}:8000")))
        .collect()
}

#[test]
fn pods_services_and_the_picker_on_a_real_node() {
    if let Err(why) = can_run() {
        println!("SKIPPED pods_services_and_the_picker_on_a_real_node: {why}");
        return;
    }
    let cluster = RealCluster::up(INDEX);
    cluster.kubectl(&[
        "apply",
        "-f",
        &infergate_e2e::kube::crds_dir()
            .join("inference-v1.6.0/inference.networking.k8s.io_inferencepools.yaml")
            .display()
            .to_string(),
    ]);
    let images = cluster.load_images(&["infergate-sim", "infergate-epp"]);
    // The archives are valid for a registry too, as a standard client reads them.
    for (archive, reference) in &images {
        let crane = std::process::Command::new(infergate_e2e::kube::tools_dir().join("crane"))
            .args(["validate", "--tarball"])
            .arg(archive)
            .output()
            .expect("crane (scripts/kube-tools.sh --node builds it)");
        assert!(
            crane.status.success(),
            "crane validate refuses {reference}: {}{}",
            String::from_utf8_lossy(&crane.stdout),
            String::from_utf8_lossy(&crane.stderr)
        );
    }
    let image = |name: &str| {
        images
            .iter()
            .map(|(_, reference)| reference)
            .find(|r| r.contains(&format!("/{name}:")))
            .unwrap_or_else(|| panic!("no {name} image among {images:?}"))
            .clone()
    };
    let rbac = std::process::Command::new(infergate_e2e::infergate_binary())
        .args([
            "rbac",
            "--namespace",
            "demo",
            "--enable-inference-extension",
        ])
        .output()
        .expect("infergate rbac");
    let rbac = String::from_utf8(rbac.stdout).unwrap();
    // Only the picker's Role: the rest is the controller's.
    let picker_role = rbac
        .split("\n---\n")
        .find(|doc| doc.contains("name: infergate-endpoint-picker"))
        .expect("infergate rbac prints the picker's Role");
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/inferencepools.inference.networking.k8s.io",
        "--timeout=30s",
    ]);
    cluster.apply(&manifests(
        &image("infergate-sim"),
        &image("infergate-epp"),
        picker_role,
    ));
    for deployment in ["vllm", "picker"] {
        let rollout = std::process::Command::new(infergate_e2e::kube::tools_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "rollout",
                "status",
                "-n",
                "demo",
                &format!("deployment/{deployment}"),
                "--timeout=120s",
            ])
            .output()
            .unwrap();
        assert!(
            rollout.status.success(),
            "deployment {deployment} never became available:\n{}",
            cluster.diagnose("demo")
        );
    }

    // Pods answer on their IPs, from the host, across the node's bridge.
    let pods = pod_ips(&cluster);
    assert_eq!(pods.len(), 2, "{}", cluster.diagnose("demo"));
    for pod in &pods {
        let (status, body) = http_get(pod.parse().unwrap(), "/health").expect("a Pod answers");
        assert_eq!((status, body.trim()), (200, "ok"), "{pod}");
    }

    // The Service's ClusterIP, from the host: kube-proxy in the node.
    let cluster_ip = cluster.get("service", "demo", "vllm", "{.spec.clusterIP}");
    assert!(cluster_ip.starts_with("198.19."), "ClusterIP {cluster_ip}");
    let service: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || http_get(service, "/metrics")
            .is_some_and(
                |(status, body)| status == 200 && body.contains("vllm:")
            )),
        "the ClusterIP {service} does not answer from the host:\n{}",
        cluster.diagnose("demo")
    );

    // The picker, in a Pod, reached the API server through the `kubernetes`
    // Service with its ServiceAccount and found both model servers.
    let picker_ip = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        "demo",
        "-l",
        "app=picker",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let picker: SocketAddr = format!("{picker_ip}:9090").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || fresh_endpoints(picker) == pods),
        "the picker reports {:?}, the pool's Pods are {pods:?}:\n{}",
        fresh_endpoints(picker),
        cluster.diagnose("demo")
    );

    // A model server's Pod deleted: the Deployment replaces it, the picker follows.
    let victim = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        "demo",
        "-l",
        "app=vllm",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    cluster.kubectl(&["delete", "pod", "-n", "demo", &victim, "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = pod_ips(&cluster);
            now.len() == 2 && now != pods && fresh_endpoints(picker) == now
        }),
        "after deleting {victim}, the picker reports {:?} for Pods {:?}:\n{}",
        fresh_endpoints(picker),
        pod_ips(&cluster),
        cluster.diagnose("demo")
    );
}
