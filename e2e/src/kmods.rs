//! The real fixture kernel modules (`ci/kmods`) and kmod images made from them, pushed to the
//! fleet's registry the way a build would push them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

/// Names of the fixture modules (`kmm_ci_a` depends on `kmm_ci_b`).
pub const MODULES: [&str; 3] = ["kmm_ci_a", "kmm_ci_b", "kmm_ci_fw"];

/// Modules built by `ci/kmods/build.sh` against Debian's kernel headers.
pub struct Fixtures {
    /// `<root>/lib/modules/<kver>/*.ko`, `modules.dep`; `<root>/lib/firmware/`.
    pub root: PathBuf,
    /// The kernel they were built for.
    pub kver: String,
}

impl Fixtures {
    /// Builds the modules into `dir` (the script caches its build outside the repository).
    /// Fails, naming the packages, when the kernel headers or tools are missing.
    pub fn build(dir: &Path) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/kmods/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(
            out.status.success(),
            "building the fixture kernel modules failed; they need `apt-get install -y linux-headers-amd64 kmod make gcc`:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kver = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        for m in MODULES {
            let p = dir.join("lib/modules").join(&kver).join(format!("{m}.ko"));
            ensure!(p.is_file(), "fixture module {} missing", p.display());
        }
        Ok(Self {
            root: dir.to_path_buf(),
            kver,
        })
    }

    /// The bytes of module `name` (`kmm_ci_a`).
    pub fn module(&self, name: &str) -> Result<Vec<u8>> {
        let p = self
            .root
            .join("lib/modules")
            .join(&self.kver)
            .join(format!("{name}.ko"));
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The image layers of a kmod image for `kernel`: a base layer, then the modules and
    /// `modules.dep` under `/opt/lib/modules/<kernel>/` and the firmware under
    /// `/opt/lib/firmware/`.
    pub fn layers(&self, kernel: &str) -> Result<Vec<Vec<u8>>> {
        let base = targz(&[("etc/os-release".into(), b"ID=kmm-e2e\n".to_vec())])?;
        let mdir = format!("opt/lib/modules/{kernel}");
        let mut files = Vec::new();
        for m in MODULES {
            files.push((format!("{mdir}/{m}.ko"), self.module(m)?));
        }
        let dep = self.root.join("lib/modules").join(&self.kver).join("modules.dep");
        files.push((format!("{mdir}/modules.dep"), std::fs::read(dep)?));
        files.push((
            "opt/lib/firmware/kmm_ci_fw.bin".into(),
            std::fs::read(self.root.join("lib/firmware/kmm_ci_fw.bin"))?,
        ));
        Ok(vec![base, targz(&files)?])
    }
}

fn targz(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner()?)?;
    Ok(gz.finish()?)
}

fn gunzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out)?;
    Ok(out)
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .fold("sha256:".to_string(), |s, x| s + &format!("{x:02x}"))
}

/// A client for the fleet's plain-HTTP loopback registry.
pub fn client(host: &str) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![host.to_owned()]),
        ..Default::default()
    })
}

/// Pushes an OCI image made of `layers` to `reference`; returns the manifest digest.
pub async fn push(reference: &str, layers: Vec<Vec<u8>>, auth: &RegistryAuth) -> Result<String> {
    let r: Reference = reference.parse().with_context(|| format!("parsing {reference}"))?;
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| gunzip(l).map(|t| sha256(&t)))
        .collect::<Result<_>>()?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let layers: Vec<ImageLayer> = layers.into_iter().map(|l| ImageLayer::oci_v1_gzip(l, None)).collect();
    let config = Config::oci_v1(serde_json::to_vec(&config)?, None);
    let c = client(r.resolve_registry());
    c.push(&r, &layers, config, auth, None)
        .await
        .with_context(|| format!("pushing {reference}"))?;
    c.fetch_manifest_digest(&r, auth)
        .await
        .with_context(|| format!("reading back the digest of {reference}"))
}

/// The files of the last layer of `reference` (path, content).
pub async fn last_layer_files(reference: &str, auth: &RegistryAuth) -> Result<(String, Vec<(String, Vec<u8>)>)> {
    let r: Reference = reference.parse()?;
    let c = client(r.resolve_registry());
    let (raw, digest) = c
        .pull_manifest_raw(
            &r,
            auth,
            &[
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ],
        )
        .await
        .with_context(|| format!("pulling the manifest of {reference}"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&raw)?;
    let last = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .context("image without layers")?;
    let mut blob = Vec::new();
    c.pull_blob(&r, last["digest"].as_str().unwrap_or_default(), &mut blob)
        .await?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
    let mut out = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((path, data));
    }
    Ok((digest, out))
}

/// A gzip tar layer holding one file.
pub fn single_file_layer(path: &str, data: &[u8]) -> Result<Vec<u8>> {
    targz(&[(path.to_owned(), data.to_vec())])
}
