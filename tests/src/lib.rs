//! Helpers for infergate's end-to-end tests: local HTTP servers that say who
//! they are, free ports, and an `infergate standalone` process with a real
//! Envoy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An HTTP server on 127.0.0.1 that answers every request with its name
/// (body and `x-served-by` header). Runs on its own thread until dropped.
pub struct NamedServer {
    pub port: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl NamedServer {
    pub fn start(name: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let name = name.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    if stopped.try_recv().is_ok() {
                        return;
                    }
                    let Ok(Ok((stream, _))) =
                        tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                    else {
                        continue;
                    };
                    let name = name.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let body = format!("{name} {}\n", req.uri().path());
                                let name = name.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(
                                        hyper::Response::builder()
                                            .header("x-served-by", name)
                                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                                body,
                                            )))
                                            .expect("response"),
                                    )
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                    });
                }
            });
        });
        NamedServer {
            port,
            stop: Some(stop),
        }
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

pub fn infergate_binary() -> PathBuf {
    let path = std::env::var_os("INFERGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/infergate"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p infergate` (scripts/setup.sh does)",
        path.display()
    );
    path
}

pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("INFERGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
            std::fs::read_dir(&venv)
                .ok()
                .and_then(|mut entries| entries.find_map(|e| e.ok()))
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .unwrap_or_default()
        });
    assert!(
        path.exists(),
        "Envoy not found at {:?}: run scripts/setup.sh",
        path
    );
    path
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "infergate-e2e-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `infergate standalone` on a config directory, killed on drop (with its Envoy).
pub struct Standalone {
    pub child: Child,
    pub config: PathBuf,
    pub work: PathBuf,
    pub log: PathBuf,
    pub xds: SocketAddr,
}

impl Standalone {
    pub fn start(config: &Path, work: &Path, xds_port: u16, extra: &[&str]) -> Self {
        let log = work.join("infergate.log");
        let xds: SocketAddr = format!("127.0.0.1:{xds_port}").parse().expect("addr");
        let child = Command::new(infergate_binary())
            .arg("standalone")
            .arg("--config")
            .arg(config)
            .arg("--work-dir")
            .arg(work)
            .arg("--xds-address")
            .arg(xds.to_string())
            .arg("--envoy")
            .arg(envoy_binary())
            .arg("--debounce-ms")
            .arg("50")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("infergate starts");
        Standalone {
            child,
            config: config.to_path_buf(),
            work: work.to_path_buf(),
            log,
            xds,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop gracefully (SIGTERM) and wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP request; returns (status, served-by header, body).
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String, String)> {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status: u16 = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let served_by = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-served-by: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Some((status, served_by, body.to_string()))
}

/// Poll `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Gateway API YAML for a Gateway `gw` on `port` and Services whose single
/// endpoint is 127.0.0.1:<server port>.
pub fn gateway_yaml(listener_port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: infergate}}
spec: {{controllerName: infergate.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: infergate
  listeners: [{{name: http, port: {listener_port}, protocol: HTTP}}]
"
    )
}

pub fn service_yaml(name: &str, server_port: u16) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {server_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}
