//! `infergate`: a Gateway API implementation for inference traffic. The
//! binary is [`main`]; this library is what it is made of:
//!
//! - [`commands`]: one module per subcommand;
//! - [`pipeline`]: snapshot -> component -> guard -> xDS, shared by both modes;
//! - [`quarantine`]: what Envoy refuses, held back and reported;
//! - [`files`]: the standalone directory reader; [`envoy`]: local Envoys;
//! - [`metrics`], [`servers`]: `/metrics`, `/info` and the xDS server.

pub mod commands;
pub mod envoy;
pub mod files;
pub mod metrics;
pub mod pipeline;
pub mod quarantine;
pub mod servers;

use commands::{bootstrap, component, rbac, run, standalone, translate};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "infergate",
    version,
    about = "Gateway API (and Inference Extension) for Envoy, with a hot-swappable WebAssembly translation core",
    long_about = "infergate turns Gateway, HTTPRoute and InferencePool resources into configuration for a real \
Envoy proxy, served over xDS. The translation runs in a WebAssembly component (see `--component`)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (one per line). RUST_LOG filters them (default: info).
    #[arg(
        long,
        global = true,
        env = "INFERGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: infergate_serving::telemetry::LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve a directory of Gateway API YAML to a local Envoy, without Kubernetes.
    ///
    /// Every *.yaml / *.yml file in the directory (not its subdirectories) is read; the directory is watched
    /// and changes are applied without restarting Envoy. A file with an error is reported with its document,
    /// object and field, and nothing that is served changes until it is fixed.
    Standalone(StandaloneArgs),
    /// Run in Kubernetes: watch the API server, serve xDS to the Gateways' Envoys, write status.
    ///
    /// Every replica watches and serves xDS; only the holder of the leader-election Lease writes status and
    /// Events. InferencePools are watched only with --enable-inference-extension and while the API server
    /// serves inference.networking.k8s.io/v1 (checked every --discovery-interval-seconds).
    Run(Box<RunArgs>),
    /// Print the RBAC objects `infergate run` and the endpoint picker need (ClusterRole and Roles).
    Rbac(RbacArgs),
    /// Translate YAML offline and print, per Gateway, the Envoy resources (Envoy's JSON mapping: listeners,
    /// routes, clusters, endpoints) and every status; runs nothing. `--ir` prints the IR instead.
    Translate(TranslateArgs),
    /// Print the Envoy bootstrap that points an Envoy at an infergate xDS server. Run that Envoy with
    /// `--ignore-unknown-dynamic-fields`, as infergate runs its own: large route updates apply faster.
    Bootstrap(BootstrapArgs),
    /// Work with translation components.
    #[command(subcommand)]
    Component(ComponentCommand),
}

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Check a component offline: WIT package version, imports (none allowed), compilation, and canary
    /// translations (a built-in configuration and any --config directories, with the inference
    /// extension off and on) under the translation limits. Exit code 0: it can be swapped in.
    Check(ComponentCheckArgs),
}

#[derive(Args)]
pub struct ComponentCheckArgs {
    /// The component (.wasm) to check.
    file: PathBuf,
    /// A directory of YAML to translate as a canary as well (repeatable).
    #[arg(long = "config", short = 'c')]
    configs: Vec<PathBuf>,
    #[command(flatten)]
    translation: TranslationArgs,
}

#[derive(Args, Clone)]
pub struct TranslationArgs {
    /// The translation component (.wasm). Default: $INFERGATE_COMPONENT, else infergate-translator.wasm
    /// next to this binary or in its parent directory (where `cargo xtask component` puts it).
    #[arg(long, env = "INFERGATE_COMPONENT")]
    component: Option<PathBuf>,
    /// GatewayClasses whose spec.controllerName is this are ours; others are ignored.
    #[arg(long, default_value = infergate_names::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Route to InferencePool backends (Gateway API Inference Extension). Off by default.
    #[arg(long)]
    enable_inference_extension: bool,
    /// On listeners whose routes match X-Gateway-Model-Name, Envoy reads each JSON request body
    /// whole to find its `model` before choosing a route: bodies larger than this many bytes are
    /// answered 413. The default admits a 1 MB prompt with room for JSON's escapes.
    #[arg(long, default_value_t = infergate_names::model::DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::value_parser!(u32).range(65_535..=0x7fff_ffff))]
    model_routing_max_body_bytes: u32,
    /// Memory limit of one translation, in MiB (at least 1).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=4096))]
    translation_memory_mib: u64,
    /// Time limit of one translation, in milliseconds (at least 1; there is no "no limit").
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    translation_timeout_ms: u64,
    /// Where compiled components are cached (by content hash and engine), so a component seen before
    /// loads without compiling. Default: $HOME/.cache/infergate/components. Keep it private to this user.
    #[arg(long, env = "INFERGATE_COMPONENT_CACHE")]
    component_cache_dir: Option<PathBuf>,
    /// Compile every component afresh; cache nothing.
    #[arg(long)]
    no_component_cache: bool,
}

impl TranslationArgs {
    /// The compiled-component cache directory, if caching is on.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_component_cache {
            return None;
        }
        self.component_cache_dir.clone().or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/infergate/components"))
        })
    }
}

#[derive(Args)]
pub struct StandaloneArgs {
    /// Directory of Kubernetes-style YAML (GatewayClass, Gateway, HTTPRoute, Service, EndpointSlice, ...).
    #[arg(long, short = 'c')]
    config: PathBuf,
    #[command(flatten)]
    translation: TranslationArgs,
    /// Address the xDS (ADS) server listens on.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_address: std::net::SocketAddr,
    /// The Envoy binary. Default: $INFERGATE_ENVOY, else the one in this project's .venv (scripts/setup.sh).
    #[arg(long, env = "INFERGATE_ENVOY")]
    envoy: Option<PathBuf>,
    /// Serve xDS only; start no Envoy (run your own with `infergate bootstrap`).
    #[arg(long)]
    no_envoy: bool,
    /// Write every status here (YAML) whenever it changes.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Directory for Envoy bootstraps, logs and admin addresses. Default: a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Wait this long after a file change for more changes before translating.
    #[arg(long, default_value_t = 150)]
    debounce_ms: u64,
    /// Address of the metrics server: Prometheus text on /metrics, the active component on /info.
    #[arg(long, default_value = "127.0.0.1:9091")]
    metrics_address: std::net::SocketAddr,
}

#[derive(Args)]
pub struct RunArgs {
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, else the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    translation: TranslationArgs,
    /// Address the xDS (ADS) server listens on.
    #[arg(long, default_value = "0.0.0.0:18000")]
    xds_address: std::net::SocketAddr,
    /// Address of the metrics server: Prometheus text on /metrics, the active component on /info.
    #[arg(long, default_value = "0.0.0.0:9091")]
    metrics_address: std::net::SocketAddr,
    /// Where Gateway listeners bind when the Gateway's spec.addresses names none.
    #[arg(long, default_value = "0.0.0.0")]
    listener_address: String,
    /// Also start one local Envoy per Gateway, bootstrapped to this xDS server (development and tests;
    /// in a cluster the Envoys run as their own Deployments).
    #[arg(long)]
    local_envoy: bool,
    /// The Envoy binary for --local-envoy. Default: $INFERGATE_ENVOY, else the one in this project's .venv.
    #[arg(long, env = "INFERGATE_ENVOY")]
    envoy: Option<PathBuf>,
    /// Directory for local Envoys' bootstraps and logs. Default: a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Wait this long after a change for more changes before translating.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "infergate-leader")]
    leader_election_id: String,
    /// This replica's name in the Lease. Default: $POD_NAME, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a leader's Lease lasts without renewal; a new leader takes over after it.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How often API discovery is asked whether InferencePools are served.
    #[arg(long, default_value_t = 10)]
    discovery_interval_seconds: u64,
    /// Field manager of status writes (server-side apply).
    #[arg(long, default_value = "infergate")]
    field_manager: String,
    /// How long one status write may take before it counts as failed and is retried. Status is
    /// written by a task of its own: a slow API server delays statuses, never configuration.
    #[arg(long, default_value_t = 10)]
    status_write_timeout_seconds: u64,
    #[command(flatten)]
    deployer: DeployerArgs,
}

/// The Envoy deployer of `infergate run`.
#[derive(Args)]
#[command(next_help_heading = "Envoy deployer")]
pub struct DeployerArgs {
    /// For each Gateway of ours, create and keep in shape an Envoy Deployment, its Service and its
    /// bootstrap in the Gateway's namespace, owned by the Gateway. Gateway addresses then come from
    /// the Service, and Programmed waits for a ready Envoy. Needs --xds-service.
    #[arg(long)]
    deploy_envoys: bool,
    /// The controller's own Service, "namespace/name": the Envoys reach xDS at its ClusterIP, on
    /// the port of --xds-address.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    xds_service: Option<String>,
    /// Envoy image of the deployed Envoys.
    #[arg(long, default_value = concat!("infergate.local/envoy:", env!("CARGO_PKG_VERSION")))]
    envoy_image: String,
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    envoy_image_pull_policy: String,
    /// Envoy replicas per Gateway.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    envoy_replicas: i32,
    /// Type of each Gateway's Service.
    #[arg(long, default_value = "ClusterIP", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    envoy_service_type: String,
    /// Seconds an Envoy keeps serving after its Pod is deleted (a preStop sleep), so that the
    /// Service stops sending to it first.
    #[arg(long, default_value_t = 5)]
    envoy_drain_seconds: u32,
    /// For each InferencePool without an endpointPickerRef that a route of ours uses, deploy an
    /// endpoint picker (infergate-epp) in the pool's namespace, owned by the pool: Deployment,
    /// Service infergate-epp-<pool>, ServiceAccount, a Role reading only that namespace's Pods and
    /// InferencePools, and a serving certificate of the controller's CA, which Envoy verifies.
    /// Without it such pools are balanced round robin. Needs --deploy-envoys and
    /// --enable-inference-extension. A pool's annotations picker.infergate.dev/{image,replicas,
    /// cpu-request,memory-request,memory-limit,refresh-metrics-interval,metrics-staleness-threshold}
    /// override the flags below for its picker.
    #[arg(long)]
    manage_pickers: bool,
    /// Image of the managed endpoint pickers.
    #[arg(long, default_value = concat!("infergate.local/infergate-epp:", env!("CARGO_PKG_VERSION")))]
    picker_image: String,
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    picker_image_pull_policy: String,
    /// Picker replicas per pool.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=100))]
    picker_replicas: i32,
    #[arg(long, default_value = "100m")]
    picker_cpu_request: String,
    #[arg(long, default_value = "64Mi")]
    picker_memory_request: String,
    #[arg(long, default_value = "512Mi")]
    picker_memory_limit: String,
    /// How often a picker reads each model server's metrics (its scoring inputs).
    #[arg(long, default_value = "50ms")]
    picker_refresh_metrics_interval: String,
    /// Model-server metrics older than this do not count in a picker's scores.
    #[arg(long, default_value = "2s")]
    picker_metrics_staleness_threshold: String,
}

#[derive(Args)]
pub struct RbacArgs {
    /// Namespace of the controller's own Role (its Lease, the xDS CA) and of the picker's Role.
    #[arg(long, default_value = "infergate-system")]
    namespace: String,
    /// Include the permissions the inference extension needs (InferencePools, Pods).
    #[arg(long)]
    enable_inference_extension: bool,
    /// Include the permissions the Envoy deployer needs (Deployments, Services, ConfigMaps).
    #[arg(long)]
    deploy_envoys: bool,
    /// Include the permissions the endpoint-picker deployer needs (ServiceAccounts, Roles,
    /// RoleBindings); only with --enable-inference-extension and --deploy-envoys.
    #[arg(long)]
    manage_pickers: bool,
}

#[derive(Copy, Clone, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Args)]
pub struct TranslateArgs {
    /// A YAML file or a directory of them.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Format,
    /// Translate with the native library instead of the component (for comparison and debugging).
    #[arg(long)]
    native: bool,
    /// Print the component's output as it is (the Envoy-shaped IR and statuses) instead of Envoy resources.
    #[arg(long)]
    ir: bool,
    /// Do not check the documents against the CRDs in crds/ first: translate what a cluster with older
    /// CRDs (or none) would let through, to see what the translation itself makes of it.
    #[arg(long)]
    skip_crd_checks: bool,
    #[command(flatten)]
    translation: TranslationArgs,
}

#[derive(Args)]
pub struct BootstrapArgs {
    /// Envoy node id: the Gateway's "namespace/name".
    #[arg(long)]
    node: String,
    /// The infergate xDS server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_address: std::net::SocketAddr,
    /// Envoy admin port (0: any free port).
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
}

/// The `infergate` command line.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    infergate_serving::telemetry::init_logs(cli.log_format);
    match cli.command {
        Command::Standalone(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(standalone::run(args))
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(run::run(*args, cli.log_format))
        }
        Command::Rbac(args) => rbac::run(args),
        Command::Translate(args) => translate::run(args),
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Component(ComponentCommand::Check(args)) => {
            let ok = component::check(component::CheckArgs {
                file: args.file,
                configs: args.configs,
                translation: args.translation,
            })?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_limits_of_zero_are_refused_not_taken_as_no_limit() {
        for (flag, value) in [
            ("--translation-timeout-ms", "0"),
            ("--translation-memory-mib", "0"),
        ] {
            let parsed =
                Cli::try_parse_from(["infergate", "translate", "-f", "x.yaml", flag, value]);
            let error = parsed.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(flag), "{flag} {value} is refused: {error:?}");
        }
        assert!(
            Cli::try_parse_from([
                "infergate",
                "translate",
                "-f",
                "x.yaml",
                "--translation-timeout-ms",
                "1"
            ])
            .is_ok()
        );
    }
}
