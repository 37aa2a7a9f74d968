//! An OCI registry (CNCF distribution) on loopback, optionally with TLS and
//! htpasswd basic auth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::bins::Bins;
use crate::certs::{self, Ca};
use crate::net::{free_port, is_listening};
use crate::proc::{Spawn, Supervisor};
use crate::wait::poll;

#[derive(Clone, Debug, Default)]
pub struct RegistrySpec {
    /// Serve HTTPS with a certificate from the registry's own CA
    /// ([`Registry::ca_file`]).
    pub tls: bool,
    /// Require basic auth with this user and password (htpasswd, bcrypt).
    pub auth: Option<(String, String)>,
}

pub struct Registry {
    /// `127.0.0.1:<port>`: the host part of image references.
    pub host: String,
    pub port: u16,
    /// `http://…` or `https://…`
    pub url: String,
    /// CA that signed the serving certificate (when `tls`).
    pub ca_file: Option<PathBuf>,
    pub auth: Option<(String, String)>,
    pub dir: PathBuf,
}

impl Registry {
    /// Start a registry under `dir` (the fleet starts one from
    /// [`crate::FleetSpec::registry`]; tests may start more).
    pub async fn start(sup: &Supervisor, bins: &Bins, spec: &RegistrySpec, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        let debug_port = free_port()?;
        let mut tls_block = String::new();
        let mut ca_file = None;
        if spec.tls {
            let ca = Ca::new("kmm-e2e-registry-ca")?;
            let pair = ca.server("registry", &["127.0.0.1", "localhost"])?;
            let crt = certs::write(&dir.join("tls.crt"), &pair.cert_pem)?;
            let key = certs::write(&dir.join("tls.key"), &pair.key_pem)?;
            ca_file = Some(certs::write(&dir.join("ca.crt"), &ca.cert_pem)?);
            tls_block = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                crt.display(),
                key.display()
            );
        }
        let mut auth_block = String::new();
        if let Some((user, pass)) = &spec.auth {
            let hash = bcrypt::hash(pass, 5)?;
            let file = certs::write(&dir.join("htpasswd"), &format!("{user}:{hash}\n"))?;
            auth_block = format!("auth:\n  htpasswd:\n    realm: kmm-e2e\n    path: {}\n", file.display());
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kmm-e2e-not-secret\n  debug:\n    addr: 127.0.0.1:{debug_port}\n{tls_block}\
             {auth_block}",
            data = dir.join("data").display(),
        );
        let cfg = certs::write(&dir.join("config.yml"), &config)?;
        let bin = bins.path("registry");
        sup.spawn(
            Spawn::new("registry", &bin)
                .arg("serve")
                .arg(cfg.display().to_string())
                // distribution otherwise tries to export traces to localhost:4318
                .env("OTEL_TRACES_EXPORTER", "none"),
        )?;
        poll(
            "registry listening",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || sup.check_alive(),
            || async move { Ok(is_listening(port).then_some(())) },
        )
        .await?;
        let scheme = if spec.tls { "https" } else { "http" };
        Ok(Self {
            host: format!("127.0.0.1:{port}"),
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
            auth: spec.auth.clone(),
            dir: dir.to_path_buf(),
        })
    }
}
