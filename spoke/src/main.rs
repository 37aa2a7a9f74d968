//! `kmm-spoke`: loads the kernel modules a cluster is given, on the right nodes.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kmm_runtime::config::Config;
use kmm_runtime::leader::LeaseConfig;
use kmm_runtime::process::{init_logs, parse_bool_env};
use kmm_runtime::webhook::Mode as WebhookMode;
use kmm_spoke::plan::worker_pod::WorkerSettings;

mod run;

/// Spoke controller for kernel modules.
///
/// Loads Modules through worker pods on the selected nodes, labels nodes, runs device plugins,
/// handles kernel upgrades, reboots and ordered upgrades, unloads cleanly and, in managed mode,
/// publishes the cluster's kernel versions for the hub.
#[derive(Parser, Debug)]
#[command(name = "kmm-spoke", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
    /// Validate Module YAML files offline, with the same rules as the admission webhook.
    /// Exits 1 when any object is invalid.
    Validate(shared_api::tool::ValidateArgs),
    /// Print the CustomResourceDefinitions the spoke installs (Module, NodeModulesConfig,
    /// PreflightValidation) as YAML.
    Crds,
}

/// Run the controllers.
///
/// Settings come from the configuration file (--config or KMM_CONFIG; upstream KMM's format,
/// see the README); keys missing from it, or all of them without a file, take the upstream
/// defaults. An invalid file stops the start with the key and the reason.
///
/// The flags marked "without --config" are the older way to set a few of those settings: they
/// apply only when no configuration file is given, and are refused together with one, so that the
/// file stays the single source of truth.
#[derive(Args, Debug)]
struct RunArgs {
    /// Configuration file (YAML: healthProbeBindAddress, leaderElection, webhook, metrics,
    /// worker, job).
    #[arg(long, env = "KMM_CONFIG")]
    config: Option<PathBuf>,
    /// Serve the admission webhooks (Module, PreflightValidation, Namespace deletion) on
    /// webhook.port with the certificate in webhook.certDir.
    #[arg(long, env = "KMM_WEBHOOK", value_enum, default_value_t = WebhookMode::Auto)]
    webhook: WebhookMode,
    /// Make the webhook certificate here: keep a CA and a serving certificate in this Secret of
    /// the spoke's namespace, write them into webhook.certDir and put the CA into the webhook
    /// configuration; renewed a month before expiry. For clusters where neither OpenShift's
    /// service CA nor cert-manager makes it (the managed overlay and the RHACM Policy set it).
    #[arg(long, env = "KMM_WEBHOOK_SELF_SIGNED_SECRET")]
    webhook_self_signed_secret: Option<String>,
    /// With --webhook-self-signed-secret: the webhook Service the certificate is for.
    #[arg(long, default_value = "kmm-operator-webhook-service")]
    webhook_service: String,
    /// With --webhook-self-signed-secret: the ValidatingWebhookConfiguration that gets the CA.
    #[arg(long, default_value = "kmm-operator-validating-webhook-configuration")]
    webhook_configuration: String,
    /// With --webhook-self-signed-secret: more names or IP addresses for the certificate,
    /// comma-separated (for webhooks registered by URL).
    #[arg(long, env = "KMM_WEBHOOK_CERT_NAMES", value_delimiter = ',')]
    webhook_cert_names: Vec<String>,
    /// Namespace the spoke runs in: Modules there use the spoke's own worker ServiceAccount.
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "kmm-system")]
    namespace: String,
    /// Managed mode (a hub manages this cluster): publish the kernel-versions ClusterClaim.
    #[arg(long, env = "KMM_MANAGED", value_parser = parse_bool_env, default_value = "false", action = clap::ArgAction::Set)]
    managed: bool,
    /// Image of the worker pods (kmm-worker).
    #[arg(long, env = "RELATED_IMAGE_WORKER", default_value = "kmm-worker:latest")]
    worker_image: String,
    /// ServiceAccount of worker pods for Modules in the spoke's namespace.
    #[arg(long, default_value = "kmm-module-loader")]
    worker_service_account: String,
    /// ServiceAccount of device plugin pods for Modules in the spoke's namespace.
    #[arg(long, default_value = "kmm-device-plugin")]
    device_plugin_service_account: String,
    /// Without --config: UID the worker runs as (worker.runAsUser).
    #[arg(long, conflicts_with = "config")]
    worker_run_as_user: Option<i64>,
    /// Without --config: SELinux type of the worker (worker.seLinuxType).
    #[arg(long, conflicts_with = "config")]
    worker_selinux_type: Option<String>,
    /// Without --config: node directory the worker copies firmware into (worker.firmwareHostPath).
    #[arg(long, conflicts_with = "config")]
    firmware_host_path: Option<String>,
    /// Without --config: set the kernel's firmware search path to this directory before loading
    /// (worker.setFirmwareClassPath).
    #[arg(long, conflicts_with = "config")]
    set_firmware_class_path: Option<String>,
    /// Without --config: how long a worker pod may stay Pending before it counts as a failed
    /// attempt (worker.pendingTimeout), as a Go duration (`10m`, `90s`).
    #[arg(long, conflicts_with = "config", value_parser = parse_timeout)]
    worker_pending_timeout: Option<std::time::Duration>,
    /// Without --config: address of /healthz and /readyz (healthProbeBindAddress).
    #[arg(long, conflicts_with = "config")]
    health_probe_bind_address: Option<SocketAddr>,
    /// Without --config: serve /metrics over plain HTTP, without authentication, on this address
    /// (instead of metrics.*).
    #[arg(long, conflicts_with = "config")]
    metrics_bind_address: Option<SocketAddr>,
    /// Without --config: take part in leader election (leaderElection.enabled).
    #[arg(long, action = clap::ArgAction::Set, conflicts_with = "config")]
    leader_elect: Option<bool>,
    /// Without --config: name of the leader election Lease (leaderElection.resourceID).
    #[arg(long, conflicts_with = "config")]
    leader_election_id: Option<String>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

/// A Go duration above zero.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match kmm_runtime::config::parse_go_duration(s)? {
        d if d.is_zero() => Err("must be more than 0s".into()),
        d => Ok(d),
    }
}

impl RunArgs {
    /// The configuration file (or the defaults), with the older flags applied.
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.worker_run_as_user {
            c.worker.run_as_user = v;
        }
        if let Some(v) = &self.worker_selinux_type {
            c.worker.se_linux_type = v.clone();
        }
        if let Some(v) = &self.firmware_host_path {
            c.worker.firmware_host_path = v.clone();
        }
        if let Some(v) = &self.set_firmware_class_path {
            c.worker.set_firmware_class_path = Some(v.clone());
        }
        if let Some(v) = self.worker_pending_timeout {
            c.worker.pending_timeout = v;
        }
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
        if let Some(v) = &self.leader_election_id {
            c.leader_election.resource_id = v.clone();
        }
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => shared_api::tool::run_validate(&args),
        Command::Crds => shared_api::tool::print_crds(shared_api::crds::Set::Spoke),
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
    let self_signed = args
        .webhook_self_signed_secret
        .clone()
        .map(|secret| kmm_runtime::webhook_certs::SelfSigned {
            namespace: args.namespace.clone(),
            secret,
            service: args.webhook_service.clone(),
            extra_names: args.webhook_cert_names.clone(),
            configuration: args.webhook_configuration.clone(),
        });
    // Certificates made here are there by the time the server starts.
    let webhook = match (&self_signed, args.webhook) {
        (Some(_), mode) => mode != WebhookMode::Off,
        (None, mode) => mode.enabled(&config.webhook),
    };
    if !webhook {
        tracing::info!(
            cert_dir = %config.webhook.cert_dir.display(),
            "not serving admission webhooks (--webhook=on to require them)"
        );
    }
    let client = kube::Client::try_default().await.context("connecting to the cluster")?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kmm-spoke-{}", std::process::id()));
    let opts = run::Options {
        namespace: args.namespace.clone(),
        worker: WorkerSettings {
            image: args.worker_image,
            run_as_user: config.worker.run_as_user,
            selinux_type: config.worker.se_linux_type.clone(),
            firmware_host_path: config.worker.firmware_host_path.clone(),
            set_firmware_class_path: config.worker.set_firmware_class_path.clone(),
            pending_timeout: config.worker.pending_timeout,
        },
        worker_service_account: args.worker_service_account,
        device_plugin_service_account: args.device_plugin_service_account,
        managed: args.managed,
        lease: config
            .leader_election
            .enabled
            .then(|| LeaseConfig::with_defaults(args.namespace, config.leader_election.resource_id.clone(), identity)),
        webhook,
        self_signed,
        config,
    };
    run::run(client, opts, kmm_runtime::process::shutdown_on_signals()).await
}
