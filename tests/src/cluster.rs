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

pub struct RealCluster {
    index: u32,
    /// The host as it was before `up` (after cleaning up a crashed run).
    before: HostState,
    down: bool,
    pub kubeconfig: PathBuf,
    /// The node's address: the API server listens there on 6443.
    pub node_ip: String,
}

impl RealCluster {
    /// Bring up cluster `index` (1..99); panics with the script's output
    /// if it does not come up.
    pub fn up(index: u32) -> RealCluster {
        crate::netns::require_root("a real cluster (namespaces, cgroups, containers)");
        // Left over from a crashed run or an earlier test: start with a
        // fresh cluster (no objects, no images).
        let _ = script(index, &["purge"]);
        // The node evicts and schedules nothing below 1% free disk
        // (evictionHard): say so rather than time out on Pending Pods.
        if let Some(free) = free_disk_bytes("/") {
            assert!(
                free > 6 << 30,
                "only {:.1} GiB free on /: the test cluster's node would be under DiskPressure (free space first, e.g. old build artifacts)",
                free as f64 / (1u64 << 30) as f64
            );
        }
        // The packages and the /run/netns mount of a first run stay on the
        // host by design; take stock after them.
        let (ok, output) = script(index, &["prepare"]);
        assert!(ok, "scripts/cluster.sh prepare failed:\n{output}");
        let before = HostState::now();
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
            before,
            down: false,
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

    /// `helm` (scripts/kube-tools.sh --node builds it) against the cluster,
    /// with no configuration of this machine's; panics with its output if
    /// it fails.
    pub fn helm(&self, args: &[&str]) -> String {
        let helm = crate::kube::tools_dir().join("helm");
        let home = std::env::temp_dir().join(format!("infergate-helm-{}", self.index));
        let output = Command::new(&helm)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            let namespace = args
                .iter()
                .position(|a| *a == "-n")
                .and_then(|i| args.get(i + 1))
                .copied()
                .unwrap_or("default");
            panic!(
                "helm {args:?} failed:\n{text}\n{}{}",
                self.kubectl_lossy(&[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*].status.conditions[*]}{.type}={.status} {end}",
                ]),
                self.diagnose(namespace)
            );
        }
        text
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

    /// Like [`RealCluster::get`], but empty when kubectl fails (the object
    /// does not exist, say).
    pub fn get_lossy(&self, kind: &str, namespace: &str, name: &str, jsonpath: &str) -> String {
        let jsonpath = format!("jsonpath={jsonpath}");
        self.kubectl_output(&["get", kind, "-n", namespace, name, "-o", &jsonpath])
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
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
        // The chart's and the deployer's Pods.
        out += &self.kubectl_lossy(&[
            "logs",
            "-n",
            namespace,
            "--all-containers",
            "-l",
            "app.kubernetes.io/name",
            "--tail",
            "30",
        ]);
        out
    }

    fn kubectl_output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(crate::kube::tools_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
    }

    /// Whether `user` may `verb` `resource` in `namespace` (`kubectl auth
    /// can-i`, asked as that user through impersonation).
    pub fn can_i(&self, user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
        self.kubectl_output(&[
            "auth", "can-i", verb, resource, "-n", namespace, "--as", user,
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
        .unwrap_or(false)
    }

    fn kubectl_lossy(&self, args: &[&str]) -> String {
        match self.kubectl_output(args) {
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

impl RealCluster {
    /// `scripts/cluster.sh down`, then check that the host is as it was
    /// before `up`: links, addresses, routes, network namespaces, mounts,
    /// iptables rules, cgroups and `ip_forward`.
    pub fn down_and_check_host(mut self) {
        self.down = true;
        let (ok, output) = self.script(&["down"]);
        assert!(ok, "scripts/cluster.sh down failed:\n{output}");
        let after = HostState::now();
        let changed = self.before.differences(&after);
        assert!(
            changed.is_empty(),
            "scripts/cluster.sh down left the host changed:\n{}",
            changed.join("\n")
        );
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if self.down {
            return;
        }
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

/// Free bytes on the filesystem of `path` (`df`), if it can be told.
fn free_disk_bytes(path: &str) -> Option<u64> {
    let output = Command::new("df")
        .args(["--output=avail", "-B1", path])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
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

/// What a cluster changes on the host, each as a set of lines that do not
/// depend on counters or timing.
pub struct HostState(std::collections::BTreeMap<&'static str, std::collections::BTreeSet<String>>);

impl HostState {
    pub fn now() -> HostState {
        let run = |program: &str, args: &[&str]| -> String {
            Command::new(program)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_else(|e| format!("{program}: {e}"))
        };
        let lines = |text: String, keep: &dyn Fn(&str) -> Option<String>| {
            text.lines().filter_map(keep).collect()
        };
        let mut state = std::collections::BTreeMap::new();
        // "3: name@if2: <FLAGS> ..." -> "name"
        state.insert(
            "ip link",
            lines(run("ip", &["-o", "link", "show"]), &|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            }),
        );
        state.insert(
            "ip addr",
            lines(run("ip", &["-o", "addr", "show"]), &|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 3).then(|| format!("{} {}", f[1], f[3]))
            }),
        );
        state.insert(
            "ip route",
            lines(run("ip", &["route", "show", "table", "all"]), &|l| {
                Some(l.to_string())
            }),
        );
        state.insert(
            "ip netns",
            lines(run("ip", &["netns", "list"]), &|l| {
                l.split_whitespace().next().map(str::to_string)
            }),
        );
        // mountinfo: field 5 is the mount point, then the type after " - ".
        state.insert(
            "mounts",
            lines(
                std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                &|l| {
                    let point = l.split_whitespace().nth(4)?;
                    let kind = l.split(" - ").nth(1)?.split_whitespace().next()?;
                    Some(format!("{point} {kind}"))
                },
            ),
        );
        for (key, program) in [
            ("iptables", "iptables-save"),
            ("ip6tables", "ip6tables-save"),
        ] {
            state.insert(
                key,
                lines(run(program, &[]), &|l| {
                    if l.starts_with('#') {
                        return None;
                    }
                    // ":CHAIN POLICY [packets:bytes]": counters differ by nature.
                    Some(match l.rfind(" [") {
                        Some(at) if l.starts_with(':') => l[..at].to_string(),
                        _ => l.to_string(),
                    })
                }),
            );
        }
        let mut cgroups = std::collections::BTreeSet::new();
        // Two levels: each hierarchy and the groups at its top, where the
        // cluster's root (/infergate-<index>) lives; deeper ones belong to
        // whatever else runs on the machine meanwhile.
        collect_dirs(Path::new("/sys/fs/cgroup"), 2, &mut cgroups);
        state.insert("cgroups", cgroups);
        state.insert(
            "ip_forward",
            std::iter::once(
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            )
            .collect(),
        );
        HostState(state)
    }

    /// One line per difference: "<what>: +<added>" or "<what>: -<removed>".
    pub fn differences(&self, after: &HostState) -> Vec<String> {
        let mut out = Vec::new();
        for (key, before) in &self.0 {
            let now = after.0.get(key).cloned().unwrap_or_default();
            out.extend(now.difference(before).map(|l| format!("{key}: +{l}")));
            out.extend(before.difference(&now).map(|l| format!("{key}: -{l}")));
        }
        out
    }
}

fn collect_dirs(dir: &Path, depth: u32, out: &mut std::collections::BTreeSet<String>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.insert(entry.path().display().to_string());
            collect_dirs(&entry.path(), depth - 1, out);
        }
    }
}
