//! `infergate run`: Kubernetes mode. The same pipeline as standalone, fed by
//! watches on the API server; status written back by the leader.

use std::sync::Arc;
use std::time::Duration;

use infergate_kube::deploy::{
    Deployer, DeployerConfig, EnvoySettings, PickerDeployer, PickerDeployerConfig, PickerSettings,
    PoolRef,
};
use infergate_kube::{
    Backoff, LeaseConfig, StatusTask, StatusWriter, WatchConfig, Watches, WriterConfig,
};
use infergate_model::{ManagedPicker, Output, Snapshot, Statuses};
use infergate_serving::telemetry::LogFormat;
use infergate_xds::SnapshotCache;

use crate::RunArgs;
use crate::envoy::{Fleet, find_binary};
use crate::pipeline::{self, SwapOutcome, Translation};
use crate::quarantine::Guard;

pub async fn run(args: RunArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let picker_settings = picker_settings(&args, log_format)?;
    let client = infergate_kube::client(args.kubeconfig.as_deref()).await?;
    let translation = Arc::new(Translation::load(&args.translation)?);
    let cache = SnapshotCache::new();
    let metrics_server =
        crate::servers::metrics(args.metrics_address, translation.metrics.clone()).await?;
    // With the Envoy deployer, xDS is mutual TLS with certificates of the
    // controller's CA: deployed Envoys leave this machine's loopback.
    let xds_tls = xds_tls(&args, &client).await?;
    let xds_server = crate::servers::xds(
        args.xds_address,
        cache.clone(),
        "--xds-address",
        xds_tls.as_ref().map(|t| t.server.clone()),
    )
    .await?;
    let (_component_watcher, mut component_changed) = pipeline::watch_component(&translation.path)?;

    let watches = Watches::start(
        client.clone(),
        WatchConfig {
            inference_extension: args.translation.enable_inference_extension,
            discovery_interval: Duration::from_secs(args.discovery_interval_seconds.max(1)),
        },
    )
    .await?;
    tracing::info!("initial lists done");

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let (leading, election) = infergate_kube::leader::start(
        client.clone(),
        LeaseConfig {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_id.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
            renew_every: Duration::from_secs_f64((args.lease_duration_seconds.max(2) as f64) / 4.0),
        },
    );
    let deployer = xds_tls
        .as_ref()
        .map(|tls| start_deployer(&args, &client, &watches, &leading, tls));
    let writer = Arc::new(StatusWriter::new(
        client.clone(),
        WriterConfig {
            field_manager: args.field_manager.clone(),
            controller_name: args.translation.controller_name.clone(),
            instance: identity.clone(),
            write_timeout: Duration::from_secs(args.status_write_timeout_seconds.max(1)),
        },
        translation.metrics.status.clone(),
    ));
    // Statuses go to a task of their own: nothing below waits for the API server.
    let status = StatusTask::spawn(
        writer.clone(),
        watches.observer(),
        leading.clone(),
        Backoff::default(),
    );
    let pickers = match (&picker_settings, &xds_tls) {
        (Some(settings), Some(tls)) => {
            tracing::info!(image = %settings.image, "deploying an endpoint picker per InferencePool without one");
            Some(PickerDeployer::start(
                client.clone(),
                PickerDeployerConfig {
                    settings: settings.clone(),
                    field_manager: args.field_manager.clone(),
                    ca: tls.ca.clone(),
                    events: Some(writer.clone()),
                },
                leading.clone(),
            ))
        }
        _ => None,
    };

    let work_dir = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("infergate-{}", std::process::id())),
    };
    let mut fleet = if args.local_envoy {
        std::fs::create_dir_all(&work_dir)?;
        Some(Fleet::new(
            find_binary(args.envoy.clone()),
            args.xds_address,
            work_dir,
        ))
    } else {
        None
    };

    let mut answers = cache.answers();
    let mut state = State {
        managed_picker: pickers
            .as_ref()
            .zip(xds_tls.as_ref())
            .map(|(_, tls)| ManagedPicker {
                port: infergate_names::objects::PICKER_PORT,
                ca_pem: tls.ca.cert_pem.clone(),
            }),
        ..State::default()
    };
    state
        .apply(&args, &translation, &cache, &watches, fleet.as_mut())
        .await;
    let publish_statuses = |statuses: &Statuses| match &deployer {
        Some(deployer) => status.publish(deployer.adjust(statuses.clone())),
        None => status.publish(statuses.clone()),
    };
    if let Some(statuses) = &state.statuses {
        publish_statuses(statuses);
    }
    if let Some(pickers) = &pickers {
        pickers.want(state.wanted_pickers(&watches));
    }
    translation.metrics.set_ready();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let publish = tokio::select! {
            _ = watches.changed.notified() => {
                if let Some(deployer) = &deployer {
                    deployer.poke();
                }
                tokio::time::sleep(Duration::from_millis(args.debounce_ms)).await;
                state.apply(&args, &translation, &cache, &watches, fleet.as_mut()).await;
                // Also when only the stores changed: the task compares again.
                true
            }
            Ok(()) = answers.changed() => {
                // Statuses change when what Envoy refused changes them.
                state.answered(&translation, &cache, fleet.as_mut()).await
            }
            Some(()) = component_changed.recv() => {
                tokio::time::sleep(Duration::from_millis(args.debounce_ms.max(200))).await;
                while component_changed.try_recv().is_ok() {}
                let settings = pipeline::settings(&args.translation, &args.listener_address);
                match pipeline::swap_from_file(&translation, state.last_snapshot.clone(), settings).await {
                    SwapOutcome::Swapped => {
                        state.last_snapshot = None; // translate again with the new component
                        state.apply(&args, &translation, &cache, &watches, fleet.as_mut()).await;
                        true
                    }
                    SwapOutcome::Rejected(message) => {
                        let is_leader = *leading.borrow();
                        if is_leader {
                            let writer = writer.clone();
                            let classes = watches.observed().gateway_classes;
                            tokio::spawn(async move {
                                writer.event_on_classes(&classes, "ComponentRejected", &message).await;
                            });
                        }
                        false
                    }
                    SwapOutcome::Unchanged => false,
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        if publish && let Some(statuses) = &state.statuses {
            publish_statuses(statuses);
        }
        if let Some(pickers) = &pickers {
            pickers.want(state.wanted_pickers(&watches));
        }
    }
    tracing::info!("shutting down");
    election.abort();
    if let Some(fleet) = fleet.as_mut() {
        fleet.shutdown().await;
    }
    xds_server.stop().await;
    metrics_server.stop().await;
    Ok(())
}

/// xDS over mutual TLS, with `--deploy-envoys`: the CA (kept in Secret
/// `<service>-ca` next to the controller's Service), this replica's serving
/// certificate for the Service's DNS names.
struct XdsTls {
    namespace: String,
    name: String,
    ca: Arc<infergate_kube::deploy::pki::Ca>,
    server: Arc<rustls::ServerConfig>,
}

impl XdsTls {
    /// The name Envoys check the server's certificate for.
    fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

async fn xds_tls(
    args: &RunArgs,
    client: &infergate_kube::Client,
) -> anyhow::Result<Option<XdsTls>> {
    let d = &args.deployer;
    if !d.deploy_envoys {
        return Ok(None);
    }
    let service = d
        .xds_service
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--deploy-envoys needs --xds-service NAMESPACE/NAME: the Service Envoys reach this controller's xDS by"))?;
    let (namespace, name) = service
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--xds-service {service:?}: expected NAMESPACE/NAME"))?;
    // Owned by the leader-election Lease when it is in the same namespace
    // (the chart makes it there), so that uninstalling removes the CA too.
    let owner = if args.leader_election_namespace == namespace {
        infergate_kube::deploy::pki::lease_owner(client, namespace, &args.leader_election_id).await
    } else {
        None
    };
    let ca = infergate_kube::deploy::pki::load_or_create(
        client,
        namespace,
        &format!("{name}-ca"),
        owner,
    )
    .await?;
    let names = vec![
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
        format!("{name}.{namespace}"),
    ];
    let issued = ca.issue_server(&names, &[])?;
    let (server, certificate) = infergate_xds::tls::rotating_server_config(
        &issued.cert_pem,
        &issued.key_pem,
        &ca.cert_pem,
    )?;
    let ca = Arc::new(ca);
    // Renewed while running, like the Envoys' certificates: a controller
    // that runs for a year keeps serving xDS.
    tokio::spawn(renew_server_certificate(
        ca.clone(),
        names,
        certificate,
        issued.not_after,
    ));
    Ok(Some(XdsTls {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ca,
        server,
    }))
}

/// Replace the xDS server's certificate with a new one
/// [`RENEW_BEFORE_DAYS`](infergate_kube::deploy::pki::RENEW_BEFORE_DAYS)
/// before it expires, again and again; new handshakes get the new one.
async fn renew_server_certificate(
    ca: Arc<infergate_kube::deploy::pki::Ca>,
    names: Vec<String>,
    certificate: Arc<infergate_xds::tls::ServerCertificate>,
    mut not_after: i64,
) {
    use infergate_kube::deploy::pki::RENEW_BEFORE_DAYS;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let wait = (not_after - RENEW_BEFORE_DAYS * 86_400 - now).max(0) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match ca.issue_server(&names, &[]).and_then(|issued| {
            certificate.replace(&issued.cert_pem, &issued.key_pem)?;
            Ok(issued.not_after)
        }) {
            Ok(renewed) => {
                tracing::info!(expires = renewed, "renewed the xDS server certificate");
                not_after = renewed;
            }
            Err(e) => {
                tracing::error!(
                    "renewing the xDS server certificate: {e:#}; trying again in an hour"
                );
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

/// The managed pickers' settings, with `--manage-pickers` (which needs the
/// Envoy deployer's CA and the inference extension).
fn picker_settings(
    args: &RunArgs,
    log_format: LogFormat,
) -> anyhow::Result<Option<PickerSettings>> {
    let d = &args.deployer;
    if !d.manage_pickers {
        return Ok(None);
    }
    if !args.translation.enable_inference_extension {
        anyhow::bail!(
            "--manage-pickers needs --enable-inference-extension: pickers serve InferencePools"
        );
    }
    if !d.deploy_envoys {
        anyhow::bail!(
            "--manage-pickers needs --deploy-envoys: the pickers' certificates come from the CA the Envoy deployer keeps, and only deployed Envoys reach Pod addresses"
        );
    }
    let settings = PickerSettings {
        image: d.picker_image.clone(),
        image_pull_policy: d.picker_image_pull_policy.clone(),
        replicas: d.picker_replicas,
        cpu_request: d.picker_cpu_request.clone(),
        memory_request: d.picker_memory_request.clone(),
        memory_limit: d.picker_memory_limit.clone(),
        refresh_metrics_interval: d.picker_refresh_metrics_interval.clone(),
        metrics_staleness_threshold: d.picker_metrics_staleness_threshold.clone(),
        log_format: match log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        },
    };
    let problems = settings.problems();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(Some(settings))
}

/// The Envoy deployer, with `--deploy-envoys`.
fn start_deployer(
    args: &RunArgs,
    client: &infergate_kube::Client,
    watches: &Watches,
    leading: &tokio::sync::watch::Receiver<bool>,
    tls: &XdsTls,
) -> Deployer {
    let d = &args.deployer;
    let dir = infergate_kube::deploy::manifests::XDS_TLS_DIR;
    let files = infergate_xds::encode::XdsTls {
        cert_file: format!("{dir}/tls.crt"),
        key_file: format!("{dir}/tls.key"),
        ca_file: format!("{dir}/ca.crt"),
        server_name: tls.server_name(),
    };
    let config = DeployerConfig {
        envoy: EnvoySettings {
            image: d.envoy_image.clone(),
            image_pull_policy: d.envoy_image_pull_policy.clone(),
            replicas: d.envoy_replicas,
            service_type: d.envoy_service_type.clone(),
            drain_seconds: d.envoy_drain_seconds,
            ..EnvoySettings::default()
        },
        controller_name: args.translation.controller_name.clone(),
        field_manager: args.field_manager.clone(),
        xds_service: (
            tls.namespace.clone(),
            tls.name.clone(),
            args.xds_address.port(),
        ),
        // Admin on the Pod's loopback, a fixed port.
        bootstrap: Arc::new(move |node, xds| {
            prost::Message::encode_to_vec(&crate::envoy::bootstrap_message(
                node,
                xds,
                infergate_kube::deploy::manifests::ENVOY_ADMIN_PORT,
                Some(files.clone()),
            ))
        }),
        ca: tls.ca.clone(),
    };
    tracing::info!(
        image = %d.envoy_image,
        xds_service = %format!("{}/{}", tls.namespace, tls.name),
        "deploying an Envoy per Gateway"
    );
    Deployer::start(
        client.clone(),
        config,
        watches.gateways().clone(),
        watches.gateway_classes().clone(),
        watches.changed.clone(),
        leading.clone(),
    )
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "infergate".into());
    format!("{host}-{}", std::process::id())
}

#[derive(Default)]
struct State {
    /// With `--manage-pickers`: how translation routes pools without a picker.
    managed_picker: Option<ManagedPicker>,
    last: Option<Output>,
    last_snapshot: Option<Snapshot>,
    /// The listener certificates `last_snapshot` was published with: a
    /// renewed certificate changes these and not the snapshot.
    last_certificates: infergate_resources::Certificates,
    /// Holds back what Envoy refuses.
    guard: Guard,
    /// `last`'s statuses with what Envoy refused: what is written.
    statuses: Option<Statuses>,
}

impl State {
    /// Snapshot the stores; translate and push when the snapshot changed.
    async fn apply(
        &mut self,
        args: &RunArgs,
        translation: &Arc<Translation>,
        cache: &Arc<SnapshotCache>,
        watches: &Watches,
        fleet: Option<&mut Fleet>,
    ) {
        let keeping = if self.last.is_some() {
            "still serving the last good configuration"
        } else {
            "nothing served yet"
        };
        let resources = match watches.resources() {
            Ok(r) => r,
            Err(errors) => {
                tracing::error!("{}; {keeping}", pipeline::all_errors(&errors));
                return;
            }
        };
        let snapshot =
            match pipeline::snapshot(&resources, &args.translation, &args.listener_address) {
                // Deployed Envoys listen on every address of their Pod;
                // spec.addresses are the Service's business.
                Ok(mut s) if args.deployer.deploy_envoys => {
                    for gateway in &mut s.gateways {
                        gateway.addresses.clear();
                    }
                    s.settings.managed_picker = self.managed_picker.clone();
                    s.settings.isolated_gateways = true;
                    s
                }
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e:#}");
                    tracing::error!("configuration not applied; {keeping}");
                    return;
                }
            };
        let certificates = resources.certificates();
        if self.last_snapshot.as_ref() == Some(&snapshot) && self.last_certificates == certificates
        {
            return; // e.g. only statuses changed
        }
        self.last_snapshot = Some(snapshot.clone());
        self.last_certificates = certificates.clone();
        cache.set_certificates(certificates);
        self.guard.input(snapshot);
        if !pipeline::serve_guarded(
            &mut self.guard,
            true,
            translation,
            cache,
            fleet,
            &mut self.last,
            keeping,
        )
        .await
        {
            // Translated again at the next change.
            self.last_snapshot = None;
            return;
        }
        self.report_statuses();
    }

    /// The pools the last translation says need a managed picker, with what
    /// the deployer needs of them (uid, annotations) from the pool watch.
    fn wanted_pickers(&self, watches: &Watches) -> Vec<PoolRef> {
        let (Some(last), Some(store)) = (&self.last, watches.inference_pools()) else {
            return Vec::new();
        };
        if last.managed_pickers.is_empty() {
            return Vec::new();
        }
        let pools: std::collections::BTreeMap<(String, String), _> = store
            .state()
            .into_iter()
            .filter_map(|p| Some(((p.metadata.namespace.clone()?, p.metadata.name.clone()?), p)))
            .collect();
        last.managed_pickers
            .iter()
            .filter_map(|wanted| {
                let pool = pools.get(&(wanted.namespace.clone(), wanted.name.clone()))?;
                Some(PoolRef {
                    namespace: wanted.namespace.clone(),
                    name: wanted.name.clone(),
                    uid: pool.metadata.uid.clone()?,
                    annotations: pool.metadata.annotations.clone().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// An Envoy answered: go on with what the guard makes of it. True if
    /// the statuses to write changed.
    async fn answered(
        &mut self,
        translation: &Arc<Translation>,
        cache: &Arc<SnapshotCache>,
        fleet: Option<&mut Fleet>,
    ) -> bool {
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
        self.report_statuses()
    }

    /// `last`'s statuses with what Envoy refused, as they are to be
    /// written; true if they changed.
    fn report_statuses(&mut self) -> bool {
        let Some(last) = &self.last else { return false };
        let mut statuses = last.statuses.clone();
        self.guard.overlay(&mut statuses);
        let changed = self.statuses.as_ref() != Some(&statuses);
        self.statuses = Some(statuses);
        changed
    }
}
