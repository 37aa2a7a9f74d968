//! `kmm-hub`: the hub edition of Kernel Module Management.

use clap::{Parser, Subcommand};

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
    /// Validate ManagedClusterModule and Module YAML files offline, with the same rules as the
    /// admission webhook. Exits 1 when any object is invalid.
    Validate(shared_api::tool::ValidateArgs),
    /// Print the CustomResourceDefinitions the hub installs (ManagedClusterModule) as YAML.
    Crds,
    /// Sign kernel modules for Secure Boot (files or whole images), byte-identical to the
    /// kernel's sign-file for RSA keys.
    Sign(kmm_hub::sign::cli::SignArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => shared_api::tool::run_validate(&args),
        Command::Crds => shared_api::tool::print_crds(shared_api::crds::Set::Hub),
        Command::Sign(args) => Ok(kmm_hub::sign::cli::run(args)?),
    }
}
