//! Kubernetes mode: the cluster as the translation's input, and its status as
//! the output.
//!
//! - [`watch`]: reflectors for every kind a snapshot is made of; the
//!   InferencePool watch follows the inference extension setting and API
//!   discovery.
//! - [`status`]: statuses written back with server-side apply by a task of
//!   its own (never in the way of configuration), only when they changed,
//!   other controllers' entries left alone; Warning Events.
//! - [`leader`]: Lease-based leader election (only the leader writes).
//! - [`deploy`]: an Envoy Deployment, Service and bootstrap per Gateway of
//!   ours, kept in shape by the leader.
//! - [`rbac`]: the permissions all of this needs, in one place.

pub mod deploy;
pub mod leader;
pub mod rbac;
pub mod status;
pub mod watch;

pub use kube::Client;
pub use leader::LeaseConfig;
pub use status::{
    Backoff, Observed, Report, StatusMetrics, StatusPatch, StatusTask, StatusWriter, WriterConfig,
};
pub use watch::{WatchConfig, Watches, pools_served};

/// A client from `--kubeconfig`, else $KUBECONFIG / ~/.kube/config, else the
/// in-cluster service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a cluster",
        )?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}
