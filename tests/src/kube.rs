//! A real Kubernetes control plane for tests: etcd and kube-apiserver
//! (built by scripts/kube-tools.sh) in a network namespace of the test's own
//! (`crate::netns`), TLS with a CA made here, static tokens for an admin, the
//! controller and the picker. No kubelet and no controller-manager: tests
//! create Pods and EndpointSlices themselves and set Pod status the way a
//! kubelet would. Servers behind Services, pickers and simulated Pods run in
//! the same namespace, each Pod on an address of its own; the controller and
//! its Envoys run on this machine and reach them through the veth pair.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Discovery;
use serde_json::json;

use crate::netns::Netns;
use crate::{NamedServer, Process, TempDir, free_port};

/// Where scripts/kube-tools.sh put kube-apiserver and etcd.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("INFERGATE_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let out = std::process::Command::new(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-tools.sh"),
            )
            .arg("--print")
            .output()
            .expect("running scripts/kube-tools.sh --print");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
    for binary in ["kube-apiserver", "etcd"] {
        assert!(
            dir.join(binary).exists(),
            "{} is missing: run scripts/kube-tools.sh (scripts/setup.sh does); Kubernetes tests do not skip",
            dir.join(binary).display()
        );
    }
    dir
}

/// The upstream CRDs and conformance manifests (tests/kube).
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kube")
}

/// The CRDs the project ships (`crds/` at the top of the repository).
pub fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

/// Users of the test cluster, each with its own kubeconfig.
pub const ADMIN: &str = "admin";
pub const CONTROLLER: &str = "infergate-controller";
pub const PICKER: &str = "infergate-picker";

pub struct Cluster {
    pub dir: TempDir,
    etcd: Process,
    apiserver: Option<Process>,
    apiserver_args: Vec<String>,
    pub port: u16,
    ca_pem: String,
    /// Where the control plane, pickers and simulated Pods run.
    pub netns: Netns,
}

impl Cluster {
    /// Start etcd and kube-apiserver; returns once the API server is ready
    /// and the Gateway API and Inference Extension CRDs are established
    /// (`with_pool_crd: false` leaves out the Inference Extension's CRDs).
    pub async fn start(tag: &str, with_pool_crd: bool) -> Cluster {
        let tools = tools_dir();
        let netns = Netns::create();
        let ip = netns.ip();
        let dir = TempDir::new(&format!("kube-{tag}"));
        let root = dir.0.clone();

        // A CA, and a serving certificate it signs.
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "infergate test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
        let serving_key = rcgen::KeyPair::generate().expect("serving key");
        let mut serving_params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .expect("serving params");
        serving_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
        let serving = serving_params
            .signed_by(&serving_key, &ca_issuer)
            .expect("serving certificate");
        let sa_key = rcgen::KeyPair::generate().expect("service account key");
        let write = |name: &str, text: &str| {
            std::fs::write(root.join(name), text).expect("writing a cluster file");
        };
        write("ca.crt", &ca.pem());
        write("apiserver.crt", &serving.pem());
        write("apiserver.key", &serving_key.serialize_pem());
        write("sa.key", &sa_key.serialize_pem());
        write("sa.pub", &sa_key.public_key_pem());
        write(
            "tokens.csv",
            &format!(
                "admin-token,{ADMIN},1,\"system:masters\"\n\
                 controller-token,{CONTROLLER},2\n\
                 picker-token,{PICKER},3\n"
            ),
        );

        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd = Process::start_in(
            Some(&netns),
            &tools.join("etcd"),
            &[
                "--data-dir".into(),
                root.join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{ip}:{etcd_port}"),
                "--advertise-client-urls".into(),
                format!("http://{ip}:{etcd_port}"),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster".into(),
                format!("default=http://127.0.0.1:{peer_port}"),
                "--log-level".into(),
                "warn".into(),
            ],
            root.join("etcd.log"),
        );
        assert!(
            crate::wait_for_listener(&format!("{ip}:{etcd_port}")),
            "etcd did not start; see {}",
            root.join("etcd.log").display()
        );

        let port = free_port();
        let path = |name: &str| root.join(name).display().to_string();
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://{ip}:{etcd_port}"),
            format!("--bind-address={ip}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", path("apiserver.crt")),
            format!("--tls-private-key-file={}", path("apiserver.key")),
            format!("--cert-dir={}", path("certs")),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // Pods without a controller-manager: no default ServiceAccount exists.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
            "--enable-priority-and-fairness=false".into(),
            "--v=0".into(),
        ];
        let mut cluster = Cluster {
            dir,
            etcd,
            apiserver: None,
            apiserver_args,
            port,
            ca_pem: ca.pem(),
            netns,
        };
        for user in [ADMIN, CONTROLLER, PICKER] {
            cluster.write_kubeconfig(user);
        }
        cluster.start_apiserver().await;
        cluster.install_crds(with_pool_crd).await;
        cluster
    }

    fn token(user: &str) -> &'static str {
        match user {
            ADMIN => "admin-token",
            CONTROLLER => "controller-token",
            PICKER => "picker-token",
            other => panic!("no test user {other}"),
        }
    }

    fn write_kubeconfig(&self, user: &str) {
        use base64_encode as b64;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:{}\n    certificate-authority-data: {}\n\
             users:\n- name: {user}\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n",
            self.netns.ip(),
            self.port,
            b64(self.ca_pem.as_bytes()),
            Self::token(user),
        );
        std::fs::write(self.kubeconfig(user), text).expect("writing a kubeconfig");
    }

    /// The namespace's first address: servers behind Services and pickers
    /// listen there (on ports of their own).
    pub fn ip(&self) -> String {
        self.netns.ip()
    }

    /// Another address in the namespace (3..=254; 2 is [`Cluster::ip`]), for
    /// a simulated Pod of its own.
    pub fn pod_address(&self, n: u8) -> String {
        assert!(
            n >= 3,
            "address .{n} is the namespace's first address or not a host"
        );
        self.netns.address(n)
    }

    /// A [`NamedServer`] on [`Cluster::ip`].
    pub fn named_server(&self, name: &str) -> NamedServer {
        NamedServer::start_in(&self.netns, &self.ip(), name)
    }

    /// `infergate-sim` on `address` (ip:port) in the namespace.
    pub fn sim(&self, address: &str, name: &str, extra: &[&str]) -> Process {
        crate::sim_in(Some(&self.netns), address, name, &self.dir.0, extra)
    }

    /// The kubeconfig of a test user.
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.0.join(format!("kubeconfig-{user}"))
    }

    pub async fn client(&self, user: &str) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.kubeconfig(user)).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    async fn start_apiserver(&mut self) {
        let log = self.dir.0.join(format!(
            "apiserver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        self.apiserver = Some(Process::start_in(
            Some(&self.netns),
            &tools_dir().join("kube-apiserver"),
            &self.apiserver_args,
            log.clone(),
        ));
        let client = self.client(ADMIN).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                break;
            }
            let exited = self
                .apiserver
                .as_mut()
                .and_then(|p| p.child.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!(
                    "kube-apiserver is not ready ({}); the end of its log:\n{}",
                    if exited.is_some() {
                        "it exited"
                    } else {
                        "90 s"
                    },
                    tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // RBAC bootstrap roles are reconciled shortly after readyz; wait for
        // the default namespace, which the apiserver creates itself.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        for _ in 0..120 {
            if namespaces.get_opt("default").await.ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the default namespace never appeared");
    }

    /// Stop the API server (etcd keeps the data) and start it again.
    pub async fn restart_apiserver(&mut self, down_for: Duration) {
        if let Some(mut p) = self.apiserver.take() {
            p.kill();
        }
        tokio::time::sleep(down_for).await;
        self.start_apiserver().await;
    }

    async fn install_crds(&self, with_pool_crd: bool) {
        let crds = crds_dir();
        let mut files = vec![];
        let mut subs: Vec<String> = std::fs::read_dir(&crds)
            .unwrap_or_else(|e| panic!("reading {}: {e}", crds.display()))
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        subs.sort();
        for sub in subs {
            if sub.starts_with("inference") && !with_pool_crd {
                continue;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(crds.join(&sub))
                .unwrap_or_else(|e| panic!("reading CRDs in {}: {e}", crds.join(sub).display()))
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            files.extend(entries);
        }
        for file in files {
            self.install_crd_file(&file).await;
        }
    }

    /// Install (server-side apply) and wait until established.
    pub async fn install_crd_file(&self, file: &Path) {
        let client = self.client(ADMIN).await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let text = std::fs::read_to_string(file).expect("reading a CRD");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("CRD YAML");
            // The bundle's ValidatingAdmissionPolicy (Gateway API v1.6) is
            // not a CRD; the chart does not install it either.
            if value.is_null() || value["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let name = value["metadata"]["name"].as_str().unwrap().to_string();
            api.patch(
                &name,
                &PatchParams::apply("infergate-tests").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
            let established = async {
                loop {
                    if let Ok(crd) = api.get(&name).await
                        && crd
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not established"));
        }
    }

    /// Apply every document of a YAML text as the admin (server-side apply).
    pub async fn apply_yaml(&self, text: &str) {
        let client = self.client(ADMIN).await;
        let discovery = Discovery::new(client.clone())
            .run()
            .await
            .expect("API discovery");
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if value.is_null() {
                continue;
            }
            self.apply_value(&client, &discovery, value).await;
        }
    }

    async fn apply_value(
        &self,
        client: &kube::Client,
        discovery: &Discovery,
        value: serde_json::Value,
    ) {
        let api_version = value["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_string();
        let kind = value["kind"].as_str().expect("kind").to_string();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{api_version} {kind} is not served"));
        let name = value["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                value["metadata"]["namespace"].as_str().unwrap_or("default"),
                &ar,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("infergate-tests").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }

    /// An API handle for any kind, as the admin.
    pub async fn dynamic(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let client = self.client(ADMIN).await;
        match namespace {
            Some(ns) => Api::namespaced_with(client, ns, &ar),
            None => Api::all_with(client, &ar),
        }
    }

    /// HTTPRoutes of a namespace, as the admin.
    pub async fn routes(&self, namespace: &str) -> Api<DynamicObject> {
        self.dynamic(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
            "httproutes",
            Some(namespace),
        )
        .await
    }

    /// InferencePools of a namespace, as the admin.
    pub async fn pools(&self, namespace: &str) -> Api<DynamicObject> {
        self.dynamic(
            "inference.networking.k8s.io",
            "v1",
            "InferencePool",
            "inferencepools",
            Some(namespace),
        )
        .await
    }

    /// InferenceModelRewrites of a namespace, as the admin.
    pub async fn model_rewrites(&self, namespace: &str) -> Api<DynamicObject> {
        use infergate_names::model_rewrite::{GROUP, KIND, PLURAL, VERSION};
        self.dynamic(GROUP, VERSION, KIND, PLURAL, Some(namespace))
            .await
    }

    /// Grant a test user the given rules (a ClusterRole and binding, or a
    /// Role and binding in `namespace`).
    pub async fn grant(
        &self,
        user: &str,
        name: &str,
        namespace: Option<&str>,
        rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    ) {
        let rules = serde_json::to_value(rules).unwrap();
        let (role_kind, binding_kind) = match namespace {
            Some(_) => ("Role", "RoleBinding"),
            None => ("ClusterRole", "ClusterRoleBinding"),
        };
        let mut meta = json!({ "name": name });
        if let Some(ns) = namespace {
            meta["namespace"] = json!(ns);
        }
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
            "metadata": meta, "rules": rules,
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
            "metadata": meta,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        });
        let client = self.client(ADMIN).await;
        let discovery = Discovery::new(client.clone())
            .run()
            .await
            .expect("API discovery");
        self.apply_value(&client, &discovery, role).await;
        self.apply_value(&client, &discovery, binding).await;
    }

    /// Create (or update) a Pod and set its status as a kubelet would:
    /// Running, `ip` as its podIP, Ready as given.
    pub async fn pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ip: &str,
        ready: bool,
    ) {
        let client = self.client(ADMIN).await;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": { "containers": [{ "name": "server", "image": "infergate-sim" }] },
        });
        pods.patch(
            name,
            &PatchParams::apply("infergate-tests").force(),
            &Patch::Apply(&pod),
        )
        .await
        .unwrap_or_else(|e| panic!("creating Pod {name}: {e}"));
        self.set_pod_ready(namespace, name, ip, ready).await;
    }

    pub async fn set_pod_ready(&self, namespace: &str, name: &str, ip: &str, ready: bool) {
        let client = self.client(ADMIN).await;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let status = PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("setting the status of Pod {name}: {e}"));
    }

    /// An HTTPRoute `name` (in default, to Gateway gw) sending `path` to the
    /// Service `name`, whose one endpoint is `ip:port`.
    pub async fn route_to_endpoint(&self, name: &str, path: &str, ip: &str, port: u16) {
        self.apply_yaml(&service_route(name, name, path)).await;
        self.endpoint_slice("default", name, &[ip], port, None)
            .await;
    }

    /// An EndpointSlice for a Service, as the EndpointSlice controller would write it.
    pub async fn endpoint_slice(
        &self,
        namespace: &str,
        service: &str,
        addresses: &[&str],
        port: u16,
        app_protocol: Option<&str>,
    ) {
        let endpoints: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| json!({ "addresses": [a], "conditions": { "ready": true } }))
            .collect();
        let mut port_value = json!({ "port": port, "protocol": "TCP" });
        if let Some(p) = app_protocol {
            port_value["appProtocol"] = json!(p);
        }
        self.apply_yaml(
            &serde_json::to_string(&json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{service}-test"), "namespace": namespace,
                    "labels": { "kubernetes.io/service-name": service },
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [port_value],
            }))
            .unwrap(),
        )
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.kill();
        }
        self.etcd.kill();
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `infergate run` against a test cluster, as the controller user, with local Envoys.
pub struct Controller {
    pub process: Process,
    pub xds_port: u16,
    pub work: PathBuf,
}

impl Controller {
    /// `extra` adds flags (e.g. `--enable-inference-extension`).
    pub fn start(cluster: &Cluster, name: &str, extra: &[&str]) -> Controller {
        Self::start_with(cluster, name, true, extra)
    }

    /// A replica that serves xDS but starts no Envoy.
    pub fn start_without_envoy(cluster: &Cluster, name: &str, extra: &[&str]) -> Controller {
        Self::start_with(cluster, name, false, extra)
    }

    /// A controller with local Envoys that reaches the API server through
    /// `kubeconfig` (a [`SlowStatusProxy`]'s, say).
    pub fn start_with_kubeconfig(
        cluster: &Cluster,
        name: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Controller {
        Self::start_full(cluster, name, kubeconfig, true, extra)
    }

    fn start_with(cluster: &Cluster, name: &str, local_envoy: bool, extra: &[&str]) -> Controller {
        Self::start_full(
            cluster,
            name,
            &cluster.kubeconfig(CONTROLLER),
            local_envoy,
            extra,
        )
    }

    /// A controller with local Envoys for any cluster (a real one, say),
    /// with its files under `work_root`.
    pub fn start_in(work_root: &Path, name: &str, kubeconfig: &Path, extra: &[&str]) -> Controller {
        Self::start_at(work_root, name, kubeconfig, true, extra)
    }

    fn start_full(
        cluster: &Cluster,
        name: &str,
        kubeconfig: &Path,
        local_envoy: bool,
        extra: &[&str],
    ) -> Controller {
        Self::start_at(&cluster.dir.0, name, kubeconfig, local_envoy, extra)
    }

    fn start_at(
        work_root: &Path,
        name: &str,
        kubeconfig: &Path,
        local_envoy: bool,
        extra: &[&str],
    ) -> Controller {
        let work = work_root.join(format!("controller-{name}"));
        std::fs::create_dir_all(&work).expect("controller dir");
        let xds_port = free_port();
        let mut args: Vec<String> = [
            "run",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--xds-address",
            &format!("127.0.0.1:{xds_port}"),
            "--metrics-address",
            "127.0.0.1:0",
            "--listener-address",
            "127.0.0.1",
            "--envoy",
            &crate::envoy_binary().display().to_string(),
            "--work-dir",
            &work.display().to_string(),
            "--leader-election-namespace",
            "default",
            "--identity",
            name,
            "--lease-duration-seconds",
            "4",
            "--discovery-interval-seconds",
            "1",
            "--debounce-ms",
            "50",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if local_envoy {
            args.push("--local-envoy".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Process::start(
            &crate::infergate_binary(),
            &args,
            work.join("infergate.log"),
        );
        Controller {
            process,
            xds_port,
            work,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would: its local Envoys keep running (and
    /// serving) until the controller is dropped.
    pub fn crash(&mut self) {
        self.process.kill();
    }

    /// Wait until the log has `text`; panics with the log otherwise.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        if !crate::wait_until(timeout, || self.log_text().contains(text)) {
            panic!("controller log never said {text:?}:\n{}", self.log_text());
        }
    }
}

impl Drop for Controller {
    /// Stop gracefully (SIGTERM: its Envoys are stopped too), then make sure
    /// no Envoy it started outlives the test, even after a crash().
    fn drop(&mut self) {
        let pid = self.process.child.id().to_string();
        // After crash() the process is gone already: nothing to say.
        let _ = std::process::Command::new("kill")
            .arg(&pid)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = crate::wait_until(Duration::from_secs(5), || {
            matches!(self.process.child.try_wait(), Ok(Some(_)))
        });
        self.process.kill();
        let _ = std::process::Command::new("pkill")
            .args(["-9", "-f", &self.work.display().to_string()])
            .status();
    }
}

/// A plain-HTTP proxy on loopback in front of the test API server that
/// holds every status write (PATCH of a `/status` subresource) for a while
/// before passing it on, as an overloaded API server would; everything else
/// (lists, watches, Leases, Events) passes at once. Requests go on with the
/// credentials of the user it was started for, so RBAC stays that user's.
pub struct SlowStatusProxy {
    kubeconfig: PathBuf,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowStatusProxy {
    pub async fn start(cluster: &Cluster, user: &str, delay: Duration) -> SlowStatusProxy {
        use std::sync::atomic::Ordering;
        let client = cluster.client(user).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let kubeconfig = cluster.dir.0.join(format!("kubeconfig-slow-{port}"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: slow\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 users:\n- name: {user}\n  user: {{}}\ncontexts:\n- name: slow\n  context:\n    cluster: slow\n    user: {user}\ncurrent-context: slow\n"
            ),
        )
        .expect("writing the proxy's kubeconfig");
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = held.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let client = client.clone();
                let held = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let client = client.clone();
                            let held = held.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                if parts.method == hyper::Method::PATCH
                                    && parts.uri.path().ends_with("/status")
                                {
                                    held.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(delay).await;
                                }
                                let mut forward =
                                    http::Request::builder().method(parts.method.clone()).uri(
                                        parts
                                            .uri
                                            .path_and_query()
                                            .map(|p| p.as_str())
                                            .unwrap_or("/"),
                                    );
                                for (name, value) in &parts.headers {
                                    if name != hyper::header::HOST
                                        && name != hyper::header::AUTHORIZATION
                                    {
                                        forward = forward.header(name, value);
                                    }
                                }
                                let forward = forward
                                    .body(kube::client::Body::from(body.to_vec()))
                                    .expect("a request");
                                Ok::<_, hyper::Error>(match client.send(forward).await {
                                    Ok(response) => response,
                                    Err(e) => http::Response::builder()
                                        .status(502)
                                        .body(kube::client::Body::from(e.to_string().into_bytes()))
                                        .expect("a response"),
                                })
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SlowStatusProxy {
            kubeconfig,
            held,
            task,
        }
    }

    /// A kubeconfig that points at the proxy.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// How many status writes have reached the proxy so far.
    pub fn status_writes(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SlowStatusProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Apply the RBAC `infergate rbac` prints and bind it to the test users: the
/// controller and picker run with exactly these permissions.
/// `namespace` is where the leader-election and picker Roles go.
pub async fn grant_printed_rbac(cluster: &Cluster, namespace: &str, inference_extension: bool) {
    let mut command = std::process::Command::new(crate::infergate_binary());
    command.args(["rbac", "--namespace", namespace]);
    if inference_extension {
        command.arg("--enable-inference-extension");
    }
    let out = command.output().expect("infergate rbac");
    assert!(out.status.success(), "infergate rbac failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    cluster.apply_yaml(&text).await;
    let bind = |kind: &str, role_kind: &str, name: &str, user: &str| {
        let mut meta = json!({ "name": name });
        if kind == "RoleBinding" {
            meta["namespace"] = json!(namespace);
        }
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        })
        .to_string()
    };
    let bindings = [
        bind("ClusterRoleBinding", "ClusterRole", "infergate", CONTROLLER),
        bind("RoleBinding", "Role", "infergate-controller", CONTROLLER),
        bind("RoleBinding", "Role", "infergate-endpoint-picker", PICKER),
    ]
    .join("\n---\n");
    cluster.apply_yaml(&bindings).await;
}

/// Poll an object until `check` accepts it; panics with the last version.
pub async fn wait_for_object(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
    mut check: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(object)) = api.get_opt(name).await {
            last = serde_json::to_value(&object).unwrap();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} never reached the expected state; last seen:\n{}",
        serde_yaml_ng::to_string(&last).unwrap_or_default()
    );
}

/// The condition `type` of our (infergate's) entry for parent `parent` in a
/// route's or pool's `status.parents`, as (status, reason).
pub fn parent_condition(
    object: &serde_json::Value,
    parent: &str,
    type_: &str,
) -> Option<(String, String)> {
    object["status"]["parents"]
        .as_array()?
        .iter()
        .filter(|p| p["controllerName"] == "infergate.dev/gateway-controller")
        .find(|p| p["parentRef"]["name"] == parent)?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `infergate-epp` as the picker user, discovering `namespace/pool` from the
/// cluster, TLS (self-signed), listening on `port` of [`Cluster::ip`] in the
/// cluster's namespace; steered by the test header when `test_steering`.
pub fn picker(
    cluster: &Cluster,
    namespace: &str,
    pool: &str,
    port: u16,
    test_steering: bool,
) -> Process {
    let ip = cluster.ip();
    let mut args: Vec<String> = [
        "--kubeconfig",
        &cluster.kubeconfig(PICKER).display().to_string(),
        "--pool-namespace",
        namespace,
        "--pool-name",
        pool,
        "--bind-address",
        &ip,
        "--grpc-port",
        &port.to_string(),
        "--grpc-health-port",
        "0",
        "--metrics-port",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if test_steering {
        args.push("--test-header-steering".into());
    }
    let process = Process::start_in(
        Some(&cluster.netns),
        &crate::workspace_binary("infergate-epp"),
        &args,
        cluster.dir.0.join(format!("epp-{namespace}-{pool}.log")),
    );
    assert!(
        crate::wait_for_listener(&format!("{ip}:{port}")),
        "the picker for {namespace}/{pool} did not listen on {ip}:{port}"
    );
    process
}

/// Our GatewayClass (`infergate`, controller infergate.dev/gateway-controller).
pub const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: { name: infergate }
spec: { controllerName: infergate.dev/gateway-controller }
"#;

/// Gateway `default/gw` of class `infergate` with one HTTP listener on `port`.
pub fn gateway(port: u16) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{ name: gw, namespace: default }}
spec:
  gatewayClassName: infergate
  listeners:
  - {{ name: http, port: {port}, protocol: HTTP }}
"#
    )
}

/// Service `service` (port 80) and HTTPRoute `route` on `gw`, sending `path`
/// (a prefix) to it; both in `default`.
pub fn service_route(route: &str, service: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: {service}, namespace: default }}
spec:
  ports: [{{ name: http, port: 80, protocol: TCP }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {route}, namespace: default }}
spec:
  parentRefs: [{{ name: gw }}]
  rules:
  - matches: [{{ path: {{ type: PathPrefix, value: {path} }} }}]
    backendRefs: [{{ name: {service}, port: 80 }}]
"#
    )
}
