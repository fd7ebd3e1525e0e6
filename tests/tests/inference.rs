//! InferencePool routing end to end: `infergate standalone` with the
//! inference extension on, a real Envoy, real endpoint pickers
//! (`infergate-epp`, TLS, test mode) and simulated model servers
//! (`infergate-sim`) on their own loopback addresses, as pods would be.
//! Local equivalents of the upstream conformance tests, and more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use infergate_e2e::pools::{addresses, picker_service, pods, pool, pool_ref, sims};
use infergate_e2e::{
    Process, Response, Standalone, TempDir, complete, epp, free_port, gateway_yaml, request,
    service_yaml, sim, wait_until,
};

const SELECT: &str = "test-epp-endpoint-selection";
const SERVED: &str = "x-conformance-test-served-endpoint";

/// An HTTPRoute `name` on Gateway `gw` for requests under /v1 with the
/// header `x-route: <name>`, to the backendRefs given as YAML flow mappings.
fn route(name: &str, backends: &[&str]) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: x-route, value: {name}}}]}}]
    backendRefs: [{}]
",
        backends.join(", ")
    )
}

/// POST a completion through the gateway on route `route`.
fn post(port: u16, route: &str, headers: &[(&str, &str)]) -> Option<Response> {
    let mut all = vec![("x-route", route)];
    all.extend_from_slice(headers);
    complete(port, "/v1/completions", &all)
}

/// A running scenario: the config directory, infergate with Envoy, and
/// the processes it needs. Dropping it stops everything.
struct Scenario {
    config: TempDir,
    work: TempDir,
    infergate: Standalone,
    port: u16,
    _processes: Vec<Process>,
}

impl Scenario {
    fn start(tag: &str, yaml: &str, processes: Vec<Process>, work: TempDir) -> Scenario {
        let config = TempDir::new(&format!("{tag}-config"));
        let port = free_port();
        std::fs::write(config.0.join("gateway.yaml"), gateway_yaml(port)).unwrap();
        std::fs::write(config.0.join("inference.yaml"), yaml).unwrap();
        let status = work.0.join("status.yaml");
        let infergate = Standalone::start(
            &config.0,
            &work.0,
            free_port(),
            &[
                "--enable-inference-extension",
                "--status-file",
                status.to_str().unwrap(),
            ],
        );
        Scenario {
            config,
            work,
            infergate,
            port,
            _processes: processes,
        }
    }

    /// Wait until route `route` answers 200 through Envoy.
    fn wait_serving(&self, route: &str) {
        assert!(
            wait_until(Duration::from_secs(30), || {
                post(self.port, route, &[]).is_some_and(|r| r.status == 200)
            }),
            "{route} never answered 200; infergate's log:\n{}\nlast answer: {:?}",
            self.infergate.log_text(),
            post(self.port, route, &[])
        );
    }

    fn statuses(&self) -> serde_yaml_ng::Value {
        let text = std::fs::read_to_string(self.work.0.join("status.yaml")).unwrap_or_default();
        serde_yaml_ng::from_str(&text).unwrap_or(serde_yaml_ng::Value::Null)
    }

    /// The pool's parent entries: gateway name -> [(type, status, reason)].
    fn pool_parents(&self, pool: &str) -> BTreeMap<String, Vec<(String, String, String)>> {
        let statuses = self.statuses();
        let mut out = BTreeMap::new();
        for entry in statuses["inference_pools"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if entry["pool"]["name"].as_str() != Some(pool) {
                continue;
            }
            for parent in entry["parents"].as_sequence().into_iter().flatten() {
                let conditions = parent["conditions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        (
                            c["condition_type"].as_str().unwrap_or("").to_string(),
                            c["status"].as_str().unwrap_or("").to_string(),
                            c["reason"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                out.insert(
                    parent["gateway"]["name"].as_str().unwrap_or("").to_string(),
                    conditions,
                );
            }
        }
        out
    }

    /// (type, status, reason) of a route's conditions on its first parent.
    fn route_conditions(&self, route: &str) -> Vec<(String, String, String)> {
        infergate_e2e::route_conditions(&self.work.0.join("status.yaml"), route)
            .into_iter()
            .map(|[kind, status, reason, _]| (kind, status, reason))
            .collect()
    }

    fn wait_statuses(&self, what: &str, mut check: impl FnMut(&Scenario) -> bool) {
        assert!(
            wait_until(Duration::from_secs(20), || check(self)),
            "statuses never showed {what}:\n{}",
            std::fs::read_to_string(self.work.0.join("status.yaml")).unwrap_or_default()
        );
    }
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.to_string(), s.to_string(), r.to_string())
}

#[test]
fn every_request_lands_on_the_endpoint_the_picker_chose() {
    let work = TempDir::new("inf-follow");
    let port = free_port();
    let ips = ["127.0.10.1", "127.0.10.2", "127.0.10.3"];
    let endpoints = addresses(&ips, port);
    let mut processes = sims("follow", &endpoints, &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    let yaml = [
        pool("primary", "follow", &[port], Some("FailClose"), ""),
        picker_service("primary", epp_port),
        pods("follow", &ips),
        route("llm", &[&pool_ref("primary", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-follow", &yaml, processes, work);
    scenario.wait_serving("llm");

    // 100 requests, 10 at a time, each steered to a random pod.
    let results: Vec<(String, Option<Response>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|t| {
                let endpoints = &endpoints;
                let port = scenario.port;
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let target = endpoints[(t * 7 + i * 3) % endpoints.len()].clone();
                            let ip = target.split(':').next().unwrap().to_string();
                            let response = post(port, "llm", &[(SELECT, &ip)]);
                            (target, response)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 100);
    for (target, response) in results {
        let response = response.expect("an answer");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            response.header("x-served-endpoint"),
            Some(target.as_str()),
            "served by the pod the picker chose"
        );
        // The served endpoint reached the picker on the response path.
        assert_eq!(response.header(SERVED), Some(target.as_str()));
    }
    scenario.wait_statuses("the pool accepted under gw", |s| {
        s.pool_parents("primary").get("gw")
            == Some(&vec![
                cond("Accepted", "True", "Accepted"),
                cond("ResolvedRefs", "True", "ResolvedRefs"),
            ])
    });
}

#[test]
fn a_pool_with_three_target_ports_routes_to_the_exact_ip_and_port() {
    let work = TempDir::new("inf-dp");
    let ip = "127.0.11.1";
    let ports = [free_port(), free_port(), free_port()];
    let endpoints: Vec<String> = ports.iter().map(|p| format!("{ip}:{p}")).collect();
    let mut processes = sims("dp", &endpoints, &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    let yaml = [
        pool("dp", "dp", &ports, Some("FailClose"), ""),
        picker_service("dp", epp_port),
        pods("dp", &[ip]),
        route("llm", &[&pool_ref("dp", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-dp", &yaml, processes, work);
    scenario.wait_serving("llm");
    for _ in 0..2 {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let response = post(scenario.port, "llm", &[(SELECT, endpoint)]).unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(
                response.header("x-served-by"),
                Some(format!("dp-{i}").as_str())
            );
        }
    }
}

#[test]
fn a_weighted_split_across_two_pools_calls_each_pools_own_picker() {
    let work = TempDir::new("inf-weighted");
    let port = free_port();
    let a = addresses(&["127.0.12.1", "127.0.12.2"], port);
    let b = addresses(&["127.0.12.3", "127.0.12.4"], port);
    let mut processes = sims("a", &a, &work.0, &[]);
    processes.extend(sims("b", &b, &work.0, &[]));
    let (epp_a, epp_b) = (free_port(), free_port());
    processes.push(epp(epp_a, &a, &work.0));
    processes.push(epp(epp_b, &b, &work.0));
    let yaml = [
        pool("pool-a", "a", &[port], Some("FailClose"), ""),
        pool("pool-b", "b", &[port], Some("FailClose"), ""),
        picker_service("pool-a", epp_a),
        picker_service("pool-b", epp_b),
        pods("a", &["127.0.12.1", "127.0.12.2"]),
        pods("b", &["127.0.12.3", "127.0.12.4"]),
        route(
            "llm",
            &[
                &pool_ref("pool-a", ", weight: 70"),
                &pool_ref("pool-b", ", weight: 30"),
            ],
        ),
    ]
    .concat();
    let scenario = Scenario::start("inf-weighted", &yaml, processes, work);
    scenario.wait_serving("llm");
    let n = 200;
    let mut to_a = 0;
    for _ in 0..n {
        let response = post(scenario.port, "llm", &[]).unwrap();
        assert_eq!(response.status, 200, "{response:?}");
        let served = response.header("x-served-endpoint").unwrap().to_string();
        // The picker that answered is the one of the pool that served.
        assert_eq!(response.header(SERVED), Some(served.as_str()));
        if a.contains(&served) {
            to_a += 1;
        } else {
            assert!(b.contains(&served), "{served} is in neither pool");
        }
    }
    let share = to_a as f64 / n as f64;
    let sigma = (0.7 * 0.3 / n as f64).sqrt();
    assert!(
        (share - 0.7).abs() <= (4.5 * sigma).max(0.10),
        "pool-a got {to_a} of {n}"
    );
}

#[test]
fn fail_open_serves_without_the_picker_and_fail_close_answers_5xx() {
    let work = TempDir::new("inf-failure");
    let port = free_port();
    let open = addresses(&["127.0.13.1", "127.0.13.2"], port);
    let close = addresses(&["127.0.13.3"], port);
    let mut processes = sims("open", &open, &work.0, &[]);
    processes.extend(sims("close", &close, &work.0, &[]));
    let (epp_open, epp_close) = (free_port(), free_port());
    let mut picker_open = epp(epp_open, &open, &work.0);
    let mut picker_close = epp(epp_close, &close, &work.0);
    let yaml = [
        pool("open", "open", &[port], Some("FailOpen"), ""),
        pool("close", "close", &[port], Some("FailClose"), ""),
        picker_service("open", epp_open),
        picker_service("close", epp_close),
        pods("open", &["127.0.13.1", "127.0.13.2"]),
        pods("close", &["127.0.13.3"]),
        route("open", &[&pool_ref("open", "")]),
        route("close", &[&pool_ref("close", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-failure", &yaml, processes, work);
    scenario.wait_serving("open");
    scenario.wait_serving("close");
    // With the pickers up, the fail-open pool follows its picker too.
    let steered = post(scenario.port, "open", &[(SELECT, "127.0.13.2")]).unwrap();
    assert_eq!(steered.header("x-served-endpoint"), Some(open[1].as_str()));

    picker_open.kill();
    picker_close.kill();
    for _ in 0..10 {
        let response = post(scenario.port, "open", &[]).unwrap();
        assert_eq!(
            response.status, 200,
            "FailOpen with the picker down: {response:?}"
        );
        let served = response.header("x-served-endpoint").unwrap();
        assert!(
            open.iter().any(|a| a == served),
            "{served} is not in the pool"
        );
        let response = post(scenario.port, "close", &[]).unwrap();
        assert!(
            (500..600).contains(&response.status),
            "FailClose with the picker down: {response:?}"
        );
    }
}

#[test]
fn a_client_cannot_choose_its_endpoint_with_the_protocol_headers() {
    let work = TempDir::new("inf-steer");
    let port = free_port();
    let endpoints = addresses(&["127.0.14.1", "127.0.14.2"], port);
    let mut processes = sims("steer", &endpoints, &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    // A server outside the pool that a client would like to reach.
    let outside = infergate_e2e::NamedServer::start("outside");
    let yaml = [
        pool("pool", "steer", &[port], Some("FailClose"), ""),
        picker_service("pool", epp_port),
        pods("steer", &["127.0.14.1", "127.0.14.2"]),
        route("llm", &[&pool_ref("pool", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-steer", &yaml, processes, work);
    scenario.wait_serving("llm");
    let outside_address = format!("127.0.0.1:{}", outside.port);
    for forged in [endpoints[1].as_str(), outside_address.as_str()] {
        for _ in 0..4 {
            let response = post(
                scenario.port,
                "llm",
                &[
                    (SELECT, "127.0.14.1"),
                    ("x-gateway-destination-endpoint", forged),
                    ("x-gateway-destination-endpoint-subset", forged),
                ],
            )
            .unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(
                response.header("x-served-endpoint"),
                Some(endpoints[0].as_str()),
                "the forged {forged} must not steer"
            );
        }
    }
}

#[test]
fn invalid_references_get_500_and_say_why_and_ports_on_pool_refs_are_ignored() {
    let work = TempDir::new("inf-refs");
    let port = free_port();
    let endpoints = addresses(&["127.0.15.1", "127.0.15.2"], port);
    let mut processes = sims("refs", &endpoints, &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    let plain = infergate_e2e::NamedServer::start("plain");
    let yaml = [
        pool("good", "refs", &[port], Some("FailClose"), ""),
        picker_service("good", epp_port),
        pool("no-picker", "refs", &[port], None, ""),
        pool("bad-picker", "refs", &[port], Some("FailOpen"), ""),
        pods("refs", &["127.0.15.1", "127.0.15.2"]),
        route("port-unset", &[&pool_ref("good", "")]),
        route("port-3000", &[&pool_ref("good", ", port: 3000")]),
        route("port-8888", &[&pool_ref("good", ", port: 8888")]),
        route("missing", &[&pool_ref("nowhere", "")]),
        route("no-picker", &[&pool_ref("no-picker", "")]),
        route("bad-picker", &[&pool_ref("bad-picker", "")]),
        service_yaml("plain", plain.port),
        route("plain", &["{name: plain, port: 80}"]),
    ]
    .concat();
    let scenario = Scenario::start("inf-refs", &yaml, processes, work);
    scenario.wait_serving("port-unset");
    for path in ["port-3000", "port-8888", "no-picker"] {
        let response = post(scenario.port, path, &[]).unwrap();
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert!(
            endpoints
                .iter()
                .any(|e| Some(e.as_str()) == response.header("x-served-endpoint"))
        );
    }
    for path in ["missing", "bad-picker"] {
        let response = post(scenario.port, path, &[]).unwrap();
        assert_eq!(response.status, 500, "{path}: {response:?}");
    }
    // A plain Service on the same Gateway never goes through a picker.
    let response = infergate_e2e::get(scenario.port, "/v1/x", &[("x-route", "plain")]).unwrap();
    assert_eq!((response.0, response.1.as_str()), (200, "plain"));
    // In test mode the picker marks every response it sees; this one has
    // no mark.
    let response = request(scenario.port, "GET", "/v1/x", &[("x-route", "plain")], b"").unwrap();
    assert_eq!(response.header(SERVED), None, "{response:?}");

    scenario.wait_statuses("the references' conditions", |s| {
        s.route_conditions("missing")
            .contains(&cond("ResolvedRefs", "False", "BackendNotFound"))
            && s.pool_parents("bad-picker")
                .get("gw")
                .is_some_and(|c| c.contains(&cond("ResolvedRefs", "False", "InvalidExtensionRef")))
            && s.pool_parents("no-picker")
                .get("gw")
                .is_some_and(|c| c.contains(&cond("Accepted", "True", "Accepted")))
            && s.route_conditions("port-8888").contains(&cond(
                "ResolvedRefs",
                "True",
                "ResolvedRefs",
            ))
    });

    // Deleting the routes to a pool removes its parent entry.
    let remaining = [
        pool("good", "refs", &[port], Some("FailClose"), ""),
        picker_service("good", epp_port),
        pool("no-picker", "refs", &[port], None, ""),
        pods("refs", &["127.0.15.1", "127.0.15.2"]),
        route("port-unset", &[&pool_ref("good", "")]),
    ]
    .concat();
    std::fs::write(scenario.config.0.join("inference.yaml"), remaining).unwrap();
    scenario.wait_statuses("no-picker without parents", |s| {
        s.pool_parents("no-picker").is_empty() && !s.pool_parents("good").is_empty()
    });
}

#[test]
fn large_prompts_streaming_responses_and_h2c_pools() {
    let work = TempDir::new("inf-stream");
    let port = free_port();
    let endpoints = addresses(&["127.0.16.1"], port);
    let mut processes = vec![sim(
        &endpoints[0],
        "stream",
        &work.0,
        &["--inter-token-ms", "100"],
    )];
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    // Completions go to an HTTP/1.1 pool, chat completions to an h2c pool
    // of the same (h2c-capable) server.
    let yaml = [
        pool("http", "stream", &[port], Some("FailClose"), ""),
        pool(
            "h2c",
            "stream",
            &[port],
            Some("FailClose"),
            "  appProtocol: kubernetes.io/h2c\n",
        ),
        picker_service("http", epp_port),
        picker_service("h2c", epp_port),
        pods("stream", &["127.0.16.1"]),
        route("http", &[&pool_ref("http", "")]),
        route("h2c", &[&pool_ref("h2c", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-stream", &yaml, processes, work);
    scenario.wait_serving("http");
    let chat =
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    assert!(
        wait_until(Duration::from_secs(20), || {
            request(
                scenario.port,
                "POST",
                "/v1/chat/completions",
                &[("x-route", "h2c")],
                chat.as_bytes(),
            )
            .is_some_and(|r| r.status == 200)
        }),
        "the h2c pool never answered"
    );
    let over_h2c = request(
        scenario.port,
        "POST",
        "/v1/chat/completions",
        &[("x-route", "h2c")],
        chat.as_bytes(),
    )
    .unwrap();
    assert_eq!(over_h2c.header("x-request-protocol"), Some("HTTP/2.0"));
    let over_http1 = post(scenario.port, "http", &[]).unwrap();
    assert_eq!(over_http1.header("x-request-protocol"), Some("HTTP/1.1"));

    // A 1 MiB prompt goes through the picker and reaches the model server.
    let prompt = "y".repeat(1 << 20);
    let body = format!(r#"{{"model":"sim-model","prompt":"{prompt}","max_tokens":1}}"#);
    let response = request(
        scenario.port,
        "POST",
        "/v1/completions",
        &[("x-route", "http")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        &response.body[..response.body.len().min(300)]
    );
    let usage: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    // The simulator counts four characters a token: the whole prompt arrived.
    assert_eq!(usage["usage"]["prompt_tokens"], (1 << 20) / 4, "{usage}");

    // Streamed tokens arrive one by one through the h2c pool, not at the end.
    use std::io::{Read, Write};
    let stream_body = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#;
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", scenario.port)).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: example.com\r\nx-route: h2c\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{stream_body}",
        stream_body.len()
    )
    .unwrap();
    let started = Instant::now();
    let mut arrivals = vec![];
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = socket.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buffer[..n]);
        arrivals.push(started.elapsed());
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("x-served-by: stream"), "{text}");
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        arrivals.len() >= 3 && spread >= Duration::from_millis(250),
        "tokens should arrive over time: {arrivals:?}"
    );
}

#[test]
fn two_gateways_each_route_to_their_own_pool() {
    let work = TempDir::new("inf-two-gw");
    let port = free_port();
    let primary = addresses(&["127.0.17.1"], port);
    let secondary = addresses(&["127.0.17.2"], port);
    let mut processes = sims("primary", &primary, &work.0, &[]);
    processes.extend(sims("secondary", &secondary, &work.0, &[]));
    let (epp_1, epp_2) = (free_port(), free_port());
    processes.push(epp(epp_1, &primary, &work.0));
    processes.push(epp(epp_2, &secondary, &work.0));
    let second_port = free_port();
    let yaml = [
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw2}}
spec:
  gatewayClassName: infergate
  listeners: [{{name: http, port: {second_port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: llm2}}
spec:
  parentRefs: [{{name: gw2}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
    backendRefs: [{}]
",
            pool_ref("secondary", "")
        ),
        pool("primary", "primary", &[port], Some("FailClose"), ""),
        pool("secondary", "secondary", &[port], Some("FailClose"), ""),
        picker_service("primary", epp_1),
        picker_service("secondary", epp_2),
        pods("primary", &["127.0.17.1"]),
        pods("secondary", &["127.0.17.2"]),
        route("llm", &[&pool_ref("primary", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-two-gw", &yaml, processes, work);
    scenario.wait_serving("llm");
    assert!(
        wait_until(Duration::from_secs(30), || {
            complete(second_port, "/v1/completions", &[]).is_some_and(|r| r.status == 200)
        }),
        "the second Gateway never served"
    );
    for _ in 0..5 {
        let first = post(scenario.port, "llm", &[]).unwrap();
        assert_eq!(first.header("x-served-endpoint"), Some(primary[0].as_str()));
        let second = complete(second_port, "/v1/completions", &[]).unwrap();
        assert_eq!(
            second.header("x-served-endpoint"),
            Some(secondary[0].as_str())
        );
    }
    scenario.wait_statuses("each pool under its own Gateway", |s| {
        s.pool_parents("primary").keys().collect::<Vec<_>>() == ["gw"]
            && s.pool_parents("secondary").keys().collect::<Vec<_>>() == ["gw2"]
    });
}

/// Prefix affinity through Envoy: completions that share a long system
/// prompt all go to the model server the first of them went to (its
/// prefix cache holds the prompt: the simulator's prefix-cache hits show
/// it), while unrelated prompts are spread over the pool.
#[test]
fn prompts_sharing_a_prefix_go_where_it_is_cached() {
    let work = TempDir::new("inf-prefix");
    let port = free_port();
    let ips = ["127.0.10.41", "127.0.10.42", "127.0.10.43"];
    let endpoints = addresses(&ips, port);
    let mut processes = sims("prefix", &endpoints, &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    let yaml = [
        pool("affine", "prefix", &[port], Some("FailClose"), ""),
        picker_service("affine", epp_port),
        pods("prefix", &ips),
        route("llm", &[&pool_ref("affine", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-prefix", &yaml, processes, work);
    scenario.wait_serving("llm");

    let ask = |prompt: &str| -> String {
        let body = serde_json::json!({"model": "sim-model", "prompt": prompt, "max_tokens": 2})
            .to_string();
        let response = infergate_e2e::request(
            scenario.port,
            "POST",
            "/v1/completions",
            &[("x-route", "llm"), ("content-type", "application/json")],
            body.as_bytes(),
        )
        .expect("an answer");
        assert_eq!(response.status, 200, "{response:?}");
        response
            .header("x-served-endpoint")
            .unwrap_or_default()
            .to_string()
    };
    let system = "You are the assistant of a Kubernetes gateway's documentation. ".repeat(30);
    let home = ask(&format!("{system}How do I route to a pool?"));
    for n in 0..8 {
        assert_eq!(
            ask(&format!("{system}Question {n}: what does the picker do?")),
            home,
            "a prompt sharing the system prompt left the server that has it cached"
        );
    }
    let spread: std::collections::BTreeSet<String> = (0..9)
        .map(|n| {
            ask(&format!(
                "{n}: an unrelated prompt of its own, {}",
                "w".repeat(100)
            ))
        })
        .collect();
    assert!(spread.len() > 1, "unrelated prompts all went to {spread:?}");
    // The server that got the shared prompts found it in its prefix cache.
    let (ip, sim_port) = home.split_once(':').unwrap();
    let metrics = infergate_e2e::request_at(
        ip,
        sim_port.parse().unwrap(),
        "sim",
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .expect("the simulator's metrics")
    .body;
    let hits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("vllm:prefix_cache_hits_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("vllm:prefix_cache_hits_total");
    assert!(
        hits >= 8.0 * system.len() as f64 / 4.0 * 0.9,
        "prefix-cache hits {hits}"
    );
}

/// A model server dies under steady traffic: requests the picker sent to it
/// are retried by Envoy on the picker's next endpoint (the fallbacks of
/// `x-gateway-destination-endpoint`), so no request fails, though the
/// picker keeps choosing the dead server until its metrics go stale.
#[test]
fn a_model_server_killed_under_traffic_fails_no_request() {
    let work = TempDir::new("inf-retry");
    let port = free_port();
    let ips = ["127.0.10.51", "127.0.10.52", "127.0.10.53"];
    let endpoints = addresses(&ips, port);
    let mut processes = sims("retry", &endpoints[..2], &work.0, &[]);
    let mut victim = infergate_e2e::sim(&endpoints[2], "retry-2", &work.0, &[]);
    let epp_port = free_port();
    processes.push(epp(epp_port, &endpoints, &work.0));
    let yaml = [
        pool("steady", "retry", &[port], Some("FailClose"), ""),
        picker_service("steady", epp_port),
        pods("retry", &ips),
        route("llm", &[&pool_ref("steady", "")]),
    ]
    .concat();
    let scenario = Scenario::start("inf-retry", &yaml, processes, work);
    scenario.wait_serving("llm");
    // Until the victim has served, so that the picker counts it in.
    assert!(
        infergate_e2e::wait_until(Duration::from_secs(10), || (0..6).any(|_| {
            post(scenario.port, "llm", &[])
                .and_then(|r| r.header("x-served-endpoint").map(str::to_string))
                .as_deref()
                == Some(endpoints[2].as_str())
        })),
        "the third server never served"
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (served_by_victim_before, failures, total) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut outcomes = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        outcomes.push(post(scenario.port, "llm", &[]));
                    }
                    outcomes
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        victim.kill();
        // Longer than the picker's metrics staleness (2 s): the dead
        // server is picked, then not any more.
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let outcomes: Vec<Option<Response>> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        let victim_served = outcomes
            .iter()
            .flatten()
            .filter(|r| r.header("x-served-endpoint") == Some(endpoints[2].as_str()))
            .count();
        let failures: Vec<String> = outcomes
            .iter()
            .filter(|r| r.as_ref().is_none_or(|r| r.status != 200))
            .map(|r| format!("{:?}", r.as_ref().map(|r| (r.status, r.body.clone()))))
            .collect();
        (victim_served, failures, outcomes.len())
    });
    assert!(
        served_by_victim_before > 0,
        "the victim served nothing before it died"
    );
    assert!(total > 50, "only {total} requests");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed when a model server died: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
