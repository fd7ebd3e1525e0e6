//! The second golden stage: the IR -> Envoy resources. The inputs are the
//! first stage's outputs, `guest/translate/testdata/<case>.out.yaml` (the IR
//! the translator makes of `<case>.in.yaml`); each must encode to
//! `testdata/<case>.{listeners,routes,clusters,endpoints}.json` here: Envoy's
//! own JSON of every resource, by xDS node.
//!
//! One switch updates both stages: `scripts/update-golden.sh` (or
//! `INFERGATE_UPDATE_GOLDEN=1` on the translator's golden test first, then
//! on this one). Review the diff in git.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

const KINDS: [&str; 4] = ["listeners", "routes", "clusters", "endpoints"];

fn ir_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/translate/testdata")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Every case's IR: (case, output of the translator).
fn cases() -> Vec<(String, infergate_model::Output)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(ir_dir())
        .expect("the translator's golden cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".out.yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            let case = name.trim_end_matches(".out.yaml").to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let output = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not the IR: {e}", path.display()));
            (case, output)
        })
        .collect()
}

/// One case's Envoy JSON by resource kind, each `{node: [resources]}`.
fn encode(output: &infergate_model::Output) -> Vec<(&'static str, String)> {
    let mut by_kind: Vec<(&'static str, Map<String, Value>)> =
        KINDS.iter().map(|k| (*k, Map::new())).collect();
    for gateway in &output.gateways {
        let json = infergate_xds::json::gateway_to_json(gateway, &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", gateway.node_id));
        for (kind, nodes) in &mut by_kind {
            let resources = json.get(*kind).cloned().unwrap_or(Value::Array(vec![]));
            nodes.insert(gateway.node_id.clone(), resources);
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, nodes)| {
            let mut text = serde_json::to_string_pretty(&Value::Object(nodes)).unwrap();
            text.push('\n');
            (kind, text)
        })
        .collect()
}

#[test]
fn every_translator_golden_output_encodes_to_its_envoy_json() {
    let cases = cases();
    assert!(cases.len() >= 10, "only {} cases found", cases.len());
    let update = std::env::var_os("INFERGATE_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (case, output) in &cases {
        for (kind, actual) in encode(output) {
            let path = golden_dir().join(format!("{case}.{kind}.json"));
            if update {
                std::fs::write(&path, &actual).expect("writing a golden file");
                continue;
            }
            let Ok(expected) = std::fs::read_to_string(&path) else {
                failures.push(format!(
                    "{}: missing; create it with scripts/update-golden.sh and review it",
                    path.display()
                ));
                continue;
            };
            if expected != actual {
                let diff = similar::TextDiff::from_lines(&expected, &actual)
                    .unified_diff()
                    .context_radius(4)
                    .header("expected", "actual")
                    .to_string();
                failures.push(format!("{case}.{kind}.json differs:\n{diff}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_golden_file_outlives_its_case() {
    let cases: Vec<String> = cases().into_iter().map(|(c, _)| c).collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let case = name.split('.').next().unwrap_or_default();
        assert!(
            cases.iter().any(|c| c == case),
            "testdata/{name} belongs to no case of guest/translate/testdata"
        );
    }
}

/// The xDS cache versions each resource by a hash of its bytes: encoding the
/// same IR twice must give the same bytes, or every translation would look
/// like a change to Envoy (and a listener change drains its connections).
/// prost writes a map (`google.protobuf.Struct`, `typed_per_filter_config`)
/// in HashMap order, which differs between two maps of the same entries.
#[test]
fn every_golden_output_encodes_to_the_same_bytes_each_time() {
    for (case, output) in &cases() {
        for gateway in &output.gateways {
            let once = infergate_xds::encode::gateway(gateway, &Default::default()).into_packed();
            for attempt in 0..8 {
                let again =
                    infergate_xds::encode::gateway(gateway, &Default::default()).into_packed();
                for ((kind, first), (_, second)) in once.iter().zip(&again) {
                    for ((name, a), (_, b)) in first.iter().zip(second) {
                        assert!(
                            a.value == b.value,
                            "{case}: {} {kind} {name} encoded differently on attempt {attempt}",
                            gateway.node_id
                        );
                    }
                }
            }
        }
    }
}
