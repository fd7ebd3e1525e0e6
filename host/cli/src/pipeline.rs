//! Resources -> snapshot -> component -> Envoy resources.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use infergate_model::{Output, Settings, Snapshot};
use infergate_resources::Resources;
use infergate_runtime::{Limits, LoadError, Runtime, TranslateFailure, Translator};

use crate::metrics::{ActiveComponent, Metrics};

use crate::TranslationArgs;

/// `default_address`: where Gateway listeners bind when the Gateway's
/// spec.addresses names none.
pub fn settings(args: &TranslationArgs, default_address: &str) -> Settings {
    Settings {
        inference_extension: args.enable_inference_extension,
        default_address: default_address.into(),
        model_routing_max_body_bytes: args.model_routing_max_body_bytes,
        ..Settings::new(args.controller_name.clone())
    }
}

pub fn snapshot(
    resources: &Resources,
    args: &TranslationArgs,
    default_address: &str,
) -> anyhow::Result<Snapshot> {
    resources
        .to_snapshot(settings(args, default_address))
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

/// The runtime, the active component, and what happens to it. The active
/// component can be replaced while translations run: each translation holds
/// the component it started with until it ends.
pub struct Translation {
    runtime: Runtime,
    cache_dir: Option<PathBuf>,
    active: RwLock<Arc<Translator>>,
    pub path: PathBuf,
    pub metrics: Arc<Metrics>,
}

/// Why a new component was not swapped in. The old one keeps serving.
#[derive(Debug)]
pub struct Rejection {
    /// A short label for the metric (`not_wasm`, `wit_version`, `canary_deadline`, ...).
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn load_reason(error: &LoadError) -> &'static str {
    match error {
        LoadError::NotWasm => "not_wasm",
        LoadError::Invalid(_) => "invalid",
        LoadError::Imports(_) => "imports",
        LoadError::WitVersion { .. } => "wit_version",
        LoadError::MissingExport { .. } => "missing_export",
        LoadError::TypeMismatch { .. } => "type_mismatch",
    }
}

fn failure_reason(failure: &TranslateFailure) -> &'static str {
    match failure {
        TranslateFailure::Deadline(_) => "deadline",
        TranslateFailure::Memory(_) => "memory",
        TranslateFailure::Trap(_) => "trap",
        TranslateFailure::Guest(_) => "guest_error",
        TranslateFailure::Inconsistent(_) => "inconsistent_output",
    }
}

impl Translation {
    pub fn load(args: &TranslationArgs) -> anyhow::Result<Self> {
        let path = match &args.component {
            Some(path) => path.clone(),
            None => default_component()?,
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the component {}", path.display()))?;
        let runtime = Runtime::new(limits(args))?;
        let cache_dir = args.cache_dir();
        let translator = runtime
            .load_cached(&bytes, cache_dir.as_deref())
            .with_context(|| format!("loading the component {}", path.display()))?;
        let metrics = Arc::new(Metrics::default());
        let active = describe(&path, &translator);
        log_active("translation component loaded", &active);
        metrics.loaded(active);
        Ok(Translation {
            runtime,
            cache_dir,
            active: RwLock::new(Arc::new(translator)),
            path,
            metrics,
        })
    }

    pub fn translate(&self, snapshot: &Snapshot) -> anyhow::Result<Output> {
        let translator = self.active.read().expect("active lock").clone();
        let started = Instant::now();
        let (outcome, usage) = self.runtime.translate_measured(&translator, snapshot);
        let label = match &outcome {
            Ok(_) => "ok",
            Err(failure) => failure_reason(failure),
        };
        self.metrics
            .translation(label, started.elapsed(), usage.memory_peak_bytes);
        let mut output = outcome?;
        // Whatever the component, nothing Envoy would refuse reaches Envoy
        // (it would refuse the whole resource, freezing its neighbours).
        for problem in infergate_translate::validate::output(&mut output) {
            tracing::error!("the translation component's output: {problem}");
        }
        Ok(output)
    }

    /// Check `bytes` as a replacement and swap it in: load (checks the WIT
    /// version and imports, compiles), then a canary translation of
    /// `canary` under the same limits. On any failure the active component
    /// stays, and the rejection is counted and returned.
    pub fn try_swap(&self, bytes: &[u8], canary: &Snapshot) -> Result<ActiveComponent, Rejection> {
        let reject = |reason: &'static str, message: String| {
            self.metrics.rejected(reason);
            Rejection { reason, message }
        };
        let translator = self
            .runtime
            .load_cached(bytes, self.cache_dir.as_deref())
            .map_err(|e| reject(load_reason(&e), e.to_string()))?;
        let mut output = match self.runtime.translate(&translator, canary) {
            Ok(output) => output,
            Err(failure) => {
                let reason = match failure {
                    TranslateFailure::Deadline(_) => "canary_deadline",
                    TranslateFailure::Memory(_) => "canary_memory",
                    TranslateFailure::Trap(_) => "canary_trap",
                    TranslateFailure::Guest(_) => "canary_guest_error",
                    TranslateFailure::Inconsistent(_) => "canary_inconsistent_output",
                };
                return Err(reject(
                    reason,
                    format!(
                        "the canary translation of the current configuration failed: {failure}"
                    ),
                ));
            }
        };
        let problems = infergate_translate::validate::output(&mut output);
        if !problems.is_empty() {
            return Err(reject(
                "canary_refused_by_envoy",
                format!(
                    "the canary translation of the current configuration produced values Envoy would refuse: {}",
                    problems.join("; ")
                ),
            ));
        }
        let active = describe(&self.path, &translator);
        *self.active.write().expect("active lock") = Arc::new(translator);
        self.metrics.swapped(active.clone());
        Ok(active)
    }

    pub fn digest(&self) -> String {
        self.active
            .read()
            .expect("active lock")
            .info()
            .digest
            .clone()
    }
}

pub fn limits(args: &TranslationArgs) -> Limits {
    Limits {
        memory_bytes: (args.translation_memory_mib as usize) << 20,
        deadline: Duration::from_millis(args.translation_timeout_ms),
        ..Limits::default()
    }
}

fn describe(path: &std::path::Path, translator: &Translator) -> ActiveComponent {
    let info = translator.info();
    ActiveComponent {
        path: path.display().to_string(),
        digest: info.digest.clone(),
        wit_package: info.wit_package.clone(),
        loaded_at: crate::metrics::now_rfc3339(),
        compile_ms: info.compile_time.as_millis() as u64,
    }
}

pub fn log_active(what: &str, active: &ActiveComponent) {
    tracing::info!(
        component = %active.path,
        digest = %active.digest,
        wit = %active.wit_package,
        compile_ms = active.compile_ms,
        loaded_at = %active.loaded_at,
        "{what}"
    );
}

/// Watch the component file (and, for a ConfigMap volume, the `..data`
/// symlink the kubelet swaps to publish new contents). Keep the watcher.
pub fn watch_component(
    path: &std::path::Path,
) -> anyhow::Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(64);
    let component_name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(
                event.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            )
            && event.paths.iter().any(|p| {
                let name = p.file_name().map(|n| n.to_owned());
                name == component_name || name.as_deref() == Some(std::ffi::OsStr::new("..data"))
            })
        {
            let _ = tx.try_send(());
        }
    })
    .context("starting the component watcher")?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((watcher, rx))
}

/// What became of a changed component file.
pub enum SwapOutcome {
    /// The same component was written again, or the file could not be used yet.
    Unchanged,
    Swapped,
    /// Rejected, with a message naming the file, its digest and why.
    Rejected(String),
}

/// Try the component file as the new translation, with `canary` (the last
/// translated snapshot, else an empty one) as its canary.
pub async fn swap_from_file(
    translation: &Arc<Translation>,
    canary: Option<Snapshot>,
    settings: Settings,
) -> SwapOutcome {
    let path = translation.path.clone();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            translation.metrics.rejected("read");
            let message = format!(
                "component {} changed but cannot be read: {e}; still serving component {}",
                path.display(),
                translation.digest()
            );
            tracing::error!("{message}");
            return SwapOutcome::Rejected(message);
        }
    };
    let digest = infergate_runtime::sha256_hex(&bytes);
    if digest == translation.digest() {
        return SwapOutcome::Unchanged;
    }
    let canary = match canary {
        Some(snapshot) => snapshot,
        None => match Resources::default().to_snapshot(settings) {
            Ok(snapshot) => snapshot,
            Err(_) => return SwapOutcome::Unchanged,
        },
    };
    tracing::info!(component = %path.display(), digest = %digest, "new component: checking it");
    let candidate = translation.clone();
    match tokio::task::spawn_blocking(move || candidate.try_swap(&bytes, &canary)).await {
        Ok(Ok(active)) => {
            log_active("translation component swapped in", &active);
            SwapOutcome::Swapped
        }
        Ok(Err(rejection)) => {
            let message = format!(
                "component {} (digest {digest}) rejected: {rejection}; still serving component {}",
                path.display(),
                translation.digest()
            );
            tracing::error!(reason = rejection.reason, "{message}");
            SwapOutcome::Rejected(message)
        }
        Err(e) => {
            let message = format!("checking the new component failed: {e}");
            tracing::error!("{message}");
            SwapOutcome::Rejected(message)
        }
    }
}

/// Serve what `guard` hands out: its current snapshot first when
/// `publish_current`, then each snapshot Envoy's verdicts make it hand out,
/// translated and published in turn into `last`. False if a translation
/// failed (the guard stops searching until its next input).
pub async fn serve_guarded(
    guard: &mut crate::quarantine::Guard,
    publish_current: bool,
    translation: &Arc<Translation>,
    cache: &infergate_xds::SnapshotCache,
    mut fleet: Option<&mut crate::envoy::Fleet>,
    last: &mut Option<Output>,
    keeping: &str,
) -> bool {
    let mut publish = publish_current;
    loop {
        if publish {
            let published = translate_and_publish(
                translation,
                guard.current(),
                cache,
                fleet.as_deref_mut(),
                keeping,
            )
            .await;
            match published {
                Some(output) => *last = Some(output),
                None => {
                    guard.not_published();
                    return false;
                }
            }
        }
        let Some(output) = last.as_ref() else {
            return true;
        };
        // Envoy may have answered already (the configuration is unchanged).
        if guard.verdict(cache.verdict(), &output.statuses).is_none() {
            break;
        }
        publish = true;
    }
    translation
        .metrics
        .held_by_envoy(guard.quarantined().count());
    true
}

/// Translate `snapshot` (without blocking other tasks), hand every Gateway's
/// resources to the xDS cache, log it, and bring the local Envoys (if any)
/// in line. On failure, logs why (ending with `keeping`: what stays served)
/// and returns None; nothing served changes.
pub async fn translate_and_publish(
    translation: &Arc<Translation>,
    snapshot: &Snapshot,
    cache: &infergate_xds::SnapshotCache,
    fleet: Option<&mut crate::envoy::Fleet>,
    keeping: &str,
) -> Option<Output> {
    let started = Instant::now();
    // Translation is CPU-bound: this worker thread hands its other tasks over
    // while it runs (the snapshot is borrowed, not copied for another thread).
    let output = match tokio::task::block_in_place(|| translation.translate(snapshot)) {
        Ok(output) => output,
        Err(e) => {
            tracing::error!("translation failed: {e:#}; {keeping}");
            return None;
        }
    };
    let translated = started.elapsed();
    let encoded = cache.publish(&output.gateways);
    let node_ids: Vec<String> = output.gateways.iter().map(|g| g.node_id.clone()).collect();
    tracing::info!(
        gateways = node_ids.len(),
        routes = snapshot.http_routes.len(),
        pools = snapshot.inference_pools.len(),
        translate_ms = translated.as_millis() as u64,
        encode_ms = (started.elapsed() - translated).as_millis() as u64,
        virtual_hosts_encoded = encoded.virtual_hosts_encoded,
        virtual_hosts_reused = encoded.virtual_hosts_reused,
        "configuration applied"
    );
    if let Some(fleet) = fleet {
        fleet.reconcile(&node_ids).await;
    }
    Some(output)
}
