//! Golden cases: `testdata/<case>.in.yaml` (Kubernetes resources) must
//! translate to `testdata/<case>.out.yaml` (the IR and every status).
//!
//! These outputs are also the inputs of the second stage, IR -> Envoy JSON
//! (`host/xds/tests/golden.rs`). To accept new output after an intended
//! change, run `scripts/update-golden.sh` (both stages, in order) and review
//! the diff in git.
//!
//! A case may start with a document of kind `GoldenSettings` (read only here)
//! to change the translation settings, e.g. `inferenceExtension: true`.

use infergate_model::Settings;
use infergate_resources::Resources;

const CONTROLLER: &str = "infergate.dev/gateway-controller";

fn settings(input: &str) -> Settings {
    let mut settings = Settings::new(CONTROLLER);
    for doc in serde_yaml_ng::Deserializer::from_str(input) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)
            .expect("case input is YAML");
        if value.get("kind").and_then(|k| k.as_str()) == Some("GoldenSettings") {
            if let Some(on) = value.get("inferenceExtension").and_then(|v| v.as_bool()) {
                settings.inference_extension = on;
            }
            if let Some(ca) = value.get("managedPickerCa").and_then(|v| v.as_str()) {
                settings.managed_picker = Some(infergate_model::ManagedPicker {
                    port: infergate_names::objects::PICKER_PORT,
                    ca_pem: ca.into(),
                });
            }
            if let Some(on) = value.get("isolatedGateways").and_then(|v| v.as_bool()) {
                settings.isolated_gateways = on;
            }
            if let Some(bytes) = value
                .get("modelRoutingMaxBodyBytes")
                .and_then(|v| v.as_u64())
            {
                settings.model_routing_max_body_bytes = bytes as u32;
            }
            if let Some(name) = value.get("controllerName").and_then(|v| v.as_str()) {
                settings.controller_name = name.into();
            }
        }
    }
    settings
}

fn check(case: &str, input: &str, expected: Option<&str>) {
    // The GoldenSettings document is not a resource: blank it out (keeping
    // the document count, so errors still name the right document).
    let resources_only: Vec<String> = input
        .split("\n---\n")
        .map(|doc| {
            if doc.lines().any(|l| l.trim() == "kind: GoldenSettings") {
                "# GoldenSettings\n".to_string()
            } else {
                doc.to_string()
            }
        })
        .collect();
    let mut resources = Resources::default();
    resources
        .add_yaml(&format!("{case}.in.yaml"), &resources_only.join("\n---\n"))
        .unwrap_or_else(|e| panic!("{case}: {e:?}"));
    let snapshot = resources
        .to_snapshot(settings(input))
        .unwrap_or_else(|e| panic!("{case}: {e:?}"));
    let output = infergate_translate::translate(&snapshot)
        .unwrap_or_else(|e| panic!("{case}: {}", e.message));
    let actual = serde_yaml_ng::to_string(&output).expect("output serializes");

    if std::env::var_os("INFERGATE_UPDATE_GOLDEN").is_some() {
        let path = format!("{}/testdata/{case}.out.yaml", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(&path, &actual).expect("write golden file");
        return;
    }
    let Some(expected) = expected else {
        panic!(
            "{case}: testdata/{case}.out.yaml is missing; create it with INFERGATE_UPDATE_GOLDEN=1 and review it"
        );
    };
    if actual != expected {
        let diff = similar::TextDiff::from_lines(expected, actual.as_str())
            .unified_diff()
            .context_radius(4)
            .header("expected", "actual")
            .to_string();
        panic!("{case}: output differs from testdata/{case}.out.yaml:\n{diff}");
    }
}

include!(concat!(env!("OUT_DIR"), "/golden_cases.rs"));
