//! Lease-based leader election (`coordination.k8s.io/v1` Lease), as
//! client-go's leaderelection does it: the holder renews the Lease every
//! `renew_every`; another replica takes it over once `renewTime +
//! leaseDurationSeconds` has passed. Every change of the Lease is made with
//! its `resourceVersion`, so two replicas cannot both win a takeover.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the Pod name in a cluster).
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// Run the election; the receiver says whether this replica leads now.
pub fn start(
    client: Client,
    config: LeaseConfig,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        // When this replica last renewed: it stops acting as leader once the
        // lease could have expired in others' eyes, even if the API is away.
        let mut renewed_at: Option<tokio::time::Instant> = None;
        loop {
            let leading = match try_acquire_or_renew(&api, &config).await {
                Ok(true) => {
                    renewed_at = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => {
                    renewed_at = None;
                    false
                }
                Err(e) => {
                    tracing::warn!(lease = %config.name, "leader election: {e}");
                    renewed_at.is_some_and(|t| t.elapsed() < config.duration)
                }
            };
            if *tx.borrow() != leading {
                if leading {
                    tracing::info!(identity = %config.identity, lease = %format!("{}/{}", config.namespace, config.name), "became the leader: writing status");
                } else {
                    tracing::info!(identity = %config.identity, "no longer the leader: status writes stop");
                }
                let _ = tx.send(leading);
            }
            tokio::time::sleep(config.renew_every).await;
        }
    });
    (rx, task)
}

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = config.duration.as_secs().max(1) as i32;
    let existing = api.get_opt(&config.name).await?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false), // another replica was first
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != config.identity {
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(duration)) => {
                renewed.0 + SignedDuration::from_secs(duration as i64) < now
            }
            _ => true,
        };
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // replace() sends the resourceVersion read above: a concurrent takeover
    // by another replica makes this fail with a conflict.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
