//! The Gateway deployer: for each Gateway of our class, an Envoy Deployment,
//! its Service and its bootstrap, kept in shape by the leader.
//!
//! - What is wanted comes from the Gateway objects themselves (a Gateway of
//!   our class, its listener ports), not from the translation's outcome: a
//!   route or listener with an error never takes a Gateway's Envoys away.
//! - Objects are written with server-side apply (field manager
//!   `<field manager>-deployer`), owned by their Gateway, so the garbage
//!   collector deletes them with it. Objects of ours whose Gateway is no
//!   longer ours are deleted.
//! - Drift is repaired: the deployer watches the objects it made (by label)
//!   and applies again when one is missing or changed (a deleted Deployment
//!   comes back, a scaled one is scaled back).
//! - [`Deployer::adjust`] gives the Gateway statuses their addresses from
//!   the Service and keeps `Programmed` false until an Envoy Pod is ready
//!   (it listens on the Gateway's port: it has this Gateway's listeners).

pub mod manifests;
pub mod parameters;
pub mod picker_manifests;
pub mod pickers;
pub mod pki;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use infergate_model::{Condition, ConditionStatus, ConditionType, Statuses};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use std::sync::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use manifests::{EnvoySettings, GatewayRef};
pub use picker_manifests::{PickerSettings, PoolRef};
pub use pickers::{PickerDeployer, PickerDeployerConfig};

/// Makes an Envoy bootstrap (binary protobuf) for node `namespace/name`
/// reaching the xDS server at the address given.
pub type BootstrapFn = Arc<dyn Fn(&str, SocketAddr) -> Vec<u8> + Send + Sync>;

#[derive(Clone)]
pub struct DeployerConfig {
    pub envoy: EnvoySettings,
    pub controller_name: String,
    pub field_manager: String,
    /// The controller's Service (namespace, name, port): Envoys reach xDS at
    /// its ClusterIP (no cluster DNS needed).
    pub xds_service: (String, String, u16),
    pub bootstrap: BootstrapFn,
    /// Issues each Gateway's xDS client certificate.
    pub ca: Arc<pki::Ca>,
}

pub struct Deployer {
    poke: Arc<Notify>,
    deployments: Store<Deployment>,
    services: Store<Service>,
    problems: Arc<Mutex<Problems>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Parameters that could not be used, as statuses say them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Problems {
    /// By GatewayClass name.
    classes: BTreeMap<String, String>,
    /// By Gateway (namespace, name): its own or its class's.
    gateways: BTreeMap<(String, String), String>,
}

impl Drop for Deployer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a Gateway's data plane looks like now, for its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPlane {
    /// Load balancer ingress (IPs, else host names), else the ClusterIP.
    pub addresses: Vec<String>,
    pub ready_replicas: i32,
}

impl Deployer {
    /// Watch the objects we made and keep every Gateway's data plane in
    /// shape while `leading`. `gateways` and `classes` are the controller's
    /// stores ([`Deployer::poke`] after they change); `statuses_stale` is
    /// woken when a data plane changes, so that statuses follow.
    pub fn start(
        client: Client,
        config: DeployerConfig,
        gateways: Store<Gateway>,
        classes: Store<GatewayClass>,
        statuses_stale: Arc<Notify>,
        leading: watch::Receiver<bool>,
    ) -> Deployer {
        let poke = Arc::new(Notify::new());
        let ours = format!("{}={}", manifests::MANAGED_BY, manifests::MANAGER);
        let selector = format!("{ours},{}=envoy", manifests::COMPONENT);
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
        let (config_maps, c_task) = crate::watch::reflect_selected::<ConfigMap>(
            Api::all(client.clone()),
            &selector,
            owned.clone(),
        );
        let problems = Arc::new(Mutex::new(Problems::default()));
        let worker = Worker {
            client,
            config,
            gateways,
            classes,
            deployments: deployments.clone(),
            services: services.clone(),
            config_maps,
            applied: BTreeMap::new(),
            problems: problems.clone(),
            statuses_stale,
            uses_parameters: false,
        };
        let task = tokio::spawn(worker.run(poke.clone(), owned, leading));
        Deployer {
            poke,
            deployments,
            services,
            problems,
            tasks: vec![d_task, s_task, c_task, task],
        }
    }

    /// Gateways or GatewayClasses changed: look again.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// The data plane of Gateway `namespace/name`, if it has been made.
    pub fn data_plane(&self, namespace: &str, name: &str) -> Option<DataPlane> {
        let object = manifests::object_name(name);
        let service = self.services.get(&object_ref(&object, namespace))?;
        let deployment = self.deployments.get(&object_ref(&object, namespace));
        Some(DataPlane {
            addresses: service_addresses(&service),
            ready_replicas: deployment
                .and_then(|d| d.status.clone())
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        })
    }

    /// Gateway statuses as the data plane makes them: addresses from the
    /// Service, `Programmed` false until an Envoy Pod is ready.
    /// Parameters that could not be used make the Gateway (and the class
    /// whose they are) `Accepted` False with reason `InvalidParameters`.
    pub fn adjust(&self, mut statuses: Statuses) -> Statuses {
        let problems = self.problems.lock().expect("problems lock").clone();
        for gateway in &mut statuses.gateways {
            let plane = self.data_plane(&gateway.gateway.namespace, &gateway.gateway.name);
            adjust_gateway(gateway, plane.as_ref());
            let key = (
                gateway.gateway.namespace.clone(),
                gateway.gateway.name.clone(),
            );
            if let Some(problem) = problems.gateways.get(&key) {
                invalid_parameters(&mut gateway.conditions, problem);
            }
        }
        for class in &mut statuses.gateway_classes {
            if let Some(problem) = problems.classes.get(&class.name) {
                invalid_parameters(&mut class.conditions, problem);
            }
        }
        statuses
    }
}

fn invalid_parameters(conditions: &mut [Condition], problem: &str) {
    if let Some(accepted) = conditions
        .iter_mut()
        .find(|c| c.condition_type == ConditionType::Accepted)
        && accepted.status == ConditionStatus::True
    {
        *accepted = Condition {
            condition_type: ConditionType::Accepted,
            status: ConditionStatus::False,
            reason: "InvalidParameters".into(),
            message: format!(
                "{problem}; the Envoys keep what they were last deployed with (none are deployed until the parameters are valid)"
            ),
            observed_generation: accepted.observed_generation,
        };
    }
}

fn adjust_gateway(gateway: &mut infergate_model::GatewayStatus, plane: Option<&DataPlane>) {
    let object = manifests::object_name(&gateway.gateway.name);
    let (addresses, pending) = match plane {
        None => (
            vec![],
            Some(format!(
                "waiting for the Envoy Deployment and Service {object} to be made"
            )),
        ),
        Some(p) if p.addresses.is_empty() => (
            vec![],
            Some(format!("the Service {object} has no address yet")),
        ),
        Some(p) if p.ready_replicas == 0 => (
            p.addresses.clone(),
            Some(format!(
                "waiting for an Envoy Pod of the Deployment {object} to be ready with this Gateway's listeners"
            )),
        ),
        Some(p) => (p.addresses.clone(), None),
    };
    gateway.addresses = addresses;
    if let Some(message) = pending
        && let Some(programmed) = gateway
            .conditions
            .iter_mut()
            .find(|c| c.condition_type == ConditionType::Programmed)
        && programmed.status == ConditionStatus::True
    {
        *programmed = Condition {
            condition_type: ConditionType::Programmed,
            status: ConditionStatus::False,
            reason: "Pending".into(),
            message,
            observed_generation: programmed.observed_generation,
        };
    }
}

fn service_addresses(service: &Service) -> Vec<String> {
    let ingress: Vec<String> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    if !ingress.is_empty() {
        return ingress;
    }
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
        .into_iter()
        .collect()
}

struct Worker {
    client: Client,
    config: DeployerConfig,
    gateways: Store<Gateway>,
    classes: Store<GatewayClass>,
    deployments: Store<Deployment>,
    services: Store<Service>,
    config_maps: Store<ConfigMap>,
    /// Per Gateway (namespace/name): the digest of what was applied last and
    /// the Deployment's generation that apply returned.
    applied: BTreeMap<(String, String), (String, Option<i64>)>,
    problems: Arc<Mutex<Problems>>,
    /// Woken when a data plane or a parameters problem changes.
    statuses_stale: Arc<Notify>,
    /// Some Gateway of ours has a parametersRef (its own or its class's).
    uses_parameters: bool,
}

/// One place a Gateway's Envoy settings come from.
struct Source {
    /// e.g. "GatewayClass infergate parametersRef", for messages.
    what: String,
    reference: parameters::ParametersRef,
    /// The GatewayClass, when it is the class's reference.
    class: Option<String>,
}

/// The expiry (Unix seconds) of the certificate a live Deployment's Pods
/// use, as their `annotation` says, unless it is due for renewal (None: issue
/// a new one).
fn unexpired_certificate(live: Option<&Deployment>, annotation: &str) -> Option<i64> {
    live?
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(annotation)?
        .parse::<i64>()
        .ok()
        .filter(|expiry| *expiry > now() + pki::RENEW_BEFORE_DAYS * 86_400)
}

/// Wait, at most a few seconds, until `store`'s watch shows the Deployment
/// an apply just returned (`applied`: its uid, at its generation or later).
/// Its certificate's expiry is read from the live Deployment: a reconcile
/// that ran before the watch caught up would take it for missing, issue the
/// certificate again and roll the Pods a second time.
async fn until_watched(store: &Store<Deployment>, applied: &kube::api::ObjectMeta) {
    let (Some(name), Some(namespace)) = (&applied.name, &applied.namespace) else {
        return;
    };
    let reference = object_ref::<Deployment>(name, namespace);
    let seen = || {
        store.get(&reference).is_some_and(|live| {
            live.metadata.uid == applied.uid && live.metadata.generation >= applied.generation
        })
    };
    let deadline = tokio::time::Instant::now() + WATCH_CATCH_UP;
    while !seen() {
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(deployment = %format!("{namespace}/{name}"), "the watch has not shown the applied Deployment yet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long [`until_watched`] waits for a watch to catch up.
const WATCH_CATCH_UP: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Worker {
    async fn run(
        mut self,
        gateways_changed: Arc<Notify>,
        owned_changed: Arc<Notify>,
        mut leading: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if *leading.borrow() {
                match self.reconcile().await {
                    Ok(()) => backoff = Duration::from_millis(500),
                    Err(e) => {
                        tracing::warn!("deploying Envoys: {e:#}; trying again in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = gateways_changed.notified() => {}
                _ = owned_changed.notified() => self.statuses_stale.notify_one(),
                _ = leading.changed() => {
                    // A new leader applies everything again.
                    self.applied.clear();
                }
                // Parameters ConfigMaps are not watched (that would mean
                // every ConfigMap of the cluster): read again every 10 s
                // while some Gateway has parameters.
                _ = tokio::time::sleep(Duration::from_secs(if self.uses_parameters { 10 } else { 60 })) => {}
            }
            // Let a burst of events settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn wanted(&self) -> Vec<(GatewayRef, Vec<Source>)> {
        // Our classes, with their parametersRef.
        let ours: BTreeMap<String, Option<parameters::ParametersRef>> = self
            .classes
            .state()
            .iter()
            .filter(|c| c.spec.controller_name == self.config.controller_name)
            .map(|c| {
                let r = c
                    .spec
                    .parameters_ref
                    .as_ref()
                    .map(|r| parameters::ParametersRef {
                        group: r.group.clone(),
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        namespace: r.namespace.clone(),
                    });
                (c.name_any(), r)
            })
            .collect();
        let mut wanted: Vec<(GatewayRef, Vec<Source>)> = self
            .gateways
            .state()
            .iter()
            .filter(|g| ours.contains_key(&g.spec.gateway_class_name))
            .filter(|g| g.metadata.deletion_timestamp.is_none())
            .filter_map(|g| {
                let mut ports: Vec<u16> = g
                    .spec
                    .listeners
                    .iter()
                    .filter_map(|l| u16::try_from(l.port).ok())
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                let infrastructure = g.spec.infrastructure.as_ref();
                let namespace = g.namespace()?;
                // Where settings come from, class first: (what, reference).
                let mut refs = Vec::new();
                if let Some(Some(r)) = ours.get(&g.spec.gateway_class_name) {
                    refs.push(Source {
                        what: format!("GatewayClass {} parametersRef", g.spec.gateway_class_name),
                        reference: r.clone(),
                        class: Some(g.spec.gateway_class_name.clone()),
                    });
                }
                if let Some(r) = infrastructure.and_then(|i| i.parameters_ref.as_ref()) {
                    refs.push(Source {
                        what: format!(
                            "Gateway {namespace}/{} spec.infrastructure.parametersRef",
                            g.name_any()
                        ),
                        reference: parameters::ParametersRef {
                            group: r.group.clone(),
                            kind: r.kind.clone(),
                            name: r.name.clone(),
                            namespace: Some(namespace.clone()),
                        },
                        class: None,
                    });
                }
                Some((
                    GatewayRef {
                        namespace: g.namespace()?,
                        name: g.name_any(),
                        uid: g.uid()?,
                        ports,
                        infrastructure_labels: infrastructure
                            .and_then(|i| i.labels.clone())
                            .unwrap_or_default(),
                        infrastructure_annotations: infrastructure
                            .and_then(|i| i.annotations.clone())
                            .unwrap_or_default(),
                    },
                    refs,
                ))
            })
            .collect();
        wanted.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        wanted
    }

    /// The Envoy settings of a Gateway: the flags, then each parameters
    /// ConfigMap in `refs` (class first). `cache` holds the ConfigMaps read
    /// in this pass. Err says what is wrong and whose it is (the class's
    /// name when its reference is at fault).
    async fn settings(
        &self,
        refs: &[Source],
        cache: &mut BTreeMap<(String, String), Option<BTreeMap<String, String>>>,
    ) -> Result<EnvoySettings, (usize, String)> {
        let mut settings = self.config.envoy.clone();
        for (index, source) in refs.iter().enumerate() {
            let what = &source.what;
            let fail = |problem: String| (index, problem);
            let (namespace, name) = source.reference.config_map(what).map_err(fail)?;
            let key = (namespace.clone(), name.clone());
            if !cache.contains_key(&key) {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                let data = match api.get_opt(&name).await {
                    Ok(found) => found.map(|c| c.data.unwrap_or_default()),
                    Err(e) => {
                        return Err(fail(format!(
                            "{what}: reading ConfigMap {namespace}/{name}: {e}"
                        )));
                    }
                };
                cache.insert(key.clone(), data);
            }
            let Some(data) = &cache[&key] else {
                return Err(fail(format!(
                    "{what}: ConfigMap {namespace}/{name} not found"
                )));
            };
            settings = parameters::apply(
                &settings,
                data,
                &format!("{what}: ConfigMap {namespace}/{name}"),
            )
            .map_err(fail)?;
        }
        Ok(settings)
    }

    async fn xds_address(&self) -> anyhow::Result<SocketAddr> {
        let (namespace, name, port) = &self.config.xds_service;
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let service = api
            .get(name)
            .await
            .map_err(|e| anyhow::anyhow!("reading the xDS Service {namespace}/{name}: {e}"))?;
        let ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .ok_or_else(|| {
                anyhow::anyhow!("the xDS Service {namespace}/{name} has no ClusterIP")
            })?;
        Ok(SocketAddr::new(ip.parse()?, *port))
    }

    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let wanted = self.wanted();
        let mut cache = BTreeMap::new();
        let mut problems = Problems::default();
        let mut settings_of = BTreeMap::new();
        self.uses_parameters = wanted.iter().any(|(_, refs)| !refs.is_empty());
        for (gateway, refs) in &wanted {
            let key = (gateway.namespace.clone(), gateway.name.clone());
            match self.settings(refs, &mut cache).await {
                Ok(settings) => {
                    settings_of.insert(key, settings);
                }
                Err((whose, problem)) => {
                    if let Some(class) = &refs[whose].class {
                        problems.classes.insert(class.clone(), problem.clone());
                    }
                    problems.gateways.insert(key, problem);
                }
            }
        }
        let changed = {
            let mut shared = self.problems.lock().expect("problems lock");
            let changed = *shared != problems;
            *shared = problems;
            changed
        };
        if changed {
            self.statuses_stale.notify_one();
        }
        // Every Gateway of ours keeps its objects, valid parameters or not.
        let keep: BTreeSet<(String, String)> = wanted
            .iter()
            .map(|(g, _)| (g.namespace.clone(), manifests::object_name(&g.name)))
            .collect();
        let wanted: Vec<(GatewayRef, EnvoySettings)> = wanted
            .into_iter()
            .map(|(gateway, _)| {
                let key = (gateway.namespace.clone(), gateway.name.clone());
                let settings = settings_of.remove(&key);
                (gateway, settings)
            })
            .filter_map(|(gateway, settings)| {
                // Invalid parameters: kept as deployed (not applied, not
                // deleted).
                Some((gateway, settings?))
            })
            .collect();
        let xds = if wanted.is_empty() {
            None
        } else {
            Some(self.xds_address().await?)
        };
        let params = PatchParams::apply(&format!("{}-deployer", self.config.field_manager)).force();
        for (gateway, settings) in &wanted {
            let key = (gateway.namespace.clone(), gateway.name.clone());
            let object = manifests::object_name(&gateway.name);
            let node = format!("{}/{}", gateway.namespace, gateway.name);
            let bootstrap = (self.config.bootstrap)(&node, xds.expect("wanted is not empty"));
            let digest = digest(&bootstrap);
            let live_deployment = self
                .deployments
                .get(&object_ref(&object, &gateway.namespace));
            // The certificate its Envoys use, as their Pods' annotation says;
            // renewed (and the Envoys rolled) before it expires. Secrets are
            // written, never read: the controller may not read them.
            let expiry =
                unexpired_certificate(live_deployment.as_deref(), manifests::CERTIFICATE_EXPIRY);
            // Everything the objects are made of: a change applies again.
            let spec_digest = format!("{digest}-{gateway:?}-{settings:?}-{expiry:?}");
            let fresh = match self.applied.get(&key) {
                Some((applied, generation)) => {
                    applied == &spec_digest
                        && live_deployment
                            .as_ref()
                            .is_some_and(|d| d.metadata.generation == *generation)
                        && self
                            .services
                            .get(&object_ref(&object, &gateway.namespace))
                            .is_some()
                        && self
                            .config_maps
                            .get(&object_ref(&object, &gateway.namespace))
                            .is_some()
                }
                None => false,
            };
            if fresh {
                continue;
            }
            let ns = &gateway.namespace;
            let expiry = match expiry {
                Some(expiry) => expiry,
                None => {
                    let issued = self.config.ca.issue_gateway(ns, &gateway.name)?;
                    let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                    secrets
                        .patch(
                            &object,
                            &params,
                            &Patch::Apply(&with_kind(
                                manifests::secret(
                                    gateway,
                                    &issued.cert_pem,
                                    &issued.key_pem,
                                    &self.config.ca.cert_pem,
                                ),
                                "v1",
                                "Secret",
                            )),
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("applying Secret {ns}/{object}: {e}"))?;
                    tracing::info!(gateway = %node, secret = %object, "issued the Envoys' xDS certificate");
                    issued.not_after
                }
            };
            let cm: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
            cm.patch(
                &object,
                &params,
                &Patch::Apply(&with_kind(
                    manifests::config_map(gateway, &bootstrap),
                    "v1",
                    "ConfigMap",
                )),
            )
            .await
            .map_err(|e| anyhow::anyhow!("applying ConfigMap {ns}/{object}: {e}"))?;
            let svc: Api<Service> = Api::namespaced(self.client.clone(), ns);
            svc.patch(
                &object,
                &params,
                &Patch::Apply(&with_kind(
                    manifests::service(gateway, settings),
                    "v1",
                    "Service",
                )),
            )
            .await
            .map_err(|e| anyhow::anyhow!("applying Service {ns}/{object}: {e}"))?;
            let dep: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
            let applied = dep
                .patch(
                    &object,
                    &params,
                    &Patch::Apply(&with_kind(
                        manifests::deployment(gateway, settings, &digest, expiry),
                        "apps/v1",
                        "Deployment",
                    )),
                )
                .await
                .map_err(|e| anyhow::anyhow!("applying Deployment {ns}/{object}: {e}"))?;
            until_watched(&self.deployments, &applied.metadata).await;
            if live_deployment.is_none() || !self.applied.contains_key(&key) {
                tracing::info!(gateway = %node, deployment = %object, "Envoy deployed");
            } else {
                tracing::info!(gateway = %node, deployment = %object, "Envoy Deployment put back in shape");
            }
            self.applied
                .insert(key, (spec_digest, applied.metadata.generation));
        }
        self.applied
            .retain(|(ns, name), _| keep.contains(&(ns.clone(), manifests::object_name(name))));
        // Ours, but no Gateway of ours wants them (its class changed): delete.
        for (ns, name) in unwanted(&self.deployments, &keep) {
            tracing::info!(deployment = %format!("{ns}/{name}"), "no Gateway of ours wants this Envoy any more: deleting it");
            let kinds = [
                api_resource::<Deployment>(),
                api_resource::<Service>(),
                api_resource::<ConfigMap>(),
                api_resource::<Secret>(),
            ];
            if let Err(e) = delete_objects(&self.client, &ns, &name, &kinds).await {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }
}

/// The Deployments in `deployments` (ours, by label) that `keep`
/// (namespace, name) does not hold and that are not being deleted already.
fn unwanted(
    deployments: &Store<Deployment>,
    keep: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    deployments
        .state()
        .iter()
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .filter_map(|d| Some((d.namespace()?, d.name_any())))
        .filter(|object| !keep.contains(object))
        .collect()
}

/// Delete object `namespace/name` of each of `kinds` (one absent is fine);
/// every kind is tried, the first failure is returned.
async fn delete_objects(
    client: &Client,
    namespace: &str,
    name: &str,
    kinds: &[kube::api::ApiResource],
) -> anyhow::Result<()> {
    let mut first_failure = None;
    for kind in kinds {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, kind);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                first_failure.get_or_insert(anyhow::anyhow!(
                    "deleting {} {namespace}/{name}: {e}",
                    kind.kind
                ));
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

fn api_resource<K: kube::Resource<DynamicType = ()>>() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<K>(&())
}

fn object_ref<K: kube::Resource<DynamicType = ()>>(
    name: &str,
    namespace: &str,
) -> kube::runtime::reflector::ObjectRef<K> {
    kube::runtime::reflector::ObjectRef::new(name).within(namespace)
}

/// Server-side apply needs apiVersion and kind in the body; k8s-openapi's
/// types serialize without them.
fn with_kind<T: serde::Serialize>(object: T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serializes");
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    value
}

/// A short digest of the bootstrap (FNV-1a, 64 bits, hex): a Pod annotation
/// that changes when the bootstrap does.
fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_model::{GatewayStatus, ObjectRef};

    fn status(programmed: ConditionStatus) -> GatewayStatus {
        GatewayStatus {
            gateway: ObjectRef {
                namespace: "team".into(),
                name: "gw".into(),
            },
            addresses: vec!["0.0.0.0".into()],
            conditions: vec![Condition {
                condition_type: ConditionType::Programmed,
                status: programmed,
                reason: "Programmed".into(),
                message: String::new(),
                observed_generation: 3,
            }],
            listeners: vec![],
        }
    }

    fn deployment(uid: &str, generation: i64) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                name: Some("infergate-gw".into()),
                namespace: Some("team".into()),
                uid: Some(uid.into()),
                generation: Some(generation),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A reconcile goes on once the watch shows the Deployment it applied
    /// (that uid, not at an older generation), so the next one reads the
    /// certificate expiry it wrote instead of issuing another.
    #[tokio::test]
    async fn after_an_apply_the_deployer_waits_for_its_watch_to_show_it() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut writer = Writer::<Deployment>::default();
        let store = writer.as_reader();
        writer.apply_watcher_event(&Event::Apply(deployment("replaced", 7)));
        writer.apply_watcher_event(&Event::Apply(deployment("new", 1)));
        let applied = deployment("new", 2).metadata;

        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let store = store.clone();
            let applied = applied.clone();
            async move { until_watched(&store, &applied).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "generation 1 is not the applied 2");
        writer.apply_watcher_event(&Event::Apply(deployment("new", 2)));
        waiting.await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < WATCH_CATCH_UP,
            "{waited:?}"
        );

        // A watch that never catches up holds the deployer a bounded time.
        let started = tokio::time::Instant::now();
        until_watched(&store, &deployment("other", 1).metadata).await;
        assert!(started.elapsed() >= WATCH_CATCH_UP);
    }

    #[test]
    fn programmed_waits_for_a_ready_envoy_and_addresses_come_from_the_service() {
        let mut s = status(ConditionStatus::True);
        adjust_gateway(&mut s, None);
        assert!(s.addresses.is_empty());
        assert_eq!(s.conditions[0].status, ConditionStatus::False);
        assert_eq!(s.conditions[0].reason, "Pending");
        assert_eq!(s.conditions[0].observed_generation, 3);

        let mut s = status(ConditionStatus::True);
        let plane = DataPlane {
            addresses: vec!["198.19.9.20".into()],
            ready_replicas: 0,
        };
        adjust_gateway(&mut s, Some(&plane));
        assert_eq!(s.addresses, ["198.19.9.20"]);
        assert_eq!(s.conditions[0].status, ConditionStatus::False);
        assert!(
            s.conditions[0].message.contains("infergate-gw"),
            "{}",
            s.conditions[0].message
        );

        let mut s = status(ConditionStatus::True);
        let ready = DataPlane {
            ready_replicas: 1,
            ..plane
        };
        adjust_gateway(&mut s, Some(&ready));
        assert_eq!(s.conditions[0].status, ConditionStatus::True);
        assert_eq!(s.addresses, ["198.19.9.20"]);
    }

    #[test]
    fn invalid_parameters_make_the_gateway_not_accepted_and_say_why() {
        let mut s = status(ConditionStatus::True);
        s.conditions.push(Condition {
            condition_type: ConditionType::Accepted,
            status: ConditionStatus::True,
            reason: "Accepted".into(),
            message: String::new(),
            observed_generation: 4,
        });
        invalid_parameters(
            &mut s.conditions,
            "Gateway team/gw spec.infrastructure.parametersRef: ConfigMap team/envoy not found",
        );
        let accepted = &s.conditions[1];
        assert_eq!(accepted.status, ConditionStatus::False);
        assert_eq!(accepted.reason, "InvalidParameters");
        assert_eq!(accepted.observed_generation, 4);
        assert!(accepted.message.contains("ConfigMap team/envoy not found"));
        assert_eq!(
            s.conditions[0].status,
            ConditionStatus::True,
            "Programmed is the data plane's"
        );
    }

    #[test]
    fn a_gateway_the_translation_refused_stays_refused() {
        let mut s = status(ConditionStatus::False);
        s.conditions[0].reason = "Invalid".into();
        let ready = DataPlane {
            addresses: vec!["198.19.9.20".into()],
            ready_replicas: 2,
        };
        adjust_gateway(&mut s, Some(&ready));
        assert_eq!(s.conditions[0].reason, "Invalid");
    }

    #[test]
    fn load_balancer_ingress_wins_over_the_cluster_ip() {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "spec": {"clusterIP": "198.19.9.20"},
        }))
        .unwrap();
        assert_eq!(service_addresses(&service), ["198.19.9.20"]);
        service = serde_json::from_value(serde_json::json!({
            "spec": {"clusterIP": "198.19.9.20"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.200.1"}, {"hostname": "lb.example"}]}},
        }))
        .unwrap();
        assert_eq!(service_addresses(&service), ["198.18.200.1", "lb.example"]);
    }
}
