//! Defence in depth: every golden case's Envoy configuration, as
//! `infergate translate` prints it, is accepted by the real Envoy
//! (`envoy --mode validate`, with the runtime infergate's bootstraps set).
//! A value that the translation lets through and Envoy refuses fails here,
//! naming the case and Envoy's error, before it can freeze a listener in
//! production.

use std::path::{Path, PathBuf};
use std::process::Command;

use infergate_e2e::*;
use infergate_resources::Certificates;
use serde_json::{Value, json};

fn golden_cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/translate/testdata");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the golden cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

/// The flags that give `infergate translate` a case's GoldenSettings.
fn settings_flags(text: &str) -> Vec<String> {
    let mut flags = Vec::new();
    if text.contains("inferenceExtension: true") {
        flags.push("--enable-inference-extension".to_string());
    }
    if let Some(name) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("controllerName: "))
        .filter(|_| text.contains("kind: GoldenSettings"))
    {
        flags.push(format!("--controller-name={name}"));
    }
    flags
}

/// One Gateway's xDS resources as a static bootstrap: route configurations
/// inline in their listeners, endpoints inline in their clusters, the
/// listeners' certificates static secrets (with their keys from
/// `certificates`: what `translate` prints has them redacted).
fn static_bootstrap(gateway: &Value, certificates: &Certificates) -> Value {
    let by_name = |kind: &str, key: &str| -> std::collections::HashMap<String, Value> {
        gateway[kind]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r[key].as_str().unwrap_or_default().to_string(), r.clone()))
            .collect()
    };
    let routes = by_name("routes", "name");
    let endpoints = by_name("endpoints", "clusterName");
    let mut listeners = gateway["listeners"].clone();
    for listener in listeners.as_array_mut().into_iter().flatten() {
        for chain in listener["filterChains"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            // SDS from ADS becomes a reference to a static secret.
            let configs = chain
                .pointer_mut(
                    "/transportSocket/typedConfig/commonTlsContext/tlsCertificateSdsSecretConfigs",
                )
                .and_then(Value::as_array_mut);
            for sds in configs.into_iter().flatten() {
                sds.as_object_mut().map(|s| s.remove("sdsConfig"));
            }
            for filter in chain["filters"].as_array_mut().into_iter().flatten() {
                let config = &mut filter["typedConfig"];
                if let Some(rds) = config.as_object_mut().and_then(|c| c.remove("rds")) {
                    let name = rds["routeConfigName"].as_str().unwrap_or_default();
                    let mut route = routes.get(name).cloned().unwrap_or(json!({}));
                    if let Some(r) = route.as_object_mut() {
                        r.remove("@type");
                        // Routes to a backend that did not resolve name a
                        // cluster that is deliberately never defined.
                        r.insert("validateClusters".into(), json!(false));
                    }
                    config["routeConfig"] = route;
                }
            }
        }
        listener.as_object_mut().map(|l| l.remove("@type"));
    }
    let mut clusters = gateway["clusters"].clone();
    for cluster in clusters.as_array_mut().into_iter().flatten() {
        let Some(c) = cluster.as_object_mut() else {
            continue;
        };
        c.remove("@type");
        if c.remove("edsClusterConfig").is_some() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let mut assignment = endpoints.get(&name).cloned().unwrap_or(json!({}));
            assignment.as_object_mut().map(|a| a.remove("@type"));
            assignment["clusterName"] = json!(name);
            c.insert("type".into(), json!("STATIC"));
            c.insert("loadAssignment".into(), assignment);
        }
    }
    // Infergate's own bootstrap (node, runtime), its resources made static.
    let mut bootstrap = infergate_xds::json::bootstrap_to_json(infergate_xds::encode::bootstrap(
        &infergate_xds::encode::BootstrapSettings {
            node: gateway["node"].as_str().unwrap_or_default().to_string(),
            xds: "127.0.0.1:1".parse().unwrap(),
            admin_port: 0,
            re2_max_program_size: infergate_translate::validate::ENVOY_RE2_MAX_PROGRAM_SIZE,
            tls: None,
        },
    ))
    .expect("the bootstrap as JSON");
    let secrets: Vec<Value> = gateway["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s["name"].as_str()?;
            let certificate = certificates.get(name)?;
            Some(json!({
                "name": name,
                "tlsCertificate": {
                    "certificateChain": {"inlineString": certificate.chain_pem},
                    "privateKey": {"inlineString": certificate.key_pem},
                },
            }))
        })
        .collect();
    let map = bootstrap.as_object_mut().unwrap();
    map.remove("dynamicResources");
    map.insert(
        "staticResources".into(),
        json!({"listeners": listeners, "clusters": clusters, "secrets": secrets}),
    );
    bootstrap
}

/// `envoy --mode validate` on one Gateway's resources; Envoy's words if it
/// refuses them.
fn envoy_validate(
    work: &Path,
    name: &str,
    gateway: &Value,
    certificates: &Certificates,
) -> Result<(), String> {
    let file = work.join(format!("{name}.json"));
    std::fs::write(&file, static_bootstrap(gateway, certificates).to_string()).unwrap();
    let validated = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "critical", "-c"])
        .arg(&file)
        .output()
        .expect("envoy runs");
    if validated.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        ))
    }
}

#[test]
fn envoy_accepts_every_golden_cases_configuration() {
    let work = TempDir::new("envoy-validate");
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in golden_cases() {
        let text = std::fs::read_to_string(&case).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        // The GoldenSettings document is for the golden test only.
        let resources: Vec<&str> = text
            .split("\n---\n")
            .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: GoldenSettings"))
            .collect();
        let input = work.0.join(&name);
        std::fs::write(&input, resources.join("\n---\n")).unwrap();
        let output = Command::new(infergate_binary())
            // Golden cases hold values the CRDs refuse, on purpose.
            .args([
                "translate",
                "--native",
                "--skip-crd-checks",
                "-o",
                "json",
                "-f",
            ])
            .arg(&input)
            .args(settings_flags(&text))
            .output()
            .expect("infergate translate runs");
        assert!(
            output.status.success(),
            "{name}: infergate translate failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let translated: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let mut read = infergate_resources::Resources::default();
        read.add_yaml(&name, &resources.join("\n---\n"))
            .expect("the case reads");
        let certificates = read.certificates();
        for gateway in translated["gateways"].as_array().into_iter().flatten() {
            if let Err(refused) = envoy_validate(
                &work.0,
                &format!("{name}.{checked}"),
                gateway,
                &certificates,
            ) {
                failures.push(format!("{name}, Gateway {}: {refused}", gateway["node"]));
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} Gateways were checked");
    assert!(
        failures.is_empty(),
        "Envoy refused configurations the translation produced:\n{}",
        failures.join("\n")
    );
    println!("Envoy accepted the configurations of {checked} Gateways");
}

/// What `infergate translate -o json --native --enable-inference-extension`
/// prints as `gateways` for `text`, in this process, and the certificates of
/// its Secrets; None when the text is not valid YAML or resources, or does
/// not translate.
fn translate_in_process(text: &str) -> Option<(Vec<Value>, Certificates)> {
    let mut resources = infergate_resources::Resources::default();
    resources.add_yaml("fuzzed.yaml", text).ok()?;
    let snapshot = resources
        .to_snapshot(infergate_model::Settings {
            inference_extension: true,
            ..infergate_model::Settings::new("infergate.dev/gateway-controller")
        })
        .ok()?;
    let output = infergate_translate::translate(&snapshot).ok()?;
    let certificates = resources.certificates();
    Some((
        output
            .gateways
            .iter()
            .map(|gateway| {
                infergate_xds::json::gateway_to_json(gateway, &certificates).expect("Envoy JSON")
            })
            .collect(),
        certificates,
    ))
}

/// A sample of the fuzzer's inputs (`fuzz/corpus/yaml_translate`, grown by
/// cargo-fuzz to reach every branch it could of reading and translation):
/// whatever the translation makes of those that translate, Envoy takes.
#[test]
fn envoy_accepts_the_configuration_of_a_sample_of_fuzzed_inputs() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/yaml_translate");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("the committed corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    inputs.sort();
    let work = TempDir::new("envoy-validate-fuzzed");
    let (mut sampled, mut translated_inputs, mut checked) = (0, 0, 0);
    let mut failures = Vec::new();
    // Every second input, in name (hash) order: a fixed sample, spread out.
    for input in inputs.iter().step_by(2) {
        sampled += 1;
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(input).unwrap();
        let Some((gateways, certificates)) = std::str::from_utf8(&bytes)
            .ok()
            .and_then(translate_in_process)
        else {
            continue; // nothing of it reaches Envoy
        };
        translated_inputs += 1;
        for gateway in &gateways {
            if let Err(refused) = envoy_validate(
                &work.0,
                &format!("{name}.{checked}"),
                gateway,
                &certificates,
            ) {
                failures.push(format!(
                    "fuzz/corpus/yaml_translate/{name}, Gateway {}: {refused}",
                    gateway["node"]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} Gateways from {translated_inputs} inputs were checked"
    );
    assert!(
        failures.is_empty(),
        "Envoy refused configurations the translation produced from fuzzed inputs:\n{}",
        failures.join("\n")
    );
    println!(
        "Envoy accepted the configurations of {checked} Gateways from the {translated_inputs} of {sampled} sampled fuzzed inputs that translate"
    );
}
