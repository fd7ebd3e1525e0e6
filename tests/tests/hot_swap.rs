//! Swapping the translation component in a running controller, under
//! steady traffic through a real Envoy: a good component takes over without
//! a failed request, and broken ones are each refused for their own reason
//! while traffic goes on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use infergate_e2e::{
    NamedServer, Standalone, TempDir, free_port, production_component, request, test_component,
    wait_until,
};

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A counter's value in Prometheus text (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Replace the component file the way an operator would (a plain copy).
fn install(component: &Path, from: &Path) {
    std::fs::copy(from, component).unwrap();
}

#[test]
fn a_component_swaps_in_under_traffic_and_broken_ones_are_refused() {
    let backend = NamedServer::start("backend");
    let config = TempDir::new("swap-config");
    let work = TempDir::new("swap-work");
    let port = free_port();
    let metrics_port = free_port();
    std::fs::write(
        config.0.join("all.yaml"),
        infergate_e2e::single_backend_yaml(port, backend.port),
    )
    .unwrap();
    let component = work.0.join("component.wasm");
    install(&component, &production_component());
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let infergate = Standalone::start(
        &config.0,
        &work.0,
        free_port(),
        &[
            "--component",
            component.to_str().unwrap(),
            "--metrics-address",
            &metrics_address,
            "--translation-timeout-ms",
            "1000",
            "--translation-memory-mib",
            "64",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            request(port, "GET", "/", &[], b"").is_some_and(|r| r.status == 200)
        }),
        "never served; log:\n{}",
        infergate.log_text()
    );
    let metrics = || http_get(metrics_port, "/metrics").unwrap_or_default();
    let info = || http_get(metrics_port, "/info").unwrap_or_default();
    let production_digest = sha256_hex(&std::fs::read(production_component()).unwrap());
    assert!(info().contains(&production_digest), "{}", info());
    // Operators size --translation-memory-mib by the guest memory's peak.
    let guest_memory = counter(&metrics(), "infergate_translation_guest_memory_bytes");
    assert!(
        guest_memory > 0 && guest_memory <= 512 << 20,
        "guest memory {guest_memory}; metrics:\n{}",
        metrics()
    );

    // Steady traffic on two threads for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed, marked) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let traffic: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, failed, marked, failures) = (
                stop.clone(),
                sent.clone(),
                failed.clone(),
                marked.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let response = request(port, "GET", "/", &[], b"");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match response {
                        Some(r) if r.status == 200 && r.body.starts_with("backend") => {
                            if r.header("x-infergate-component") == Some("test") {
                                marked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // A good component that marks every response.
    install(&component, &test_component("infergate-test-misbehaving"));
    assert!(
        wait_until(Duration::from_secs(30), || marked.load(Ordering::Relaxed)
            > 0),
        "the new component's behaviour never appeared; log:\n{}",
        infergate.log_text()
    );
    let test_digest =
        sha256_hex(&std::fs::read(test_component("infergate-test-misbehaving")).unwrap());
    assert!(info().contains(&test_digest), "{}", info());
    assert_eq!(counter(&metrics(), "infergate_component_swaps_total"), 1);

    // Broken components, each refused for its own reason.
    let not_wasm = work.0.join("not-wasm.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho this is not WebAssembly\n").unwrap();
    for (candidate, reason, words) in [
        (not_wasm, "not_wasm", "not a WebAssembly file"),
        (
            test_component("infergate-test-other-version"),
            "wit_version",
            "infergate:translator@0.0.9",
        ),
        (
            test_component("infergate-test-loop"),
            "canary_deadline",
            "deadline",
        ),
        (
            test_component("infergate-test-alloc"),
            "canary_memory",
            "memory limit",
        ),
    ] {
        let series = format!("infergate_component_rejections_total{{reason=\"{reason}\"}}");
        install(&component, &candidate);
        assert!(
            wait_until(Duration::from_secs(30), || counter(&metrics(), &series)
                >= 1),
            "{reason}: not rejected; metrics:\n{}\nlog:\n{}",
            metrics(),
            infergate.log_text()
        );
        // The metric is counted just before the line is logged.
        assert!(
            wait_until(Duration::from_secs(5), || {
                infergate
                    .log_text()
                    .lines()
                    .any(|l| l.contains("rejected") && l.contains(words))
            }),
            "{reason}: the log does not say why:\n{}",
            infergate.log_text()
        );
        assert!(
            info().contains(&test_digest),
            "{reason}: the active component changed"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = marked.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        marked.load(Ordering::Relaxed) > before,
        "traffic still flows through the swapped-in component"
    );

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed: {:?}",
        &failures.lock().unwrap()[..failures.lock().unwrap().len().min(5)]
    );
    assert!(sent > 500, "only {sent} requests were sent");
    eprintln!("hot swap: {sent} requests, none failed");
    assert_eq!(counter(&metrics(), "infergate_component_swaps_total"), 1);
}

#[test]
fn component_check_gives_a_verdict() {
    let infergate = infergate_e2e::infergate_binary();
    let run = |file: &Path| {
        let output = std::process::Command::new(&infergate)
            .args(["component", "check"])
            .arg(file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, text) = run(&production_component());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("OK:") && text.contains("imports: none"),
        "{text}"
    );

    let (code, text) = run(&test_component("infergate-test-other-version"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("REJECTED") && text.contains("0.0.9"),
        "{text}"
    );

    let (code, text) = run(&test_component("infergate-test-loop"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("deadline"),
        "{text}"
    );
}
