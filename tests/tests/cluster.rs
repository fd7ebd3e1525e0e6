//! On a real node (scripts/cluster.sh: containerd, kubelet, kube-proxy):
//! images built here run as Pods, Services route from the host and from
//! Pods, and the endpoint picker, in a Pod, finds its pool's real Pods
//! through the API server's in-cluster Service and follows them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use infergate_e2e::cluster::{HostState, RealCluster, http_get, http_request};
use infergate_e2e::{SteadyTraffic, complete, wait_until};

/// The tests share the test cluster's index and compare the host before
/// and after: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The picker's Role as `infergate rbac` prints it, for `namespace`.
fn picker_role(namespace: &str) -> String {
    let rbac = std::process::Command::new(infergate_e2e::infergate_binary())
        .args([
            "rbac",
            "--namespace",
            namespace,
            "--enable-inference-extension",
        ])
        .output()
        .expect("infergate rbac");
    String::from_utf8(rbac.stdout)
        .unwrap()
        .split("\n---\n")
        .find(|doc| doc.contains("name: infergate-endpoint-picker"))
        .expect("infergate rbac prints the picker's Role")
        .to_string()
}

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

/// The reference of image `name` among what `load_images` loaded.
fn image_reference(images: &[(std::path::PathBuf, String)], name: &str) -> String {
    images
        .iter()
        .map(|(_, reference)| reference)
        .find(|r| r.contains(&format!("/{name}:")))
        .unwrap_or_else(|| panic!("no {name} image among {images:?}"))
        .clone()
}

#[test]
fn pods_services_and_the_picker_on_a_real_node() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    let image = |name: &str| image_reference(&images, name);
    let picker_role = picker_role("demo");
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/inferencepools.inference.networking.k8s.io",
        "--timeout=30s",
    ]);
    cluster.apply(&manifests(
        &image("infergate-sim"),
        &image("infergate-epp"),
        &picker_role,
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
    cluster.down_and_check_host();
}

/// The Gateway's Envoy (started by the controller on this machine) routes
/// through an InferencePool to model servers in real Pods, by way of the
/// picker in its own Pod; a Pod that fails its readiness probe under steady
/// traffic stops getting requests, and no request fails.
#[test]
fn a_gateway_reaches_real_pods_through_the_picker_and_a_pod_failing_its_probe_is_drained() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = RealCluster::up(INDEX);
    let crds = infergate_e2e::kube::crds_dir();
    for dir in ["gateway-api-v1.6.1", "inference-v1.6.0"] {
        cluster.kubectl(&["apply", "-f", &crds.join(dir).display().to_string()]);
    }
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=30s",
    ]);
    let images = cluster.load_images(&["infergate-sim", "infergate-epp"]);
    let image = |name: &str| image_reference(&images, name);
    let listener = infergate_e2e::free_port();
    cluster.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: llm, namespace: default}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: llm}}}}
  template:
    metadata: {{labels: {{app: llm}}}}
    spec:
      containers:
      - name: sim
        image: {sim}
        imagePullPolicy: Never
        args: [--bind, "0.0.0.0:8000", --name, "$(POD_NAME)", --allow-health-toggle]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        readinessProbe:
          httpGet: {{path: /health, port: 8000}}
          periodSeconds: 1
          failureThreshold: 1
        # Deleted, the Pod keeps serving while the controller and the
        # picker take it out (they see its deletionTimestamp at once).
        lifecycle: {{preStop: {{sleep: {{seconds: 3}}}}}}
      terminationGracePeriodSeconds: 10
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: llm, namespace: default}}
spec:
  selector: {{matchLabels: {{app: llm}}}}
  targetPorts: [{{number: 8000}}]
  endpointPickerRef: {{name: llm-epp, port: {{number: 9002}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: llm-epp, namespace: default}}
spec:
  selector: {{app: llm-epp}}
  ports: [{{name: grpc, port: 9002, targetPort: 9002}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: llm-epp, namespace: default}}
---
{role}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: llm-epp, namespace: default}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: infergate-endpoint-picker}}
subjects: [{{kind: ServiceAccount, name: llm-epp, namespace: default}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: llm-epp, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: llm-epp}}}}
  template:
    metadata: {{labels: {{app: llm-epp}}}}
    spec:
      serviceAccountName: llm-epp
      containers:
      - name: picker
        image: {picker}
        imagePullPolicy: Never
        args: [--pool-name, llm, --pool-namespace, default]
---
{class}
---
{gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: llm-route, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
    backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: llm}}]
"#,
        sim = image("infergate-sim"),
        picker = image("infergate-epp"),
        role = picker_role("default"),
        class = infergate_e2e::kube::CLASS,
        gateway = infergate_e2e::kube::gateway(listener),
    ));
    for deployment in ["llm", "llm-epp"] {
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            "default",
            &format!("deployment/{deployment}"),
            "--timeout=120s",
        ]);
    }
    let work = infergate_e2e::TempDir::new("real-cluster");
    let controller = infergate_e2e::kube::Controller::start_in(
        &work.0,
        "real",
        &cluster.kubeconfig,
        &["--enable-inference-extension"],
    );
    assert!(
        wait_until(Duration::from_secs(60), || complete(
            listener,
            "/v1/completions",
            &[]
        )
        .is_some_and(|r| r.status == 200)),
        "no completion through the Gateway; controller log:\n{}\n{}",
        controller.log_text(),
        cluster.diagnose("default")
    );

    // Steady traffic from two threads; every request must succeed.
    let traffic = SteadyTraffic::start(listener, 2);
    let pods: BTreeSet<String> = cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "default",
            "-l",
            "app=llm",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || traffic.served_since(0) == pods),
        "not every Pod of the pool got traffic: {:?} of {pods:?}",
        traffic.served_since(0)
    );

    // One Pod starts failing its readiness probe: the kubelet marks it not
    // ready, the controller and the picker take it out; it keeps answering
    // what is already on its way.
    let victim = pods.iter().next().unwrap().clone();
    let victim_ip = cluster.get("pod", "default", &victim, "{.status.podIP}");
    let address: SocketAddr = format!("{victim_ip}:8000").parse().unwrap();
    let toggled = http_request(address, "POST", "/admin/health/fail");
    assert_eq!(
        toggled.map(|(s, _)| s),
        Some(200),
        "the simulator did not take the toggle"
    );
    assert!(
        wait_until(Duration::from_secs(20), || cluster.get(
            "pod",
            "default",
            &victim,
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ) == "False"),
        "the kubelet never marked {victim} not ready"
    );
    std::thread::sleep(Duration::from_secs(3));
    let mark = traffic.mark();
    std::thread::sleep(Duration::from_secs(3));
    let since = traffic.served_since(mark);
    assert!(
        !since.contains(&victim),
        "{victim} still served after it stopped being ready"
    );
    assert_eq!(since.len(), 2, "the other Pods serve: {since:?}");

    // It passes its probe again: back in the pool, it gets traffic again.
    let healed = http_request(address, "POST", "/admin/health/ok");
    assert_eq!(healed.map(|(s, _)| s), Some(200));
    let mark = traffic.mark();
    assert!(
        wait_until(Duration::from_secs(20), || traffic
            .served_since(mark)
            .contains(&victim)),
        "{victim} got no traffic after it was ready again"
    );

    // A Pod deleted under traffic: the Deployment replaces it, the
    // replacement gets traffic, the deleted one none once it is gone.
    let leaving = pods.iter().nth(1).unwrap().clone();
    cluster.kubectl(&["delete", "pod", "-n", "default", &leaving, "--wait=false"]);
    let current = || -> BTreeSet<String> {
        cluster
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "default",
                "-l",
                "app=llm",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = current();
            now.len() == 3 && !now.contains(&leaving)
        }),
        "{leaving} was not replaced: {:?}\n{}",
        current(),
        cluster.diagnose("default")
    );
    let replacement = current().difference(&pods).next().unwrap().clone();
    let mark = traffic.mark();
    assert!(
        wait_until(Duration::from_secs(30), || traffic
            .served_since(mark)
            .contains(&replacement)),
        "the replacement {replacement} got no traffic:\n{}",
        cluster.diagnose("default")
    );
    assert!(!traffic.served_since(mark).contains(&leaving));

    let (succeeded, failed) = traffic.finish();
    assert_eq!(
        failed, 0,
        "requests failed while Pods were drained, healed and replaced ({succeeded} succeeded)"
    );

    // The picker's Pod deleted: the pool fails closed until its Deployment
    // has a new one, then serves again through it.
    let picker_pod = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "app=llm-epp",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let started = std::time::Instant::now();
    cluster.kubectl(&[
        "delete",
        "pod",
        "-n",
        "default",
        &picker_pod,
        "--wait=false",
    ]);
    let new_picker = || {
        cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            "default",
            "-l",
            "app=llm-epp",
            "-o",
            "jsonpath={.items[?(@.status.phase==\"Running\")].metadata.name}",
        ])
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = new_picker();
            !now.is_empty() && !now.contains(&picker_pod)
        }),
        "no new picker Pod:\n{}",
        cluster.diagnose("default")
    );
    assert!(
        wait_until(Duration::from_secs(60), || complete(
            listener,
            "/v1/completions",
            &[]
        )
        .is_some_and(|r| r.status == 200)),
        "no completion through the new picker; controller log:\n{}\n{}",
        controller.log_text(),
        cluster.diagnose("default")
    );
    println!(
        "the pool served again {:.1} s after its picker's Pod was deleted",
        started.elapsed().as_secs_f64()
    );
    drop(controller);
    cluster.down_and_check_host();
}

/// The chart installed with `helm install`: the controller runs in a Pod
/// from its image, writes statuses, and deploys an Envoy for the Gateway
/// (Deployment, Service, bootstrap) that routes to model servers in Pods;
/// the Gateway's address is its Service's and it is Programmed once the
/// Envoy is ready. The deployer repairs drift and removes the data plane
/// with its Gateway. Rolling the Envoys and `helm upgrade` (the controller
/// rolls) lose no request under steady traffic; `helm uninstall` leaves
/// nothing of ours.
#[test]
fn the_chart_deploys_envoys_upgrades_under_traffic_and_uninstalls_leaving_nothing() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = RealCluster::up(INDEX);
    let images = cluster.load_images(&["infergate", "envoy", "infergate-sim"]);
    let image = |name: &str| image_reference(&images, name);
    install_chart(&cluster, &images, &[]);
    let chart = chart_path();
    let names = |namespace: &str, selector: &str| -> BTreeSet<String> {
        cluster
            .kubectl(&[
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let controller_pods = || names("infergate-system", "app.kubernetes.io/instance=infergate");
    let first = controller_pods();
    assert_eq!(first.len(), 1, "{}", cluster.diagnose("infergate-system"));
    let first = first.into_iter().next().unwrap();

    // Model servers, a Gateway on port 80 and a route to them.
    cluster.apply(&format!(
        r#"
{deployment}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8000}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: infergate
  infrastructure:
    labels: {{team: search}}
    annotations: {{example.com/owner: tests}}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"#,
        deployment = sim_deployment("web", "default", 2, &image("infergate-sim"), &[]),
    ));
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);

    // The data plane: made, owned by the Gateway, Programmed once ready,
    // the Gateway's address is the Service's.
    assert!(
        wait_until(Duration::from_secs(60), || {
            cluster.get_lossy("deployment", "default", "infergate-gw", "{.metadata.name}")
                == "infergate-gw"
        }),
        "the controller made no Envoy Deployment for the Gateway:\n{}\n{}",
        cluster.diagnose("infergate-system"),
        cluster.diagnose("default")
    );
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/infergate-gw",
        "--timeout=120s",
    ]);
    let gateway_uid = cluster.get("gateway", "default", "gw", "{.metadata.uid}");
    for kind in ["deployment", "service", "configmap"] {
        assert_eq!(
            cluster.get(
                kind,
                "default",
                "infergate-gw",
                "{.metadata.ownerReferences[0].uid}"
            ),
            gateway_uid,
            "the Gateway owns the {kind}"
        );
    }
    // The Gateway's spec.infrastructure labels and annotations are on what
    // was made for it, Pods included.
    for (kind, name) in [("deployment", "infergate-gw"), ("service", "infergate-gw")] {
        assert_eq!(
            cluster.get(kind, "default", name, "{.metadata.labels.team}"),
            "search"
        );
        assert_eq!(
            cluster.get(
                kind,
                "default",
                name,
                "{.metadata.annotations.example\\.com/owner}"
            ),
            "tests"
        );
    }
    assert_eq!(
        cluster.get(
            "deployment",
            "default",
            "infergate-gw",
            "{.spec.template.metadata.labels.team}"
        ),
        "search"
    );
    let service_ip = cluster.get("service", "default", "infergate-gw", "{.spec.clusterIP}");
    let programmed = || {
        cluster.get(
            "gateway",
            "default",
            "gw",
            "{.status.conditions[?(@.type==\"Programmed\")].status}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || programmed() == "True"
            && cluster.get(
                "gateway",
                "default",
                "gw",
                "{.status.addresses[0].value}"
            ) == service_ip),
        "the Gateway is not Programmed at its Service's address {service_ip}: {}\n{}",
        cluster.get("gateway", "default", "gw", "{.status}"),
        cluster.diagnose("infergate-system")
    );
    assert_eq!(
        cluster.get(
            "lease",
            "infergate-system",
            "infergate",
            "{.spec.holderIdentity}"
        ),
        first,
        "the controller Pod holds the chart's Lease"
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            infergate_e2e::complete_at(&service_ip, 80, "/v1/completions")
                .is_some_and(|r| r.status == 200)
        }),
        "no completion through the deployed Envoy at {service_ip}:80:\n{}",
        cluster.diagnose("default")
    );

    // xDS is closed to clients without a certificate of the controller's CA:
    // an Envoy on the host, bootstrapped to the controller's Service in
    // cleartext as this Gateway's node, gets no configuration.
    let xds = format!(
        "{}:18000",
        cluster.get(
            "service",
            "infergate-system",
            "infergate",
            "{.spec.clusterIP}"
        )
    );
    let admin_port = infergate_e2e::free_port();
    let bootstrap = std::process::Command::new(infergate_e2e::infergate_binary())
        .args(["bootstrap", "--node", "default/gw", "--xds-address", &xds])
        .args(["--admin-port", &admin_port.to_string()])
        .output()
        .expect("infergate bootstrap");
    assert!(bootstrap.status.success());
    let work = infergate_e2e::TempDir::new("intruder");
    let bootstrap_file = work.0.join("bootstrap.yaml");
    std::fs::write(&bootstrap_file, &bootstrap.stdout).unwrap();
    let intruder = infergate_e2e::Process::start(
        &infergate_e2e::envoy_binary(),
        &[
            "-c".into(),
            bootstrap_file.display().to_string(),
            "--disable-hot-restart".into(),
        ],
        work.0.join("envoy.log"),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || http_get(admin, "/ready")
            .is_some()),
        "the cleartext Envoy did not start: {}",
        infergate_e2e::kube::tail(&work.0.join("envoy.log"), 20)
    );
    std::thread::sleep(Duration::from_secs(8));
    // (Envoy's admin answers in chunks; the lines are what count.)
    let stats = http_get(admin, "/stats?filter=control_plane.connected_state")
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        stats
            .lines()
            .any(|l| l == "control_plane.connected_state: 0"),
        "a cleartext client connected to xDS: {stats}"
    );
    let listeners = http_get(admin, "/listeners?format=json")
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        !listeners.contains("\"name\""),
        "a client without a certificate got listeners: {listeners}"
    );
    drop(intruder);

    // Drift: a deleted Deployment comes back, a scaled one is scaled back.
    let deployment_uid = cluster.get("deployment", "default", "infergate-gw", "{.metadata.uid}");
    cluster.kubectl(&["delete", "deployment", "infergate-gw", "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let uid = cluster.get_lossy("deployment", "default", "infergate-gw", "{.metadata.uid}");
            !uid.is_empty() && uid != deployment_uid
        }),
        "the deleted Envoy Deployment did not come back:\n{}",
        cluster.diagnose("infergate-system")
    );
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/infergate-gw",
        "--timeout=120s",
    ]);
    cluster.kubectl(&["scale", "deployment", "infergate-gw", "--replicas=3"]);
    assert!(
        wait_until(Duration::from_secs(30), || cluster.get(
            "deployment",
            "default",
            "infergate-gw",
            "{.spec.replicas}"
        ) == "1"),
        "the scaled Envoy Deployment was not scaled back"
    );
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/infergate-gw",
        "--timeout=120s",
    ]);

    // Per-Gateway parameters (spec.infrastructure.parametersRef to a
    // ConfigMap): replicas from it; a bad key makes the Gateway not
    // Accepted (InvalidParameters) and changes nothing deployed; with
    // autoscaling the replicas are left alone.
    let replicas = || cluster.get("deployment", "default", "infergate-gw", "{.spec.replicas}");
    let parameters = |data: &str| {
        cluster.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gw-envoy, namespace: default}}\ndata: {data}\n"
        ))
    };
    parameters(r#"{replicas: "2"}"#);
    cluster.kubectl(&[
        "patch",
        "gateway",
        "gw",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"infrastructure":{"parametersRef":{"group":"","kind":"ConfigMap","name":"gw-envoy"}}}}"#,
    ]);
    assert!(
        wait_until(Duration::from_secs(30), || replicas() == "2"),
        "the Gateway's parameters did not set its Envoy replicas: {}",
        replicas()
    );
    parameters(r#"{replicas: "3", replica: "1"}"#);
    let accepted = || {
        cluster.get(
            "gateway",
            "default",
            "gw",
            "{.status.conditions[?(@.type==\"Accepted\")]}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || accepted()
            .contains("InvalidParameters")),
        "a misspelt parameter was not reported: {}",
        accepted()
    );
    assert!(accepted().contains("key replica:"), "{}", accepted());
    assert_eq!(replicas(), "2", "invalid parameters changed the Envoys");
    parameters(r#"{autoscaling: "true"}"#);
    assert!(
        wait_until(Duration::from_secs(30), || accepted().contains("\"True\"")),
        "valid parameters again: {}",
        accepted()
    );
    cluster.kubectl(&["scale", "deployment", "infergate-gw", "--replicas=3"]);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        replicas(),
        "3",
        "with autoscaling the deployer must leave replicas alone"
    );
    cluster.kubectl(&[
        "patch",
        "gateway",
        "gw",
        "-n",
        "default",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/infrastructure/parametersRef"}]"#,
    ]);
    assert!(
        wait_until(Duration::from_secs(30), || replicas() == "1"),
        "without parameters the flags' replicas are back: {}",
        replicas()
    );
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/infergate-gw",
        "--timeout=120s",
    ]);

    // Under steady traffic through the Gateway's Service: the Envoys roll,
    // then the controller rolls (helm upgrade changing a value).
    // Clients on kept connections too: a terminating Envoy drains them
    // (`connection: close`, then they reconnect) instead of dropping them.
    let kept = SteadyTraffic::start_keep_alive_at(&service_ip, 80, 2);
    let traffic = SteadyTraffic::start_at(&service_ip, 80, 2);
    let mark = traffic.mark();
    assert!(
        wait_until(Duration::from_secs(20), || traffic.served_since(mark).len()
            == 2),
        "both model servers serve through the Gateway"
    );
    traffic.note("rolling the Envoys");
    cluster.kubectl(&["rollout", "restart", "deployment/infergate-gw"]);
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/infergate-gw",
        "--timeout=120s",
    ]);
    traffic.note("the Envoys rolled; helm upgrade (the controller rolls)");
    cluster.helm(&[
        "upgrade",
        "infergate",
        &chart,
        "-n",
        "infergate-system",
        "--reuse-values",
        "--set",
        "logging.format=json",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = controller_pods();
            now.len() == 1 && !now.contains(&first)
        }),
        "the controller did not roll: {:?}",
        controller_pods()
    );
    traffic.note("the controller rolled");
    let second = controller_pods().into_iter().next().unwrap();
    let log = cluster.kubectl(&["logs", "-n", "infergate-system", &second]);
    assert!(
        log.lines().next().is_some_and(|l| l.starts_with('{')),
        "the new controller does not log JSON:\n{log}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (succeeded, failed) = traffic.finish();
    let (kept_succeeded, kept_failed) = kept.finish();
    assert!(succeeded > 0 && kept_succeeded > 0);
    assert_eq!(
        (failed, kept_failed),
        (0, 0),
        "requests failed while the Envoys and the controller rolled ({succeeded} succeeded on new connections, {kept_succeeded} on kept ones)"
    );
    // The Envoys follow the new controller: a route deleted now is gone.
    cluster.kubectl(&["delete", "httproute", "web", "-n", "default"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            infergate_e2e::complete_at(&service_ip, 80, "/v1/completions")
                .is_some_and(|r| r.status == 404)
        }),
        "the Envoys still route after the route was deleted: the new controller does not configure them"
    );

    // The Gateway deleted: its data plane goes with it.
    cluster.kubectl(&["delete", "gateway", "gw", "-n", "default"]);
    assert!(
        wait_until(Duration::from_secs(60), || cluster
            .kubectl(&[
                "get",
                "deployments,services,configmaps",
                "-n",
                "default",
                "-l",
                "app.kubernetes.io/managed-by=infergate",
                "-o",
                "name"
            ])
            .trim()
            .is_empty()),
        "the Gateway's Envoy Deployment, Service or ConfigMap outlived it"
    );

    // helm uninstall: nothing of ours is left.
    cluster.helm(&["uninstall", "infergate", "-n", "infergate-system", "--wait"]);
    let left = || -> Vec<String> {
        cluster
            .kubectl(&[
                "get",
                "all,serviceaccounts,roles,rolebindings,leases,configmaps,secrets,poddisruptionbudgets",
                "-n",
                "infergate-system",
                "-o",
                "name",
            ])
            .lines()
            // Every namespace has these two; they are Kubernetes', not ours.
            .filter(|l| *l != "serviceaccount/default" && *l != "configmap/kube-root-ca.crt")
            .map(str::to_string)
            .collect()
    };
    // The controller Pod terminates gracefully after its Deployment is gone.
    assert!(
        wait_until(Duration::from_secs(60), || left().is_empty()),
        "left after uninstall: {:?}",
        left()
    );
    let cluster_wide = cluster.kubectl(&[
        "get",
        "clusterroles,clusterrolebindings,gatewayclasses",
        "-l",
        "app.kubernetes.io/instance=infergate",
        "-o",
        "name",
    ]);
    assert_eq!(cluster_wide.trim(), "", "left after uninstall");
    // The CRDs stay (deleting one deletes every object of its kind).
    cluster.kubectl(&["get", "crd", "httproutes.gateway.networking.k8s.io"]);
    cluster.down_and_check_host();
}

/// The check that `down` leaves the host as it found it can fail: a link
/// added meanwhile is reported.
#[test]
fn the_host_check_sees_a_change() {
    infergate_e2e::netns::require_root("adding a link");
    // Not while a cluster test compares the host before and after.
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostState::now();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    run(&[
        "link",
        "add",
        "igtcheck",
        "type",
        "veth",
        "peer",
        "name",
        "igtcheck2",
    ]);
    let during = HostState::now();
    run(&["link", "del", "igtcheck"]);
    let changed = before.differences(&during);
    assert!(
        changed.iter().any(|c| c == "ip link: +igtcheck"),
        "{changed:?}"
    );
    assert_eq!(before.differences(&HostState::now()), Vec::<String>::new());
}

/// A Deployment of `replicas` simulated model servers labelled
/// `app: <name>`, each answering as its Pod, ready when /health says so.
/// A Deployment of `replicas` simulators `name`, each named after its Pod,
/// with `args` besides (`--model`, say).
fn sim_deployment(
    name: &str,
    namespace: &str,
    replicas: u32,
    image: &str,
    args: &[&str],
) -> String {
    let args: String = args.iter().map(|a| format!(", {a:?}")).collect();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: sim
        image: {image}
        imagePullPolicy: Never
        args: [--bind, "0.0.0.0:8000", --name, "$(POD_NAME)"{args}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        readinessProbe:
          httpGet: {{path: /health, port: 8000}}
          periodSeconds: 1
"#
    )
}

/// `helm install` of the chart with the images loaded into the cluster and
/// `sets` (more `--set` values); waits for the controller.
fn install_chart(cluster: &RealCluster, images: &[(std::path::PathBuf, String)], sets: &[&str]) {
    let split = |name: &str| {
        let reference = image_reference(images, name);
        let (repository, tag) = reference.rsplit_once(':').unwrap();
        (repository.to_string(), tag.to_string())
    };
    let (repository, tag) = split("infergate");
    let (envoy_repository, envoy_tag) = split("envoy");
    let chart = chart_path();
    let mut args = vec![
        "install".to_string(),
        "infergate".into(),
        chart,
        "-n".into(),
        "infergate-system".into(),
        "--create-namespace".into(),
        "--set".into(),
        format!("image.repository={repository},image.tag={tag},image.pullPolicy=Never"),
        "--set".into(),
        format!(
            "gatewayDeployer.envoy.image.repository={envoy_repository},gatewayDeployer.envoy.image.tag={envoy_tag},gatewayDeployer.envoy.image.pullPolicy=Never"
        ),
    ];
    for set in sets {
        args.push("--set".into());
        args.push(set.to_string());
    }
    args.extend(["--wait", "--timeout", "180s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let install = cluster.helm(&args);
    assert!(install.contains("STATUS: deployed"), "{install}");
}

/// The test cluster with infergate installed by its chart, the inference
/// extension on and the pickers managed (their image loaded too).
fn with_managed_pickers() -> (RealCluster, Vec<(std::path::PathBuf, String)>) {
    let cluster = RealCluster::up(INDEX);
    let images = cluster.load_images(&["infergate", "envoy", "infergate-sim", "infergate-epp"]);
    let epp = image_reference(&images, "infergate-epp");
    let (epp_repository, epp_tag) = epp.rsplit_once(':').unwrap();
    install_chart(
        &cluster,
        &images,
        &[
            "inferenceExtension.enabled=true",
            &format!(
                "inferenceExtension.managedPicker.image.repository={epp_repository},inferenceExtension.managedPicker.image.tag={epp_tag},inferenceExtension.managedPicker.image.pullPolicy=Never"
            ),
        ],
    );
    (cluster, images)
}

fn chart_path() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/infergate")
        .display()
        .to_string()
}

/// The managed endpoint picker: a pool without endpointPickerRef gets a
/// picker deployed by the controller (owned by the pool, confined to its
/// namespace by RBAC, serving a certificate of the controller's CA), and
/// requests go through it. Envoy verifies that certificate: a picker
/// serving another one gets no request (fail-close 500) until the deployer
/// makes it anew. A pool's annotations override its picker's settings, a
/// bad one is named in an Event. No route of ours to the pool: no picker;
/// the pool deleted: its picker goes with it.
#[test]
fn the_managed_picker_is_deployed_per_pool_verified_confined_and_removed_with_it() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (cluster, images) = with_managed_pickers();
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llm, namespace: llm}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: vllm}]
"#;
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: llm}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: elsewhere}}
---
{deployment}---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: vllm, namespace: llm}}
spec:
  selector: {{matchLabels: {{app: vllm}}}}
  targetPorts: [{{number: 8000}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: llm}}
spec:
  gatewayClassName: infergate
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
{route}"#,
        deployment = sim_deployment(
            "vllm",
            "llm",
            2,
            &image_reference(&images, "infergate-sim"),
            &[]
        ),
    ));
    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/vllm",
        "-n",
        "llm",
        "--timeout=120s",
    ]);

    // Made, owned by the pool, ready.
    let picker = "infergate-epp-vllm";
    assert!(
        wait_until(Duration::from_secs(60), || {
            cluster.get_lossy("deployment", "llm", picker, "{.metadata.name}") == picker
        }),
        "no picker Deployment for the pool:\n{}\n{}",
        cluster.diagnose("infergate-system"),
        cluster.diagnose("llm")
    );
    cluster.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{picker}"),
        "-n",
        "llm",
        "--timeout=120s",
    ]);
    let pool_uid = cluster.get("inferencepool", "llm", "vllm", "{.metadata.uid}");
    for kind in [
        "deployment",
        "service",
        "serviceaccount",
        "role",
        "rolebinding",
        "secret",
    ] {
        assert_eq!(
            cluster.get(kind, "llm", picker, "{.metadata.ownerReferences[0].uid}"),
            pool_uid,
            "the pool owns the picker's {kind}"
        );
    }
    assert_eq!(
        cluster.get(
            "service",
            "llm",
            picker,
            "{.spec.ports[?(@.name==\"grpc\")].appProtocol}"
        ),
        "http2"
    );
    // How many objects of these kinds the pool's picker has.
    let picker_objects = |kinds: &str| {
        cluster
            .kubectl(&[
                "get",
                kinds,
                "-n",
                "llm",
                "-l",
                "app.kubernetes.io/component=endpoint-picker",
                "-o",
                "name",
            ])
            .lines()
            .count()
    };
    // Made once: one certificate, one rollout (a second would mean the
    // deployer took its own Deployment for missing).
    assert_eq!(
        picker_objects("replicasets"),
        1,
        "the new picker was rolled twice"
    );
    // Confined: the picker's ServiceAccount reads its namespace's Pods and
    // pools, nothing elsewhere, and writes nothing.
    let user = format!("system:serviceaccount:llm:{picker}");
    assert!(cluster.can_i(&user, "list", "pods", "llm"));
    assert!(cluster.can_i(
        &user,
        "watch",
        "inferencepools.inference.networking.k8s.io",
        "llm"
    ));
    assert!(
        !cluster.can_i(&user, "list", "pods", "elsewhere"),
        "the picker may read Pods of another namespace"
    );
    assert!(!cluster.can_i(&user, "get", "secrets", "llm"));
    assert!(!cluster.can_i(&user, "patch", "pods", "llm"));

    // Requests go through it.
    assert!(
        wait_until(Duration::from_secs(60), || cluster.get(
            "gateway",
            "llm",
            "gw",
            "{.status.conditions[?(@.type==\"Programmed\")].status}"
        ) == "True"),
        "the Gateway is not Programmed: {}",
        cluster.diagnose("llm")
    );
    let gateway_ip = cluster.get("gateway", "llm", "gw", "{.status.addresses[0].value}");
    // What the last failed completion got, for the failure messages.
    let last_failure = std::cell::RefCell::new(String::from("none yet"));
    let served = || {
        let response = infergate_e2e::complete_at(&gateway_ip, 80, "/v1/completions");
        let server = response
            .as_ref()
            .filter(|r| r.status == 200)
            .and_then(|r| r.header("x-served-by").map(str::to_string));
        if server.is_none() {
            *last_failure.borrow_mut() = match response {
                Some(r) => format!("{} {:?} {}", r.status, r.headers, r.body),
                None => "no response".to_string(),
            };
        }
        server
    };
    assert!(
        wait_until(Duration::from_secs(60), || served().is_some()),
        "no completion through the managed picker (last: {}): {}\n{}\n{}",
        last_failure.borrow(),
        cluster.get("inferencepool", "llm", "vllm", "{.status}"),
        cluster.diagnose("llm"),
        cluster.diagnose("infergate-system")
    );
    let resolved = cluster.get(
        "inferencepool",
        "llm",
        "vllm",
        "{.status.parents[0].conditions[?(@.type==\"ResolvedRefs\")].message}",
    );
    assert!(resolved.contains(picker), "{resolved}");
    let picker_ip = cluster.get("service", "llm", picker, "{.spec.clusterIP}");
    let picks = || -> u64 {
        http_get(format!("{picker_ip}:9090").parse().unwrap(), "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("infergate_epp_picks_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            })
            .unwrap_or(0)
    };
    let before = picks();
    for _ in 0..5 {
        assert!(served().is_some(), "a completion failed");
    }
    assert!(
        picks() >= before + 5,
        "the picker did not pick the requests: {before} -> {}",
        picks()
    );

    // Envoy verifies the picker's certificate: one of another CA, for the
    // same names, is refused (the pool is fail-close).
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec![format!("{picker}.llm.svc"), format!("{picker}.llm")])
            .unwrap();
    let forged = params.self_signed(&key).unwrap();
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {picker}, namespace: llm}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        forged.pem(),
        key.serialize_pem()
    ));
    cluster.kubectl(&[
        "rollout",
        "restart",
        &format!("deployment/{picker}"),
        "-n",
        "llm",
    ]);
    cluster.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{picker}"),
        "-n",
        "llm",
        "--timeout=120s",
    ]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            infergate_e2e::complete_at(&gateway_ip, 80, "/v1/completions")
                .is_some_and(|r| r.status == 500)
        }),
        "Envoy still sends requests through a picker whose certificate is not of the controller's CA"
    );
    // Deleted, the deployer makes it anew with a certificate of its own.
    cluster.kubectl(&["delete", "deployment", picker, "-n", "llm", "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(90), || served().is_some()),
        "the picker made anew does not serve (last: {}): {}\n{}",
        last_failure.borrow(),
        cluster.diagnose("llm"),
        cluster.diagnose("infergate-system")
    );

    // A pool's annotations override its picker's settings; a bad one is
    // named in a Warning Event on the pool and ignored.
    cluster.kubectl(&[
        "annotate",
        "inferencepool",
        "vllm",
        "-n",
        "llm",
        "picker.infergate.dev/replicas=2",
        "picker.infergate.dev/memory-limit=lots",
    ]);
    assert!(
        wait_until(Duration::from_secs(30), || cluster.get(
            "deployment",
            "llm",
            picker,
            "{.spec.replicas}"
        ) == "2"),
        "the replicas annotation was not applied"
    );
    assert_eq!(
        cluster.get(
            "deployment",
            "llm",
            picker,
            "{.spec.template.spec.containers[0].resources.limits.memory}"
        ),
        "512Mi",
        "a bad annotation must not change the picker"
    );
    assert!(
        wait_until(Duration::from_secs(30), || cluster
            .kubectl(&[
                "get",
                "events",
                "-n",
                "llm",
                "--field-selector",
                "reason=InvalidPickerAnnotation",
                "-o",
                "jsonpath={.items[*].note}{.items[*].message}"
            ])
            .contains("picker.infergate.dev/memory-limit")),
        "no Event names the bad annotation: {}",
        cluster.kubectl(&["get", "events", "-n", "llm"])
    );

    // No route of ours to the pool: no picker. Back with the route.
    let ours = || picker_objects("deployments,services,serviceaccounts,roles,rolebindings,secrets");
    cluster.kubectl(&["delete", "httproute", "llm", "-n", "llm"]);
    assert!(
        wait_until(Duration::from_secs(60), || ours() == 0),
        "the picker outlived the last route to its pool: {}",
        cluster.diagnose("llm")
    );
    cluster.apply(route);
    assert!(
        wait_until(Duration::from_secs(60), || ours() == 6),
        "the picker did not come back with the route"
    );
    // The pool deleted: the garbage collector takes its picker.
    cluster.kubectl(&["delete", "inferencepool", "vllm", "-n", "llm"]);
    assert!(
        wait_until(Duration::from_secs(60), || ours() == 0),
        "the picker outlived its pool: {}",
        cluster.diagnose("llm")
    );

    cluster.helm(&["uninstall", "infergate", "-n", "infergate-system", "--wait"]);
    cluster.down_and_check_host();
}

/// Two models behind one Gateway on the real cluster, installed by the
/// chart: Deployments of simulators serving llama-3-70b (with LoRA
/// adapters) and qwen-2.5, an InferencePool over each with the picker the
/// controller deploys, and an HTTPRoute by model. The OpenAI client gets
/// each model from its own pool only, through the Gateway's Envoy, by every
/// API (the same checks as the standalone test); a public name is served
/// under another by an InferenceModelRewrite, which is Accepted.
#[test]
fn two_models_behind_one_gateway_each_reach_only_their_pool() {
    use infergate_e2e::models::{LLAMA, LLAMA_ADAPTERS, QWEN};
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (cluster, images) = with_managed_pickers();
    let sim = image_reference(&images, "infergate-sim");
    let pool = |name: &str| {
        format!(
            "apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {name}, namespace: models}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  targetPorts: [{{number: 8000}}]
---
"
        )
    };
    let rule = |kind: &str, model: &str, pool: &str| {
        format!(
            "  - matches:
    - path: {{type: PathPrefix, value: /v1}}
      headers: [{{type: {kind}, name: X-Gateway-Model-Name, value: \"{model}\"}}]
    backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: {pool}}}]
"
        )
    };
    cluster.apply(&format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: models}}
---
{llama}---
{qwen}---
{llama_pool}{qwen_pool}apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {{name: assistant, namespace: models}}
spec:
  poolRef: {{name: llama}}
  rules:
  - matches: [{{model: {{value: assistant}}}}]
    targets: [{{modelRewrite: {LLAMA}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: models}}
spec:
  gatewayClassName: infergate
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: llm, namespace: models}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
{llama_rule}{adapters_rule}{qwen_rule}{assistant_rule}",
        llama = sim_deployment(
            "llama",
            "models",
            2,
            &sim,
            &["--model", LLAMA, "--lora", LLAMA_ADAPTERS]
        ),
        qwen = sim_deployment("qwen", "models", 1, &sim, &["--model", QWEN]),
        llama_pool = pool("llama"),
        qwen_pool = pool("qwen"),
        llama_rule = rule("Exact", LLAMA, "llama"),
        adapters_rule = rule("RegularExpression", "llama-3-70b-.*-lora", "llama"),
        qwen_rule = rule("Exact", QWEN, "qwen"),
        assistant_rule = rule("Exact", "assistant", "llama"),
    ));
    for deployment in ["llama", "qwen", "infergate-epp-llama", "infergate-epp-qwen"] {
        assert!(
            wait_until(Duration::from_secs(90), || cluster.get_lossy(
                "deployment",
                "models",
                deployment,
                "{.status.readyReplicas}"
            ) == cluster.get_lossy(
                "deployment",
                "models",
                deployment,
                "{.spec.replicas}"
            ) && !cluster
                .get_lossy("deployment", "models", deployment, "{.spec.replicas}")
                .is_empty()),
            "{deployment} is not ready:\n{}\n{}",
            cluster.diagnose("models"),
            cluster.diagnose("infergate-system")
        );
    }
    assert!(
        wait_until(Duration::from_secs(60), || cluster.get(
            "gateway",
            "models",
            "gw",
            "{.status.conditions[?(@.type==\"Programmed\")].status}"
        ) == "True"),
        "the Gateway is not Programmed: {}",
        cluster.diagnose("models")
    );
    let gateway_ip = cluster.get("gateway", "models", "gw", "{.status.addresses[0].value}");
    let body = |model: &str| format!(r#"{{"model":"{model}","prompt":"hi","max_tokens":1}}"#);
    for model in [LLAMA, QWEN] {
        assert!(
            wait_until(Duration::from_secs(60), || {
                infergate_e2e::request_at(
                    &gateway_ip,
                    80,
                    "example.com",
                    "POST",
                    "/v1/completions",
                    &[],
                    body(model).as_bytes(),
                )
                .is_some_and(|r| r.status == 200)
            }),
            "{model} is not served through the Gateway: {}\n{}",
            cluster.diagnose("models"),
            cluster.diagnose("infergate-system")
        );
    }
    infergate_e2e::models::check_openai_client(&format!("{gateway_ip}:80"), &["assistant"], || {
        format!(
            "{}\n{}",
            cluster.diagnose("models"),
            cluster.diagnose("infergate-system")
        )
    });
    // A public name served under another by the managed picker, and named
    // back in the answer; the rewrite is Accepted.
    let response = infergate_e2e::request_at(
        &gateway_ip,
        80,
        "example.com",
        "POST",
        "/v1/completions",
        &[],
        body("assistant").as_bytes(),
    )
    .expect("an answer");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response.body.contains(r#""model":"assistant""#),
        "{}",
        response.body
    );
    assert!(
        response
            .header("x-served-by")
            .unwrap()
            .starts_with("llama-")
    );
    assert!(
        wait_until(Duration::from_secs(30), || cluster.get(
            "inferencemodelrewrite",
            "models",
            "assistant",
            "{.status.conditions[?(@.type==\"Accepted\")].status}"
        ) == "True"),
        "the rewrite is not Accepted: {}",
        cluster.get("inferencemodelrewrite", "models", "assistant", "{.status}")
    );

    cluster.helm(&["uninstall", "infergate", "-n", "infergate-system", "--wait"]);
    cluster.down_and_check_host();
}
