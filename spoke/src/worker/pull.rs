//! Pulling the kmod image straight from its registry (oci-client) and unpacking it safely with
//! [`super::extract::Extractor`], with the pull secret the spoke mounts into the worker pod.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use shared_api::registry_auth::{DockerConfigAuth, RegistryCredentials};

use super::extract::{ExtractError, Extractor, Limits, Stats};

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why the image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("pull secret {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
    #[error("registry {registry}: {operation} {reference}: {reason}")]
    Registry {
        registry: String,
        operation: &'static str,
        reference: String,
        reason: String,
    },
    #[error(
        "registry {registry}: {operation} {reference}: no answer within {}s (is the registry reachable, \
         and are insecurePull / insecureSkipTLSVerify right?)", timeout.as_secs_f32()
    )]
    Timeout {
        registry: String,
        operation: &'static str,
        reference: String,
        timeout: Duration,
    },
    #[error("image {image}: {reason}")]
    Manifest { image: String, reason: String },
    #[error("image {image}: {source}")]
    Extract {
        image: String,
        #[source]
        source: ExtractError,
    },
    #[error("pulling into {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl PullError {
    /// A problem of the config or the pod (exit code 2), not of the registry or image.
    pub fn is_config(&self) -> bool {
        matches!(self, PullError::Reference { .. } | PullError::Secret { .. })
    }
}

/// Registry credentials from a pull secret (`.dockerconfigjson` or legacy `.dockercfg`), parsed
/// by the same code as the hub's. Passwords are never printed.
#[derive(Clone, Default, Debug)]
pub struct PullSecret {
    auth: DockerConfigAuth,
}

impl PullSecret {
    /// Reads a pull secret: a file, or the directory a Secret is mounted at (its
    /// `.dockerconfigjson`, `.dockercfg` or `config.json`).
    pub fn load(path: &Path) -> Result<Self, PullError> {
        let err = |p: &Path, reason: String| PullError::Secret {
            path: p.to_path_buf(),
            reason,
        };
        let file = if path.is_dir() {
            [".dockerconfigjson", ".dockercfg", "config.json"]
                .iter()
                .map(|n| path.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    err(
                        path,
                        "directory holds no .dockerconfigjson, .dockercfg or config.json (does the Secret the Module names in imageRepoSecret exist, with one of those keys?)".into(),
                    )
                })?
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| err(&file, format!("cannot read: {e}")))?;
        Self::parse(&bytes).map_err(|reason| err(&file, reason))
    }

    /// Parses `{"auths": {...}}` or the legacy map of registries.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        DockerConfigAuth::parse(json, "pull secret")
            .map(|auth| PullSecret { auth })
            .map_err(|e| e.to_string())
    }

    /// Credentials for `registry` (`host[:port]`); anonymous when none match.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.auth.for_registry(registry) {
            RegistryCredentials::Basic { username, password } => RegistryAuth::Basic(username, password.to_string()),
            RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
        }
    }
}

/// What [`pull`] needs.
#[derive(Debug)]
pub struct PullRequest<'a> {
    /// The kmod image (`containerImage`).
    pub image: &'a str,
    /// Plain HTTP (`insecurePull`).
    pub insecure: bool,
    /// HTTPS without certificate checks (`insecureSkipTLSVerify`).
    pub insecure_skip_tls_verify: bool,
    pub secret: &'a PullSecret,
    /// Directory to create and unpack into; removed again when anything fails.
    pub dest: &'a Path,
    pub limits: Limits,
    /// Limit for connecting and for each request without progress.
    pub timeout: Duration,
}

/// A pulled and unpacked image.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Digest of the (platform) manifest that was unpacked.
    pub digest: String,
    pub stats: Stats,
}

/// A file that refuses to grow beyond `cap` bytes.
struct CappedFile {
    file: tokio::fs::File,
    written: u64,
    cap: u64,
}

impl tokio::io::AsyncWrite for CappedFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.written.saturating_add(buf.len() as u64) > this.cap {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest declares",
                this.cap
            ))));
        }
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

fn registry_error(
    e: oci_client::errors::OciDistributionError,
    reference: &Reference,
    operation: &'static str,
    timeout: Duration,
) -> PullError {
    let mut reason = kmm_runtime::registry::error_chain(&e);
    let registry = reference.resolve_registry().to_string();
    if reason.contains("timed out") {
        return PullError::Timeout {
            registry,
            operation,
            reference: reference.whole(),
            timeout,
        };
    }
    let lower = reason.to_ascii_lowercase();
    if ["unauthorized", "not authorized", "401", "denied"]
        .iter()
        .any(|w| lower.contains(w))
    {
        reason.push_str(" (check the Module's imageRepoSecret, mounted as --pull-secret)");
    } else if lower.contains("certificate") || lower.contains("invalid peer") {
        reason.push_str(" (the registry's certificate is not trusted; see registryTLS)");
    } else if lower.contains("connection refused") || lower.contains("error sending request") {
        reason.push_str(" (is the registry reachable from the node, and is insecurePull right?)");
    }
    PullError::Registry {
        registry,
        operation,
        reference: reference.whole(),
        reason,
    }
}

/// Layer media types we can unpack: tar, optionally gzip-compressed.
fn layer_type_ok(mt: &str) -> Result<(), String> {
    if mt.contains("zstd") {
        return Err(format!(
            "layer media type {mt} (zstd) is not supported; push the image with gzip layers"
        ));
    }
    let ok = matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    );
    if ok {
        Ok(())
    } else {
        Err(format!("layer media type {mt:?} is not an image filesystem layer"))
    }
}

/// Pulls `req.image` (the linux/amd64 entry of a multi-platform image) and unpacks its layers
/// into `req.dest`. On any failure nothing is left at `req.dest`.
pub async fn pull(req: &PullRequest<'_>) -> Result<Pulled, PullError> {
    let reference: Reference = req
        .image
        .parse()
        .map_err(|e: oci_client::ParseError| PullError::Reference {
            reference: req.image.to_string(),
            reason: e.to_string(),
        })?;
    let image = reference.whole();
    kmm_runtime::registry::install_crypto();
    let client = Client::new(ClientConfig {
        protocol: if req.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: req.insecure_skip_tls_verify,
        connect_timeout: Some(req.timeout),
        read_timeout: Some(req.timeout),
        ..Default::default()
    });
    let auth = req.secret.for_registry(reference.resolve_registry());
    let timeout = req.timeout;
    let limited = |operation: &'static str, r: &Reference| {
        let r = r.clone();
        move |_| PullError::Timeout {
            registry: r.resolve_registry().to_string(),
            operation,
            reference: r.whole(),
            timeout,
        }
    };

    let accepted = [MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST];
    let (raw, mut digest) = tokio::time::timeout(timeout, client.pull_manifest_raw(&reference, &auth, &accepted))
        .await
        .map_err(limited("pull manifest", &reference))?
        .map_err(|e| registry_error(e, &reference, "pull manifest", timeout))?;
    let bad = |reason: String| PullError::Manifest {
        image: image.clone(),
        reason,
    };
    let mut manifest: Value = serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
    if manifest.get("manifests").is_some() {
        let entries = manifest["manifests"].as_array().cloned().unwrap_or_default();
        let pick = entries
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64");
        let Some(d) = pick.and_then(|m| m["digest"].as_str()) else {
            return Err(bad("multi-platform image without a linux/amd64 entry".into()));
        };
        let by_digest = reference.clone_with_digest(d.to_string());
        let (raw, d) = tokio::time::timeout(
            timeout,
            client.pull_manifest_raw(&by_digest, &auth, &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST]),
        )
        .await
        .map_err(limited("pull manifest", &by_digest))?
        .map_err(|e| registry_error(e, &by_digest, "pull manifest", timeout))?;
        digest = d;
        manifest = serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
    }
    let layers = manifest["layers"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad("manifest has no layers".into()))?;
    let mut descriptors = Vec::new();
    let mut declared: u64 = 0;
    for (i, l) in layers.iter().enumerate() {
        let mt = l["mediaType"].as_str().unwrap_or_default().to_string();
        layer_type_ok(&mt).map_err(|r| bad(format!("layer {}: {r}", i + 1)))?;
        let d = l["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("layer {} has no digest", i + 1)))?;
        let size = l["size"].as_u64().unwrap_or(0);
        declared = declared.saturating_add(size);
        if declared > req.limits.max_bytes {
            return Err(bad(format!(
                "its layers declare more than the limit of {} bytes (raise --max-image-bytes if the image \
                 is legitimately this big)",
                req.limits.max_bytes
            )));
        }
        descriptors.push(OciDescriptor {
            media_type: mt,
            digest: d.to_string(),
            size: size as i64,
            ..Default::default()
        });
    }

    // Unpack; a stale directory from an earlier, interrupted run is replaced.
    let io = |p: &Path, e: std::io::Error| PullError::Io {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    if std::fs::symlink_metadata(req.dest).is_ok() {
        std::fs::remove_dir_all(req.dest).map_err(|e| io(req.dest, e))?;
    }
    let parent = req.dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kmm-layers-")
        .tempdir_in(parent)
        .map_err(|e| io(parent, e))?;
    let mut extractor = Extractor::new(req.dest, req.limits).map_err(|source| PullError::Extract {
        image: image.clone(),
        source,
    })?;
    let n = descriptors.len();
    for (i, desc) in descriptors.into_iter().enumerate() {
        let blob = tmp.path().join(format!("layer-{i}"));
        let file = tokio::fs::File::create(&blob).await.map_err(|e| io(&blob, e))?;
        let cap = if desc.size > 0 {
            desc.size as u64
        } else {
            req.limits.max_bytes
        };
        let out = CappedFile { file, written: 0, cap };
        client
            .pull_blob(&reference, &desc, out)
            .await
            .map_err(|e| registry_error(e, &reference, "pull layer", timeout))?;
        let label = format!("{}/{n} ({})", i + 1, desc.digest);
        let blob2 = blob.clone();
        extractor = tokio::task::spawn_blocking(move || -> Result<Extractor, ExtractError> {
            let f = std::fs::File::open(&blob2).map_err(|e| ExtractError::Io {
                path: blob2.clone(),
                reason: e.to_string(),
            })?;
            extractor.add_layer(&label, f)?;
            Ok(extractor)
        })
        .await
        .map_err(|e| PullError::Io {
            path: req.dest.to_path_buf(),
            reason: format!("extraction task failed: {e}"),
        })?
        .map_err(|source| PullError::Extract {
            image: image.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&blob);
    }
    let stats = extractor.finish();
    Ok(Pulled { digest, stats })
}

/// A short, file-name-safe name for an image's unpack directory.
pub fn dir_name_for(image: &str) -> String {
    let cleaned: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tail: String = cleaned
        .chars()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in image.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{tail}-{h:016x}")
}

/// The registries of a pull secret, for log lines.
pub fn registries(secret: &PullSecret) -> Vec<String> {
    secret.auth.registries()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        let s = PullSecret::parse(
            br#"{"auths":{"http://127.0.0.1:5000/v2/":{"auth":"dXNlcjpzM2NyZXQ="},"q.io":{"username":"u","password":"p:w"}}}"#,
        )
        .unwrap();
        assert_eq!(
            s.for_registry("127.0.0.1:5000"),
            RegistryAuth::Basic("user".into(), "s3cret".into())
        );
        assert_eq!(s.for_registry("q.io"), RegistryAuth::Basic("u".into(), "p:w".into()));
        assert_eq!(s.for_registry("other"), RegistryAuth::Anonymous);
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(registries(&s), ["127.0.0.1:5000", "q.io"]);
        let legacy = PullSecret::parse(br#"{"r.io":{"auth":"YTpi"}}"#).unwrap();
        assert_eq!(legacy.for_registry("r.io"), RegistryAuth::Basic("a".into(), "b".into()));
        assert!(
            PullSecret::parse(br#"{"auths":{"r":{"auth":"!!"}}}"#)
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn media_types_and_names() {
        assert!(layer_type_ok("application/vnd.oci.image.layer.v1.tar+gzip").is_ok());
        assert!(
            layer_type_ok("application/vnd.oci.image.layer.v1.tar+zstd")
                .unwrap_err()
                .contains("zstd")
        );
        assert!(layer_type_ok("application/vnd.cncf.helm.chart.content.v1.tar+gzip").is_err());
        let n = dir_name_for("127.0.0.1:5000/kmm/k@sha256:abc");
        assert!(n.starts_with("127.0.0.1_5000_kmm_k_sha256_abc-"), "{n}");
        assert!(!n.contains('/'));
    }
}
