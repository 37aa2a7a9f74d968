//! `kmm-hub`: the hub edition of Kernel Module Management.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kmm_hub::pipeline::Settings;
use kmm_runtime::config::{Config, parse_go_duration};
use kmm_runtime::leader::LeaseConfig;
use kmm_runtime::process::init_logs;
use kmm_runtime::webhook::Mode as WebhookMode;

mod run;

/// Hub controller for kernel modules across a fleet of clusters.
///
/// Watches ManagedClusterModules and the managed clusters' kernel versions, builds missing kmod
/// images, signs modules for Secure Boot, pins image tags to digests and sends each spoke a
/// trimmed Module inside an OCM ManifestWork.
#[derive(Parser, Debug)]
#[command(name = "kmm-hub", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller against the hub cluster of the current kubeconfig (or in-cluster
    /// config).
    Run(Box<RunArgs>),
    /// Validate ManagedClusterModule and Module YAML files offline, with the same rules as the
    /// admission webhook. Exits 1 when any object is invalid.
    Validate(shared_api::tool::ValidateArgs),
    /// Print the CustomResourceDefinitions the hub installs (ManagedClusterModule) as YAML.
    Crds,
    /// Sign kernel modules for Secure Boot (files or whole images), byte-identical to the
    /// kernel's sign-file for RSA keys.
    Sign(kmm_hub::sign::cli::SignArgs),
}

/// Run the controller.
///
/// Settings come from the configuration file (--config or KMM_CONFIG; upstream KMM's format, see
/// the README); keys missing from it, or all of them without a file, take the upstream defaults
/// (the leader election Lease is `kmm-hub.sigs.x-k8s.io`). An invalid file stops the start with
/// the key and the reason. The flags marked "without --config" apply only when no file is given.
///
/// Moved tags: every image is looked up again every --resolve-interval, at once when the MCM's
/// spec changes, and when the annotation `hub.kmm.sigs.x-k8s.io/resolve` gets a new value. A
/// lookup that fails keeps the last digest rendered and marks the image `Stale` in the status.
#[derive(Args, Debug)]
struct RunArgs {
    /// Configuration file (YAML: healthProbeBindAddress, leaderElection, webhook, metrics, job).
    #[arg(long, env = "KMM_CONFIG")]
    config: Option<PathBuf>,
    /// Serve the admission webhooks (ManagedClusterModule, Module) on webhook.port with the
    /// certificate in webhook.certDir.
    #[arg(long, env = "KMM_WEBHOOK", value_enum, default_value_t = WebhookMode::Auto)]
    webhook: WebhookMode,
    /// Namespace the hub runs in: build pods run there, and the Dockerfile ConfigMaps, build
    /// secrets, signing keys and registry secrets that MCMs name are read from there.
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "kmm-hub")]
    namespace: String,
    /// Image of the kaniko-compatible executor that build pods run.
    #[arg(
        long,
        env = "RELATED_IMAGE_BUILD",
        default_value = "gcr.io/kaniko-project/executor:v1.23.2"
    )]
    build_image: String,
    /// Limit for each registry request (Go duration: 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    registry_timeout: Duration,
    /// How often every image is looked up again to follow moved tags; 0s: only on spec change
    /// or the resolve annotation.
    #[arg(long, default_value = "10m", value_parser = parse_go_duration)]
    resolve_interval: Duration,
    /// Longest a build pod may run before it is reported failed.
    #[arg(long, default_value = "1h", value_parser = parse_go_duration)]
    build_timeout: Duration,
    /// Without --config: address of /healthz and /readyz (healthProbeBindAddress).
    #[arg(long, conflicts_with = "config")]
    health_probe_bind_address: Option<SocketAddr>,
    /// Without --config: serve /metrics over plain HTTP, without authentication, on this address.
    #[arg(long, conflicts_with = "config")]
    metrics_bind_address: Option<SocketAddr>,
    /// Without --config: take part in leader election (leaderElection.enabled).
    #[arg(long, action = clap::ArgAction::Set, conflicts_with = "config")]
    leader_elect: Option<bool>,
    /// Without --config: how long successful build pods are kept (job.gcDelay).
    #[arg(long, conflicts_with = "config", value_parser = parse_go_duration)]
    gc_delay: Option<Duration>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load_hub(path)?,
            None => Config::hub_default(),
        };
        if let Some(v) = self.health_probe_bind_address {
            c.health_probe_bind_address = v;
        }
        if let Some(v) = self.metrics_bind_address {
            c.metrics.bind_address = Some(v);
            c.metrics.secure_serving = false;
            c.metrics.enable_authn_authz = false;
        }
        if let Some(v) = self.leader_elect {
            c.leader_election.enabled = v;
        }
        if let Some(v) = self.gc_delay {
            c.job.gc_delay = v;
        }
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => shared_api::tool::run_validate(&args),
        Command::Crds => shared_api::tool::print_crds(shared_api::crds::Set::Hub),
        Command::Sign(args) => Ok(kmm_hub::sign::cli::run(args)?),
        Command::Run(args) => {
            init_logs(args.log_json);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_cmd(*args))
        }
    }
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<()> {
    // The configuration is checked before anything else, so a bad file fails fast and alone.
    let config = args.config()?;
    let webhook = args.webhook.enabled(&config.webhook);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the hub cluster")?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kmm-hub-{}", std::process::id()));
    let opts = run::Options {
        pipeline: Settings {
            namespace: args.namespace.clone(),
            executor_image: args.build_image,
            registry_timeout: args.registry_timeout,
            resolve_interval: (!args.resolve_interval.is_zero()).then_some(args.resolve_interval),
            gc_delay: config.job.gc_delay,
            build_timeout: args.build_timeout,
        },
        lease: config
            .leader_election
            .enabled
            .then(|| LeaseConfig::with_defaults(args.namespace, config.leader_election.resource_id.clone(), identity)),
        webhook,
        config,
    };
    run::run(client, opts, kmm_runtime::process::shutdown_on_signals()).await
}
