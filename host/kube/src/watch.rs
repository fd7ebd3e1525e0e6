//! Reflectors: one watch per kind, each into an in-memory store. Every change
//! wakes the controller (a [`Notify`] permit), which debounces them into one
//! snapshot.
//!
//! The InferencePool watch (and the Pod watch, which only pools need) runs
//! only while the inference extension is enabled and the API server serves
//! `inference.networking.k8s.io/v1` InferencePools; API discovery is polled so
//! that a CRD installed later is picked up, and one removed is noticed. The
//! same goes, on its own, for InferenceModelRewrites
//! (`inference.networking.x-k8s.io/v1alpha2`, a CRD of GIE v1.5 that later
//! bundles leave out).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use infergate_resources::{InferenceModelRewrite, InferencePool, ResourceError, Resources, Source};

use crate::status::Observed;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use infergate_names::inference_pool::{GROUP as POOL_GROUP, VERSION as POOL_VERSION};

/// The InferencePool API resource (`inference.networking.k8s.io/v1`).
pub fn pool_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            POOL_GROUP,
            POOL_VERSION,
            infergate_names::inference_pool::KIND,
        ),
        infergate_names::inference_pool::PLURAL,
    )
}

/// The InferenceModelRewrite API resource (`inference.networking.x-k8s.io/v1alpha2`).
pub fn rewrite_api_resource() -> ApiResource {
    use infergate_names::model_rewrite::{GROUP, KIND, PLURAL, VERSION};
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// Whether the API server serves InferencePools now.
pub async fn pools_served(client: &Client) -> Result<bool, kube::Error> {
    served(client, &pool_api_resource()).await
}

/// Whether the API server serves the resource now.
async fn served(client: &Client, resource: &ApiResource) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == resource.plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The InferenceModelRewrite watch, while they are served.
struct RewriteWatch {
    rewrites: Store<DynamicObject>,
    task: JoinHandle<()>,
}

impl Drop for RewriteWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where changes are announced, and what the watches have seen so far.
pub struct Watches {
    namespaces: Store<Namespace>,
    classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    routes: Store<HttpRoute>,
    grants: Store<ReferenceGrant>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    pools: Arc<Mutex<Option<PoolWatch>>>,
    rewrites: Arc<Mutex<Option<RewriteWatch>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Woken on every change of any watched object.
    pub changed: Arc<Notify>,
    /// Whether InferencePools are being watched (for logs, tests and /info).
    pub pools_watched: watch::Receiver<bool>,
}

struct PoolWatch {
    pools: Store<DynamicObject>,
    pods: Store<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Options of the watches.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Watch InferencePools (when the API serves them) and Pods.
    pub inference_extension: bool,
    /// How often API discovery is asked whether InferencePools are served.
    pub discovery_interval: Duration,
}

impl Watches {
    /// Start every watch. Returns once each store has its first full list,
    /// so the first snapshot is complete (no route whose Service merely has
    /// not been listed yet is reported as BackendNotFound).
    pub async fn start(client: Client, config: WatchConfig) -> anyhow::Result<Watches> {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        macro_rules! all {
            ($t:ty, $strip:expr) => {{
                let (store, task) =
                    reflect::<$t>(Api::all(client.clone()), $strip, changed.clone());
                tasks.push(task);
                store
            }};
        }
        let namespaces = all!(Namespace, strip_meta::<Namespace>);
        let classes = all!(GatewayClass, strip_meta::<GatewayClass>);
        let gateways = all!(Gateway, strip_meta::<Gateway>);
        let routes = all!(HttpRoute, strip_meta::<HttpRoute>);
        let grants = all!(ReferenceGrant, strip_meta::<ReferenceGrant>);
        let services = all!(Service, strip_meta::<Service>);
        let slices = all!(EndpointSlice, strip_meta::<EndpointSlice>);
        // Listener certificates: Secrets of type kubernetes.io/tls only.
        let (secrets, task) = reflect_with(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields(&format!(
                "type={}",
                infergate_resources::certificates::TLS_SECRET_TYPE
            )),
            strip_secret,
            changed.clone(),
        );
        tasks.push(task);

        let (pools_watched_tx, pools_watched) = watch::channel(false);
        let pools = Arc::new(Mutex::new(None));
        let rewrites = Arc::new(Mutex::new(None));
        let watches = Watches {
            namespaces,
            classes,
            gateways,
            routes,
            grants,
            services,
            slices,
            secrets,
            pools: pools.clone(),
            rewrites: rewrites.clone(),
            tasks,
            changed: changed.clone(),
            pools_watched,
        };
        for ready in [
            watches.namespaces.wait_until_ready().await,
            watches.classes.wait_until_ready().await,
            watches.gateways.wait_until_ready().await,
            watches.routes.wait_until_ready().await,
            watches.grants.wait_until_ready().await,
            watches.services.wait_until_ready().await,
            watches.slices.wait_until_ready().await,
        ] {
            ready.map_err(|_| anyhow::anyhow!("a watch ended before its first list"))?;
        }
        let mut watches = watches;
        if config.inference_extension {
            // The first check is done here so that the first snapshot has the
            // pools if they are served.
            let first = discover_pools(&client, &pools, &changed, &pools_watched_tx, None).await;
            let first_rewrites = discover_rewrites(&client, &rewrites, &changed, None).await;
            let stores = pools
                .lock()
                .expect("pool watch lock")
                .as_ref()
                .map(|w| (w.pools.clone(), w.pods.clone()));
            if let Some((pool_store, pod_store)) = stores {
                let _ = pool_store.wait_until_ready().await;
                let _ = pod_store.wait_until_ready().await;
            }
            let rewrite_store = rewrites
                .lock()
                .expect("rewrite watch lock")
                .as_ref()
                .map(|w| w.rewrites.clone());
            if let Some(store) = rewrite_store {
                let _ = store.wait_until_ready().await;
            }
            watches.tasks.push(tokio::spawn(poll_pools(
                client,
                Discovered {
                    pools,
                    rewrites,
                    changed,
                    pools_watched: pools_watched_tx,
                },
                config.discovery_interval,
                (first, first_rewrites),
            )));
        } else {
            tracing::info!(
                "inference extension disabled: no InferencePool (or Pod) watch; routes to InferencePools are refused"
            );
        }
        Ok(watches)
    }

    /// Every object the watches hold, as the resources a snapshot is made of.
    /// InferencePools that do not decode are errors naming the pool and field.
    pub fn resources(&self) -> Result<Resources, Vec<ResourceError>> {
        // The stores' own objects, shared: nothing is copied.
        fn all<K>(store: &Store<K>) -> Vec<std::sync::Arc<K>>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store.state()
        }
        let mut resources = Resources {
            namespaces: all(&self.namespaces),
            gateway_classes: all(&self.classes),
            gateways: all(&self.gateways),
            http_routes: all(&self.routes),
            reference_grants: all(&self.grants),
            services: all(&self.services),
            endpoint_slices: all(&self.slices),
            secrets: all(&self.secrets),
            ..Resources::default()
        };
        let mut errors = Vec::new();
        if let Some(pool_watch) = self.pools.lock().expect("pool watch lock").as_ref() {
            resources.pods = all(&pool_watch.pods);
            for object in pool_watch.pools.state() {
                match decode::<InferencePool>(&object, infergate_names::inference_pool::KIND) {
                    Ok(pool) => resources.inference_pools.push(std::sync::Arc::new(pool)),
                    Err(e) => errors.push(e),
                }
            }
        }
        if let Some(watch) = self.rewrites.lock().expect("rewrite watch lock").as_ref() {
            for object in watch.rewrites.state() {
                match decode::<InferenceModelRewrite>(&object, infergate_names::model_rewrite::KIND)
                {
                    Ok(rewrite) => resources
                        .inference_model_rewrites
                        .push(std::sync::Arc::new(rewrite)),
                    Err(e) => errors.push(e),
                }
            }
        }
        // Sorted, so that equal cluster states give equal snapshots (by
        // namespace and name, compared in place: no key copies).
        fn by_name(a: &kube::api::ObjectMeta, b: &kube::api::ObjectMeta) -> std::cmp::Ordering {
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        }
        macro_rules! sort {
            ($($kind:ident),*) => {$(
                resources.$kind.sort_by(|a, b| by_name(&a.metadata, &b.metadata));
            )*};
        }
        sort!(
            namespaces,
            gateway_classes,
            gateways,
            http_routes,
            reference_grants,
            services,
            endpoint_slices,
            pods,
            inference_pools,
            inference_model_rewrites,
            secrets
        );
        if errors.is_empty() {
            Ok(resources)
        } else {
            Err(errors)
        }
    }

    /// The stored objects whose status we write, for comparing.
    pub fn gateway_classes(&self) -> &Store<GatewayClass> {
        &self.classes
    }
    pub fn gateways(&self) -> &Store<Gateway> {
        &self.gateways
    }
    pub fn http_routes(&self) -> &Store<HttpRoute> {
        &self.routes
    }
    /// The InferencePool store, while pools are watched.
    pub fn inference_pools(&self) -> Option<Store<DynamicObject>> {
        self.pools
            .lock()
            .expect("pool watch lock")
            .as_ref()
            .map(|p| p.pools.clone())
    }

    /// The objects whose status we write, as the stores have them now.
    pub fn observed(&self) -> Observed {
        (self.observer())()
    }

    /// A function that returns [`Self::observed`] whenever it is called, for
    /// a task that outlives this borrow (the status writer).
    pub fn observer(&self) -> impl Fn() -> Observed + Send + Sync + 'static {
        let classes = self.classes.clone();
        let gateways = self.gateways.clone();
        let routes = self.routes.clone();
        let pools = self.pools.clone();
        let rewrites = self.rewrites.clone();
        move || Observed {
            gateway_classes: classes.state(),
            gateways: gateways.state(),
            http_routes: routes.state(),
            inference_pools: pools
                .lock()
                .expect("pool watch lock")
                .as_ref()
                .map(|p| p.pools.state())
                .unwrap_or_default(),
            inference_model_rewrites: rewrites
                .lock()
                .expect("rewrite watch lock")
                .as_ref()
                .map(|r| r.rewrites.state())
                .unwrap_or_default(),
        }
    }
}

// The error path is cold and its errors end up in a Vec anyway.
#[allow(clippy::result_large_err)]
fn decode<T: DeserializeOwned>(object: &DynamicObject, kind: &str) -> Result<T, ResourceError> {
    let name = format!(
        "{}/{}",
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default()
    );
    let mut value = object.data.clone();
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "metadata".into(),
            serde_json::to_value(&object.metadata).unwrap_or_default(),
        );
    }
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        ResourceError::new(
            Source::Api,
            Some((kind.into(), Some(name))),
            Some(path),
            e.into_inner().to_string(),
        )
    })
}

/// The watches that run while API discovery says their kinds are served.
struct Discovered {
    pools: Arc<Mutex<Option<PoolWatch>>>,
    rewrites: Arc<Mutex<Option<RewriteWatch>>>,
    changed: Arc<Notify>,
    pools_watched: watch::Sender<bool>,
}

/// Re-check API discovery for InferencePools and InferenceModelRewrites
/// every `interval`; start or stop their watches when the answer changes.
async fn poll_pools(
    client: Client,
    watches: Discovered,
    interval: Duration,
    (mut pools, mut rewrites): (Option<bool>, Option<bool>),
) {
    let w = &watches;
    loop {
        tokio::time::sleep(interval).await;
        pools = discover_pools(&client, &w.pools, &w.changed, &w.pools_watched, pools).await;
        rewrites = discover_rewrites(&client, &w.rewrites, &w.changed, rewrites).await;
    }
}

/// One discovery check for InferenceModelRewrites. Returns what it found
/// (None: the API could not be asked).
async fn discover_rewrites(
    client: &Client,
    rewrites: &Arc<Mutex<Option<RewriteWatch>>>,
    changed: &Arc<Notify>,
    last: Option<bool>,
) -> Option<bool> {
    let ar = rewrite_api_resource();
    let served = match served(client, &ar).await {
        Ok(served) => served,
        Err(e) => {
            tracing::warn!(
                "API discovery for InferenceModelRewrites failed: {e}; asking again later"
            );
            return last;
        }
    };
    if Some(served) == last {
        return last;
    }
    let mut slot = rewrites.lock().expect("rewrite watch lock");
    if served && slot.is_none() {
        tracing::info!(
            "InferenceModelRewrites ({}) are served: watching them",
            ar.api_version
        );
        let (store, task) = reflect_dynamic(
            Api::all_with(client.clone(), &ar),
            ar.clone(),
            changed.clone(),
        );
        *slot = Some(RewriteWatch {
            rewrites: store,
            task,
        });
    } else if !served {
        if last.is_some() {
            tracing::warn!(
                "the API server no longer serves {} InferenceModelRewrites: models are served under their own names",
                ar.api_version
            );
        } else {
            tracing::info!(
                "the API server does not serve {} InferenceModelRewrites (a CRD of the Inference Extension v1.5): no model is served under another name; checking again every few seconds",
                ar.api_version
            );
        }
        *slot = None;
        changed.notify_one();
    }
    Some(served)
}

/// One discovery check. Returns what it found (None: the API could not be asked).
async fn discover_pools(
    client: &Client,
    pools: &Arc<Mutex<Option<PoolWatch>>>,
    changed: &Arc<Notify>,
    watched: &watch::Sender<bool>,
    last: Option<bool>,
) -> Option<bool> {
    let served = match pools_served(client).await {
        Ok(served) => served,
        Err(e) => {
            tracing::warn!("API discovery for InferencePools failed: {e}; asking again later");
            return last;
        }
    };
    if Some(served) == last {
        return last;
    }
    let mut slot = pools.lock().expect("pool watch lock");
    if served && slot.is_none() {
        tracing::info!(
            "InferencePools ({POOL_GROUP}/{POOL_VERSION}) are served: watching InferencePools and Pods"
        );
        let ar = pool_api_resource();
        let (pool_store, pool_task) = reflect_dynamic(
            Api::all_with(client.clone(), &ar),
            ar.clone(),
            changed.clone(),
        );
        let (pod_store, pod_task) =
            reflect::<Pod>(Api::all(client.clone()), strip_pod, changed.clone());
        *slot = Some(PoolWatch {
            pools: pool_store,
            pods: pod_store,
            tasks: vec![pool_task, pod_task],
        });
        let _ = watched.send(true);
    } else if !served {
        if last.is_none() {
            tracing::warn!(
                "the inference extension is enabled but the API server does not serve {POOL_GROUP}/{POOL_VERSION} InferencePools \
                 (install the Gateway API Inference Extension CRDs); serving everything else, and checking again every few seconds"
            );
        } else {
            tracing::warn!(
                "the API server no longer serves {POOL_GROUP}/{POOL_VERSION} InferencePools (CRD removed?): \
                 InferencePool watch stopped; routes to InferencePools now report missing backends"
            );
        }
        *slot = None;
        let _ = watched.send(false);
        changed.notify_one();
    }
    Some(served)
}

/// Managed fields and the last-applied annotation are large and of no use here.
fn strip_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Of a Secret, a listener needs its certificate and key; nothing else is
/// kept (annotations may hold a copy of the data: kubectl's
/// last-applied-configuration).
fn strip_secret(secret: &mut Secret) {
    strip_meta(secret);
    secret.metadata.annotations = None;
    secret.metadata.labels = None;
    secret.metadata.owner_references = None;
    if let Some(data) = secret.data.as_mut() {
        data.retain(|key, _| key == "tls.crt" || key == "tls.key");
    }
    secret.string_data = None;
}

/// Of a Pod, the translation needs its labels, IPs and readiness.
fn strip_pod(pod: &mut Pod) {
    strip_meta(pod);
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// A reflector over the objects with these labels (a label selector), for
/// what the controller itself makes.
pub(crate) fn reflect_selected<K>(
    api: Api<K>,
    labels: &str,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflect_with(
        api,
        watcher::Config::default().labels(labels),
        strip_meta::<K>,
        changed,
    )
}

fn reflect<K>(api: Api<K>, strip: fn(&mut K), changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflect_with(api, watcher::Config::default(), strip, changed)
}

fn reflect_with<K>(
    api: Api<K>,
    config: watcher::Config,
    strip: fn(&mut K),
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(strip);
    let task = tokio::spawn(run_reflector(
        std::any::type_name::<K>()
            .rsplit("::")
            .next()
            .unwrap_or("object"),
        reflector::reflector(writer, stream),
        changed,
    ));
    (store, task)
}

fn reflect_dynamic(
    api: Api<DynamicObject>,
    ar: ApiResource,
    changed: Arc<Notify>,
) -> (Store<DynamicObject>, JoinHandle<()>) {
    let kind: &'static str = if ar.kind == infergate_names::model_rewrite::KIND {
        infergate_names::model_rewrite::KIND
    } else {
        infergate_names::inference_pool::KIND
    };
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip_meta::<DynamicObject>);
    let task = tokio::spawn(run_reflector(
        kind,
        reflector::reflector(writer, stream),
        changed,
    ));
    (store, task)
}

async fn run_reflector<K, S>(kind: &'static str, stream: S, changed: Arc<Notify>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            // Objects of a (re)list arrive one by one; the store is swapped
            // at InitDone, which is the change that counts.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(event) => {
                if failing {
                    tracing::info!(kind, "watch resumed");
                    failing = false;
                }
                if matches!(event, watcher::Event::InitDone) {
                    tracing::debug!(kind, "listed");
                }
                changed.notify_one();
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        kind,
                        "watch failed: {e}; retrying with backoff, the last configuration stays served"
                    );
                }
                failing = true;
            }
        }
    }
}
