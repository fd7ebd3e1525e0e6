//! Helpers for infergate's end-to-end tests: local HTTP servers that say who
//! they are, free ports, and an `infergate standalone` process with a real
//! Envoy.

pub mod cluster;
pub mod kube;
pub mod models;
pub mod netns;
pub mod pools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    // The kernel may hand the same free port out again once it is released;
    // a test that asks twice (its listener and the controller's metrics, say)
    // must get two different ones.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An HTTP server on 127.0.0.1 that answers every request with its name
/// (body and `x-served-by` header). Runs on its own thread until dropped.
pub struct NamedServer {
    pub port: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl NamedServer {
    pub fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1", name)
    }

    /// On `ip` (any free port).
    pub fn start_on(ip: &str, name: &str) -> Self {
        Self::serve(std::net::TcpListener::bind((ip, 0)).expect("bind"), name)
    }

    /// On `ip` inside `netns` (any free port).
    pub fn start_in(netns: &netns::Netns, ip: &str, name: &str) -> Self {
        let address = SocketAddr::new(ip.parse().expect("an IP address"), 0);
        Self::serve(netns.bind(address), name)
    }

    fn serve(listener: std::net::TcpListener, name: &str) -> Self {
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

pub fn target_dir() -> PathBuf {
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
            .args(if extra.contains(&"--metrics-address") {
                &[][..]
            } else {
                &["--metrics-address", "127.0.0.1:0"][..]
            })
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
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // stopped before (stop, then drop)
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(std::process::Stdio::null())
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

/// The PID of the Envoy that `infergate standalone --work-dir work` runs for
/// Gateway default/gw, if it runs.
pub fn envoy_pid(work: &Path) -> Option<u32> {
    let output = Command::new("pgrep")
        .arg("-f")
        .arg(work.join("default_gw.bootstrap.pb"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
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

/// A binary of this workspace, built by scripts/setup.sh (debug), or from
/// the directory INFERGATE_BIN_DIR names (benchmarks use release builds).
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("INFERGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (it builds infergate, infergate-epp and infergate-sim)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(binary: &Path, args: &[String], log: PathBuf) -> Self {
        Self::start_in(None, binary, args, log)
    }

    /// `binary` inside `netns` when given (it keeps its PID: nsenter execs it).
    pub fn start_in(
        netns: Option<&netns::Netns>,
        binary: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Self {
        let mut command = match netns {
            Some(netns) => netns.command(binary),
            None => Command::new(binary),
        };
        let child = command
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Process { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until something accepts TCP connections on `address`.
pub fn wait_for_listener(address: &str) -> bool {
    let address: SocketAddr = address.parse().expect("an ip:port");
    wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
    })
}

/// `infergate-sim` on `address` (ip:port) named `name`.
pub fn sim(address: &str, name: &str, work: &Path, extra: &[&str]) -> Process {
    sim_in(None, address, name, work, extra)
}

/// `infergate-sim` on `address` inside `netns` when given.
pub fn sim_in(
    netns: Option<&netns::Netns>,
    address: &str,
    name: &str,
    work: &Path,
    extra: &[&str],
) -> Process {
    let mut args = vec![
        "--bind".to_string(),
        address.to_string(),
        "--name".to_string(),
        name.to_string(),
    ];
    // Fast by default; `extra` may say otherwise.
    for flag in ["--ttft-ms", "--inter-token-ms"] {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), "1".to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let process = Process::start_in(
        netns,
        &workspace_binary("infergate-sim"),
        &args,
        work.join(format!("sim-{name}.log")),
    );
    assert!(
        wait_for_listener(address),
        "simulator {name} did not listen on {address}"
    );
    process
}

/// `infergate-epp` for `endpoints` on `127.0.0.1:port` (self-signed TLS),
/// without test steering, with `extra` flags (weights, say).
pub fn epp_with(port: u16, endpoints: &[String], work: &Path, extra: &[&str]) -> Process {
    let mut args: Vec<String> = [
        "--bind-address",
        "127.0.0.1",
        "--grpc-port",
        &port.to_string(),
        "--endpoints",
        &endpoints.join(","),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Off unless `extra` says otherwise.
    for flag in ["--grpc-health-port", "--metrics-port"] {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), "0".to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let process = Process::start(
        &workspace_binary("infergate-epp"),
        &args,
        work.join(format!("epp-{port}.log")),
    );
    assert!(
        wait_for_listener(&format!("127.0.0.1:{port}")),
        "the picker did not listen on {port}"
    );
    process
}

/// `infergate-epp` on 127.0.0.1:`port` (TLS, self-signed) for `endpoints`,
/// in test mode (steered by the test-epp-endpoint-selection header).
pub fn epp(port: u16, endpoints: &[String], work: &Path) -> Process {
    epp_with(port, endpoints, work, &["--test-header-steering"])
}

/// An HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, the connection closed after it.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    request_at(
        "127.0.0.1",
        port,
        "example.com",
        method,
        path,
        headers,
        body,
    )
}

/// A TCP connection to `ip:port`, given up after 5 seconds. A ClusterIP
/// that kube-proxy has no rule for yet black-holes the first SYN, and the
/// node's conntrack entry keeps every retransmission of that connection
/// away from the rule that follows: an unbounded connect would hang for
/// the kernel's two minutes where a new one gets through.
fn connect(ip: &str, port: u16) -> Option<std::net::TcpStream> {
    let address = std::net::ToSocketAddrs::to_socket_addrs(&(ip, port))
        .ok()?
        .next()?;
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()
}

/// One HTTP/1.1 request to `ip:port` with Host `host`.
pub fn request_at(
    ip: &str,
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    use std::io::{Read, Write};
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = connect(ip, port)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // Envoy may answer (a direct 500, say) before it has read the body and
    // then reset the connection: a failed write or a reset after the
    // response still leaves the response to read.
    let _ = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buffer[..n]),
            Err(_) if !raw.is_empty() => break,
            Err(_) => return None,
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A chunked HTTP/1.1 body's content (what a client library would give);
/// chunk extensions and trailers are dropped.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
        let rest = &body[line_end + 2..];
        match size {
            Ok(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}

/// One request over cleartext HTTP/2 (prior knowledge, as gRPC and many
/// HTTP/2 clients connect) to 127.0.0.1:`port`.
pub fn request_h2c(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .ok()?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://example.com{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
            .await
            .ok()?
            .ok()?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
}

/// An HTTP/1.1 client that keeps its connection between requests and
/// opens a new one only before its first request or after the server said
/// `connection: close`; it never retries. A server that drops a kept
/// connection instead (an Envoy stopped without draining) fails the request
/// sent on it.
pub struct KeepAliveClient {
    ip: String,
    port: u16,
    connection: Option<std::io::BufReader<std::net::TcpStream>>,
    /// Connections opened so far.
    pub connections: usize,
}

impl KeepAliveClient {
    pub fn new(ip: &str, port: u16) -> KeepAliveClient {
        KeepAliveClient {
            ip: ip.to_string(),
            port,
            connection: None,
            connections: 0,
        }
    }

    /// POST a completion to `path`.
    pub fn complete(&mut self, path: &str) -> Option<Response> {
        use std::io::Write;
        if self.connection.is_none() {
            let stream = connect(&self.ip, self.port)?;
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .ok()?;
            self.connections += 1;
            self.connection = Some(std::io::BufReader::new(stream));
        }
        let connection = self.connection.as_mut()?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: example.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{COMPLETION}",
            COMPLETION.len()
        );
        let response = connection
            .get_mut()
            .write_all(request.as_bytes())
            .ok()
            .and_then(|()| read_response(connection));
        let close = response.as_ref().is_none_or(|r| {
            r.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        });
        if close {
            self.connection = None;
        }
        response
    }
}

/// One HTTP/1.1 response (content-length or chunked body) off `reader`.
fn read_response(reader: &mut impl std::io::BufRead) -> Option<Response> {
    fn read_line(reader: &mut impl std::io::BufRead, line: &mut String) -> Option<()> {
        line.clear();
        (reader.read_line(line).ok()? > 0).then_some(())
    }
    let mut line = String::new();
    read_line(reader, &mut line)?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        read_line(reader, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            read_line(reader, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            std::io::Read::read_exact(reader, &mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length: usize = header("content-length").unwrap_or("0").parse().ok()?;
        body.resize(length, 0);
        std::io::Read::read_exact(reader, &mut body).ok()?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A completion request body for the simulators.
pub const COMPLETION: &str = r#"{"model":"sim-model","prompt":"Write as if you were a critic: San Francisco","max_tokens":3}"#;

/// POST a completion to `ip:port` (a Gateway's address).
pub fn complete_at(ip: &str, port: u16, path: &str) -> Option<Response> {
    request_at(
        ip,
        port,
        "example.com",
        "POST",
        path,
        &[],
        COMPLETION.as_bytes(),
    )
}

/// POST a completion through the gateway.
pub fn complete(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
    request(port, "POST", path, headers, COMPLETION.as_bytes())
}

/// A component built by `cargo xtask test-components` (scripts/setup.sh).
pub fn test_component(name: &str) -> PathBuf {
    let path = target_dir()
        .join("test-components")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (cargo xtask test-components)",
        path.display()
    );
    path
}

/// The translation component the release ships (cargo xtask component).
pub fn production_component() -> PathBuf {
    let path = std::env::var_os("INFERGATE_COMPONENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("infergate-translator.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// A whole configuration: Gateway `gw` on `listener_port` and one HTTPRoute
/// sending everything to the Service `backend`, served by 127.0.0.1:`backend_port`.
pub fn single_backend_yaml(listener_port: u16, backend_port: u16) -> String {
    format!(
        "{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]
",
        gateway_yaml(listener_port),
        service_yaml("backend", backend_port)
    )
}

/// (type, status, reason, message) of each condition of HTTPRoute `route` on
/// its first parent, as `--status-file` wrote them (none while the file or
/// the route is missing).
pub fn route_conditions(status_file: &Path, route: &str) -> Vec<[String; 4]> {
    let text = std::fs::read_to_string(status_file).unwrap_or_default();
    let statuses: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).unwrap_or(serde_yaml_ng::Value::Null);
    statuses["http_routes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|r| r["route"]["name"].as_str() == Some(route))
        .flat_map(|r| {
            r["parents"][0]["conditions"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            ["condition_type", "status", "reason", "message"]
                .map(|k| c[k].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Completions sent through a Gateway listener from `clients` threads,
/// back to back, until [`SteadyTraffic::finish`]: which server (`x-served-by`)
/// answered each, and how many requests failed.
pub struct SteadyTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    served: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl SteadyTraffic {
    pub fn start(listener: u16, clients: usize) -> SteadyTraffic {
        Self::start_at("127.0.0.1", listener, clients)
    }

    /// Against a Gateway at `ip:port`, a new connection per request.
    pub fn start_at(ip: &str, listener: u16, clients: usize) -> SteadyTraffic {
        Self::start_with(ip, listener, clients, false)
    }

    /// Against a Gateway at `ip:port`, each client keeping its connection
    /// open as HTTP clients do ([`KeepAliveClient`]): a request sent on a
    /// connection the server then drops counts as failed.
    pub fn start_keep_alive_at(ip: &str, listener: u16, clients: usize) -> SteadyTraffic {
        Self::start_with(ip, listener, clients, true)
    }

    fn start_with(ip: &str, listener: u16, clients: usize, keep_alive: bool) -> SteadyTraffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let served: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let started = std::time::Instant::now();
        let clients = (0..clients)
            .map(|_| {
                let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
                let ip = ip.to_string();
                std::thread::spawn(move || {
                    let mut client = KeepAliveClient::new(&ip, listener);
                    while !stop.load(Ordering::Relaxed) {
                        let response = if keep_alive {
                            client.complete("/v1/completions")
                        } else {
                            complete_at(&ip, listener, "/v1/completions")
                        };
                        match response {
                            Some(r) if r.status == 200 => served
                                .lock()
                                .unwrap()
                                .push(r.header("x-served-by").unwrap_or_default().to_string()),
                            other => {
                                eprintln!(
                                    "failed request at {:.2} s: {other:?}",
                                    started.elapsed().as_secs_f64()
                                );
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        SteadyTraffic {
            stop,
            failures,
            served,
            clients,
            started,
        }
    }

    /// Say (on stderr, next to the failed requests' times) that `what`
    /// happened now, for a failure message to be read against.
    pub fn note(&self, what: &str) {
        eprintln!("at {:.2} s: {what}", self.started.elapsed().as_secs_f64());
    }

    /// How many requests have succeeded so far: a mark for [`Self::served_since`].
    pub fn mark(&self) -> usize {
        self.served.lock().unwrap().len()
    }

    /// The servers that answered since `mark`.
    pub fn served_since(&self, mark: usize) -> std::collections::BTreeSet<String> {
        self.served.lock().unwrap()[mark..]
            .iter()
            .cloned()
            .collect()
    }

    /// Stop the clients: (requests that succeeded, requests that failed).
    pub fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        (
            self.served.lock().unwrap().len(),
            self.failures.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}
