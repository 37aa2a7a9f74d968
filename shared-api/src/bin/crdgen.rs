//! Writes our CRDs into `manifests/crds/` (or checks that the committed files are current).

use std::path::PathBuf;

use anyhow::{Context, ensure};
use clap::Parser;
use shared_api::crds;

/// Generate the CRD YAML under manifests/crds/ from the Rust types.
#[derive(Parser, Debug)]
#[command(name = "crdgen", version, about)]
struct Cli {
    /// Output directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds"))]
    out: PathBuf,
    /// Do not write; fail when a committed file differs from what the types generate.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut stale = Vec::new();
    for crd in crds::crds(crds::Set::All) {
        let path = cli.out.join(crds::file_name(&crd));
        let yaml = crds::to_yaml(&crd);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if cli.check {
            stale.push(path.display().to_string());
        } else {
            std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    ensure!(
        stale.is_empty(),
        "out of date (run `cargo run -p shared-api --bin crdgen`): {}",
        stale.join(", ")
    );
    Ok(())
}
