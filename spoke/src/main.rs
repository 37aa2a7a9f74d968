//! `kmm-spoke`: loads the kernel modules a cluster is given, on the right nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kmm_runtime::leader::LeaseConfig;
use kmm_runtime::process::{init_logs, parse_bool_env};
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

#[derive(Args, Debug)]
struct RunArgs {
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
    /// UID the worker runs as.
    #[arg(long, default_value_t = 0)]
    worker_run_as_user: i64,
    /// SELinux type of the worker.
    #[arg(long, default_value = "spc_t")]
    worker_selinux_type: String,
    /// Node directory the worker copies firmware into.
    #[arg(long, default_value = "/var/lib/firmware")]
    firmware_host_path: String,
    /// Set the kernel's firmware search path to this directory before loading.
    #[arg(long)]
    set_firmware_class_path: Option<String>,
    /// Address of /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_probe_bind_address: SocketAddr,
    /// Address of /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    metrics_bind_address: SocketAddr,
    /// Take part in leader election (one active replica).
    #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "kmm.sigs.x-k8s.io")]
    leader_election_id: String,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
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
    let client = kube::Client::try_default().await.context("connecting to the cluster")?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kmm-spoke-{}", std::process::id()));
    let opts = run::Options {
        namespace: args.namespace.clone(),
        worker: WorkerSettings {
            image: args.worker_image,
            run_as_user: args.worker_run_as_user,
            selinux_type: args.worker_selinux_type,
            firmware_host_path: args.firmware_host_path,
            set_firmware_class_path: args.set_firmware_class_path,
        },
        worker_service_account: args.worker_service_account,
        device_plugin_service_account: args.device_plugin_service_account,
        managed: args.managed,
        health_addr: args.health_probe_bind_address,
        metrics_addr: args.metrics_bind_address,
        lease: args.leader_elect.then(|| LeaseConfig {
            namespace: args.namespace,
            name: args.leader_election_id,
            identity,
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }),
    };
    run::run(client, opts, kmm_runtime::process::shutdown_on_signals()).await
}
