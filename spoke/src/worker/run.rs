//! One `kmm-worker kmod load|unload`: config → module tree → plan → executor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exec::{Executor, Mode, NodePaths};
use super::extract::Limits;
use super::plan::{self, Operation, PlanOptions};
use super::pull::{self, PullRequest, PullSecret};
use super::{WorkerError, config, firmware};

/// Where the module tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeSource {
    /// A directory holding the image's filesystem, provided by the kubelet (an init container that
    /// copied it, or an image volume).
    Dir(PathBuf),
    /// Pull the config's containerImage from its registry and unpack it under `pull_dir`.
    Pull {
        pull_dir: PathBuf,
        /// The pull secret (file or mounted Secret directory); anonymous without.
        secret: Option<PathBuf>,
        /// Keep the unpacked tree afterwards (it is removed by default).
        keep: bool,
        timeout: Duration,
    },
}

/// Everything one run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub config: PathBuf,
    pub operation: Operation,
    pub source: TreeSource,
    pub limits: Limits,
    pub firmware_host_dir: PathBuf,
    pub set_firmware_class_path: Option<String>,
    pub node: NodePaths,
    pub modprobe: String,
    pub mode: Mode,
}

/// Removes a pulled tree when dropped.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && std::fs::remove_dir_all(&p).is_ok()
        {
            tracing::info!("removed the unpacked image {}", p.display());
        }
    }
}

/// Runs one load or unload; `out` receives dry-run listings.
pub fn run(opts: &RunOptions, out: Box<dyn Write>) -> Result<(), WorkerError> {
    let op = opts.operation;
    let cfg = config::load(&opts.config)?;
    config::validate(&cfg, op == Operation::Load)?;
    let name = cfg
        .modprobe
        .module_name
        .clone()
        .unwrap_or_else(|| "(rawArgs)".to_string());
    tracing::info!(
        "{op} {name} for kernel {} from {}{}",
        cfg.kernel_version,
        cfg.container_image,
        if opts.mode == Mode::Run { "" } else { " (dry run)" }
    );

    let mut _cleanup = RemoveOnDrop(None);
    let root: PathBuf = match &opts.source {
        TreeSource::Dir(d) => {
            if !d.is_dir() {
                return Err(WorkerError::ImageTree(format!(
                    "--image-dir {} is not a directory (is the image volume or the init container's copy \
                     mounted?)",
                    d.display()
                )));
            }
            d.clone()
        }
        TreeSource::Pull {
            pull_dir,
            secret,
            keep,
            timeout,
        } => {
            let secret = match secret {
                Some(p) => PullSecret::load(p)?,
                None => PullSecret::default(),
            };
            let dest = pull_dir.join(pull::dir_name_for(&cfg.container_image));
            let registries = pull::registries(&secret);
            tracing::info!(
                "pulling {} into {}{}",
                cfg.container_image,
                dest.display(),
                if registries.is_empty() {
                    " (anonymous)".to_string()
                } else {
                    format!(" (pull secret for {})", registries.join(", "))
                }
            );
            let req = PullRequest {
                image: &cfg.container_image,
                insecure: cfg.insecure_pull,
                insecure_skip_tls_verify: cfg.insecure_skip_tls_verify,
                secret: &secret,
                dest: &dest,
                limits: opts.limits,
                timeout: *timeout,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| WorkerError::Internal(format!("cannot start the async runtime: {e}")))?;
            let pulled = rt.block_on(pull::pull(&req))?;
            tracing::info!(
                "pulled {} ({}): {} layer(s), {} files, {} bytes",
                cfg.container_image,
                pulled.digest,
                pulled.stats.layers,
                pulled.stats.files,
                pulled.stats.bytes
            );
            if !keep {
                _cleanup = RemoveOnDrop(Some(dest.clone()));
            }
            dest
        }
    };

    let popts = PlanOptions {
        modprobe: opts.modprobe.clone(),
        image_root: root.clone(),
        firmware_host_dir: opts.firmware_host_dir.clone(),
        set_firmware_class_path: opts.set_firmware_class_path.clone(),
        modprobe_dry_run: opts.mode == Mode::ModprobeDryRun,
    };
    let files = match &cfg.modprobe.firmware_path {
        Some(fw) if !fw.is_empty() => {
            let rel = config::image_relative("modprobe.firmwarePath", fw)?;
            firmware::inventory(&root, &rel)?
        }
        _ => Vec::new(),
    };
    let steps = plan::plan(&cfg, op, &popts, &files)?;
    let mut exec = Executor::with_output(opts.node.clone(), opts.mode, out);
    exec.run(&steps)?;
    if opts.mode == Mode::Run {
        tracing::info!("{op} {name}: done");
    }
    Ok(())
}

/// Parses a size: bytes, or with a `Ki`/`Mi`/`Gi`/`Ti` (or `K`/`M`/`G`/`T`, also powers of 1024)
/// suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4Gi, 512Mi, 1000000)"))?;
    let shift = match unit.trim() {
        "" => 0,
        "K" | "Ki" | "k" => 10,
        "M" | "Mi" => 20,
        "G" | "Gi" => 30,
        "T" | "Ti" => 40,
        u => return Err(format!("unknown size unit {u:?} (use Ki, Mi, Gi or Ti)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The default directory pulled images are unpacked under.
pub fn default_pull_dir() -> &'static Path {
    Path::new("/var/run/kmm/images")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Gi").unwrap(), 4 << 30);
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1Pi").is_err());
        assert!(parse_size("x").is_err());
    }
}
