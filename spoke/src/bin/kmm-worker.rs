//! `kmm-worker`: runs inside the spoke's worker pods and loads or unloads one kernel module.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kmm_spoke::worker::exec::{Mode, NodePaths};
use kmm_spoke::worker::extract::Limits;
use kmm_spoke::worker::plan::Operation;
use kmm_spoke::worker::run::{RunOptions, TreeSource, default_pull_dir, parse_size, run};
use kmm_spoke::worker::{EXIT_CODES_HELP, Exit};

/// Loads and unloads kernel modules on the node it runs on: modprobe, firmware and soft
/// dependencies, from the configuration file the spoke hands over.
#[derive(Parser, Debug)]
#[command(name = "kmm-worker", version, about, long_about, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "KMM_WORKER_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load or unload a kernel module.
    #[command(subcommand)]
    Kmod(Kmod),
}

#[derive(Subcommand, Debug)]
enum Kmod {
    /// Remove the listed in-tree modules, set firmware_class.path (when configured), copy the
    /// firmware, then modprobe the soft dependencies (modulesLoadingOrder, the last first) and
    /// the module.
    #[command(after_help = EXIT_CODES_HELP)]
    Load(KmodArgs),
    /// modprobe -r the module and then its soft dependencies, then remove the firmware files the
    /// load placed (only where they still match the image).
    #[command(after_help = EXIT_CODES_HELP)]
    Unload(KmodArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DryRun {
    /// Print the steps and the exact modprobe command lines; change nothing.
    Print,
    /// Also run each modprobe with --dry-run and -S <kernelVersion>, so kmod resolves the
    /// image's tree (dependencies, order) without loading anything.
    Modprobe,
}

#[derive(Args, Debug)]
#[group(id = "source", required = true, multiple = false)]
struct Source {
    /// The kmod image's filesystem, provided by the kubelet (an init container's copy or an
    /// image volume). dirName and firmwarePath are resolved under it.
    #[arg(long, env = "KMM_WORKER_IMAGE_DIR", value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Pull the config's containerImage from its registry instead (insecurePull and
    /// insecureSkipTLSVerify from the config apply).
    #[arg(long)]
    pull: bool,
}

#[derive(Args, Debug)]
struct KmodArgs {
    /// The ModuleConfig file (YAML or JSON) the spoke hands over.
    config: PathBuf,
    #[command(flatten)]
    source: Source,
    /// With --pull: where the image is unpacked (a directory named after the image is created,
    /// and removed afterwards unless --keep-image).
    #[arg(long, env = "KMM_WORKER_PULL_DIR", value_name = "DIR", default_value = default_pull_dir().as_os_str())]
    pull_dir: PathBuf,
    /// With --pull: the pull secret, a .dockerconfigjson file or the directory a Secret is mounted at.
    #[arg(long, env = "KMM_WORKER_PULL_SECRET", value_name = "PATH")]
    pull_secret: Option<PathBuf>,
    /// With --pull: limit in seconds for connecting and for each registry request without progress.
    #[arg(long, env = "KMM_WORKER_PULL_TIMEOUT", value_name = "SECONDS", default_value_t = 60)]
    pull_timeout: u64,
    /// With --pull: keep the unpacked image.
    #[arg(long)]
    keep_image: bool,
    /// Largest total size of the files an image may unpack to (e.g. 4Gi, 512Mi, bytes).
    #[arg(long, env = "KMM_WORKER_MAX_IMAGE_BYTES", value_name = "SIZE", default_value = "4Gi", value_parser = parse_size)]
    max_image_bytes: u64,
    /// Largest number of entries (files, directories, links) an image may unpack to.
    #[arg(
        long,
        env = "KMM_WORKER_MAX_IMAGE_ENTRIES",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    max_image_entries: u64,
    /// The node's firmware directory as mounted in the worker pod (firmware is copied there).
    #[arg(
        long,
        alias = "firmware-path",
        env = "KMM_WORKER_FIRMWARE_HOST_DIR",
        value_name = "DIR",
        default_value = "/var/lib/firmware"
    )]
    firmware_host_dir: PathBuf,
    /// Write this to the kernel's firmware_class.path (when the module has a firmwarePath and the
    /// value differs); the operator's worker.setFirmwareClassPath.
    #[arg(long, env = "KMM_WORKER_SET_FIRMWARE_CLASS_PATH", value_name = "PATH")]
    set_firmware_class_path: Option<String>,
    /// The kernel's /sys/module (loaded modules, firmware_class parameters).
    #[arg(
        long,
        env = "KMM_WORKER_SYSFS_MODULE_DIR",
        value_name = "DIR",
        default_value = "/sys/module"
    )]
    sysfs_module_dir: PathBuf,
    /// The file holding the running kernel's release.
    #[arg(
        long,
        env = "KMM_WORKER_KERNEL_RELEASE_FILE",
        value_name = "FILE",
        default_value = "/proc/sys/kernel/osrelease"
    )]
    kernel_release_file: PathBuf,
    /// The modprobe program.
    #[arg(long, env = "KMM_WORKER_MODPROBE", value_name = "PATH", default_value = "modprobe")]
    modprobe: String,
    /// Print what would be done instead of doing it (--dry-run or --dry-run=print), or also let
    /// modprobe resolve the tree with its own --dry-run (--dry-run=modprobe). With --pull the
    /// image is still pulled (and removed again).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "print", value_name = "MODE")]
    dry_run: Option<DryRun>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMM_WORKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let Command::Kmod(kmod) = cli.command;
    let (operation, a) = match kmod {
        Kmod::Load(a) => (Operation::Load, a),
        Kmod::Unload(a) => (Operation::Unload, a),
    };
    let source = match a.source.image_dir {
        Some(d) => TreeSource::Dir(d),
        None => TreeSource::Pull {
            pull_dir: a.pull_dir,
            secret: a.pull_secret,
            keep: a.keep_image,
            timeout: Duration::from_secs(a.pull_timeout.max(1)),
        },
    };
    let opts = RunOptions {
        config: a.config,
        operation,
        source,
        limits: Limits {
            max_bytes: a.max_image_bytes,
            max_entries: a.max_image_entries,
        },
        firmware_host_dir: a.firmware_host_dir,
        set_firmware_class_path: a.set_firmware_class_path.filter(|s| !s.is_empty()),
        node: NodePaths {
            sys_module: a.sysfs_module_dir,
            kernel_release: a.kernel_release_file,
        },
        modprobe: a.modprobe,
        mode: match a.dry_run {
            None => Mode::Run,
            Some(DryRun::Print) => Mode::Print,
            Some(DryRun::Modprobe) => Mode::ModprobeDryRun,
        },
    };
    match run(&opts, Box::new(std::io::stdout())) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            let exit = e.exit();
            tracing::error!("{operation} failed (exit code {}): {e}", exit.code());
            exit.into()
        }
    }
}
