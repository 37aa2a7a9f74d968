//! Where the real binaries are: built by `ci/build-bins.sh` into a cache
//! outside the repository.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Every binary a fleet may run.
pub const ALL: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "registration",
    "work",
    "registry",
    "kubectl",
];

#[derive(Clone, Debug)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    /// `$KMM_FLEET_BIN_DIR`, else `${KMM_BIN_CACHE:-$HOME/.cache/kmm-rs/bins}/current`.
    /// Fails (never skips) with how to build them when any binary is missing.
    pub fn locate() -> Result<Self> {
        let dir = match std::env::var_os("KMM_FLEET_BIN_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let root = match std::env::var_os("KMM_BIN_CACHE") {
                    Some(r) if !r.is_empty() => PathBuf::from(r),
                    _ => {
                        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                        Path::new(&home).join(".cache/kmm-rs/bins")
                    }
                };
                root.join("current")
            }
        };
        let missing: Vec<&str> = ALL.iter().copied().filter(|b| !dir.join(b).is_file()).collect();
        if !missing.is_empty() {
            bail!(
                "the local fleet's binaries are missing from {} ({}).\n\
                 Build them first (cold: tens of minutes, warm: instant):\n    ci/build-bins.sh\n\
                 or point KMM_FLEET_BIN_DIR at a directory holding them.",
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
