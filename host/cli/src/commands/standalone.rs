//! Standalone mode: a directory of YAML, watched, served to local Envoys.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infergate_model::{Condition, ConditionStatus, ConditionType, Output, Statuses};
use infergate_xds::SnapshotCache;
use notify::Watcher;
use tokio::sync::mpsc;

use crate::StandaloneArgs;
use crate::envoy::{Fleet, find_binary};
use crate::files::SnapshotFiles;
use crate::pipeline::{self, Translation};
use crate::quarantine::Guard;

/// Where Gateway listeners bind when their spec.addresses says nothing.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1";

pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    if !args.config.is_dir() {
        anyhow::bail!("--config {}: not a directory", args.config.display());
    }
    let translation = Arc::new(Translation::load(&args.translation)?);
    let cache = SnapshotCache::new();

    let metrics_server =
        crate::servers::metrics(args.metrics_address, translation.metrics.clone()).await?;
    let server =
        crate::servers::xds(args.xds_address, cache.clone(), "--xds-address", None).await?;

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

    let mut answers = cache.answers();
    let mut state = State {
        files: SnapshotFiles::default(),
        last: None,
        read_failed: false,
        guard: Guard::new(),
        reported: None,
    };
    state
        .apply(&args, &translation, &cache, fleet.as_mut(), true)
        .await;
    translation.metrics.set_ready();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                // Debounce: editors write files in several steps.
                tokio::time::sleep(Duration::from_millis(args.debounce_ms)).await;
                while changed.try_recv().is_ok() {}
                state.apply(&args, &translation, &cache, fleet.as_mut(), false).await;
            }
            Some(()) = component_changed.recv() => {
                // Copies and builds write the file in several steps.
                tokio::time::sleep(Duration::from_millis(args.debounce_ms.max(200))).await;
                while component_changed.try_recv().is_ok() {}
                if swap(&args, &translation, &state).await {
                    state.apply(&args, &translation, &cache, fleet.as_mut(), true).await;
                }
            }
            Ok(()) = answers.changed() => {
                state.answered(&args, &translation, &cache, fleet.as_mut()).await;
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
            state.files.snapshot().cloned(),
            pipeline::settings(&args.translation, DEFAULT_ADDRESS),
        )
        .await,
        pipeline::SwapOutcome::Swapped
    )
}

struct State {
    /// The configuration files as a snapshot (also a new component's canary
    /// input), re-parsed only where their text changes.
    files: SnapshotFiles,
    /// The last output that was served.
    last: Option<Output>,
    /// The last read of the files failed.
    read_failed: bool,
    /// Holds back what Envoy refuses.
    guard: Guard,
    /// The statuses last written.
    reported: Option<Statuses>,
}

impl State {
    async fn apply(
        &mut self,
        args: &StandaloneArgs,
        translation: &Arc<Translation>,
        cache: &Arc<SnapshotCache>,
        fleet: Option<&mut Fleet>,
        // Translate even if the files did not change (a new component).
        retranslate: bool,
    ) {
        let keeping = if self.last.is_some() {
            "still serving the last good configuration"
        } else {
            "nothing served yet"
        };
        let started = std::time::Instant::now();
        let settings = pipeline::settings(&args.translation, DEFAULT_ADDRESS);
        let changed = match self.files.read(&args.config, &settings) {
            Ok(changed) => changed,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    "configuration not applied ({} errors); {keeping}",
                    errors.len()
                );
                self.read_failed = true;
                return;
            }
        };
        if !changed && !retranslate && self.last.is_some() {
            // Touched, rewritten with the same text, or back to what is
            // served after an error: nothing to translate.
            if std::mem::take(&mut self.read_failed) {
                tracing::info!(
                    "configuration files are valid again and as served; nothing to apply"
                );
            } else {
                tracing::debug!("configuration files unchanged; nothing to apply");
            }
            return;
        }
        self.read_failed = false;
        for skipped in self.files.skipped() {
            tracing::warn!("{skipped}");
        }
        tracing::debug!(
            read_ms = started.elapsed().as_millis() as u64,
            "files read into a snapshot"
        );
        let snapshot = self.files.snapshot().expect("read succeeded").clone();
        cache.set_certificates(self.files.certificates());
        self.guard.input(snapshot);
        pipeline::serve_guarded(
            &mut self.guard,
            true,
            translation,
            cache,
            fleet,
            &mut self.last,
            keeping,
        )
        .await;
        self.report(args);
    }

    /// An Envoy answered: go on with what the guard makes of it.
    async fn answered(
        &mut self,
        args: &StandaloneArgs,
        translation: &Arc<Translation>,
        cache: &Arc<SnapshotCache>,
        fleet: Option<&mut Fleet>,
    ) {
        pipeline::serve_guarded(
            &mut self.guard,
            false,
            translation,
            cache,
            fleet,
            &mut self.last,
            "still serving the last configuration Envoy took",
        )
        .await;
        self.report(args);
    }

    /// Log and write the statuses if they changed.
    fn report(&mut self, args: &StandaloneArgs) {
        let Some(last) = &self.last else { return };
        let mut statuses = last.statuses.clone();
        self.guard.overlay(&mut statuses);
        if self.reported.as_ref() == Some(&statuses) {
            return;
        }
        report_problems(&statuses);
        if let Some(path) = &args.status_file {
            match serde_yaml_ng::to_string(&statuses) {
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
        self.reported = Some(statuses);
    }
}

/// Log each condition that says something is wrong, once per change.
fn report_problems(statuses: &Statuses) {
    let bad = |c: &Condition| {
        (c.status == ConditionStatus::False && c.condition_type != ConditionType::Conflicted)
            || (c.status == ConditionStatus::True
                && matches!(
                    c.condition_type,
                    ConditionType::Conflicted | ConditionType::PartiallyInvalid
                ))
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
