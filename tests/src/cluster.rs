//! A real single-node cluster for tests: `scripts/cluster.sh` with a test
//! index of its own (so a developer's cluster can stay up), images built by
//! `cargo xtask images` and imported into the node, `kubectl` from the same
//! Kubernetes build. The cluster is taken down when the value is dropped,
//! also when the test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether this process may run a cluster (it needs root). When not, the
/// caller prints why it skips.
pub fn can_run() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    if uid == "0" {
        Ok(())
    } else {
        Err("a real cluster needs root (network namespaces, cgroups, containers)".into())
    }
}

pub struct RealCluster {
    index: u32,
    pub kubeconfig: PathBuf,
    /// The node's address: the API server listens there on 6443.
    pub node_ip: String,
}

impl RealCluster {
    /// Bring up cluster `index` (1..99); panics with the script's output
    /// if it does not come up.
    pub fn up(index: u32) -> RealCluster {
        // Left over from a crashed run: start clean.
        let _ = script(index, &["down"]);
        let (ok, output) = script(index, &["up"]);
        assert!(ok, "scripts/cluster.sh up failed:\n{output}");
        let (_, env) = script(index, &["env"]);
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("cluster.sh env has no {key}:\n{env}"))
                .to_string()
        };
        RealCluster {
            index,
            kubeconfig: PathBuf::from(value("INFERGATE_CLUSTER_KUBECONFIG")),
            node_ip: value("INFERGATE_CLUSTER_NODE_IP"),
        }
    }

    fn script(&self, args: &[&str]) -> (bool, String) {
        script(self.index, args)
    }

    /// Build these images (`cargo xtask images`) from the debug binaries the
    /// workspace's test build made (stripped), and import them into the
    /// node; returns (archive, reference) of each.
    pub fn load_images(&self, names: &[&str]) -> Vec<(PathBuf, String)> {
        // The xtask binary the workspace's test build made: a nested `cargo
        // xtask` would see this test's environment and rebuild it.
        let xtask = crate::target_dir().join("debug/xtask");
        assert!(
            xtask.exists(),
            "{} is missing: cargo test --workspace builds it",
            xtask.display()
        );
        let output = Command::new(&xtask)
            .current_dir(root())
            .env("CARGO_MANIFEST_DIR", root().join("xtask"))
            .args([
                "images",
                "--profile",
                "debug",
                "--no-build",
                "--only",
                &names.join(","),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running xtask images");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "cargo xtask images failed:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut references = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(file), Some(reference)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (ok, output) = self.script(&["load-image", file]);
            assert!(ok, "loading {file} failed:\n{output}");
            references.push((PathBuf::from(file), reference.to_string()));
        }
        assert_eq!(references.len(), names.len(), "images built: {text}");
        references
    }

    /// `kubectl` against the cluster; panics with its output if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml));
    }

    fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        let kubectl = crate::kube::tools_dir().join("kubectl");
        let mut child = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", kubectl.display()));
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }

    /// A jsonpath of one object, e.g. `("pod", "demo", "p", "{.status.podIP}")`.
    pub fn get(&self, kind: &str, namespace: &str, name: &str, jsonpath: &str) -> String {
        self.kubectl(&[
            "get",
            kind,
            "-n",
            namespace,
            name,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    }

    /// What `kubectl describe` and the Pods' logs say, for failure messages.
    pub fn diagnose(&self, namespace: &str) -> String {
        let mut out = self.kubectl_lossy(&["get", "all", "-n", namespace, "-o", "wide"]);
        out += &self.kubectl_lossy(&["get", "events", "-n", namespace]);
        out += &self.kubectl_lossy(&[
            "logs",
            "-n",
            namespace,
            "--all-containers",
            "-l",
            "app",
            "--tail",
            "30",
        ]);
        out
    }

    fn kubectl_lossy(&self, args: &[&str]) -> String {
        let output = Command::new(crate::kube::tools_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output();
        match output {
            Ok(o) => format!(
                "$ kubectl {}\n{}{}\n",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("kubectl: {e}\n"),
        }
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        let (ok, output) = self.script(&["down"]);
        if !ok {
            eprintln!("scripts/cluster.sh down failed:\n{output}");
        }
    }
}

/// `scripts/cluster.sh` for cluster `index`: success and everything it said.
fn script(index: u32, args: &[&str]) -> (bool, String) {
    let output = Command::new("bash")
        .arg(root().join("scripts/cluster.sh"))
        .args(args)
        .env("INFERGATE_CLUSTER_INDEX", index.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/cluster.sh");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A plain HTTP GET to `address` (a Pod IP or a ClusterIP): status and body.
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(address, "GET", path)
}

/// A plain HTTP request without a body: status and body.
pub fn http_request(address: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
