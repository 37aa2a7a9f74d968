//! Shared helpers of the `worker_*` tests: the real fixture modules, the kmm-worker binary, and
//! a loopback OCI registry. Nothing here skips: a missing tool fails the test with what to
//! install or run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Fails unless `tool --version` runs.
pub fn require_tool(tool: &str, install: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => {}
        Err(e) => panic!("`{tool}` cannot be run ({e}); install it: {install}"),
    }
}

/// The fixture modules built once per test binary: `(tree, kernel)` where `tree` holds
/// `lib/modules/<kernel>/kmm_ci_{a,b,fw}.ko` (depmod'ed) and `lib/firmware/kmm_ci_fw.bin`.
pub fn fixtures() -> &'static (PathBuf, String) {
    static F: OnceLock<(PathBuf, String)> = OnceLock::new();
    F.get_or_init(|| {
        require_tool("modprobe", "apt-get install -y kmod");
        require_tool("depmod", "apt-get install -y kmod");
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kmm-worker-kmods")
            .join(name);
        let _ = std::fs::remove_dir_all(&out);
        let script = repo().join("ci/kmods/build.sh");
        let o = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            o.status.success(),
            "building the fixture modules failed: {}\n(needs `apt-get install -y linux-headers-amd64 kmod make`; \
             try `ci/kmods/build.sh /tmp/kmods` by hand)",
            String::from_utf8_lossy(&o.stderr)
        );
        let kver = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(!kver.is_empty(), "ci/kmods/build.sh printed no kernel version");
        (out, kver)
    })
}

/// Copies a directory tree (files, dirs; links as links).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// An image tree as a kmod image lays it out: `<root>/opt/lib/modules/<kernel>/...` and the
/// firmware under `<root>/firmware/`.
pub fn image_tree(root: &Path) -> String {
    let (fx, kver) = fixtures();
    copy_tree(&fx.join("lib/modules"), &root.join("opt/lib/modules"));
    std::fs::create_dir_all(root.join("firmware/kmm")).unwrap();
    std::fs::copy(
        fx.join("lib/firmware/kmm_ci_fw.bin"),
        root.join("firmware/kmm_ci_fw.bin"),
    )
    .unwrap();
    std::fs::write(root.join("firmware/kmm/extra.bin"), b"extra firmware\n").unwrap();
    kver.clone()
}

/// The kmm-worker binary under test.
pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmm-worker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KMM_WORKER_") {
            c.env_remove(k);
        }
    }
    c.env("KMM_WORKER_LOG", "info");
    c
}

/// Runs a command and returns its output, printing it for the test log.
pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("cannot run kmm-worker");
    eprintln!(
        "--- {:?}\nexit {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `insmod <path> [params]` lines of modprobe's dry-run output, as (module file stem, params).
pub fn insmods(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("insmod "))
        .map(|rest| {
            let (path, params) = rest.split_once(' ').unwrap_or((rest, ""));
            let stem = Path::new(path).file_stem().unwrap().to_string_lossy().into_owned();
            (stem, params.trim().to_string())
        })
        .collect()
}

/// Writes a file, creating its directory.
pub fn write(path: &Path, content: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    path.to_path_buf()
}

/// The registry binary (CNCF distribution) built by `ci/build-bins.sh`.
pub fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KMM_REGISTRY_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("KMM_FLEET_BIN_DIR").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(d).join("registry"));
    }
    if let Ok(o) = Command::new("bash")
        .arg(repo().join("ci/build-bins.sh"))
        .arg("--print")
        .output()
        && o.status.success()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        candidates.push(PathBuf::from(dir).join("registry"));
    }
    let root = match std::env::var_os("KMM_BIN_CACHE").filter(|p| !p.is_empty()) {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/kmm-rs/bins"),
    };
    candidates.push(root.join("current/registry"));
    // A partly built cache still has a usable registry binary.
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for d in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let p = d.path();
        let cands = if p.file_name().is_some_and(|n| n == "objs") {
            std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|e| {
                    e.file_name().is_some_and(|n| {
                        n.to_string_lossy().starts_with("registry-") && !n.to_string_lossy().ends_with(".tmp")
                    })
                })
                .collect()
        } else {
            vec![p.join("registry")]
        };
        for c in cands {
            if let Ok(m) = std::fs::metadata(&c)
                && m.is_file()
            {
                found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), c));
            }
        }
    }
    found.sort();
    candidates.extend(found.into_iter().rev().map(|(_, p)| p));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the registry binary (CNCF distribution) was not found; build it with `ci/build-bins.sh` \
             (it lands in $HOME/.cache/kmm-rs/bins/<key>/registry), or set KMM_REGISTRY_BIN"
        )
    })
}

/// A registry on 127.0.0.1 with htpasswd basic auth, stopped when dropped.
pub struct Registry {
    pub host: String,
    pub user: String,
    pub password: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts the registry and waits until it answers.
    pub fn start(user: &str, password: &str) -> Registry {
        let bin = registry_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let debug_port = free_port();
        let hash = bcrypt::hash(password, 5).unwrap();
        write(&dir.path().join("htpasswd"), &format!("{user}:{hash}\n"));
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kmm-worker-test\n  debug:\n    addr: 127.0.0.1:{debug_port}\n\
             auth:\n  htpasswd:\n    realm: kmm-worker-test\n    path: {htpasswd}\n",
            data = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let cfg = write(&dir.path().join("config.yml"), &config);
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&cfg)
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut reg = Registry {
            host: format!("127.0.0.1:{port}"),
            user: user.into(),
            password: password.into(),
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = std::fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default();
                panic!("the registry exited ({status}) before listening:\n{log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not listen within 30s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        reg
    }

    /// A `.dockerconfigjson` for this registry.
    pub fn docker_config(&self, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", self.user));
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host)
    }

    /// Pushes an image made of `layers` (already compressed or not, with their media types) to
    /// `<host>/<repo>:<tag>` and returns the reference.
    pub fn push(&self, repo: &str, tag: &str, layers: Vec<(Vec<u8>, &str)>) -> String {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        use oci_client::secrets::RegistryAuth;
        let reference = format!("{}/{repo}:{tag}", self.host);
        let r: oci_client::Reference = reference.parse().unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let auth = RegistryAuth::Basic(self.user.clone(), self.password.clone());
        let image_layers: Vec<ImageLayer> = layers
            .into_iter()
            .map(|(data, mt)| ImageLayer::new(data, mt.to_string(), None))
            .collect();
        let config = Config::oci_v1(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
            None,
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client.push(&r, &image_layers, config, &auth, None))
            .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
        reference
    }
}

/// One entry of a test layer.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A raw header with this type (device nodes, FIFOs...), no data.
    Special(&'a str, tar::EntryType),
    /// A file whose header declares `size` but carries only `data` (for lying headers).
    RawPath(&'a [u8], &'a [u8]),
}

/// Builds an uncompressed tar. Paths are written verbatim into the header (no checks), so
/// hostile names can be made.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, data, kind, link): (&[u8], &[u8], tar::EntryType, Option<&str>) = match e {
            Entry::Dir(p) => (p.as_bytes(), b"", tar::EntryType::Directory, None),
            Entry::File(p, d) => (p.as_bytes(), d, tar::EntryType::Regular, None),
            Entry::Symlink(p, t) => (p.as_bytes(), b"", tar::EntryType::Symlink, Some(t)),
            Entry::HardLink(p, t) => (p.as_bytes(), b"", tar::EntryType::Link, Some(t)),
            Entry::Special(p, k) => (p.as_bytes(), b"", *k, None),
            Entry::RawPath(p, d) => (p, d, tar::EntryType::Regular, None),
        };
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        {
            let name = &mut h.as_old_mut().name;
            assert!(path.len() < name.len(), "test path too long");
            name[..path.len()].copy_from_slice(path);
        }
        if let Some(l) = link {
            let ln = &mut h.as_old_mut().linkname;
            ln[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// gzip-compresses bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A tar layer holding every file of `dir` under `prefix` (regular files and dirs).
pub fn tar_of_dir(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(prefix, dir).unwrap();
    b.into_inner().unwrap()
}
