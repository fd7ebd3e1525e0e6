//! The drain hook against a real Envoy (`$INFERGATE_ENVOY`, set by
//! scripts/env.sh): while it drains, Envoy tells keep-alive clients to go
//! (`connection: close`) yet still serves them; the hook returns only once
//! a request in flight (to a slow upstream) has finished.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on a new connection (keep-alive asked for); the head.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_lowercase())
}

#[test]
fn envoy_drains_keep_alive_clients_and_the_hook_waits_for_requests_in_flight() {
    let Some(envoy) = std::env::var_os("INFERGATE_ENVOY") else {
        panic!(
            "INFERGATE_ENVOY is not set: source scripts/env.sh (scripts/setup.sh installs Envoy)"
        );
    };
    // An upstream that answers 2 s after it is asked.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0; 1024];
                let _ = stream.read(&mut buf);
                std::thread::sleep(Duration::from_secs(2));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow");
            });
        }
    });
    let (admin, listener) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("infergate-drain-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  clusters:
  - name: slow
    connect_timeout: 1s
    load_assignment:
      cluster_name: slow
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}}}]}}]
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: listener-80
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - {{match: {{prefix: /slow}}, route: {{cluster: slow}}}}
              - {{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#
        ),
    )
    .unwrap();
    let _envoy = Kill(
        Command::new(&envoy)
            .args(["-c", config.to_str().unwrap()])
            .args(["--drain-time-s", "3", "--drain-strategy", "immediate"])
            .args(["--disable-hot-restart", "--log-level", "error"])
            .arg("--base-id")
            .arg(listener.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting Envoy"),
    );
    let started = Instant::now();
    while get(listener, "/").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Envoy did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!get(listener, "/").unwrap().contains("connection: close"));

    // A request in flight, then the hook (no drain wait of its own).
    let slow = std::thread::spawn(move || get(listener, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    let hook_started = Instant::now();
    let hook = Command::new(env!("CARGO_BIN_EXE_infergate-envoy-drain"))
        .args(["--admin-port", &admin.to_string(), "--drain-seconds", "0"])
        .args(["--max-wait-seconds", "10"])
        .spawn()
        .expect("running the hook");
    let mut hook = Kill(hook);
    // Draining: served, and told to close the connection.
    std::thread::sleep(Duration::from_millis(300));
    let during = get(listener, "/").expect("a draining Envoy still serves");
    assert!(during.starts_with("http/1.1 200"), "{during}");
    assert!(during.contains("connection: close"), "{during}");
    let status = hook.0.wait().unwrap();
    assert!(status.success());
    let waited = hook_started.elapsed();
    let slow = slow
        .join()
        .unwrap()
        .expect("the request in flight completes");
    assert!(slow.starts_with("http/1.1 200"), "{slow}");
    assert!(
        waited >= Duration::from_millis(1200),
        "the hook returned after {waited:?}, before the request in flight (2 s upstream) ended"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
