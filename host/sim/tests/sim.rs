//! The simulator as its users see it: an OpenAI client, a Prometheus
//! scraper, and a queue that fills.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use infergate_sim::{Config, Handle};
use serde_json::Value;

async fn sim(config: Config) -> Handle {
    infergate_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("the simulator starts")
}

fn python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs the OpenAI client library)",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_openai_client_library_understands_every_answer() {
    let handle = sim(Config {
        name: "sim-a".into(),
        lora_adapters: vec!["adapter-a".into()],
        time_to_first_token: Duration::from_millis(1),
        inter_token_latency: Duration::from_millis(1),
        ..Config::default()
    })
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let base = format!("http://{}/v1", handle.address);
    let output = tokio::process::Command::new(python())
        .arg(script)
        .arg(base)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the OpenAI client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["models"], serde_json::json!(["adapter-a", "sim-model"]));
    assert_eq!(
        got["completion"],
        serde_json::json!({"text": " token1 token2 token3 token4 token5", "finish_reason": "length",
                           "completion_tokens": 5, "served_by": "sim-a"})
    );
    assert_eq!(
        got["chat"],
        serde_json::json!({"role": "assistant", "content": " token1 token2 token3",
                           "finish_reason": "length", "model": "adapter-a"})
    );
    assert_eq!(
        got["completion_stream"],
        serde_json::json!([" token1", " token2", " token3", " token4", ""])
    );
    assert_eq!(
        got["chat_stream"],
        serde_json::json!({"deltas": [" token1", " token2", " token3", " token4"], "finish_reason": "length"})
    );
    assert_eq!(
        got["chat_stream_usage"],
        serde_json::json!({"completion_tokens": 2, "choices": 0}),
        "stream_options.include_usage: a last chunk with the usage and no choices, as vLLM sends"
    );
    assert_eq!(
        got["response"],
        serde_json::json!({"text": " token1 token2 token3", "output_tokens": 3, "model": "sim-model"})
    );
    assert_eq!(
        got["response_stream"],
        serde_json::json!({
            "types": ["response.created", "response.output_text.delta",
                      "response.output_text.delta", "response.incomplete"],
            "deltas": [" token1", " token2"]})
    );
    assert_eq!(
        got["embeddings"],
        serde_json::json!({"count": 2, "dimensions": 8, "norm": 1.0, "prompt_tokens": 2})
    );
    assert_eq!(
        got["embeddings_agree"], true,
        "base64 (the client's default) and floats give the same vector"
    );
    assert_eq!(got["unknown_model"], 404);
}

#[tokio::test]
async fn streamed_tokens_arrive_as_they_are_produced() {
    let handle = sim(Config {
        time_to_first_token: Duration::from_millis(50),
        inter_token_latency: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let started = Instant::now();
    let mut response = reqwest::Client::new()
        .post(format!("http://{}/v1/completions", handle.address))
        .body(r#"{"model":"sim-model","prompt":"hi","max_tokens":4,"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-served-by"], "sim");
    let mut arrivals = vec![];
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        arrivals.push(started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(
        events.len(),
        6,
        "4 tokens, the finish event, [DONE]: {events:?}"
    );
    // The first token comes after about 50 ms, the last after about 350 ms:
    // the body was not produced at once.
    assert!(arrivals.len() >= 4, "{arrivals:?}");
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(spread >= Duration::from_millis(250), "{arrivals:?}");
}

/// The samples of a Prometheus text exposition, by metric name (labels
/// included verbatim), failing on any line that is not valid.
fn parse_prometheus(text: &str) -> HashMap<String, (String, f64)> {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        // A histogram's series are <name>_bucket, _sum and _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no TYPE line");
        let labels = series.strip_prefix(name).unwrap().to_string();
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
        }
        samples.insert(name.to_string(), (labels, value.parse().expect("a number")));
    }
    samples
}

async fn metrics(handle: &Handle) -> HashMap<String, (String, f64)> {
    let text = reqwest::get(format!("http://{}/metrics", handle.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_prometheus(&text)
}

fn value(m: &HashMap<String, (String, f64)>, name: &str) -> f64 {
    m.get(name).unwrap_or_else(|| panic!("{name} missing")).1
}

#[tokio::test]
async fn with_one_slot_the_second_request_waits_and_the_metrics_show_it() {
    let handle = sim(Config {
        max_num_seqs: 1,
        time_to_first_token: Duration::from_millis(600),
        inter_token_latency: Duration::from_millis(1),
        kv_cache_tokens: 100,
        lora_adapters: vec!["adapter-a".into()],
        ..Config::default()
    })
    .await;
    let idle = metrics(&handle).await;
    for name in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    ] {
        assert!(idle.contains_key(name), "{name} missing");
    }
    assert_eq!(value(&idle, "vllm:num_requests_running"), 0.0);
    assert_eq!(value(&idle, "vllm:kv_cache_usage_perc"), 0.0);

    let address = handle.address;
    let request = move |model: &'static str| {
        tokio::spawn(async move {
            let started = Instant::now();
            let response = reqwest::Client::new()
                .post(format!("http://{address}/v1/completions"))
                .body(format!(
                    r#"{{"model":"{model}","prompt":"forty characters of prompt text here....","max_tokens":2}}"#
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            started.elapsed()
        })
    };
    let first = request("sim-model");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = request("adapter-a");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let busy = metrics(&handle).await;
    assert_eq!(value(&busy, "vllm:num_requests_running"), 1.0);
    assert_eq!(value(&busy, "vllm:num_requests_waiting"), 1.0);
    // 10 prompt tokens of a 100-token cache.
    assert_eq!(value(&busy, "vllm:kv_cache_usage_perc"), 0.1);
    assert!(
        busy["vllm:lora_requests_info"]
            .0
            .contains("waiting_lora_adapters=\"adapter-a\""),
        "{:?}",
        busy["vllm:lora_requests_info"]
    );

    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert!(first >= Duration::from_millis(600), "{first:?}");
    // The second waited for the first to finish, then ran its own 600 ms.
    assert!(second >= Duration::from_millis(1000), "{second:?}");
    let done = metrics(&handle).await;
    assert_eq!(value(&done, "vllm:num_requests_running"), 0.0);
    assert_eq!(value(&done, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(value(&done, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(value(&done, "vllm:request_success_total"), 2.0);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let handle = sim(Config::default()).await;
    let client = reqwest::Client::new();
    for (body, status, needle) in [
        ("not json", 400, "not JSON"),
        (r#"{"prompt":"x"}"#, 400, "no \"model\""),
        (r#"{"model":"sim-model"}"#, 400, "no \"prompt\""),
        (r#"{"model":"other","prompt":"x"}"#, 404, "does not exist"),
    ] {
        let response = client
            .post(format!("http://{}/v1/completions", handle.address))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_slot() {
    let handle = sim(Config {
        max_num_seqs: 1,
        time_to_first_token: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    let address = handle.address;
    let abandoned = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("http://{address}/v1/completions"))
            .body(r#"{"model":"sim-model","prompt":"x"}"#)
            .send()
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        value(&metrics(&handle).await, "vllm:num_requests_running"),
        1.0
    );
    abandoned.abort();
    let mut freed = false;
    for _ in 0..50 {
        if value(&metrics(&handle).await, "vllm:num_requests_running") == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the slot was not freed");
}

#[tokio::test]
async fn cleartext_http2_is_served_on_the_same_port() {
    let handle = sim(Config {
        name: "h2".into(),
        ..Config::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{}/v1/models", handle.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers()["x-served-by"], "h2");
}

#[tokio::test]
async fn a_shared_prefix_is_a_prefix_cache_hit_and_latencies_are_histograms() {
    let handle = sim(Config {
        time_to_first_token: Duration::from_millis(1),
        inter_token_latency: Duration::from_millis(1),
        ..Config::default()
    })
    .await;
    // 64 tokens of system prompt (4 blocks), then the question.
    let system = "s".repeat(256);
    for question in ["What is Envoy?", "What is an InferencePool?"] {
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/completions", handle.address))
            .body(
                serde_json::json!({"model": "sim-model", "prompt": format!("{system}{question}"), "max_tokens": 3})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let m = metrics(&handle).await;
    let queried = 64
        + "What is Envoy?".len().div_ceil(4)
        + 64
        + "What is an InferencePool?".len().div_ceil(4);
    assert_eq!(value(&m, "vllm:prefix_cache_queries_total"), queried as f64);
    assert_eq!(
        value(&m, "vllm:prefix_cache_hits_total"),
        64.0,
        "the second prompt's system part"
    );
    assert_eq!(value(&m, "vllm:time_to_first_token_seconds_count"), 2.0);
    assert_eq!(
        value(&m, "vllm:inter_token_latency_seconds_count"),
        4.0,
        "two gaps in each answer"
    );
    assert_eq!(value(&m, "vllm:request_queue_time_seconds_count"), 2.0);
    assert_eq!(value(&m, "vllm:e2e_request_latency_seconds_count"), 2.0);
}
