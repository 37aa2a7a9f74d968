//! `kmm-worker`: loads or unloads one kernel module on the node its pod runs on.
//!
//! The spoke hands the worker a [`ModuleConfig`](shared_api::nmc::ModuleConfig) as a YAML (or
//! JSON) file. The worker gets the module tree (a directory the kubelet provides, or a direct
//! pull of the kmod image, see [`pull`] and [`extract`]), turns config + operation into an ordered
//! list of [`plan::Step`]s (pure, see [`plan::plan`]) and runs them with [`exec::Executor`].
//!
//! Load: remove the listed in-tree modules that are loaded, set `firmware_class.path` when
//! configured (and different), copy the image's firmware to the host, then `modprobe` the soft
//! dependencies (`modulesLoadingOrder`, the last first) and the module itself.
//! Unload: `modprobe -r` the module and then its soft dependencies, then remove the firmware
//! files the load placed.

pub mod config;
pub mod exec;
pub mod extract;
pub mod firmware;
pub mod plan;
pub mod pull;
pub mod run;

use std::process::ExitCode;

/// Exit codes of `kmm-worker`, documented in `kmm-worker --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done (or nothing to do).
    Ok = 0,
    /// Unexpected internal error (a bug, or the worker's own filesystem failing).
    Internal = 1,
    /// Bad command line or bad config file: fix the Module / the pod.
    Config = 2,
    /// The module tree could not be obtained: pull failed, refused image content, missing
    /// directories in the image.
    Image = 3,
    /// modprobe failed (loading, unloading, or removing an in-tree module).
    Modprobe = 4,
    /// Firmware could not be copied or removed, or `firmware_class.path` could not be set.
    Firmware = 5,
    /// The node does not match the config: it runs another kernel than the image was built for.
    Node = 6,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// The table printed by `kmm-worker --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done (or nothing to do)
  1  internal error
  2  bad command line or config file (fix the Module or the worker pod)
  3  image: pull failed, image content refused (unsafe paths, links, device nodes, too big),
     or dirName / firmwarePath / lib/modules/<kernel> missing in the image
  4  modprobe failed (load, unload, or removing an in-tree module); its message is logged
  5  firmware: copying or removing firmware files, or setting firmware_class.path, failed
  6  node mismatch: the node runs another kernel than the config's kernelVersion";

/// Every error the worker reports; each maps to one [`Exit`] code.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Pull(#[from] pull::PullError),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("image: {0}")]
    ImageTree(String),
    #[error(transparent)]
    Modprobe(#[from] exec::ModprobeError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error("node: {0}")]
    Node(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl WorkerError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            WorkerError::Config(_) => Exit::Config,
            WorkerError::Pull(e) if e.is_config() => Exit::Config,
            WorkerError::Firmware(e) if e.is_image() => Exit::Image,
            WorkerError::Pull(_) | WorkerError::Extract(_) | WorkerError::ImageTree(_) => Exit::Image,
            WorkerError::Modprobe(_) => Exit::Modprobe,
            WorkerError::Firmware(_) => Exit::Firmware,
            WorkerError::Node(_) => Exit::Node,
            WorkerError::Internal(_) => Exit::Internal,
        }
    }
}
