//! `kmm-worker`: runs inside the spoke's worker pods and loads or unloads one kernel module.

use clap::Parser;

/// Loads and unloads kernel modules on the node it runs on: modprobe, firmware and soft
/// dependencies, from the configuration file the spoke hands over.
#[derive(Parser, Debug)]
#[command(name = "kmm-worker", version, about, long_about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
