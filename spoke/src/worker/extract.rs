//! Safe extraction of image layers (tar, optionally gzip-compressed) into a fresh directory.
//!
//! Refused, each with an error naming the layer, the entry and the reason: absolute paths and
//! paths with `..`; entries written through a symbolic link; symbolic links that are absolute or
//! could leave the tree (a target may only start with `..` components, no deeper than the link's
//! own directory); hard links to anything but a regular file already in the tree; device nodes,
//! FIFOs and sparse files; more content than [`Limits::max_bytes`] or more entries than
//! [`Limits::max_entries`]. Whiteouts (`.wh.<name>`, `.wh..wh..opq`) of the OCI layer format
//! are applied. Set-user/group-ID bits are dropped; ownership is not restored.
//!
//! The [`Extractor`] removes its whole directory when dropped before [`Extractor::finish`], so a
//! refused or failed extraction leaves nothing behind.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use super::firmware::real_dirs;

/// Largest GNU long name / PAX header accepted.
const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// Caps on what an image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total size of all regular files, over all layers (later layers that replace a file still
    /// count).
    pub max_bytes: u64,
    /// Number of tar entries, over all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    Refused {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error(
        "layer {layer}: entry {entry:?}: the image's content exceeds the limit of {limit} bytes \
         (raise --max-image-bytes if the image is legitimately this big)"
    )]
    TooBig { layer: String, entry: String, limit: u64 },
    #[error("layer {layer}: the image has more than {limit} entries (the limit)")]
    TooManyEntries { layer: String, limit: u64 },
    #[error("extracting into {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub layers: u32,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub whiteouts: u64,
    pub bytes: u64,
}

/// Checks a symbolic link target for a link at `link_rel` (relative to the tree root):
/// relative, and only leading `..` components, no more of them than the link's depth.
pub fn check_link_target(link_rel: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err("empty link target".into());
    }
    if target.is_absolute() {
        return Err("absolute link target (it would point into the node's or the worker's filesystem)".into());
    }
    let depth = link_rel.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut seen_name = false;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if seen_name => {
                return Err(
                    "'..' after a name in the link target (it could leave the tree through another link)".into(),
                );
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => seen_name = true,
            Component::RootDir | Component::Prefix(_) => return Err("not a relative link target".into()),
        }
    }
    if ups > depth {
        return Err("link target points outside the image".into());
    }
    Ok(())
}

/// A tar path as a relative path: no leading `./`, no empty components; `..` and absolute
/// paths refused.
fn entry_path(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path contains '..'".into()),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Unpacks layers, in order, into one directory. See the module documentation.
#[derive(Debug)]
pub struct Extractor {
    root: PathBuf,
    limits: Limits,
    stats: Stats,
    keep: bool,
}

impl Drop for Extractor {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Extractor {
    /// Creates `root` (which must not exist yet; its parent must).
    pub fn new(root: &Path, limits: Limits) -> Result<Self, ExtractError> {
        std::fs::create_dir(root).map_err(|e| ExtractError::Io {
            path: root.to_path_buf(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
        Ok(Extractor {
            root: root.to_path_buf(),
            limits,
            stats: Stats::default(),
            keep: false,
        })
    }

    /// The directory being filled.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps the tree and returns what was unpacked.
    pub fn finish(mut self) -> Stats {
        self.keep = true;
        self.stats
    }

    /// Unpacks one layer (plain tar or gzip; zstd is refused). `label` names it in errors.
    pub fn add_layer<R: Read>(&mut self, label: &str, reader: R) -> Result<(), ExtractError> {
        let layer_err = |reason: String| ExtractError::Layer {
            layer: label.to_string(),
            reason,
        };
        let mut br = BufReader::with_capacity(1 << 16, reader);
        let magic = br.fill_buf().map_err(|e| layer_err(format!("cannot read: {e}")))?;
        let input: Box<dyn Read + '_> = match magic {
            [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(br)),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => {
                return Err(layer_err(
                    "zstd-compressed layers are not supported; push the image with gzip layers".into(),
                ));
            }
            _ => Box::new(br),
        };
        self.stats.layers += 1;
        let mut archive = tar::Archive::new(input);
        let entries = archive
            .entries()
            .map_err(|e| layer_err(format!("not a tar archive: {e}")))?
            .raw(true);
        let mut layer_paths: BTreeSet<PathBuf> = BTreeSet::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("corrupt tar archive: {e}")))?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries {
                    layer: label.to_string(),
                    limit: self.limits.max_entries,
                });
            }
            let header = entry.header().clone();
            let kind = header.entry_type();
            let size = entry.size();
            // Extension headers describe the next entry.
            if kind.is_gnu_longname()
                || kind.is_gnu_longlink()
                || kind.is_pax_local_extensions()
                || kind.is_pax_global_extensions()
            {
                if size > MAX_EXTENSION_HEADER {
                    return Err(ExtractError::Refused {
                        layer: label.to_string(),
                        entry: shown(&header.path_bytes()),
                        reason: format!("extension header of {size} bytes (the limit is {MAX_EXTENSION_HEADER})"),
                    });
                }
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| layer_err(format!("corrupt tar archive: {e}")))?;
                if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                }
                if kind.is_gnu_longname() {
                    long_name = Some(data);
                } else if kind.is_gnu_longlink() {
                    long_link = Some(data);
                } else if kind.is_pax_local_extensions() {
                    pax = Some(data);
                }
                continue;
            }
            let mut path_raw: Vec<u8> = long_name.take().unwrap_or_else(|| header.path_bytes().into_owned());
            let mut link_raw: Option<Vec<u8>> = long_link
                .take()
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
            if let Some(p) = pax.take() {
                for ext in tar::PaxExtensions::new(&p) {
                    let ext = ext.map_err(|e| layer_err(format!("corrupt PAX header: {e}")))?;
                    match ext.key_bytes() {
                        b"path" => path_raw = ext.value_bytes().to_vec(),
                        b"linkpath" => link_raw = Some(ext.value_bytes().to_vec()),
                        b"size" if ext.value().ok().and_then(|v| v.parse::<u64>().ok()) != Some(size) => {
                            return Err(ExtractError::Refused {
                                layer: label.to_string(),
                                entry: shown(&path_raw),
                                reason: "PAX size record differs from the header's size (files over 8 GiB are not supported)".into(),
                            });
                        }
                        _ => {}
                    }
                }
            }
            self.entry(
                label,
                &mut layer_paths,
                &mut entry,
                &path_raw,
                link_raw.as_deref(),
                kind,
                size,
                &header,
            )?;
        }
        if long_name.is_some() || long_link.is_some() || pax.is_some() {
            return Err(layer_err(
                "an extension header at the end of the archive describes no entry".into(),
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        label: &str,
        layer_paths: &mut BTreeSet<PathBuf>,
        data: &mut dyn Read,
        path_raw: &[u8],
        link_raw: Option<&[u8]>,
        kind: tar::EntryType,
        size: u64,
        header: &tar::Header,
    ) -> Result<(), ExtractError> {
        use tar::EntryType as E;
        let refuse = |reason: String| ExtractError::Refused {
            layer: label.to_string(),
            entry: shown(path_raw),
            reason,
        };
        let io_err = |path: &Path, e: std::io::Error| ExtractError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let rel = entry_path(path_raw).map_err(&refuse)?;
        match kind {
            E::Char | E::Block => return Err(refuse("device node".into())),
            E::Fifo => return Err(refuse("FIFO (named pipe)".into())),
            E::GNUSparse => return Err(refuse("sparse file (not supported)".into())),
            E::Regular | E::Continuous | E::Directory | E::Symlink | E::Link => {}
            other => return Err(refuse(format!("unsupported tar entry type {other:?}"))),
        }
        let is_file = matches!(kind, E::Regular | E::Continuous);
        if !is_file && size > 0 {
            return Err(refuse(format!("a {kind:?} entry carrying {size} bytes of data")));
        }
        if rel.as_os_str().is_empty() {
            return if kind == E::Directory {
                Ok(())
            } else {
                Err(refuse("replaces the image root".into()))
            };
        }
        let name = rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        // The directories on the way must be real directories inside the tree.
        let root = self.root.clone();
        let parents_ok = |create: bool| {
            real_dirs(&root, &parent, create).map_err(|(p, r)| {
                let inner = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
                refuse(format!("parent {inner} {r} (entries are never written through links)"))
            })
        };

        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            self.count_bytes(label, path_raw, size)?;
            std::io::copy(data, &mut std::io::sink()).map_err(|e| io_err(&self.root, e))?;
            if hidden == b".wh..opq" {
                if !parents_ok(false)? {
                    return Ok(());
                }
                let dir = self.root.join(&parent);
                if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    return Ok(());
                }
                let children = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
                for c in children {
                    let c = c.map_err(|e| io_err(&dir, e))?;
                    let crel = parent.join(c.file_name());
                    if layer_paths.iter().any(|p| p.starts_with(&crel)) {
                        continue;
                    }
                    remove_any(&c.path()).map_err(|e| io_err(&c.path(), e))?;
                }
                return Ok(());
            }
            if hidden.starts_with(b".wh.") {
                return Ok(()); // aufs metadata (.wh..wh.plnk and the like)
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse("malformed whiteout".into()));
            }
            if parents_ok(false)? {
                let victim = self.root.join(&parent).join(OsStr::from_bytes(hidden));
                if std::fs::symlink_metadata(&victim).is_ok() {
                    remove_any(&victim).map_err(|e| io_err(&victim, e))?;
                }
            }
            return Ok(());
        }

        parents_ok(true)?;
        let dest = self.root.join(&rel);
        let existing = std::fs::symlink_metadata(&dest).ok();
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        if kind == E::Directory {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    remove_any(&dest).map_err(|e| io_err(&dest, e))?;
                    std::fs::create_dir(&dest).map_err(|e| io_err(&dest, e))?;
                }
                None => std::fs::create_dir(&dest).map_err(|e| io_err(&dest, e))?,
            }
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o700))
                .map_err(|e| io_err(&dest, e))?;
            self.stats.dirs += 1;
            layer_paths.insert(rel);
            return Ok(());
        }
        // Validate before replacing anything.
        let link_target = match kind {
            E::Symlink | E::Link => {
                let raw = link_raw.ok_or_else(|| refuse("link without a target".into()))?;
                Some(raw.to_vec())
            }
            _ => None,
        };
        let mut hard_target = None;
        if kind == E::Symlink {
            let t = Path::new(OsStr::from_bytes(link_target.as_deref().unwrap_or_default()));
            check_link_target(&rel, t)
                .map_err(|r| refuse(format!("symbolic link to {:?}: {r}", t.display().to_string())))?;
        } else if kind == E::Link {
            let raw = link_target.as_deref().unwrap_or_default();
            let t = entry_path(raw).map_err(|r| refuse(format!("hard link to {:?}: {r}", shown(raw))))?;
            let tparent = t.parent().unwrap_or(Path::new(""));
            let target_ok = !t.as_os_str().is_empty()
                && matches!(real_dirs(&self.root, tparent, false), Ok(true))
                && std::fs::symlink_metadata(self.root.join(&t)).is_ok_and(|m| m.file_type().is_file());
            if !target_ok {
                return Err(refuse(format!(
                    "hard link to {:?}, which is not a regular file already in the image",
                    shown(raw)
                )));
            }
            hard_target = Some(self.root.join(t));
        } else {
            self.count_bytes(label, path_raw, size)?;
        }
        if let Some(m) = existing {
            if m.is_dir() {
                std::fs::remove_dir_all(&dest).map_err(|e| io_err(&dest, e))?;
            } else if hard_target.as_deref() != Some(dest.as_path()) {
                std::fs::remove_file(&dest).map_err(|e| io_err(&dest, e))?;
            } else {
                return Ok(()); // a hard link to itself
            }
        }
        match kind {
            E::Symlink => {
                let t = OsStr::from_bytes(link_target.as_deref().unwrap_or_default());
                std::os::unix::fs::symlink(t, &dest).map_err(|e| io_err(&dest, e))?;
                self.stats.links += 1;
            }
            E::Link => {
                let t = hard_target.unwrap_or_default();
                std::fs::hard_link(&t, &dest).map_err(|e| io_err(&dest, e))?;
                self.stats.links += 1;
            }
            _ => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o400)
                    .open(&dest)
                    .map_err(|e| io_err(&dest, e))?;
                let n = std::io::copy(&mut data.take(size), &mut out).map_err(|e| ExtractError::Layer {
                    layer: label.to_string(),
                    reason: format!("reading {:?}: {e}", shown(path_raw)),
                })?;
                if n != size {
                    return Err(ExtractError::Layer {
                        layer: label.to_string(),
                        reason: format!("entry {:?} is truncated ({n} of {size} bytes)", shown(path_raw)),
                    });
                }
                self.stats.files += 1;
            }
        }
        layer_paths.insert(rel);
        Ok(())
    }

    fn count_bytes(&mut self, label: &str, path_raw: &[u8], size: u64) -> Result<(), ExtractError> {
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        if self.stats.bytes > self.limits.max_bytes {
            return Err(ExtractError::TooBig {
                layer: label.to_string(),
                entry: shown(path_raw),
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }
}

/// Removes a file, a link (not its target) or a whole directory.
fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        let ok = |l: &str, t: &str| check_link_target(Path::new(l), Path::new(t));
        assert!(ok("a/b/l", "../../x").is_ok());
        assert!(ok("a/b/l", "./c/d").is_ok());
        assert!(ok("a/b/l", "../../../x").unwrap_err().contains("outside"));
        assert!(ok("l", "/etc/passwd").unwrap_err().contains("absolute"));
        assert!(ok("a/l", "m/../..").unwrap_err().contains("after a name"));
        assert!(ok("l", "").is_err());
    }

    #[test]
    fn entry_paths() {
        assert_eq!(entry_path(b"./opt//lib/").unwrap(), PathBuf::from("opt/lib"));
        assert!(entry_path(b"opt/../../etc").unwrap_err().contains(".."));
        assert!(entry_path(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert_eq!(entry_path(b"./").unwrap(), PathBuf::new());
    }
}
