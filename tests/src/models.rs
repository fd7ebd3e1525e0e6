//! Two models behind one Gateway, as the OpenAI client sees them: what
//! `tests/python/model_routing_client.py` does through a Gateway whose
//! HTTPRoutes send llama-3-70b (and its LoRA adapters) to pool `llama` and
//! qwen-2.5 to pool `qwen`, and what it must get back. Shared by the
//! standalone test (tests/model_routing.rs) and the real cluster's
//! (tests/cluster.rs), so both check the same things.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const LLAMA: &str = "llama-3-70b";
/// The llama servers' adapters (`infergate-sim --lora`); routes match
/// them by a regular expression.
pub const LLAMA_ADAPTERS: &str = "llama-3-70b-sql-lora,llama-3-70b-chat-lora";
pub const QWEN: &str = "qwen-2.5";

/// The project's Python, with the OpenAI client library (scripts/setup.sh).
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs the OpenAI client library)",
        python.display()
    );
    python
}

/// The pool a simulator belongs to, by its name (`llama-0`, or a Pod's
/// `llama-5d9f...`).
fn pool_of(served_by: &Value) -> String {
    let name = served_by.as_str().unwrap_or_default();
    name.split('-').next().unwrap_or_default().to_string()
}

/// Run the OpenAI client against the Gateway at `address` (ip:port) and
/// check every answer: each model reached only its pool, by every API,
/// streamed or not; a 300 KB prompt arrived whole; a forged
/// X-Gateway-Model-Name did not steer; /v1/models lists both models (and
/// `also_listed`, sorted with them); an unknown model got a 404 that names
/// it. `logs` explains a failure.
pub fn check_openai_client(address: &str, also_listed: &[&str], logs: impl Fn() -> String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/model_routing_client.py");
    let output = std::process::Command::new(python())
        .arg(script)
        .arg(format!("http://{address}/v1"))
        .output()
        .expect("running python");
    assert!(
        output.status.success(),
        "the OpenAI client failed:\n{}\nlogs:\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("the script's JSON");
    for (model, pool) in [
        (LLAMA, "llama"),
        (QWEN, "qwen"),
        ("llama-3-70b-sql-lora", "llama"),
    ] {
        let calls = got[model].as_object().expect("the model's calls");
        assert_eq!(calls.len(), 7, "{model}: {calls:?}");
        for (call, answer) in calls {
            match call.as_str() {
                "chat_stream" | "completion_stream" | "response_stream" => {
                    let servers = answer["served_by"].as_array().unwrap();
                    assert_eq!(servers.len(), 1, "{model} {call}: one server {answer}");
                    assert_eq!(pool_of(&servers[0]), pool, "{model} {call}: {answer}");
                }
                _ => {
                    assert_eq!(pool_of(&answer["served_by"]), pool, "{model} {call}");
                    assert_eq!(answer["model"], model, "{model} {call}");
                }
            }
        }
        assert_eq!(calls["chat_stream"]["text"], " token1 token2 token3");
        assert_eq!(calls["completion_stream"]["text"], " token1 token2 token3");
        assert_eq!(
            calls["response_stream"]["types"].as_array().unwrap().last(),
            Some(&json!("response.incomplete")),
            "{model}: the responses stream ran to its end"
        );
    }
    assert_eq!(pool_of(&got["big_prompt"]["served_by"]), "llama");
    assert_eq!(
        got["big_prompt"]["prompt_tokens"],
        300_000 / 4,
        "the server got the whole 300 KB prompt"
    );
    assert_eq!(
        pool_of(&got["forged_header"]["served_by"]),
        "qwen",
        "the body's model decides, not a header the client set"
    );
    let mut listed = vec![LLAMA, QWEN];
    listed.extend_from_slice(also_listed);
    listed.sort();
    assert_eq!(got["models"], json!(listed), "GET /v1/models");
    assert_eq!(got["unknown_model"]["status"], 404);
    assert_eq!(got["unknown_model"]["code"], "model_not_found");
    assert!(
        got["unknown_model"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-unknown"),
        "{}",
        got["unknown_model"]
    );
}
