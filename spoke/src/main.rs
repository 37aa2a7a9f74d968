//! `kmm-spoke`: loads the kernel modules a cluster is given, on the right nodes.

use clap::{Parser, Subcommand};

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
    /// Validate Module YAML files offline, with the same rules as the admission webhook.
    /// Exits 1 when any object is invalid.
    Validate(shared_api::tool::ValidateArgs),
    /// Print the CustomResourceDefinitions the spoke installs (Module, NodeModulesConfig,
    /// PreflightValidation) as YAML.
    Crds,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => shared_api::tool::run_validate(&args),
        Command::Crds => shared_api::tool::print_crds(shared_api::crds::Set::Spoke),
    }
}
