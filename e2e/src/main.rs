//! `cargo run -p e2e -- up`: start a hub and two spokes for a person to try.

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use e2e::{Fleet, FleetSpec};

#[derive(Parser)]
#[command(about = "The local fleet: real Kubernetes + OCM + a registry on loopback")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a hub and two spokes (different kernels) and a registry; Ctrl-C stops everything.
    Up {
        /// Where the run directory goes (default $KMM_E2E_DIR or <tmp>/kmm-e2e).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Print where the binaries are (or how to build them).
    Bins,
    /// Benchmark kmm-spoke: N fake nodes on three kernels and M Modules on one API server, next
    /// to a bare client writing the same worker pods and label patches. Build kmm-spoke first:
    /// `cargo build --release -p kmm-spoke && cargo run --release -p e2e -- bench-spoke`.
    BenchSpoke {
        /// Fake nodes.
        #[arg(long, default_value_t = 500)]
        nodes: usize,
        /// Modules.
        #[arg(long, default_value_t = 5)]
        modules: usize,
        /// Run directory (logs).
        #[arg(long, default_value = "/tmp/kmm-bench-spoke")]
        dir: std::path::PathBuf,
    },
    /// Benchmark kmm-hub: N ManagedClusters (objects with kernel claims) over four kernels and M
    /// ManagedClusterModules on one API server, next to a bare client creating the same
    /// ManifestWorks. Build kmm-hub first:
    /// `cargo build --release -p kmm-hub -p e2e && ./target/release/e2e bench-hub`.
    BenchHub {
        /// ManagedClusters.
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// ManagedClusterModules.
        #[arg(long, default_value_t = 5)]
        mcms: usize,
        /// Run directory (logs).
        #[arg(long, default_value = "/tmp/kmm-bench-hub")]
        dir: std::path::PathBuf,
    },
    /// (for the harness's own tests) start `sleep` under a supervisor in
    /// DIR, print its pid, and wait to be killed.
    #[command(hide = true)]
    SupervisedSleep { dir: std::path::PathBuf },
}

#[tokio::main]
async fn main() -> Result<()> {
    // The readiness polls log every refused connection at ERROR; hide those.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "warn,kube_client::client::builder=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Bins => {
            let b = e2e::bins::Bins::locate()?;
            println!("{}", b.dir.display());
            Ok(())
        }
        Cmd::Up { dir } => up(dir).await,
        Cmd::BenchSpoke { nodes, modules, dir } => {
            ensure_bins()?;
            e2e::bench_spoke::run(e2e::bench_spoke::Size { nodes, modules }, &dir).await
        }
        Cmd::BenchHub { clusters, mcms, dir } => {
            ensure_bins()?;
            e2e::bench_hub::run(e2e::bench_hub::Size { clusters, mcms }, &dir).await
        }
        Cmd::SupervisedSleep { dir } => {
            let sup = e2e::proc::Supervisor::new(&dir)?;
            let sleep = std::path::Path::new("/bin/sleep");
            sup.spawn(e2e::proc::Spawn::new("sleep", sleep).arg("300"))?;
            for (_, pid) in sup.pids() {
                println!("{pid}");
            }
            tokio::time::sleep(Duration::from_secs(300)).await;
            Ok(())
        }
    }
}

/// On a fresh machine the fleet's binaries are not built yet: build them (with progress) so
/// `cargo run -p e2e -- up` works as the README's first command.
fn ensure_bins() -> Result<()> {
    if e2e::bins::Bins::locate().is_ok() {
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/build-bins.sh");
    eprintln!(
        "the fleet's binaries are not built yet; running {} (tens of minutes the first time) ...",
        script.display()
    );
    let status = std::process::Command::new("bash")
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{} failed ({status})", script.display());
    e2e::bins::Bins::locate().map(drop)
}

async fn up(dir: Option<std::path::PathBuf>) -> Result<()> {
    ensure_bins()?;
    let mut spec = FleetSpec::demo();
    if let Some(d) = dir {
        spec = spec.base_dir(d);
    }
    eprintln!("starting hub + spokes {} (this takes a little while) ...", {
        spec.spokes
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    });
    let fleet = tokio::select! {
        f = Fleet::start(spec.clone()) => f?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted while starting; stopping");
            return Ok(());
        }
    };
    let kubectl = fleet.bins.path("kubectl");
    let rss: u64 = fleet.rss_kib().iter().map(|(_, k)| k).sum();
    println!();
    println!(
        "fleet up in {:.1}s ({} processes, {} MiB resident)",
        fleet.started_in.as_secs_f64(),
        fleet.pids().len(),
        rss / 1024
    );
    println!("  run directory: {}", fleet.dir.display());
    println!("  logs:          {}", fleet.log_dir().display());
    println!();
    println!(
        "hub      {}  kubeconfig {}",
        fleet.hub.server,
        fleet.hub.admin_kubeconfig.display()
    );
    for s in &fleet.spokes {
        let kernels: Vec<String> = spec
            .spokes
            .iter()
            .find(|x| x.name == s.name)
            .map(|x| {
                x.nodes
                    .iter()
                    .map(|n| format!("{}={}", n.name, n.kernel_version))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<8} {}  kubeconfig {}  nodes: {}",
            s.name,
            s.server,
            s.admin_kubeconfig.display(),
            kernels.join(", ")
        );
    }
    if let Some(r) = &fleet.registry {
        println!("registry {}  (push/pull e.g. {}/kmm/my-module:tag)", r.url, r.host);
    }
    println!();
    println!("try:");
    println!("  alias kubectl={}", kubectl.display());
    println!(
        "  kubectl --kubeconfig {} get managedclusters",
        fleet.hub.admin_kubeconfig.display()
    );
    if let Some(s) = fleet.spokes.first() {
        println!(
            "  kubectl --kubeconfig {} get nodes -o custom-columns=NAME:.metadata.name,KERNEL:.status.nodeInfo.kernelVersion",
            s.admin_kubeconfig.display()
        );
        println!(
            "  kubectl --kubeconfig {} get clusterclaims",
            s.admin_kubeconfig.display()
        );
        println!(
            "  kubectl --kubeconfig {} -n {} get manifestworks",
            fleet.hub.admin_kubeconfig.display(),
            s.name
        );
    }
    println!();
    println!("Ctrl-C stops everything.");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if let Err(e) = fleet.check_alive() {
                    eprintln!("a fleet process died: {e:#}");
                    break;
                }
            }
        }
    }
    eprintln!("stopping ...");
    fleet.teardown();
    eprintln!("stopped; logs kept in {}", fleet.log_dir().display());
    Ok(())
}
