//! Signing whole kmod images: pull the unsigned image, sign the listed files, push the result
//! as one new layer on top of the same base layers, and return the new manifest's digest.
//!
//! Everything that can fail for a reason of the input (bad reference, missing file, not a
//! module, key problem) fails before anything is pushed. The only pushes are blobs (base layers
//! that the target repository lacks, the new layer, the config) followed by the manifest last,
//! so a failure never moves the target tag.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use kmm_runtime::registry::{self, error_chain, oci_auth};
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::SignError;
use super::auth::DockerConfigAuth;
use super::keys::Signer;
use super::module::{HashAlgo, sign_module};

/// Largest file we sign from an image (kernel modules are far smaller).
const MAX_FILE: u64 = 2 << 30;

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub use kmm_runtime::registry::RegistryTls;

/// Everything [`sign_image`] needs, as plain values: the hub controller fills it from the
/// Module (references and `filesToSign` already substituted) and its Secrets.
#[derive(Debug)]
pub struct SignImageRequest<'a> {
    /// The unsigned image (`unsignedImage`), or `containerImage` itself.
    pub from: &'a str,
    /// Where the signed image goes (`containerImage`).
    pub to: &'a str,
    /// Absolute paths of the files to sign inside the image.
    pub files: &'a [String],
    pub signer: &'a Signer,
    pub hash: HashAlgo,
    /// Registry credentials (the `imageRepoSecret`'s `.dockerconfigjson`); empty for anonymous.
    pub auth: &'a DockerConfigAuth,
    pub tls: RegistryTls,
    /// Limit for connecting and for each registry request without progress.
    pub timeout: Duration,
}

/// One signed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFile {
    pub path: String,
    /// The file was already signed and its signature was replaced.
    pub replaced: bool,
    pub size: u64,
}

/// The result of [`sign_image`].
#[derive(Debug, Clone)]
pub struct SignedImage {
    /// `sha256:...` of the pushed manifest.
    pub digest: String,
    /// `to` pinned to the digest: `registry/repo@sha256:...`.
    pub pinned: String,
    /// Digest of the added layer (compressed).
    pub layer_digest: String,
    /// Digest of the unsigned image's manifest that was signed.
    pub source_digest: String,
    pub files: Vec<SignedFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageSignError {
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("filesToSign is empty: nothing to sign in {image}")]
    NoFiles { image: String },
    #[error("filesToSign entry {path:?} is not an absolute path inside the image")]
    BadPath { path: String },
    #[error("registry {registry}: {operation} {reference}: {reason}")]
    Registry {
        registry: String,
        operation: &'static str,
        reference: String,
        reason: String,
    },
    #[error(
        "registry {registry}: {operation} {reference}: no answer within {}s (is the registry \
         reachable, and is registryTLS right?)",
        timeout.as_secs_f32()
    )]
    Timeout {
        registry: String,
        operation: &'static str,
        reference: String,
        timeout: Duration,
    },
    #[error("{image}: {reason}")]
    Manifest { image: String, reason: String },
    #[error("{image}: layer {digest}: {reason}")]
    Layer {
        image: String,
        digest: String,
        reason: String,
    },
    #[error("{image}: file {path} to sign is not in the image{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    MissingFile {
        image: String,
        path: String,
        reason: String,
    },
    #[error("{image}: file {path} to sign is not a regular file: {kind}")]
    NotRegularFile { image: String, path: String, kind: String },
    #[error("{image}: {path}: {source}")]
    Module {
        image: String,
        path: String,
        #[source]
        source: SignError,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

fn parse_ref(s: &str) -> Result<Reference, ImageSignError> {
    s.parse::<Reference>().map_err(|e| ImageSignError::Reference {
        reference: s.to_string(),
        reason: e.to_string(),
    })
}

/// The client for one signing run.
struct Registry {
    client: Client,
    timeout: Duration,
}

impl Registry {
    async fn connect(tls: RegistryTls, timeout: Duration, hosts: &[&str]) -> Self {
        Registry {
            client: registry::connect(tls, timeout, hosts).await,
            timeout,
        }
    }

    /// Runs one registry call with the timeout, mapping errors to [`ImageSignError`].
    async fn call<T>(
        &self,
        operation: &'static str,
        reference: &Reference,
        limit: Option<Duration>,
        fut: impl Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    ) -> Result<T, ImageSignError> {
        let registry = reference.resolve_registry().to_string();
        let res = match limit {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| ImageSignError::Timeout {
                    registry: registry.clone(),
                    operation,
                    reference: reference.whole(),
                    timeout: limit,
                })?,
            None => fut.await,
        };
        res.map_err(|e| {
            let reason = error_chain(&e);
            if reason.contains("timed out") || reason.contains("operation timed out") {
                ImageSignError::Timeout {
                    registry,
                    operation,
                    reference: reference.whole(),
                    timeout: self.timeout,
                }
            } else {
                ImageSignError::Registry {
                    registry,
                    operation,
                    reference: reference.whole(),
                    reason,
                }
            }
        })
    }
}

/// Reads a file entry of a layer, refusing (from its header, before reading) one larger than a
/// module to sign can be.
fn read_limited<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str) -> Result<Vec<u8>, String> {
    if entry.size() > MAX_FILE {
        return Err(format!(
            "{path} is {} bytes; files to sign are limited to {MAX_FILE} bytes",
            entry.size()
        ));
    }
    let mut data = Vec::new();
    entry
        .take(MAX_FILE)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading {path}: {e}"))?;
    Ok(data)
}

/// `/opt/lib/modules/x/a.ko` → `opt/lib/modules/x/a.ko`; rejects relative paths and `..`.
fn normalize_wanted(p: &str) -> Result<String, ImageSignError> {
    let bad = || ImageSignError::BadPath { path: p.to_string() };
    let rest = p.strip_prefix('/').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// A tar entry path as a comparable string: no leading `./` or `/`, no trailing `/`.
fn normalize_entry(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    let parts: Vec<&str> = s.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    parts.join("/")
}

fn parent_dirs(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// What the top-most layer that mentions a wanted path says about it.
#[derive(Debug)]
enum Found {
    File { header: Box<tar::Header>, data: Vec<u8> },
    Other(String),
    Deleted(String),
}

/// Scans one layer (gzip or plain tar) for the still unresolved `wanted` paths.
fn scan_layer(blob: &std::path::Path, wanted: &BTreeSet<String>) -> Result<BTreeMap<String, Found>, String> {
    let open = || -> Result<Box<dyn Read>, String> {
        let mut f = std::fs::File::open(blob).map_err(|e| e.to_string())?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(|e| e.to_string())?;
        drop(f);
        let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(blob).map_err(|e| e.to_string())?);
        match &magic[..n] {
            [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(f))),
            [0x28, 0xb5, 0x2f, 0xfd] => {
                Err("zstd-compressed layers are not supported; push the image with gzip layers".into())
            }
            _ => Ok(Box::new(f)),
        }
    };
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut whiteouts: Vec<String> = Vec::new();
    let mut opaque: Vec<String> = Vec::new();
    let mut non_dirs: BTreeMap<String, String> = BTreeMap::new();
    let mut hardlinks: BTreeMap<String, (Box<tar::Header>, String)> = BTreeMap::new();
    {
        let mut ar = tar::Archive::new(open()?);
        for entry in ar.entries().map_err(|e| format!("not a tar archive: {e}"))? {
            let mut entry = entry.map_err(|e| format!("corrupt tar archive: {e}"))?;
            let path = normalize_entry(&entry.path_bytes());
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                opaque.push(dir);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                whiteouts.push(if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                });
                continue;
            }
            let kind = entry.header().entry_type();
            if !kind.is_dir() {
                non_dirs.insert(path.clone(), format!("{kind:?}"));
            }
            if !wanted.contains(&path) {
                continue;
            }
            let header = Box::new(entry.header().clone());
            if kind.is_file() {
                let data = read_limited(&mut entry, &path)?;
                found.insert(path, Found::File { header, data });
            } else if kind.is_hard_link() {
                let target = entry.link_name_bytes().map(|l| normalize_entry(&l)).unwrap_or_default();
                hardlinks.insert(path, (header, target));
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                found.insert(
                    path,
                    Found::Other(format!(
                        "a symbolic link to {target:?}; list the link's target in filesToSign"
                    )),
                );
            } else {
                found.insert(path, Found::Other(format!("{kind:?}")));
            }
        }
    }
    // Hard links point at an earlier entry of the same layer: fetch its content.
    if !hardlinks.is_empty() {
        let targets: BTreeSet<String> = hardlinks.values().map(|(_, t)| t.clone()).collect();
        let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut ar = tar::Archive::new(open()?);
        for entry in ar.entries().map_err(|e| format!("not a tar archive: {e}"))? {
            let mut entry = entry.map_err(|e| format!("corrupt tar archive: {e}"))?;
            let path = normalize_entry(&entry.path_bytes());
            if targets.contains(&path) && entry.header().entry_type().is_file() {
                let data = read_limited(&mut entry, &path)?;
                contents.insert(path, data);
            }
        }
        for (path, (mut header, target)) in hardlinks {
            match contents.remove(&target) {
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    found.insert(path, Found::File { header, data });
                }
                None => {
                    found.insert(
                        path,
                        Found::Other(format!(
                            "a hard link to {target:?}, which is not a regular file of the same layer"
                        )),
                    );
                }
            }
        }
    }
    // Unfound paths that this layer hides from the layers below.
    for w in wanted {
        if found.contains_key(w) {
            continue;
        }
        if whiteouts.iter().any(|d| d == w) {
            found.insert(
                w.clone(),
                Found::Deleted("deleted by a whiteout in a layer above".into()),
            );
        } else if let Some(p) = parent_dirs(w).find(|p| whiteouts.iter().any(|d| d == p)) {
            found.insert(
                w.clone(),
                Found::Deleted(format!("directory /{p} is deleted by a whiteout in a layer above")),
            );
        } else if let Some(p) = parent_dirs(w).find(|p| opaque.iter().any(|d| d == p)) {
            found.insert(
                w.clone(),
                Found::Deleted(format!("directory /{p} is replaced (opaque) in a layer above")),
            );
        } else if let Some(p) = parent_dirs(w).find(|p| non_dirs.contains_key(*p)) {
            found.insert(
                w.clone(),
                Found::Deleted(format!(
                    "/{p} is a {} in the image, not a directory (paths through links are not followed)",
                    non_dirs[p]
                )),
            );
        }
    }
    Ok(found)
}

/// Builds the new layer: the signed files with their original ownership, mode and mtime.
/// Returns `(gzip blob, diff_id)`.
fn build_layer(files: &[(String, tar::Header, Vec<u8>)]) -> Result<(Vec<u8>, String), String> {
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        b.mode(tar::HeaderMode::Complete);
        for (path, orig, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(orig.mode().unwrap_or(0o644));
            h.set_uid(orig.uid().unwrap_or(0));
            h.set_gid(orig.gid().unwrap_or(0));
            h.set_mtime(orig.mtime().unwrap_or(0));
            if let Ok(Some(u)) = orig.username() {
                let _ = h.set_username(u);
            }
            if let Ok(Some(g)) = orig.groupname() {
                let _ = h.set_groupname(g);
            }
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data.as_slice())
                .map_err(|e| format!("writing {path} into the layer: {e}"))?;
        }
        b.finish().map_err(|e| e.to_string())?;
    }
    let diff_id = sha256_digest(&tar_bytes);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).map_err(|e| e.to_string())?;
    let blob = gz.finish().map_err(|e| e.to_string())?;
    Ok((blob, diff_id))
}

fn sha256_digest(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for byte in sha2::Sha256::digest(b) {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Signs `files` of `from` and pushes the result to `to`. See the module documentation.
pub async fn sign_image(req: &SignImageRequest<'_>) -> Result<SignedImage, ImageSignError> {
    let from = parse_ref(req.from)?;
    let to = parse_ref(req.to)?;
    if req.files.is_empty() {
        return Err(ImageSignError::NoFiles {
            image: req.from.to_string(),
        });
    }
    let mut wanted_order = Vec::new();
    for f in req.files {
        let n = normalize_wanted(f)?;
        if !wanted_order.contains(&n) {
            wanted_order.push(n);
        }
    }
    let reg = Registry::connect(req.tls, req.timeout, &[from.resolve_registry(), to.resolve_registry()]).await;
    let from_auth = oci_auth(req.auth.for_registry(from.resolve_registry()));
    let to_auth = oci_auth(req.auth.for_registry(to.resolve_registry()));
    let image = from.whole();
    let limit = Some(req.timeout);

    // 1. The unsigned image's manifest (one platform) and config.
    let accepted = [MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST];
    let (raw, mut source_digest) = reg
        .call(
            "pull manifest",
            &from,
            limit,
            reg.client.pull_manifest_raw(&from, &from_auth, &accepted),
        )
        .await?;
    let mut manifest: Value = serde_json::from_slice(&raw).map_err(|e| ImageSignError::Manifest {
        image: image.clone(),
        reason: format!("manifest is not JSON: {e}"),
    })?;
    let mut media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(MT_OCI_MANIFEST)
        .to_string();
    if media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST || manifest.get("manifests").is_some() {
        let entries = manifest["manifests"].as_array().cloned().unwrap_or_default();
        let pick = entries
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64");
        let Some(digest) = pick.and_then(|m| m["digest"].as_str()) else {
            return Err(ImageSignError::Manifest {
                image,
                reason: "multi-platform image without a linux/amd64 entry".into(),
            });
        };
        let by_digest = from.clone_with_digest(digest.to_string());
        let (raw, d) = reg
            .call(
                "pull manifest",
                &by_digest,
                limit,
                reg.client
                    .pull_manifest_raw(&by_digest, &from_auth, &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST]),
            )
            .await?;
        source_digest = d;
        manifest = serde_json::from_slice(&raw).map_err(|e| ImageSignError::Manifest {
            image: image.clone(),
            reason: format!("manifest is not JSON: {e}"),
        })?;
        media_type = manifest
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(MT_OCI_MANIFEST)
            .to_string();
    }
    let bad_manifest = |reason: &str| ImageSignError::Manifest {
        image: image.clone(),
        reason: reason.to_string(),
    };
    let layers: Vec<Value> = manifest["layers"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad_manifest("manifest has no layers"))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| bad_manifest("manifest has no config digest"))?
        .to_string();
    let mut config_bytes = Vec::new();
    reg.call(
        "pull config",
        &from,
        limit,
        reg.client.pull_blob(&from, config_digest.as_str(), &mut config_bytes),
    )
    .await?;
    let mut config: Value =
        serde_json::from_slice(&config_bytes).map_err(|e| bad_manifest(&format!("image config is not JSON: {e}")))?;

    // 2. Find each file, top layer first.
    let tmp = tempfile::tempdir().map_err(|e| ImageSignError::Internal(e.to_string()))?;
    let mut unresolved: BTreeSet<String> = wanted_order.iter().cloned().collect();
    let mut resolved: BTreeMap<String, Found> = BTreeMap::new();
    let mut pulled: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate().rev() {
        if unresolved.is_empty() {
            break;
        }
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| bad_manifest("layer without a digest"))?
            .to_string();
        let path = tmp.path().join(format!("layer-{i}"));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ImageSignError::Internal(format!("{}: {e}", path.display())))?;
        reg.call(
            "pull layer",
            &from,
            None,
            reg.client.pull_blob(&from, digest.as_str(), &mut file),
        )
        .await?;
        drop(file);
        pulled.insert(digest.clone(), path.clone());
        let want = unresolved.clone();
        let found = tokio::task::spawn_blocking(move || scan_layer(&path, &want))
            .await
            .map_err(|e| ImageSignError::Internal(e.to_string()))?
            .map_err(|reason| ImageSignError::Layer {
                image: image.clone(),
                digest: digest.clone(),
                reason,
            })?;
        for (p, f) in found {
            unresolved.remove(&p);
            resolved.insert(p, f);
        }
    }

    // 3. Sign each file, in filesToSign order.
    let mut signed_files = Vec::new();
    let mut report = Vec::new();
    for w in &wanted_order {
        let shown = format!("/{w}");
        match resolved.remove(w) {
            None => {
                return Err(ImageSignError::MissingFile {
                    image,
                    path: shown,
                    reason: String::new(),
                });
            }
            Some(Found::Deleted(reason)) => {
                return Err(ImageSignError::MissingFile {
                    image,
                    path: shown,
                    reason,
                });
            }
            Some(Found::Other(kind)) => {
                return Err(ImageSignError::NotRegularFile {
                    image,
                    path: shown,
                    kind,
                });
            }
            Some(Found::File { header, data }) => {
                let signed =
                    sign_module(&data, req.signer, req.hash, &shown).map_err(|source| ImageSignError::Module {
                        image: image.clone(),
                        path: shown.clone(),
                        source,
                    })?;
                report.push(SignedFile {
                    path: shown.clone(),
                    replaced: signed.replaced,
                    size: signed.len() as u64,
                });
                signed_files.push((w.clone(), *header, signed.to_vec()));
            }
        }
    }
    let (layer_blob, diff_id) = tokio::task::spawn_blocking(move || build_layer(&signed_files))
        .await
        .map_err(|e| ImageSignError::Internal(e.to_string()))?
        .map_err(ImageSignError::Internal)?;
    let layer_digest = sha256_digest(&layer_blob);

    // 4. New config and manifest.
    let diff_ids = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad_manifest("image config has no rootfs.diff_ids"))?;
    if diff_ids.len() != layers.len() {
        return Err(bad_manifest(&format!(
            "image config lists {} layers but the manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    diff_ids.push(Value::String(diff_id));
    if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({
            "created_by": format!("kmm-hub sign: {} file(s) signed with {}", report.len(), req.hash),
            "comment": "kernel module signatures (Secure Boot)",
        }));
    }
    let new_config = serde_json::to_vec(&config).map_err(|e| ImageSignError::Internal(e.to_string()))?;
    let new_config_digest = sha256_digest(&new_config);
    let docker = media_type == MT_DOCKER_MANIFEST;
    manifest["config"]["digest"] = Value::String(new_config_digest.clone());
    manifest["config"]["size"] = json!(new_config.len());
    manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| bad_manifest("manifest has no layers"))?
        .push(json!({
            "mediaType": if docker { MT_DOCKER_LAYER_GZIP } else { MT_OCI_LAYER_GZIP },
            "digest": layer_digest,
            "size": layer_blob.len(),
        }));
    if manifest.get("mediaType").is_none() && !docker {
        manifest["mediaType"] = Value::String(MT_OCI_MANIFEST.into());
    }
    let new_manifest = serde_json::to_vec(&manifest).map_err(|e| ImageSignError::Internal(e.to_string()))?;
    let manifest_digest = sha256_digest(&new_manifest);

    // 5. Push: base layers the target lacks, the new layer, the config, then the manifest.
    reg.call(
        "authenticate",
        &to,
        limit,
        reg.client.auth(&to, &to_auth, RegistryOperation::Push),
    )
    .await?;
    let same_registry = from.resolve_registry() == to.resolve_registry();
    for layer in &layers {
        let digest = layer["digest"].as_str().unwrap_or_default().to_string();
        let exists = reg
            .call("check blob", &to, limit, reg.client.blob_exists(&to, &digest))
            .await?;
        if exists {
            continue;
        }
        if same_registry
            && reg
                .call("mount blob", &to, limit, reg.client.mount_blob(&to, &from, &digest))
                .await
                .is_ok()
            && reg
                .call("check blob", &to, limit, reg.client.blob_exists(&to, &digest))
                .await?
        {
            continue;
        }
        let data = match pulled.get(&digest) {
            Some(p) => tokio::fs::read(p)
                .await
                .map_err(|e| ImageSignError::Internal(e.to_string()))?,
            None => {
                let mut v = Vec::new();
                reg.call(
                    "pull layer",
                    &from,
                    None,
                    reg.client.pull_blob(&from, digest.as_str(), &mut v),
                )
                .await?;
                v
            }
        };
        reg.call("push layer", &to, None, reg.client.push_blob(&to, data, &digest))
            .await?;
    }
    reg.call(
        "push layer",
        &to,
        None,
        reg.client.push_blob(&to, layer_blob, &layer_digest),
    )
    .await?;
    reg.call(
        "push config",
        &to,
        limit,
        reg.client.push_blob(&to, new_config, &new_config_digest),
    )
    .await?;
    let content_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(MT_OCI_MANIFEST)
        .parse()
        .map_err(|_| bad_manifest("manifest media type is not a valid header value"))?;
    reg.call(
        "push manifest",
        &to,
        limit,
        reg.client.push_manifest_raw(&to, new_manifest, content_type),
    )
    .await?;

    let pinned = format!("{}/{}@{}", to.resolve_registry(), to.repository(), manifest_digest);
    Ok(SignedImage {
        digest: manifest_digest,
        pinned,
        layer_digest,
        source_digest,
        files: report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> tempfile::NamedTempFile {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&gz.finish().unwrap()).unwrap();
        f
    }

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_wanted("/opt/lib//a.ko").unwrap(), "opt/lib/a.ko");
        assert!(normalize_wanted("opt/a.ko").is_err());
        assert!(normalize_wanted("/opt/../etc/shadow").is_err());
        assert_eq!(normalize_entry(b"./opt/lib/"), "opt/lib");
    }

    #[test]
    fn scan_finds_files_links_and_whiteouts() {
        use tar::EntryType as E;
        let l = layer(&[
            ("./opt/a.ko", E::Regular, b"AAA", ""),
            ("opt/hl.ko", E::Link, b"", "opt/a.ko"),
            ("opt/sym.ko", E::Symlink, b"", "a.ko"),
            ("opt/.wh.gone.ko", E::Regular, b"", ""),
            ("lib", E::Symlink, b"", "usr/lib"),
            ("var/.wh..wh..opq", E::Regular, b"", ""),
        ]);
        let found = scan_layer(
            l.path(),
            &set(&[
                "opt/a.ko",
                "opt/hl.ko",
                "opt/sym.ko",
                "opt/gone.ko",
                "lib/modules/x.ko",
                "var/m/x.ko",
                "opt/lower.ko",
            ]),
        )
        .unwrap();
        assert!(matches!(&found["opt/a.ko"], Found::File { data, .. } if data == b"AAA"));
        assert!(matches!(&found["opt/hl.ko"], Found::File { data, .. } if data == b"AAA"));
        assert!(matches!(&found["opt/sym.ko"], Found::Other(k) if k.contains("symbolic link")));
        assert!(matches!(&found["opt/gone.ko"], Found::Deleted(_)));
        assert!(matches!(&found["lib/modules/x.ko"], Found::Deleted(r) if r.contains("/lib")));
        assert!(matches!(&found["var/m/x.ko"], Found::Deleted(r) if r.contains("opaque")));
        assert!(!found.contains_key("opt/lower.ko"));
    }

    #[test]
    fn layer_keeps_metadata() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_uid(7);
        h.set_mtime(1234);
        let (blob, diff_id) = build_layer(&[("opt/a.ko".into(), h, b"signed".to_vec())]).unwrap();
        assert!(diff_id.starts_with("sha256:"));
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("opt/a.ko"));
        assert_eq!(e.header().mode().unwrap(), 0o600);
        assert_eq!(e.header().uid().unwrap(), 7);
        assert_eq!(e.header().mtime().unwrap(), 1234);
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "signed");
    }
}
