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
        Self::in_dir(dir)
    }

    /// The binaries in `dir`; fails naming the missing ones and how to build them.
    pub fn in_dir(dir: PathBuf) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_fail_with_how_to_build_them() {
        let dir = std::env::temp_dir().join(format!("kmm-e2e-nobins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Bins::in_dir(dir.clone()).unwrap_err().to_string();
        assert!(err.contains("ci/build-bins.sh"), "{err}");
        assert!(err.contains("kube-apiserver"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
