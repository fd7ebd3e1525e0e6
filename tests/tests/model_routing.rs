//! Routing by the model a request names, end to end: one Gateway, one
//! path, two InferencePools of simulators serving different models (each
//! with its own endpoint picker), HTTPRoutes that match
//! `X-Gateway-Model-Name`; a real Envoy reads the model from the JSON body.
//! Called with the official OpenAI client as an application would, and with
//! raw HTTP for what a client library would not send.

use std::time::Duration;

use infergate_e2e::pools::{addresses, picker_service, pods, pool, pool_ref, sims};
use infergate_e2e::{
    NamedServer, Process, Response, Standalone, TempDir, epp, epp_with, free_port, gateway_yaml,
    request, request_h2c, service_yaml, wait_until,
};
use serde_json::{Value, json};

use infergate_e2e::models::{LLAMA, LLAMA_ADAPTERS, QWEN};

/// Gateway `gw` with two pools behind one path: `llama` (two simulators of
/// llama-3-70b with two LoRA adapters, a FailClose picker) and `qwen` (two
/// of qwen-2.5, a FailOpen picker, whose body Envoy buffers); a route per
/// model, one for the adapters by regular expression, and `/fallback` to a
/// plain Service without a model match.
struct ModelGateway {
    _config: TempDir,
    _work: TempDir,
    infergate: Standalone,
    port: u16,
    /// The llama pool picker's /metrics port.
    llama_metrics: u16,
    _processes: Vec<Process>,
    _web: NamedServer,
}

impl ModelGateway {
    fn start(tag: &str, flags: &[&str]) -> ModelGateway {
        Self::start_with(tag, flags, "")
    }

    /// With `extra` YAML in the configuration besides.
    fn start_with(tag: &str, flags: &[&str], extra: &str) -> ModelGateway {
        let work = TempDir::new(tag);
        let sim_port = free_port();
        let llama = addresses(&["127.0.30.1", "127.0.30.2"], sim_port);
        let qwen = addresses(&["127.0.30.3", "127.0.30.4"], sim_port);
        let mut processes = sims(
            "llama",
            &llama,
            &work.0,
            &["--model", LLAMA, "--lora", LLAMA_ADAPTERS],
        );
        processes.extend(sims("qwen", &qwen, &work.0, &["--model", QWEN]));
        let (llama_epp, qwen_epp) = (free_port(), free_port());
        // Test mode: a request may name its endpoint, and the picker says
        // on the response which endpoint served (so a test sees it ran).
        let llama_metrics = free_port();
        processes.push(epp_with(
            llama_epp,
            &llama,
            &work.0,
            &[
                "--test-header-steering",
                "--metrics-port",
                &llama_metrics.to_string(),
            ],
        ));
        processes.push(epp(qwen_epp, &qwen, &work.0));
        let web = NamedServer::start("web");
        let port = free_port();
        let model_rule = |name: &str, kind: &str, value: &str, pool: &str| {
            format!(
                "  - name: {name}
    matches:
    - path: {{type: PathPrefix, value: /v1}}
      headers: [{{type: {kind}, name: X-Gateway-Model-Name, value: \"{value}\"}}]
    backendRefs: [{}]
",
                pool_ref(pool, "")
            )
        };
        let yaml = [
            gateway_yaml(port),
            pool("llama", "llama", &[sim_port], Some("FailClose"), ""),
            picker_service("llama", llama_epp),
            pods("llama", &["127.0.30.1", "127.0.30.2"]),
            pool("qwen", "qwen", &[sim_port], Some("FailOpen"), ""),
            picker_service("qwen", qwen_epp),
            pods("qwen", &["127.0.30.3", "127.0.30.4"]),
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: models}
spec:
  parentRefs: [{name: gw}]
  rules:
"
            .to_string(),
            model_rule("llama", "Exact", LLAMA, "llama"),
            model_rule(
                "adapters",
                "RegularExpression",
                "llama-3-70b-.*-lora",
                "llama",
            ),
            model_rule("qwen", "Exact", QWEN, "qwen"),
            service_yaml("web", web.port),
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: fallback}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /fallback}}]
    backendRefs: [{name: web, port: 80}]
"
            .to_string(),
            extra.to_string(),
        ]
        .concat();
        let config = TempDir::new(&format!("{tag}-config"));
        std::fs::write(config.0.join("gateway.yaml"), yaml).unwrap();
        let mut args = vec!["--enable-inference-extension"];
        args.extend_from_slice(flags);
        let infergate = Standalone::start(&config.0, &work.0, free_port(), &args);
        let gateway = ModelGateway {
            _config: config,
            _work: work,
            infergate,
            port,
            llama_metrics,
            _processes: processes,
            _web: web,
        };
        for model in [LLAMA, QWEN] {
            assert!(
                wait_until(Duration::from_secs(30), || gateway
                    .complete(model, "Hello")
                    .is_some_and(|r| r.status == 200)),
                "{model} never answered 200; infergate's log:\n{}\nlast answer: {:?}",
                gateway.infergate.log_text(),
                gateway.complete(model, "Hello"),
            );
        }
        gateway
    }

    /// A JSON POST to /v1/completions through the gateway.
    fn post(&self, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
        let mut all = vec![("content-type", content_type)];
        all.extend_from_slice(headers);
        request(self.port, "POST", "/v1/completions", &all, body).expect("an answer")
    }

    fn complete(&self, model: &str, prompt: &str) -> Option<Response> {
        let body = json!({"model": model, "prompt": prompt, "max_tokens": 1}).to_string();
        request(
            self.port,
            "POST",
            "/v1/completions",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }
}

fn json_body(response: &Response) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"))
}

/// Pools `llama` (llama-3-70b and its adapters) and `qwen` (qwen-2.5)
/// behind one path: see [`infergate_e2e::models::check_openai_client`].
#[test]
fn each_model_reaches_only_its_pool_through_the_openai_client() {
    let gateway = ModelGateway::start("model-client", &[]);
    infergate_e2e::models::check_openai_client(&format!("127.0.0.1:{}", gateway.port), &[], || {
        gateway.infergate.log_text()
    });
}

#[test]
fn the_picker_of_the_models_pool_chooses_after_the_model_is_read() {
    let gateway = ModelGateway::start("model-picker", &[]);
    for (model, ip, server) in [
        (LLAMA, "127.0.30.2", "llama-1"),
        (LLAMA, "127.0.30.1", "llama-0"),
        (QWEN, "127.0.30.4", "qwen-1"),
        ("llama-3-70b-chat-lora", "127.0.30.1", "llama-0"),
    ] {
        let body = json!({"model": model, "prompt": "Hello", "max_tokens": 1}).to_string();
        let response = gateway.post(
            "application/json",
            body.as_bytes(),
            &[("test-epp-endpoint-selection", ip)],
        );
        assert_eq!(response.status, 200, "{model}: {response:?}");
        assert_eq!(response.header("x-served-by"), Some(server), "{model}");
        assert_eq!(
            response.header("x-conformance-test-served-endpoint"),
            response.header("x-served-endpoint"),
            "{model}: the pool's picker ran on the way back too"
        );
    }
    // An endpoint of the other pool is not the llama picker's to choose.
    let body = json!({"model": LLAMA, "prompt": "Hello", "max_tokens": 1}).to_string();
    let response = gateway.post(
        "application/json",
        body.as_bytes(),
        &[("test-epp-endpoint-selection", "127.0.30.3")],
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("x-served-by")
            .is_some_and(|s| s.starts_with("llama-")),
        "{response:?}"
    );
}

#[test]
fn bodies_that_name_no_served_model_get_an_openai_error_and_other_routes_still_apply() {
    // A small bound, so that the test's bodies cross it cheaply.
    let gateway = ModelGateway::start("model-errors", &["--model-routing-max-body-bytes=262144"]);
    let no_route = |response: &Response, what: &str| {
        assert_eq!(response.status, 404, "{what}: {response:?}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let body = json_body(response);
        assert_eq!(body["error"]["code"], "model_not_found", "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
        assert!(
            response.header("x-served-by").is_none(),
            "{what}: Envoy answered"
        );
        body
    };
    let json = "application/json";
    no_route(&gateway.post(json, b"this is not JSON", &[]), "not JSON");
    no_route(
        &gateway.post(json, br#"{"prompt": "no model here"}"#, &[]),
        "no model field",
    );
    no_route(
        &gateway.post("text/plain", br#"{"model": "llama-3-70b"}"#, &[]),
        "not declared JSON: not read",
    );
    let named = no_route(
        &gateway.post(json, br#"{"model": "mistral-7b"}"#, &[]),
        "unknown",
    );
    assert!(
        named["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`mistral-7b`"),
        "{named}"
    );
    // A name JSON would need to escape is not repeated, and the answer stays JSON.
    no_route(
        &gateway.post(json, br#"{"model": "a\"b"}"#, &[]),
        "a quote in the model",
    );

    // Parameters in the content type are fine.
    let response = gateway.post(
        "application/json; charset=utf-8",
        br#"{"model": "qwen-2.5", "prompt": "hi", "max_tokens": 1}"#,
        &[],
    );
    assert_eq!(response.status, 200, "{response:?}");

    // Over the bound: 413 in the same shape, whatever the model.
    let big = json!({"model": LLAMA, "prompt": "x".repeat(300_000)}).to_string();
    let response = gateway.post(json, big.as_bytes(), &[]);
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(json_body(&response)["error"]["code"], "request_too_large");
    // HTTP/2 too (Envoy bounds it by the stream's window, not the
    // listener's buffer), and a body under the bound still passes.
    let h2 = |body: &str| {
        request_h2c(
            gateway.port,
            "POST",
            "/v1/completions",
            &[("content-type", json)],
            body.as_bytes(),
        )
        .expect("an HTTP/2 answer")
    };
    let response = h2(&big);
    assert_eq!(response.status, 413, "HTTP/2: {response:?}");
    assert_eq!(json_body(&response)["error"]["code"], "request_too_large");
    let under = json!({"model": QWEN, "prompt": "x".repeat(200_000), "max_tokens": 1}).to_string();
    let response = h2(&under);
    assert_eq!(response.status, 200, "HTTP/2 under the bound: {response:?}");
    assert!(response.header("x-served-by").unwrap().starts_with("qwen-"));

    // A route without a model match takes any body, JSON or not.
    let response = request(
        gateway.port,
        "POST",
        "/fallback/upload",
        &[("content-type", "application/octet-stream")],
        &vec![7u8; 100_000],
    )
    .expect("an answer");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-served-by"), Some("web"));
    let response = request(
        gateway.port,
        "POST",
        "/fallback",
        &[("content-type", json)],
        br#"{"model": "mistral-7b"}"#,
    )
    .expect("an answer");
    assert_eq!(response.header("x-served-by"), Some("web"), "{response:?}");

    // GET /v1/models, in the OpenAI list shape, answered by Envoy.
    let response = request(gateway.port, "GET", "/v1/models", &[], b"").expect("an answer");
    assert_eq!(response.status, 200);
    let list = json_body(&response);
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [LLAMA, QWEN]);
}

/// The llama picker's per-model series: (labels, value) of `name`.
fn series(gateway: &ModelGateway, name: &str) -> Vec<(String, f64)> {
    let (status, _, body) =
        infergate_e2e::get(gateway.llama_metrics, "/metrics", &[]).expect("the picker's metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels[name.len()..].to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with labels containing every one of `labels`.
fn value(gateway: &ModelGateway, name: &str, labels: &[&str]) -> f64 {
    series(gateway, name)
        .into_iter()
        .filter(|(l, _)| labels.iter().all(|want| l.contains(want)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn the_picker_counts_requests_tokens_and_times_per_model() {
    let gateway = ModelGateway::start("model-metrics", &[]);
    let llama = r#"model_name="llama-3-70b",target_model_name="llama-3-70b""#;
    // The warm-up requests counted already: figures are compared to these.
    let llama_series = [
        "inference_objective_request_total",
        "inference_objective_input_tokens_sum",
        "inference_objective_output_tokens_sum",
        "inference_objective_output_tokens_count",
        "inference_objective_request_ttft_seconds_count",
        "inference_objective_request_tpot_seconds_count",
        "inference_objective_request_duration_seconds_count",
    ];
    let before: Vec<f64> = llama_series
        .iter()
        .map(|name| value(&gateway, name, &[llama]))
        .collect();
    let send = |body: Value| gateway.post("application/json", body.to_string().as_bytes(), &[]);
    // Three whole completions of 2 tokens, prompt "Hello" (2 tokens of 4 bytes).
    for _ in 0..3 {
        let response = send(json!({"model": LLAMA, "prompt": "Hello", "max_tokens": 2}));
        assert_eq!(response.status, 200, "{response:?}");
    }
    // Two streamed chats of 3 tokens that did not ask for the usage: the
    // picker asks for it and takes its chunk out again.
    for _ in 0..2 {
        let response = send(json!({"model": LLAMA, "max_tokens": 3, "stream": true,
                                   "messages": [{"role": "user", "content": "Hello"}]}));
        assert_eq!(response.status, 200, "{response:?}");
        assert!(response.body.contains("data: [DONE]"), "{}", response.body);
        assert!(
            !response.body.contains("\"usage\""),
            "a usage chunk the client did not ask for: {}",
            response.body
        );
    }
    // One that asked: it keeps its usage chunk.
    let response = send(json!({"model": LLAMA, "max_tokens": 3, "stream": true,
                               "stream_options": {"include_usage": true},
                               "messages": [{"role": "user", "content": "Hello"}]}));
    assert!(
        response.body.contains("\"completion_tokens\":3"),
        "{}",
        response.body
    );
    // An adapter reached by the regular expression: labelled "other".
    let response =
        send(json!({"model": "llama-3-70b-sql-lora", "prompt": "Hello", "max_tokens": 1}));
    assert_eq!(response.status, 200, "{response:?}");

    let added: Vec<f64> = llama_series
        .iter()
        .zip(&before)
        .map(|(name, before)| value(&gateway, name, &[llama]) - before)
        .collect();
    assert_eq!(
        added,
        [
            6.0,
            // Prompts: 3 x "Hello" (2 tokens of 4 bytes), 3 x "user: Hello\n" (3).
            3.0 * 2.0 + 3.0 * 3.0,
            3.0 * 2.0 + 3.0 * 3.0,
            6.0,
            // Times to the first token and per output token: streamed only.
            3.0,
            3.0,
            6.0,
        ],
        "{llama_series:?}"
    );
    assert_eq!(
        value(
            &gateway,
            "inference_objective_request_total",
            &[r#"model_name="other",target_model_name="other""#]
        ),
        1.0,
        "the adapter, which no route names"
    );
    assert_eq!(
        value(&gateway, "inference_objective_request_error_total", &[]),
        0.0
    );
    assert_eq!(
        value(&gateway, "inference_objective_running_requests", &[]),
        0.0
    );

    // A model the server refuses: an error, by its status.
    let response = gateway.post(
        "application/json",
        br#"{"model": "llama-3-70b-nope-lora", "prompt": "Hello"}"#,
        &[],
    );
    assert_eq!(
        response.status, 404,
        "the simulator's own 404: {response:?}"
    );
    assert_eq!(
        value(
            &gateway,
            "inference_objective_request_error_total",
            &[r#"error_code="404""#]
        ),
        1.0
    );
}

/// Public names served under others (InferenceModelRewrite): `assistant`
/// on the llama pool as llama-3-70b 90% and its sql adapter 10% (the
/// picker's split); `chat` split 90/10 across the two pools by the route
/// (Envoy's split), each pool serving it under its own model.
const REWRITES: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: aliases}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /v1}
      headers: [{name: X-Gateway-Model-Name, value: assistant}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: llama}]
  - matches:
    - path: {type: PathPrefix, value: /v1}
      headers: [{name: X-Gateway-Model-Name, value: chat}]
    backendRefs:
    - {group: inference.networking.k8s.io, kind: InferencePool, name: llama, weight: 90}
    - {group: inference.networking.k8s.io, kind: InferencePool, name: qwen, weight: 10}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: llama-names}
spec:
  poolRef: {name: llama}
  rules:
  - matches: [{model: {value: assistant}}]
    targets:
    - {modelRewrite: llama-3-70b, weight: 90}
    - {modelRewrite: llama-3-70b-sql-lora, weight: 10}
  - matches: [{model: {value: chat}}]
    targets: [{modelRewrite: llama-3-70b}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: qwen-names}
spec:
  poolRef: {name: qwen}
  rules:
  - matches: [{model: {value: chat}}]
    targets: [{modelRewrite: qwen-2.5}]
";

/// `requests` completions for `model` through the gateway, 8 at a time:
/// every answer, in no order.
fn many(gateway: &ModelGateway, model: &str, requests: usize, stream: bool) -> Vec<Response> {
    let body =
        json!({"model": model, "prompt": "Hello", "max_tokens": 2, "stream": stream}).to_string();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let body = &body;
                s.spawn(move || {
                    (t..requests)
                        .step_by(8)
                        .map(|_| gateway.post("application/json", body.as_bytes(), &[]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

#[test]
fn a_public_name_is_served_under_its_rewrites_and_answered_under_its_own() {
    let gateway = ModelGateway::start_with("model-rewrites", &[], REWRITES);
    let served = |labels: &str| {
        value(
            &gateway,
            "inference_objective_request_total",
            &[r#"model_name="assistant""#, labels],
        )
    };
    assert!(
        wait_until(Duration::from_secs(20), || gateway
            .complete("assistant", "Hello")
            .is_some_and(|r| r.status == 200)),
        "assistant is not served: {:?}\n{}",
        gateway.complete("assistant", "Hello"),
        gateway.infergate.log_text()
    );
    let (base_before, lora_before) = (
        served(r#"target_model_name="llama-3-70b""#),
        served(r#"target_model_name="llama-3-70b-sql-lora""#),
    );
    // The picker's split: 1,000 requests, every answer naming the model asked for.
    for response in many(&gateway, "assistant", 1000, false) {
        assert_eq!(response.status, 200, "{response:?}");
        let body = json_body(&response);
        assert_eq!(
            body["model"], "assistant",
            "the response names the model asked for"
        );
        assert!(
            response
                .header("x-served-by")
                .unwrap()
                .starts_with("llama-")
        );
    }
    let base = served(r#"target_model_name="llama-3-70b""#) - base_before;
    let lora = served(r#"target_model_name="llama-3-70b-sql-lora""#) - lora_before;
    assert_eq!(base + lora, 1000.0);
    assert!(
        (lora / 1000.0 - 0.10).abs() <= 0.02,
        "the sql adapter served {lora} of 1,000 (weight 10 of 100)"
    );
    // Streamed, every event names the model asked for.
    for response in many(&gateway, "assistant", 40, true) {
        assert_eq!(response.status, 200, "{response:?}");
        assert!(response.body.contains("data: [DONE]"), "{}", response.body);
        assert!(!response.body.contains("llama-3-70b"), "{}", response.body);
        assert_eq!(
            response.body.matches(r#""model":"assistant""#).count(),
            3,
            "two tokens and the finish: {}",
            response.body
        );
    }
    // The route's split across pools, each serving `chat` under its own name.
    let responses = many(&gateway, "chat", 1000, false);
    let mut llama = 0;
    for response in &responses {
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(json_body(response)["model"], "chat");
        if response
            .header("x-served-by")
            .unwrap()
            .starts_with("llama-")
        {
            llama += 1;
        }
    }
    // Envoy picks a weighted cluster at random: 900 expected, standard
    // deviation 9.5; 4.5 of them either way.
    assert!(
        (857..=943).contains(&llama),
        "llama served {llama} of 1,000 (weight 90 of 100)"
    );
}
