//! The endpoint-picker deployer: for each InferencePool that the
//! translation says needs a managed picker (no endpointPickerRef, an
//! accepted route of ours through it: `output.managed-pickers`), an
//! `infergate-epp` Deployment, its Service, ServiceAccount, Role,
//! RoleBinding and serving certificate, owned by the pool, kept in shape by
//! the leader. Pickers of pools no longer wanted are deleted.
//!
//! Same habits as the Envoy deployer ([`super::Deployer`]): server-side
//! apply with field manager `<field manager>-deployer`, drift repaired from
//! label-selected watches of its own Deployments and Services, Secrets
//! written and never read (the Pod annotation says when the certificate
//! expires, and it is renewed before then).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::picker_manifests::{self as m, PickerSettings, PoolRef};
use super::{api_resource, digest, object_ref, pki, with_kind};
use crate::StatusWriter;

pub struct PickerDeployerConfig {
    pub settings: PickerSettings,
    pub field_manager: String,
    /// Issues the pickers' serving certificates; Envoy trusts it.
    pub ca: Arc<pki::Ca>,
    /// Warning Events on pools whose annotations are not valid.
    pub events: Option<Arc<StatusWriter>>,
}

pub struct PickerDeployer {
    wanted: watch::Sender<Vec<PoolRef>>,
    deployments: Store<Deployment>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PickerDeployer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PickerDeployer {
    pub fn start(
        client: Client,
        config: PickerDeployerConfig,
        leading: watch::Receiver<bool>,
    ) -> PickerDeployer {
        let selector = format!(
            "{}={},{}={}",
            super::manifests::MANAGED_BY,
            super::manifests::MANAGER,
            super::manifests::COMPONENT,
            m::PICKER_COMPONENT
        );
        let owned = Arc::new(Notify::new());
        let (deployments, d_task) = crate::watch::reflect_selected::<Deployment>(
            Api::all(client.clone()),
            &selector,
            owned.clone(),
        );
        let (services, s_task) = crate::watch::reflect_selected::<Service>(
            Api::all(client.clone()),
            &selector,
            owned.clone(),
        );
        let (wanted, wanted_rx) = watch::channel(Vec::new());
        let worker = Worker {
            client,
            config,
            deployments: deployments.clone(),
            services,
            applied: BTreeMap::new(),
            reported: BTreeMap::new(),
        };
        let task = tokio::spawn(worker.run(wanted_rx, owned, leading));
        PickerDeployer {
            wanted,
            deployments,
            tasks: vec![d_task, s_task, task],
        }
    }

    /// The pools that need a picker now (from the latest translation).
    pub fn want(&self, mut pools: Vec<PoolRef>) {
        pools.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.wanted.send_if_modified(|current| {
            let changed = *current != pools;
            *current = pools;
            changed
        });
    }

    /// Ready replicas of pool `namespace/name`'s picker, if it is deployed.
    pub fn ready_replicas(&self, namespace: &str, pool: &str) -> Option<i32> {
        let name = infergate_names::objects::picker(pool);
        let d = self.deployments.get(&object_ref(&name, namespace))?;
        Some(d.status.as_ref()?.ready_replicas.unwrap_or(0))
    }
}

struct Worker {
    client: Client,
    config: PickerDeployerConfig,
    deployments: Store<Deployment>,
    services: Store<Service>,
    /// Per pool: what was applied last and the Deployment generation it gave.
    applied: BTreeMap<(String, String), (String, Option<i64>)>,
    /// Per pool: the annotation problems last reported in an Event.
    reported: BTreeMap<(String, String), Vec<String>>,
}

impl Worker {
    async fn run(
        mut self,
        mut wanted: watch::Receiver<Vec<PoolRef>>,
        owned_changed: Arc<Notify>,
        mut leading: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if *leading.borrow() {
                let pools = wanted.borrow_and_update().clone();
                match self.reconcile(&pools).await {
                    Ok(()) => backoff = Duration::from_millis(500),
                    Err(e) => {
                        tracing::warn!(
                            "deploying endpoint pickers: {e:#}; trying again in {backoff:?}"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            tokio::select! {
                Ok(()) = wanted.changed() => {}
                _ = owned_changed.notified() => {}
                _ = leading.changed() => {
                    self.applied.clear();
                    self.reported.clear();
                }
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn report(&mut self, pool: &PoolRef, problems: Vec<String>) {
        let key = (pool.namespace.clone(), pool.name.clone());
        if self.reported.get(&key) == Some(&problems) {
            return;
        }
        for problem in &problems {
            tracing::warn!(pool = %format!("{}/{}", pool.namespace, pool.name), "{problem}");
        }
        if let (Some(events), false) = (&self.config.events, problems.is_empty()) {
            let reference = ObjectReference {
                api_version: Some(format!(
                    "{}/{}",
                    infergate_names::inference_pool::GROUP,
                    infergate_names::inference_pool::VERSION
                )),
                kind: Some(infergate_names::inference_pool::KIND.into()),
                namespace: Some(pool.namespace.clone()),
                name: Some(pool.name.clone()),
                uid: Some(pool.uid.clone()),
                ..Default::default()
            };
            events
                .event(
                    &reference,
                    EventType::Warning,
                    "InvalidPickerAnnotation",
                    &problems.join("; "),
                )
                .await;
        }
        self.reported.insert(key, problems);
    }

    async fn reconcile(&mut self, wanted: &[PoolRef]) -> anyhow::Result<()> {
        let params = PatchParams::apply(&format!("{}-deployer", self.config.field_manager)).force();
        let mut keep = BTreeSet::new();
        for pool in wanted {
            let key = (pool.namespace.clone(), pool.name.clone());
            let object = m::object_name(pool);
            let ns = pool.namespace.as_str();
            keep.insert((ns.to_string(), object.clone()));
            let (settings, problems) = self.config.settings.with_overrides(&pool.annotations);
            self.report(pool, problems).await;
            let live = self.deployments.get(&object_ref(&object, ns));
            let expiry = super::unexpired_certificate(live.as_deref(), m::CERTIFICATE_EXPIRY);
            let spec_digest = digest(format!("{pool:?}-{settings:?}-{expiry:?}").as_bytes());
            let fresh = self.applied.get(&key).is_some_and(|(applied, generation)| {
                *applied == spec_digest
                    && live
                        .as_ref()
                        .is_some_and(|d| d.metadata.generation == *generation)
                    && self.services.get(&object_ref(&object, ns)).is_some()
            });
            if fresh {
                continue;
            }
            let apply = |kind: &'static str, value: serde_json::Value| {
                let client = self.client.clone();
                let params = params.clone();
                let object = object.clone();
                async move {
                    let resource = match kind {
                        "ServiceAccount" => api_resource::<ServiceAccount>(),
                        "Role" => api_resource::<Role>(),
                        "RoleBinding" => api_resource::<RoleBinding>(),
                        "Secret" => api_resource::<Secret>(),
                        "Service" => api_resource::<Service>(),
                        _ => api_resource::<Deployment>(),
                    };
                    let api: Api<kube::api::DynamicObject> =
                        Api::namespaced_with(client, ns, &resource);
                    api.patch(&object, &params, &Patch::Apply(&value))
                        .await
                        .map_err(|e| anyhow::anyhow!("applying {kind} {ns}/{object}: {e}"))
                        .map(|applied| applied.metadata)
                }
            };
            apply(
                "ServiceAccount",
                with_kind(m::service_account(pool), "v1", "ServiceAccount"),
            )
            .await?;
            apply(
                "Role",
                with_kind(m::role(pool), "rbac.authorization.k8s.io/v1", "Role"),
            )
            .await?;
            apply(
                "RoleBinding",
                with_kind(
                    m::role_binding(pool),
                    "rbac.authorization.k8s.io/v1",
                    "RoleBinding",
                ),
            )
            .await?;
            let expiry = match expiry {
                Some(expiry) => expiry,
                None => {
                    let issued = self.config.ca.issue_picker(&m::dns_names(pool))?;
                    apply(
                        "Secret",
                        with_kind(
                            m::secret(pool, &issued.cert_pem, &issued.key_pem),
                            "v1",
                            "Secret",
                        ),
                    )
                    .await?;
                    issued.not_after
                }
            };
            apply("Service", with_kind(m::service(pool), "v1", "Service")).await?;
            let applied = apply(
                "Deployment",
                with_kind(
                    m::deployment(pool, &settings, expiry),
                    "apps/v1",
                    "Deployment",
                ),
            )
            .await?;
            super::until_watched(&self.deployments, &applied).await;
            tracing::info!(
                pool = %format!("{ns}/{}", pool.name),
                deployment = %object,
                replicas = settings.replicas,
                "endpoint picker {}",
                if live.is_none() { "deployed" } else { "put back in shape" }
            );
            self.applied.insert(key, (spec_digest, applied.generation));
        }
        self.applied.retain(|key, _| {
            wanted
                .iter()
                .any(|p| (&p.namespace, &p.name) == (&key.0, &key.1))
        });
        self.reported.retain(|key, _| {
            wanted
                .iter()
                .any(|p| (&p.namespace, &p.name) == (&key.0, &key.1))
        });
        // Ours, but no pool wants them any more (a route went, the pool got
        // its own picker): delete.
        for (ns, name) in super::unwanted(&self.deployments, &keep) {
            tracing::info!(deployment = %format!("{ns}/{name}"), "no pool needs this endpoint picker any more: deleting it");
            let kinds = [
                api_resource::<Deployment>(),
                api_resource::<Service>(),
                api_resource::<Secret>(),
                api_resource::<RoleBinding>(),
                api_resource::<Role>(),
                api_resource::<ServiceAccount>(),
            ];
            super::delete_objects(&self.client, &ns, &name, &kinds).await?;
        }
        Ok(())
    }
}
