//! Standalone mode: a directory of YAML, watched, served to local Envoys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infergate_model::{Condition, ConditionStatus, Output, Statuses};
use infergate_resources::{ResourceError, Resources};
use infergate_xds::SnapshotCache;
use notify::Watcher;
use tokio::sync::mpsc;

use crate::StandaloneArgs;
use crate::envoy::{Fleet, find_binary};
use crate::pipeline::{self, Translation};

/// Where Gateway listeners bind when their spec.addresses says nothing.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1";

/// Read one YAML file, or every *.yaml / *.yml file of a directory (sorted,
/// not recursive). All errors of all files are returned together.
pub fn read_resources(path: &Path) -> Result<Resources, Vec<ResourceError>> {
    FileCache::default().read(path)
}

/// The parsed resources of each file, kept with the text they came from, so
/// that a change re-parses only the files that changed.
#[derive(Default)]
pub struct FileCache {
    files: std::collections::HashMap<PathBuf, (String, Resources)>,
}

impl FileCache {
    /// As [`read_resources`], parsing only files whose text changed since the
    /// last call. Objects defined in two files are errors, as within one.
    pub fn read(&mut self, path: &Path) -> Result<Resources, Vec<ResourceError>> {
        let mut files: Vec<PathBuf> = if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect(),
                Err(e) => return Err(vec![io_error(path, e)]),
            }
        } else {
            vec![path.to_path_buf()]
        };
        files.sort();
        // Files that are gone are forgotten.
        self.files.retain(|p, _| files.contains(p));
        let mut resources = Resources::default();
        let mut errors = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(io_error(&file, e));
                    continue;
                }
            };
            let unchanged = self.files.get(&file).is_some_and(|(old, _)| *old == text);
            if !unchanged {
                let mut parsed = Resources::default();
                match parsed.add_yaml(&file.display().to_string(), &text) {
                    Ok(()) => {
                        self.files.insert(file.clone(), (text, parsed));
                    }
                    Err(e) => {
                        self.files.remove(&file);
                        errors.extend(e);
                        continue;
                    }
                }
            }
            let (_, parsed) = &self.files[&file];
            if let Err(e) = resources.merge_from(parsed) {
                errors.extend(e);
            }
        }
        if errors.is_empty() {
            Ok(resources)
        } else {
            Err(errors)
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ResourceError {
    ResourceError::new(
        infergate_resources::Source::document(&path.display().to_string(), 0),
        None,
        None,
        e.to_string(),
    )
}

pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    if !args.config.is_dir() {
        anyhow::bail!("--config {}: not a directory", args.config.display());
    }
    let translation = Arc::new(Translation::load(&args.translation)?);
    let cache = SnapshotCache::new();

    let metrics_server =
        crate::servers::metrics(args.metrics_address, translation.metrics.clone()).await?;
    let server = crate::servers::xds(args.xds_address, cache.clone(), "--xds-address").await?;

    let (changed_tx, mut changed) = mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files ourselves raises access events: only changes count.
        if let Ok(event) = event
            && matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            )
        {
            let _ = changed_tx.try_send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&args.config, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", args.config.display()))?;

    // The component file is watched too: a new one is checked and swapped in.
    let (_component_watcher, mut component_changed) = pipeline::watch_component(&translation.path)?;

    let temp_dir;
    let work_dir = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp_dir = std::env::temp_dir().join(format!("infergate-{}", std::process::id()));
            std::fs::create_dir_all(&temp_dir)?;
            temp_dir.clone()
        }
    };
    let mut fleet = (!args.no_envoy).then(|| {
        Fleet::new(
            find_binary(args.envoy.clone()),
            args.xds_address,
            work_dir.clone(),
        )
    });

    let mut state = State {
        files: FileCache::default(),
        last: None,
        last_snapshot: None,
    };
    state
        .apply(&args, &translation, &cache, fleet.as_mut())
        .await;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                // Debounce: editors write files in several steps.
                tokio::time::sleep(Duration::from_millis(args.debounce_ms)).await;
                while changed.try_recv().is_ok() {}
                state.apply(&args, &translation, &cache, fleet.as_mut()).await;
            }
            Some(()) = component_changed.recv() => {
                // Copies and builds write the file in several steps.
                tokio::time::sleep(Duration::from_millis(args.debounce_ms.max(200))).await;
                while component_changed.try_recv().is_ok() {}
                if swap(&args, &translation, &state).await {
                    state.apply(&args, &translation, &cache, fleet.as_mut()).await;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("shutting down");
    if let Some(fleet) = fleet.as_mut() {
        fleet.shutdown().await;
    }
    server.stop().await;
    metrics_server.stop().await;
    Ok(())
}

/// Try the component file as the new translation. True if it was swapped in.
async fn swap(args: &StandaloneArgs, translation: &Arc<Translation>, state: &State) -> bool {
    matches!(
        pipeline::swap_from_file(
            translation,
            state.last_snapshot.clone(),
            pipeline::settings(&args.translation, DEFAULT_ADDRESS),
        )
        .await,
        pipeline::SwapOutcome::Swapped
    )
}

struct State {
    /// Parsed files, re-parsed only when their text changes.
    files: FileCache,
    /// The last output that was served.
    last: Option<Output>,
    /// The snapshot it came from: a new component's canary input.
    last_snapshot: Option<infergate_model::Snapshot>,
}

impl State {
    async fn apply(
        &mut self,
        args: &StandaloneArgs,
        translation: &Arc<Translation>,
        cache: &Arc<SnapshotCache>,
        fleet: Option<&mut Fleet>,
    ) {
        let keeping = if self.last.is_some() {
            "still serving the last good configuration"
        } else {
            "nothing served yet"
        };
        let started = std::time::Instant::now();
        let resources = match self.files.read(&args.config) {
            Ok(r) => r,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    "configuration not applied ({} errors); {keeping}",
                    errors.len()
                );
                return;
            }
        };
        for skipped in &resources.skipped {
            tracing::debug!("{skipped}");
        }
        let snapshot = match pipeline::snapshot(&resources, &args.translation, DEFAULT_ADDRESS) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                tracing::error!("configuration not applied; {keeping}");
                return;
            }
        };
        tracing::debug!(
            read_ms = started.elapsed().as_millis() as u64,
            "files read into a snapshot"
        );
        let Some(output) =
            pipeline::translate_and_publish(translation, &snapshot, cache, fleet, keeping).await
        else {
            return;
        };
        let changed = self
            .last
            .as_ref()
            .is_none_or(|last| last.statuses != output.statuses);
        if changed {
            report_problems(&output.statuses);
            if let Some(path) = &args.status_file {
                match serde_yaml_ng::to_string(&output.statuses) {
                    Ok(text) => {
                        let tmp = path.with_extension("tmp");
                        if let Err(e) =
                            std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path))
                        {
                            tracing::error!("writing {}: {e}", path.display());
                        }
                    }
                    Err(e) => tracing::error!("serializing statuses: {e}"),
                }
            }
        }
        self.last = Some(output);
        self.last_snapshot = Some(snapshot);
    }
}

/// Log each condition that says something is wrong, once per change.
fn report_problems(statuses: &Statuses) {
    let bad = |c: &Condition| {
        (c.status == ConditionStatus::False && c.condition_type != "Conflicted")
            || (c.status == ConditionStatus::True
                && matches!(c.condition_type.as_str(), "Conflicted" | "PartiallyInvalid"))
    };
    for gw in &statuses.gateways {
        for c in gw.conditions.iter().filter(|c| bad(c)) {
            tracing::warn!(
                "Gateway {}: {}={:?} {}: {}",
                gw.gateway,
                c.condition_type,
                c.status,
                c.reason,
                c.message
            );
        }
        for l in &gw.listeners {
            for c in l.conditions.iter().filter(|c| bad(c)) {
                tracing::warn!(
                    "Gateway {} listener {}: {}={:?} {}: {}",
                    gw.gateway,
                    l.name,
                    c.condition_type,
                    c.status,
                    c.reason,
                    c.message
                );
            }
        }
    }
    for route in &statuses.http_routes {
        for parent in &route.parents {
            for c in parent.conditions.iter().filter(|c| bad(c)) {
                tracing::warn!(
                    "HTTPRoute {} (parent {}): {}={:?} {}: {}",
                    route.route,
                    parent.parent_ref.name,
                    c.condition_type,
                    c.status,
                    c.reason,
                    c.message
                );
            }
        }
    }
}
