//! Helpers shared by the signing tests: the real fixture modules (ci/kmods), the real tools
//! (sign-file, openssl, modinfo) and key generation. Anything missing makes the test FAIL with
//! how to install it; nothing is skipped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const SIGN_FILE: &str = "/usr/lib/linux-kbuild-6.1/scripts/sign-file";
pub const MAGIC: &[u8] = b"~Module signature appended~\n";

/// The fixture modules built by ci/kmods/build.sh (cached outside the repository).
pub struct Fixtures {
    pub root: PathBuf,
    pub kver: String,
    pub modules: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/kmods/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "building the fixture kernel modules failed ({}); they need \
             `apt-get install -y linux-headers-amd64 kmod make`:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let kver = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        let mdir = dir.path().join("lib/modules").join(&kver);
        let mut modules: Vec<PathBuf> = ["kmm_ci_a", "kmm_ci_b", "kmm_ci_fw"]
            .iter()
            .map(|m| mdir.join(format!("{m}.ko")))
            .collect();
        modules.sort();
        for m in &modules {
            assert!(m.is_file(), "fixture module {} missing", m.display());
        }
        Fixtures {
            root: dir.path().to_path_buf(),
            kver,
            modules,
            _dir: dir,
        }
    })
}

/// Fails (never skips) when a tool is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let p = Path::new(tool);
    if p.is_absolute() {
        assert!(p.is_file(), "{tool} is missing: apt-get install -y {package}");
        return p.to_path_buf();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let c = Path::new(dir).join(tool);
        if c.is_file() {
            return c;
        }
    }
    panic!("{tool} is not installed: apt-get install -y {package}");
}

pub fn sign_file() -> PathBuf {
    require(SIGN_FILE, "linux-kbuild-6.1 (pulled in by linux-headers-amd64)")
}

pub fn openssl_bin() -> PathBuf {
    require("openssl", "openssl")
}

pub fn modinfo_bin() -> PathBuf {
    require("modinfo", "kmod")
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new(openssl_bin()).current_dir(dir).args(args))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa(u32),
    P256,
    P384,
}

impl KeyType {
    pub fn name(self) -> String {
        match self {
            KeyType::Rsa(b) => format!("rsa{b}"),
            KeyType::P256 => "p256".into(),
            KeyType::P384 => "p384".into(),
        }
    }
}

/// A key pair made by openssl: `<name>.key.pem` (PKCS#8, the `openssl req` default) and
/// `<name>.crt.pem`, with subject CN = `cn`.
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub cn: String,
    /// Serial as `modinfo` prints it (AA:BB:...).
    pub serial: String,
}

pub fn keypair(dir: &Path, kind: KeyType, cn: &str) -> KeyPair {
    let name = format!("{}-{}", kind.name(), cn.replace(' ', "_"));
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.crt.pem"));
    let newkey: Vec<String> = match kind {
        KeyType::Rsa(bits) => vec!["-newkey".into(), format!("rsa:{bits}")],
        KeyType::P256 => vec![
            "-newkey".into(),
            "ec".into(),
            "-pkeyopt".into(),
            "ec_paramgen_curve:P-256".into(),
        ],
        KeyType::P384 => vec![
            "-newkey".into(),
            "ec".into(),
            "-pkeyopt".into(),
            "ec_paramgen_curve:P-384".into(),
        ],
    };
    let mut args: Vec<String> = ["req", "-new", "-x509", "-nodes", "-days", "30", "-subj"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("/CN={cn}/O=kmm-rs tests"));
    args.extend(newkey);
    args.extend([
        "-keyout".into(),
        key.display().to_string(),
        "-out".into(),
        cert.display().to_string(),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &a);
    let serial = String::from_utf8(openssl(
        dir,
        &["x509", "-noout", "-serial", "-in", &cert.display().to_string()],
    ))
    .unwrap();
    let hex = serial.trim().trim_start_matches("serial=").to_string();
    let hex = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex };
    let serial = hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    KeyPair {
        key,
        cert,
        cn: cn.to_string(),
        serial,
    }
}

/// Splits a signed module into (content, CMS signature DER); panics if it is not signed once.
pub fn split_signed(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(data.ends_with(MAGIC), "module does not end with the signature magic");
    let before = &data[..data.len() - MAGIC.len()];
    let trailer = &before[before.len() - 12..];
    assert_eq!(
        trailer[..8],
        [0, 0, 2, 0, 0, 0, 0, 0],
        "trailer: PKCS#7 id type, no signer/key id"
    );
    let n = u32::from_be_bytes(trailer[8..12].try_into().unwrap()) as usize;
    let rest = &before[..before.len() - 12];
    let (content, sig) = rest.split_at(rest.len() - n);
    assert!(
        !content.ends_with(MAGIC),
        "module carries two signatures (the old one was not replaced)"
    );
    (content.to_vec(), sig.to_vec())
}

/// `openssl cms -verify` of a signed module against the certificate; panics if it fails.
pub fn cms_verify(dir: &Path, signed: &[u8], cert: &Path) {
    let (content, sig) = split_signed(signed);
    let c = dir.join("verify.content");
    let s = dir.join("verify.sig.der");
    std::fs::write(&c, content).unwrap();
    std::fs::write(&s, sig).unwrap();
    openssl(
        dir,
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &s.display().to_string(),
            "-content",
            &c.display().to_string(),
            "-certfile",
            &cert.display().to_string(),
            "-nointern",
            "-noverify",
            "-out",
            "/dev/null",
        ],
    );
}

/// `modinfo` fields of a module file (first value of each).
pub fn modinfo(path: &Path) -> BTreeMap<String, String> {
    let out = run(Command::new(modinfo_bin()).arg(path));
    let mut m = BTreeMap::new();
    let mut last = String::new();
    for line in String::from_utf8_lossy(&out).lines() {
        if let Some((k, v)) = line.split_once(':')
            && !k.starts_with(char::is_whitespace)
        {
            last = k.trim().to_string();
            m.entry(last.clone()).or_insert_with(|| v.trim().to_string());
        } else if !last.is_empty() {
            // continuation lines of a long value (signature bytes)
        }
    }
    m
}

/// Checks modinfo's signature fields for a module signed with `kp` and `hash`.
pub fn assert_modinfo_signed(path: &Path, kp: &KeyPair, hash: &str) {
    let m = modinfo(path);
    assert_eq!(m.get("sig_id").map(String::as_str), Some("PKCS#7"), "{m:?}");
    assert_eq!(m.get("signer"), Some(&kp.cn), "signer of {}: {m:?}", path.display());
    assert_eq!(
        m.get("sig_key").map(|s| s.trim_start_matches("00:")),
        Some(kp.serial.as_str()),
        "sig_key of {}: {m:?}",
        path.display()
    );
    assert_eq!(m.get("sig_hashalgo").map(String::as_str), Some(hash), "{m:?}");
}

/// The kmm-hub binary.
pub fn kmm_hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
}
