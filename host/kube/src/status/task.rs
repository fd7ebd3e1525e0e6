//! The status writer as a task of its own: the controller hands it the
//! latest statuses and goes on; the task plans and writes while this replica
//! leads.

use std::sync::Arc;
use std::time::Duration;

use infergate_model::Statuses;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Observed, StatusWriter, plan};

/// How long to wait before planning again after a conflict or a failure:
/// `first`, doubled after each pass that needs another, up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

pub struct StatusTask {
    desired: watch::Sender<Option<Arc<Statuses>>>,
    task: JoinHandle<()>,
}

impl StatusTask {
    /// Start the task. `observe` returns what the watches have now (the
    /// current objects and their statuses); `leading` says whether this
    /// replica may write.
    pub fn spawn<F>(
        writer: Arc<StatusWriter>,
        observe: F,
        leading: watch::Receiver<bool>,
        backoff: Backoff,
    ) -> StatusTask
    where
        F: Fn() -> Observed + Send + Sync + 'static,
    {
        let (desired, wanted) = watch::channel(None);
        let task = tokio::spawn(run(writer, observe, wanted, leading, backoff));
        StatusTask { desired, task }
    }

    /// The statuses to write now. Returns at once; a state not written yet
    /// is replaced. Publishing the same statuses again asks the task to
    /// compare them with the API server's again (after a watch event, say).
    pub fn publish(&self, statuses: Statuses) {
        self.desired.send_replace(Some(Arc::new(statuses)));
    }
}

impl Drop for StatusTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<F>(
    writer: Arc<StatusWriter>,
    observe: F,
    mut wanted: watch::Receiver<Option<Arc<Statuses>>>,
    mut leading: watch::Receiver<bool>,
    backoff: Backoff,
) where
    F: Fn() -> Observed + Send + Sync + 'static,
{
    let mut retry_at: Option<Instant> = None;
    let mut delay = backoff.first;
    loop {
        let due = retry_at;
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => {}
        }
        retry_at = None;
        if !*leading.borrow_and_update() {
            continue; // a new leader plans everything again
        }
        let Some(statuses) = wanted.borrow_and_update().clone() else {
            continue; // nothing translated yet
        };
        let patches = plan(
            &observe(),
            &statuses,
            writer.controller_name(),
            &super::now(),
        );
        if patches.is_empty() {
            delay = backoff.first;
            continue;
        }
        let report = writer.write(patches, &leading).await;
        tracing::info!(
            written = report.written,
            conflicts = report.conflicts,
            failed = report.failed,
            skipped = report.skipped,
            "status"
        );
        if report.retry() {
            retry_at = Some(Instant::now() + delay);
            delay = (delay * 2).min(backoff.max);
        } else {
            delay = backoff.first;
        }
    }
}
