//! `infergate component check`: is this component fit to be swapped in?

use std::path::PathBuf;

use anyhow::Context;
use infergate_resources::Resources;
use infergate_runtime::Runtime;

use crate::pipeline;

/// A small configuration every component must translate: a Gateway, a
/// route to a Service, and a route to an InferencePool.
const BUILT_IN_CANARY: &str = include_str!("canary.yaml");

pub struct CheckArgs {
    pub file: PathBuf,
    pub configs: Vec<PathBuf>,
    pub translation: crate::TranslationArgs,
}

/// Check a component offline; the verdict is printed, and the exit code is
/// 0 when it may be swapped in.
pub fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let runtime = Runtime::new(pipeline::limits(&args.translation))?;
    let translator = match runtime.load(&bytes) {
        Ok(t) => t,
        Err(e) => {
            println!("REJECTED {}: {e}", args.file.display());
            return Ok(false);
        }
    };
    let info = translator.info();
    println!(
        "component {}\n  digest {}\n  WIT package {} (this host speaks {})\n  imports: none\n  compiled in {} ms",
        args.file.display(),
        info.digest,
        info.wit_package,
        infergate_runtime::WIT_PACKAGE,
        info.compile_time.as_millis()
    );
    let mut inputs: Vec<(String, Resources)> = Vec::new();
    let mut built_in = Resources::default();
    built_in
        .add_yaml("built-in canary", BUILT_IN_CANARY)
        .map_err(|e| pipeline::all_errors(&e))?;
    inputs.push(("the built-in canary configuration".into(), built_in));
    for dir in &args.configs {
        let resources = crate::files::read_resources(dir)
            .map_err(|e| pipeline::all_errors(&e))
            .with_context(|| format!("reading {}", dir.display()))?;
        inputs.push((dir.display().to_string(), resources));
    }
    let mut ok = true;
    for (name, resources) in inputs {
        for inference in [false, true] {
            let mut settings = pipeline::settings(
                &args.translation,
                crate::commands::standalone::DEFAULT_ADDRESS,
            );
            settings.inference_extension = inference;
            let snapshot = resources
                .to_snapshot(settings)
                .map_err(|e| pipeline::all_errors(&e))?;
            let started = std::time::Instant::now();
            let extension = if inference { "on" } else { "off" };
            match runtime.translate(&translator, &snapshot) {
                Ok(mut output) => {
                    let problems = infergate_translate::validate::output(&mut output);
                    if problems.is_empty() {
                        println!(
                            "  canary {name} (inference extension {extension}): ok in {} ms, {} gateways",
                            started.elapsed().as_millis(),
                            output.gateways.len()
                        );
                    } else {
                        ok = false;
                        println!(
                            "  canary {name} (inference extension {extension}): FAILED: values Envoy would refuse: {}",
                            problems.join("; ")
                        );
                    }
                }
                Err(e) => {
                    ok = false;
                    println!("  canary {name} (inference extension {extension}): FAILED: {e}");
                }
            }
        }
    }
    if ok {
        println!("OK: {} can be swapped in", args.file.display());
    } else {
        println!(
            "REJECTED {}: a canary translation failed",
            args.file.display()
        );
    }
    Ok(ok)
}
