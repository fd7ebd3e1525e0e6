//! Envoy processes next to the controller: one per Gateway (its xDS node),
//! bootstrapped to our ADS server, restarted if they exit. Standalone mode
//! runs them unless `--no-envoy`; Kubernetes mode with `--local-envoy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How infergate runs its Envoys (besides the bootstrap and admin address).
/// `--ignore-unknown-dynamic-fields` skips Envoy's reflection walk of every
/// dynamic resource for unknown fields: by default Envoy accepts such
/// fields anyway and only counts them, and the walk was about 200 of 530 ms
/// between a 20,000-route configuration arriving and Envoy accepting it
/// (docs/benchmarks.md). Our resources come from the same protos Envoy has.
pub const ENVOY_FLAGS: [&str; 4] = [
    "--disable-hot-restart",
    "--ignore-unknown-dynamic-fields",
    "--log-level",
    "warn",
];

/// The Envoy bootstrap that takes everything from ADS at `xds`, made by the
/// encoder (`infergate_xds::encode::bootstrap`). Its runtime raises RE2's
/// program-size limit to what the translation's regex check allows for
/// (`infergate_translate::validate`).
pub fn bootstrap_message(
    node: &str,
    xds: SocketAddr,
    admin_port: u16,
    tls: Option<infergate_xds::encode::XdsTls>,
) -> envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap {
    infergate_xds::encode::bootstrap(&infergate_xds::encode::BootstrapSettings {
        node: node.to_string(),
        xds,
        admin_port,
        re2_max_program_size: infergate_translate::validate::ENVOY_RE2_MAX_PROGRAM_SIZE,
        tls,
    })
}

/// [`bootstrap_message`] as YAML, for people (`infergate bootstrap`). It is
/// printed through the bundled Envoy descriptors, which take tens of MiB
/// once loaded: the controller's own Envoys get the binary form instead.
pub fn bootstrap(node: &str, xds: SocketAddr, admin_port: u16) -> String {
    let json =
        infergate_xds::json::bootstrap_to_json(bootstrap_message(node, xds, admin_port, None))
            .expect("the bundled descriptors describe the bootstrap");
    serde_yaml_ng::to_string(&json).expect("JSON values are YAML")
}

/// The Envoy binary: the flag or $INFERGATE_ENVOY, else this project's
/// virtual environment (scripts/setup.sh), else `envoy` on PATH.
pub fn find_binary(flag: Option<PathBuf>) -> PathBuf {
    if let Some(path) = flag {
        return path;
    }
    let venv = Path::new(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(venv) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("envoy")
}

struct Supervised {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Ask the supervisor to stop its Envoy, and wait until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The set of Envoys, one per node id.
pub struct Fleet {
    binary: PathBuf,
    xds: SocketAddr,
    work_dir: PathBuf,
    running: HashMap<String, Supervised>,
}

impl Fleet {
    pub fn new(binary: PathBuf, xds: SocketAddr, work_dir: PathBuf) -> Self {
        Fleet {
            binary,
            xds,
            work_dir,
            running: HashMap::new(),
        }
    }

    /// Start an Envoy for each new node, stop those whose Gateway is gone.
    pub async fn reconcile(&mut self, nodes: &[String]) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !nodes.contains(n))
            .cloned()
            .collect();
        for node in gone {
            if let Some(envoy) = self.running.remove(&node) {
                tracing::info!(node = %node, "stopping Envoy: its Gateway is gone");
                envoy.stop().await;
            }
        }
        for node in nodes {
            if self.running.contains_key(node) {
                continue;
            }
            let file_name = node.replace('/', "_");
            // Binary protobuf (Envoy reads `.pb` as such): no descriptors needed.
            let bootstrap_path = self.work_dir.join(format!("{file_name}.bootstrap.pb"));
            let bytes = prost::Message::encode_to_vec(&bootstrap_message(node, self.xds, 0, None));
            if let Err(e) = std::fs::write(&bootstrap_path, bytes) {
                tracing::error!(node = %node, "cannot write the Envoy bootstrap {}: {e}", bootstrap_path.display());
                continue;
            }
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(supervise(
                self.binary.clone(),
                node.clone(),
                bootstrap_path,
                self.work_dir.join(format!("{file_name}.admin")),
                self.work_dir.join(format!("{file_name}.log")),
                stopped,
            ));
            self.running.insert(node.clone(), Supervised { stop, task });
        }
    }

    pub async fn shutdown(&mut self) {
        for (_, envoy) in self.running.drain() {
            envoy.stop().await;
        }
    }
}

async fn supervise(
    binary: PathBuf,
    node: String,
    bootstrap: PathBuf,
    admin_path: PathBuf,
    log_path: PathBuf,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(node = %node, "cannot open {}: {e}", log_path.display());
                return;
            }
        };
        let stderr = log.try_clone().expect("log file handle clones");
        let child = Command::new(&binary)
            .arg("--config-path")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(ENVOY_FLAGS)
            .stdout(log)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(
                    node = %node,
                    "cannot start Envoy {}: {e} (install it with scripts/setup.sh or pass --envoy)",
                    binary.display()
                );
                return;
            }
        };
        tracing::info!(node = %node, pid = child.id().unwrap_or(0), log = %log_path.display(), "Envoy started");
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(node = %node, "Envoy exited ({}); restarting in 1s; see {}",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()), log_path.display());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stop => return,
                }
            }
            _ = &mut stop => {
                if let Some(pid) = child.id() {
                    // SIGTERM lets Envoy close its listeners cleanly.
                    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}
