//! Resources -> snapshot -> component -> Envoy resources.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infergate_model::{Output, Settings, Snapshot};
use infergate_resources::Resources;
use infergate_runtime::{Limits, Runtime, Translator};

use crate::TranslationArgs;

pub fn settings(args: &TranslationArgs) -> Settings {
    Settings {
        controller_name: args.controller_name.clone(),
        inference_extension: args.enable_inference_extension,
        default_address: "127.0.0.1".into(),
    }
}

pub fn snapshot(resources: &Resources, args: &TranslationArgs) -> anyhow::Result<Snapshot> {
    resources
        .to_snapshot(settings(args))
        .map_err(|errors| all_errors(&errors))
}

/// Every resource error, one per line, as one error.
pub fn all_errors(errors: &[infergate_resources::ResourceError]) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Where the component is when `--component` is not given.
fn default_component() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    let candidates = [
        dir.join("infergate-translator.wasm"),
        dir.join("../infergate-translator.wasm"),
    ];
    candidates.iter().find(|p| p.exists()).cloned().with_context(|| {
        format!(
            "no translation component found (looked at {}); build it with `cargo xtask component` or pass --component",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// A loaded component and the runtime that runs it.
pub struct Translation {
    runtime: Runtime,
    translator: Translator,
}

impl Translation {
    pub fn load(args: &TranslationArgs) -> anyhow::Result<Self> {
        let path = match &args.component {
            Some(path) => path.clone(),
            None => default_component()?,
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the component {}", path.display()))?;
        let runtime = Runtime::new(Limits {
            memory_bytes: args.translation_memory_mib << 20,
            deadline: Duration::from_millis(args.translation_timeout_ms),
        })?;
        let translator = runtime
            .load(&bytes)
            .with_context(|| format!("loading the component {}", path.display()))?;
        let info = translator.info();
        tracing::info!(
            component = %path.display(),
            digest = %info.digest,
            wit = %info.wit_package,
            compile_ms = info.compile_time.as_millis() as u64,
            "translation component loaded"
        );
        Ok(Translation {
            runtime,
            translator,
        })
    }

    pub fn translate(&self, snapshot: &Snapshot) -> anyhow::Result<Output> {
        Ok(self.runtime.translate(&self.translator, snapshot)?)
    }
}
