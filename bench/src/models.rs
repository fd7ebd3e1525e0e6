//! What routing by model costs: the same completions through Envoy on a
//! listener whose route matches the model (Envoy reads the JSON body
//! before choosing the route) and on one whose route does not, to a
//! Service and to an InferencePool with its picker, interleaved at a fixed
//! rate, for each body size. The pool's rows against the Service's also
//! give what one ext_proc hop that reads the body costs, which is what a
//! separate body-based-routing server would add.

use std::time::{Duration, Instant};

use infergate_e2e::{Standalone, TempDir, epp, free_port, sim};

use crate::{completion_body, ms, server_and_pool_yaml};

/// The four ways to the same server, in the order they are sent.
const PATHS: [(&str, &str); 4] = [
    ("service", "Service, route without model match"),
    ("service", "Service, route by model"),
    ("pool", "InferencePool, route without model match"),
    ("pool", "InferencePool, route by model"),
];

pub fn run(requests: usize, rate: u32, sizes: &[usize]) -> anyhow::Result<()> {
    let work = TempDir::new("bench-models");
    let config = TempDir::new("bench-models-config");
    let port = free_port();
    let address = format!("127.0.0.71:{port}");
    let _sim = sim(
        &address,
        "bench",
        &work.0,
        &["--ttft-ms", "0", "--inter-token-ms", "0"],
    );
    let epp_port = free_port();
    let _epp = epp(epp_port, std::slice::from_ref(&address), &work.0);
    let (plain, by_model) = (free_port(), free_port());
    std::fs::write(
        config.0.join("all.yaml"),
        yaml(plain, by_model, port, epp_port),
    )?;
    let mut infergate = Standalone::start(
        &config.0,
        &work.0,
        free_port(),
        &["--enable-inference-extension"],
    );
    // (listener, path) of each of PATHS.
    let targets = [
        (plain, "/service/v1/completions"),
        (by_model, "/service/v1/completions"),
        (plain, "/pool/v1/completions"),
        (by_model, "/pool/v1/completions"),
    ];
    let send = |(listener, path): (u16, &str), body: &[u8]| {
        infergate_e2e::request(
            listener,
            "POST",
            path,
            &[("content-type", "application/json")],
            body,
        )
    };
    let small = completion_body(0);
    for target in targets {
        let ok = infergate_e2e::wait_until(Duration::from_secs(60), || {
            send(target, &small).is_some_and(|r| r.status == 200)
        });
        anyhow::ensure!(
            ok,
            "{target:?} never answered 200:\n{}",
            infergate.log_text()
        );
    }
    println!(
        "completions through Envoy, {requests} per path and size, {rate} requests/s, simulator delays 0"
    );
    println!(
        "{:>8} | {:>42} | {:>9} | {:>9}",
        "body", "path", "p50", "p99"
    );
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    for &size in sizes {
        let body = completion_body(size);
        let mut times: [Vec<Duration>; 4] = Default::default();
        let mut next = Instant::now();
        for i in 0..requests * PATHS.len() {
            let which = i % PATHS.len();
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            let started = Instant::now();
            let response = send(targets[which], &body);
            let elapsed = started.elapsed();
            anyhow::ensure!(
                response.as_ref().is_some_and(|r| r.status == 200),
                "{}: {response:?}",
                PATHS[which].1
            );
            times[which].push(elapsed);
        }
        let mut rows = vec![];
        for (which, (_, name)) in PATHS.iter().enumerate() {
            let p50 = quantile(&mut times[which], 0.5);
            let p99 = quantile(&mut times[which], 0.99);
            rows.push((p50, p99));
            println!(
                "{:>8} | {name:>42} | {:>9} | {:>9}",
                bytes(body.len()),
                ms(p50),
                ms(p99)
            );
        }
        let added = |a: (Duration, Duration), b: (Duration, Duration)| {
            format!(
                "{:>+6.2} ms | {:>+6.2} ms",
                millis(b.0) - millis(a.0),
                millis(b.1) - millis(a.1)
            )
        };
        println!(
            "{:>8} | {:>42} | {}",
            "",
            "added by model routing, Service",
            added(rows[0], rows[1])
        );
        println!(
            "{:>8} | {:>42} | {}",
            "",
            "added by model routing, InferencePool",
            added(rows[2], rows[3])
        );
        println!(
            "{:>8} | {:>42} | {}",
            "",
            "one ext_proc hop reading the body (picker)",
            added(rows[0], rows[2])
        );
    }
    infergate.stop();
    Ok(())
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bytes(n: usize) -> String {
    if n >= 1024 {
        format!("{} KB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// Gateway `gw` with two listeners: `plain` (routes without model matches)
/// and `models` (the same routes, matching the model); each sends
/// `/service` to a Service and `/pool` to an InferencePool with a picker,
/// both served by the one simulator.
fn yaml(plain: u16, by_model: u16, server: u16, epp: u16) -> String {
    let rules = |model: bool| {
        let header = if model {
            ", headers: [{name: X-Gateway-Model-Name, value: sim-model}]"
        } else {
            ""
        };
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /service}}{header}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: direct, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /pool}}{header}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}]
"
        )
    };
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
  listeners:
  - {{name: plain, port: {plain}, protocol: HTTP}}
  - {{name: models, port: {by_model}, protocol: HTTP}}
{backends}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: plain}}
spec:
  parentRefs: [{{name: gw, sectionName: plain}}]
  rules:
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: models}}
spec:
  parentRefs: [{{name: gw, sectionName: models}}]
  rules:
{}",
        rules(false),
        rules(true),
        backends = server_and_pool_yaml("127.0.0.71", server, epp),
    )
}
