//! Firmware on the node: listing the image's firmware, copying it into the host firmware
//! directory, removing what was placed, and the kernel's `firmware_class.path` parameter.
//!
//! Nothing here follows a symbolic link: every directory on the way (in the image and on the
//! host) must be a real directory, files are replaced by rename (which replaces a link rather
//! than writing through it), and links copied from the image must stay inside the firmware
//! directory.

use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use super::extract::check_link_target;

/// Kernel limit of `firmware_class.path` (a 256-byte string parameter with its NUL).
const FIRMWARE_CLASS_PATH_MAX: usize = 255;

/// A firmware problem, naming the path and the reason.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The image's firmware directory is missing or unusable (an image problem).
    #[error("image: firmwarePath {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("firmware: {path}: {reason}")]
    Host { path: PathBuf, reason: String },
    #[error("firmware_class.path: {path}: {reason}")]
    ClassPath { path: PathBuf, reason: String },
}

impl FirmwareError {
    /// The image is at fault (exit code 3), not the node.
    pub fn is_image(&self) -> bool {
        matches!(self, FirmwareError::Image { .. })
    }
}

fn host_err(path: &Path, reason: impl ToString) -> FirmwareError {
    FirmwareError::Host {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device node"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Walks `rel` below `root` component by component. Every existing component must be a real
/// directory (never a link); missing ones are created (mode 0755) when `create`, else
/// `Ok(false)` is returned.
pub(crate) fn real_dirs(root: &Path, rel: &Path, create: bool) -> Result<bool, (PathBuf, String)> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(n) = c else {
            return Err((cur, format!("unexpected path component {c:?}")));
        };
        cur.push(n);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) => {
                return Err((cur, format!("is {}, not a directory", kind_of(m.file_type()))));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(false);
                }
                std::fs::create_dir(&cur).map_err(|e| (cur.clone(), format!("cannot create directory: {e}")))?;
                let _ = std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755));
            }
            Err(e) => return Err((cur, e.to_string())),
        }
    }
    Ok(true)
}

/// Lists the firmware under `image_root/rel` (files and links, relative to it, sorted).
/// Refuses links that leave that directory, device nodes and other special files.
pub fn inventory(image_root: &Path, rel: &Path) -> Result<Vec<PathBuf>, FirmwareError> {
    let src = image_root.join(rel);
    let img_err = |path: &Path, reason: String| FirmwareError::Image {
        path: path.to_path_buf(),
        reason,
    };
    match real_dirs(image_root, rel, false) {
        Ok(true) => {}
        Ok(false) => return Err(img_err(&src, "does not exist in the image".into())),
        Err((p, reason)) => return Err(img_err(&p, reason)),
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir_rel) = stack.pop() {
        let dir = src.join(&dir_rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| img_err(&dir, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| img_err(&dir, e.to_string()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = dir_rel.join(e.file_name());
            let ft = e.file_type().map_err(|err| img_err(&e.path(), err.to_string()))?;
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(e.path()).map_err(|err| img_err(&e.path(), err.to_string()))?;
                check_link_target(&r, &target).map_err(|reason| {
                    img_err(
                        &e.path(),
                        format!(
                            "symbolic link to {}: {reason}; firmware links must stay inside firmwarePath",
                            target.display()
                        ),
                    )
                })?;
                out.push(r);
            } else {
                return Err(img_err(
                    &e.path(),
                    format!("is {}; firmware must be files", kind_of(ft)),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies `files` from `from` into `to`, creating directories as needed. Existing files are
/// replaced atomically. Returns the number of bytes copied.
pub fn copy(from: &Path, to: &Path, files: &[PathBuf]) -> Result<u64, FirmwareError> {
    match std::fs::symlink_metadata(to) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => return Err(host_err(to, format!("is {}, not a directory", kind_of(m.file_type())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to).map_err(|e| host_err(to, format!("cannot create: {e}")))?;
        }
        Err(e) => return Err(host_err(to, e)),
    }
    let mut bytes = 0;
    for rel in files {
        let parent = rel.parent().unwrap_or(Path::new(""));
        real_dirs(to, parent, true).map_err(|(p, r)| host_err(&p, r))?;
        let src = from.join(rel);
        let dst = to.join(rel);
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dst.with_file_name(format!(".{name}.kmm-tmp"));
        let _ = std::fs::remove_file(&tmp);
        let meta = std::fs::symlink_metadata(&src).map_err(|e| host_err(&src, e))?;
        if let Ok(m) = std::fs::symlink_metadata(&dst)
            && m.is_dir()
        {
            return Err(host_err(
                &dst,
                "is a directory on the host; not replacing it with a file",
            ));
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| host_err(&src, e))?;
            check_link_target(rel, &target).map_err(|r| host_err(&src, r))?;
            std::os::unix::fs::symlink(&target, &tmp).map_err(|e| host_err(&tmp, e))?;
        } else {
            let mut input = std::fs::File::open(&src).map_err(|e| host_err(&src, e))?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(|e| host_err(&tmp, e))?;
            bytes += std::io::copy(&mut input, &mut out).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                host_err(&dst, format!("copy failed: {e}"))
            })?;
            out.sync_all().map_err(|e| host_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            host_err(&dst, e)
        })?;
    }
    Ok(bytes)
}

/// What [`remove`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Files (and links) removed.
    pub files: Vec<PathBuf>,
    /// Directories removed because they were left empty.
    pub dirs: Vec<PathBuf>,
    /// Files left in place, with the reason (not ours any more).
    pub kept: Vec<(PathBuf, String)>,
}

fn same_file_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let mut fa = std::io::BufReader::new(std::fs::File::open(a)?);
    let mut fb = std::io::BufReader::new(std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Removes `files` from `dir` where they are what the image in `from` holds (a file somebody
/// changed since is left in place), then the directories below `dir` that became empty.
pub fn remove(from: &Path, dir: &Path, files: &[PathBuf]) -> Result<Removed, FirmwareError> {
    let mut done = Removed::default();
    let mut parents: Vec<PathBuf> = Vec::new();
    for rel in files {
        let parent = rel.parent().unwrap_or(Path::new(""));
        match real_dirs(dir, parent, false) {
            Ok(true) => {}
            Ok(false) => continue,
            Err((p, r)) => {
                done.kept.push((rel.clone(), format!("{}: {r}", p.display())));
                continue;
            }
        }
        let mut a = parent.to_path_buf();
        while !a.as_os_str().is_empty() {
            if !parents.contains(&a) {
                parents.push(a.clone());
            }
            a = a.parent().unwrap_or(Path::new("")).to_path_buf();
        }
        let dst = dir.join(rel);
        let src = from.join(rel);
        let Ok(dm) = std::fs::symlink_metadata(&dst) else {
            continue;
        };
        let sm = std::fs::symlink_metadata(&src).map_err(|e| FirmwareError::Image {
            path: src.clone(),
            reason: e.to_string(),
        })?;
        let ours = if dm.file_type().is_symlink() && sm.file_type().is_symlink() {
            std::fs::read_link(&dst).ok() == std::fs::read_link(&src).ok()
        } else if dm.file_type().is_file() && sm.file_type().is_file() {
            same_file_content(&src, &dst).map_err(|e| host_err(&dst, e))?
        } else {
            false
        };
        if !ours {
            done.kept
                .push((rel.clone(), "differs from the image's copy; left in place".into()));
            continue;
        }
        std::fs::remove_file(&dst).map_err(|e| host_err(&dst, e))?;
        done.files.push(rel.clone());
    }
    // Deepest first.
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in parents {
        let d = dir.join(&p);
        let empty = std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(&d).is_ok_and(|mut it| it.next().is_none());
        if empty && std::fs::remove_dir(&d).is_ok() {
            done.dirs.push(p);
        }
    }
    Ok(done)
}

/// Sets the kernel's firmware search path through `param` (normally
/// `/sys/module/firmware_class/parameters/path`) unless it already holds `value`.
/// Returns whether it was written.
pub fn set_class_path(param: &Path, value: &str) -> Result<bool, FirmwareError> {
    let err = |reason: String| FirmwareError::ClassPath {
        path: param.to_path_buf(),
        reason,
    };
    if value.len() > FIRMWARE_CLASS_PATH_MAX || value.contains('\n') {
        return Err(err(format!(
            "{value:?} is not usable: at most {FIRMWARE_CLASS_PATH_MAX} characters on one line"
        )));
    }
    let current = match std::fs::read_to_string(param) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(
                "does not exist (is the host's /sys mounted into the worker pod, and is firmware_class \
                 part of the kernel?)"
                    .into(),
            ));
        }
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    if current.trim_end_matches('\n') == value {
        return Ok(false);
    }
    std::fs::write(param, value).map_err(|e| err(format!("cannot write {value:?}: {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_path_written_only_when_different() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("path");
        std::fs::write(&p, "\n").unwrap();
        assert!(set_class_path(&p, "/var/lib/firmware").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "/var/lib/firmware");
        std::fs::write(&p, "/var/lib/firmware\n").unwrap();
        assert!(!set_class_path(&p, "/var/lib/firmware").unwrap());
        let e = set_class_path(&d.path().join("missing"), "/x").unwrap_err().to_string();
        assert!(e.contains("/sys mounted"), "{e}");
        assert!(set_class_path(&p, &"x".repeat(300)).is_err());
    }

    #[test]
    fn real_dirs_refuses_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("a/l")).unwrap();
        assert!(real_dirs(d.path(), Path::new("a"), false).unwrap());
        assert!(!real_dirs(d.path(), Path::new("a/x"), false).unwrap());
        let (p, r) = real_dirs(d.path(), Path::new("a/l/x"), true).unwrap_err();
        assert!(p.ends_with("a/l") && r.contains("symbolic link"), "{r}");
        assert!(real_dirs(d.path(), Path::new("b/c"), true).unwrap());
        assert!(d.path().join("b/c").is_dir());
    }
}
