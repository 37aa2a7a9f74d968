//! Image signing end to end against a real OCI registry (CNCF distribution) on loopback: the
//! pushed layer's modules are checked with sign-file, modinfo and openssl.
//!
//! The registry binary comes from `ci/build-bins.sh` (`$HOME/.cache/kmm-rs/bins/current/registry`),
//! or `KMM_REGISTRY_BIN`, or `KMM_FLEET_BIN_DIR/registry`. Missing: the tests fail.

mod sign_common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmm_hub::sign::auth::DockerConfigAuth;
use kmm_hub::sign::image::{ImageSignError, RegistryTls, SignImageRequest, SignedImage};
use kmm_hub::sign::{HashAlgo, Signer, sign_image};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sign_common::*;

fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KMM_REGISTRY_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KMM_REGISTRY_BIN={} does not exist", p.display());
        return p;
    }
    let dir = match std::env::var_os("KMM_FLEET_BIN_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let root = std::env::var_os("KMM_BIN_CACHE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/kmm-rs/bins")
                });
            root.join("current")
        }
    };
    let p = dir.join("registry");
    assert!(
        p.is_file(),
        "the OCI registry binary is missing at {} — build it with ci/build-bins.sh, or set \
         KMM_REGISTRY_BIN",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A registry process on loopback, killed on drop.
struct Registry {
    host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(auth: Option<(&str, &str)>) -> Registry {
        Self::start_with(auth, false)
    }

    /// `tls`: serve HTTPS with a self-signed certificate for 127.0.0.1.
    fn start_with(auth: Option<(&str, &str)>, tls: bool) -> Registry {
        let bin = registry_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let debug_port = free_port();
        let mut auth_block = String::new();
        if let Some((user, pass)) = auth {
            let hash = bcrypt::hash(pass, 5).unwrap();
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
            auth_block = format!(
                "auth:\n  htpasswd:\n    realm: kmm-test\n    path: {}\n",
                file.display()
            );
        }
        let mut tls_block = String::new();
        if tls {
            let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            openssl(
                dir.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    &key.display().to_string(),
                    "-out",
                    &crt.display().to_string(),
                ],
            );
            tls_block = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                crt.display(),
                key.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: not-secret\n  debug:\n    addr: 127.0.0.1:{debug_port}\n{tls_block}{auth_block}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&cfg)
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        if !tls {
            PLAIN_HOSTS.lock().unwrap().push(format!("127.0.0.1:{port}"));
        }
        let reg = Registry {
            host: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(&reg.host).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "registry did not listen on {} within 30s",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }
}

/// Registries of this test process that serve plain HTTP (the others serve HTTPS).
static PLAIN_HOSTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The test's own client: plain HTTP or HTTPS (any certificate) as each registry serves.
fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(PLAIN_HOSTS.lock().unwrap().clone()),
        accept_invalid_certificates: true,
        ..Default::default()
    })
}

fn targz(entries: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b)
        .iter()
        .fold("sha256:".to_string(), |s, x| s + &format!("{x:02x}"))
}

/// Pushes an unsigned kmod image: a base layer, then the fixture modules under
/// /opt/lib/modules/<kver>/ (plus a non-ELF file), like a KMM build would.
async fn push_unsigned(reg: &Registry, repo_tag: &str, auth: &RegistryAuth) -> Reference {
    push_unsigned_as(reg, repo_tag, auth, false).await
}

/// As [`push_unsigned`]; `docker`: with Docker schema 2 media types, as kaniko pushes.
async fn push_unsigned_as(reg: &Registry, repo_tag: &str, auth: &RegistryAuth, docker: bool) -> Reference {
    let fx = fixtures();
    let base = targz(&[
        ("etc/os-release".into(), b"ID=kmm-test\n".to_vec(), 0o644),
        ("bin/placeholder".into(), b"#!/bin/sh\n".to_vec(), 0o755),
    ]);
    let mut files = Vec::new();
    let mdir = format!("opt/lib/modules/{}", fx.kver);
    for m in &fx.modules {
        files.push((
            format!("{mdir}/{}", m.file_name().unwrap().to_string_lossy()),
            std::fs::read(m).unwrap(),
            0o644,
        ));
    }
    let dep = fx.root.join("lib/modules").join(&fx.kver).join("modules.dep");
    files.push((format!("{mdir}/modules.dep"), std::fs::read(dep).unwrap(), 0o644));
    files.push((
        "opt/lib/firmware/kmm_ci_fw.bin".into(),
        std::fs::read(fx.root.join("lib/firmware/kmm_ci_fw.bin")).unwrap(),
        0o644,
    ));
    let mods = targz(&files);
    let diff_ids = vec![sha256(&gunzip(&base)), sha256(&gunzip(&mods))];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "base"}, {"created_by": "modules"}],
    });
    let r: Reference = format!("{}/{repo_tag}", reg.host).parse().unwrap();
    if docker {
        let c = client();
        c.store_auth_if_needed(r.resolve_registry(), auth).await;
        let config = serde_json::to_vec(&config).unwrap();
        let mut descs = Vec::new();
        for blob in [&base, &mods] {
            c.push_blob(&r, blob.clone(), &sha256(blob)).await.unwrap();
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": blob.len(),
                "digest": sha256(blob),
            }));
        }
        c.push_blob(&r, config.clone(), &sha256(&config)).await.unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": sha256(&config),
            },
            "layers": descs,
        });
        c.push_manifest_raw(
            &r,
            serde_json::to_vec(&manifest).unwrap(),
            "application/vnd.docker.distribution.manifest.v2+json".parse().unwrap(),
        )
        .await
        .expect("pushing the unsigned docker-typed test image");
        return r;
    }
    let layers = vec![ImageLayer::oci_v1_gzip(base, None), ImageLayer::oci_v1_gzip(mods, None)];
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    client()
        .push(&r, &layers, config, auth, None)
        .await
        .expect("pushing the unsigned test image");
    r
}

fn files_to_sign(kver: &str) -> Vec<String> {
    let vars = shared_api::vars::Variables::new(kver, "kmm-ci", "default").unwrap();
    ["kmm_ci_a", "kmm_ci_b", "kmm_ci_fw"]
        .iter()
        .map(|m| {
            vars.substitute(
                shared_api::vars::Template::Sign,
                &format!("/opt/lib/modules/${{KERNEL_FULL_VERSION}}/{m}.ko"),
            )
            .unwrap()
        })
        .collect()
}

struct Pulled {
    manifest: serde_json::Value,
    digest: String,
    config: serde_json::Value,
    /// compressed blobs, in order
    layers: Vec<Vec<u8>>,
}

async fn pull(r: &Reference, auth: &RegistryAuth) -> Pulled {
    let c = client();
    let (raw, digest) = c
        .pull_manifest_raw(
            r,
            auth,
            &[
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ],
        )
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let mut config = Vec::new();
    c.pull_blob(r, manifest["config"]["digest"].as_str().unwrap(), &mut config)
        .await
        .unwrap();
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().unwrap() {
        let mut b = Vec::new();
        c.pull_blob(r, l["digest"].as_str().unwrap(), &mut b).await.unwrap();
        layers.push(b);
    }
    Pulled {
        manifest,
        digest,
        config: serde_json::from_slice(&config).unwrap(),
        layers,
    }
}

fn layer_files(blob: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, data, mode));
    }
    out
}

fn request<'a>(
    from: &'a str,
    to: &'a str,
    files: &'a [String],
    signer: &'a Signer,
    auth: &'a DockerConfigAuth,
) -> SignImageRequest<'a> {
    SignImageRequest {
        from,
        to,
        files,
        signer,
        hash: HashAlgo::Sha256,
        auth,
        tls: RegistryTls {
            insecure: true,
            insecure_skip_tls_verify: false,
        },
        timeout: Duration::from_secs(20),
    }
}

/// Checks the signed image: same base layers, one new layer holding exactly the signed
/// modules, each verified with modinfo and openssl (and, for RSA, equal to sign-file's).
async fn check_signed(
    unsigned: &Reference,
    signed: &Reference,
    out: &SignedImage,
    auth: &RegistryAuth,
    kp: &KeyPair,
    rsa: bool,
) {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let before = pull(unsigned, auth).await;
    let after = pull(signed, auth).await;
    assert_eq!(after.digest, out.digest, "returned digest = the tag's manifest digest");
    let bl = before.manifest["layers"].as_array().unwrap();
    let al = after.manifest["layers"].as_array().unwrap();
    assert_eq!(al.len(), bl.len() + 1, "exactly one layer added");
    assert_eq!(&al[..bl.len()], &bl[..], "base layers unchanged");
    assert_eq!(al[bl.len()]["digest"], out.layer_digest);
    // kept; an OCI manifest without the (optional) field gets it
    let oci = serde_json::json!("application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        &after.manifest["mediaType"],
        if before.manifest["mediaType"].is_null() {
            &oci
        } else {
            &before.manifest["mediaType"]
        },
        "manifest media type kept"
    );
    let docker = before.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json";
    assert_eq!(
        al[bl.len()]["mediaType"],
        if docker {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
    );
    let diff_ids = after.config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), al.len());
    assert_eq!(
        diff_ids.last().unwrap().as_str().unwrap(),
        sha256(&gunzip(after.layers.last().unwrap()))
    );
    assert_eq!(after.config["architecture"], "amd64");

    let files = layer_files(after.layers.last().unwrap());
    assert_eq!(files.len(), fx.modules.len(), "only the signed files in the new layer");
    for (m, (path, data, mode)) in fx.modules.iter().zip(&files) {
        let name = m.file_name().unwrap().to_string_lossy();
        assert_eq!(*path, format!("opt/lib/modules/{}/{name}", fx.kver));
        assert_eq!(*mode, 0o644);
        let f = dir.path().join(&*name);
        std::fs::write(&f, data).unwrap();
        assert_modinfo_signed(&f, kp, "sha256");
        cms_verify(dir.path(), data, &kp.cert);
        let (content, _) = split_signed(data);
        assert!(content == std::fs::read(m).unwrap(), "{name}: module content changed");
        if rsa {
            let sf = dir.path().join(format!("{name}.sf"));
            run(Command::new(sign_file())
                .arg("sha256")
                .arg(&kp.key)
                .arg(&kp.cert)
                .arg(m)
                .arg(&sf));
            assert!(
                *data == std::fs::read(&sf).unwrap(),
                "{name}: signed module in the image differs from sign-file's"
            );
        }
    }
    // modprobe resolves the dependency in the signed tree (modules.dep from the base layer)
    let root = dir.path().join("root");
    let mdir = root.join("lib/modules").join(&fx.kver);
    std::fs::create_dir_all(&mdir).unwrap();
    for (path, data, _) in &files {
        std::fs::write(mdir.join(Path::new(path).file_name().unwrap()), data).unwrap();
    }
    run(Command::new(require("depmod", "kmod"))
        .arg("-b")
        .arg(&root)
        .arg(&fx.kver));
    let dry = run(Command::new(require("modprobe", "kmod"))
        .args(["--dry-run", "-v", "-d"])
        .arg(&root)
        .args(["-S", &fx.kver, "kmm_ci_a"]));
    let dry = String::from_utf8_lossy(&dry);
    assert!(dry.contains("kmm_ci_b.ko") && dry.contains("kmm_ci_a.ko"), "{dry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_an_image_end_to_end_rsa_same_repo_then_resign_in_place() {
    let fx = fixtures();
    let reg = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::Rsa(2048), "image signer");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let anon = RegistryAuth::Anonymous;
    let unsigned = push_unsigned(&reg, "kmm/kmod:unsigned", &anon).await;
    let files = files_to_sign(&fx.kver);
    let from = unsigned.whole();
    let to = format!("{}/kmm/kmod:{}", reg.host, fx.kver);
    let auth = DockerConfigAuth::default();
    let out = sign_image(&request(&from, &to, &files, &signer, &auth))
        .await
        .expect("signing the image");
    assert_eq!(out.files.len(), 3);
    assert!(out.files.iter().all(|f| !f.replaced));
    assert!(out.pinned.ends_with(&out.digest));
    let signed: Reference = to.parse().unwrap();
    check_signed(&unsigned, &signed, &out, &anon, &kp, true).await;

    // Signing the signed image in place (containerImage itself) replaces the signatures.
    let kp2 = keypair(dir.path(), KeyType::P256, "second signer");
    let signer2 = Signer::from_files(&kp2.key, &kp2.cert).unwrap();
    let again = sign_image(&request(&to, &to, &files, &signer2, &auth))
        .await
        .expect("re-signing in place");
    assert!(again.files.iter().all(|f| f.replaced));
    let after = pull(&signed, &anon).await;
    assert_eq!(after.digest, again.digest);
    let top = layer_files(after.layers.last().unwrap());
    for (path, data, _) in &top {
        let f = dir.path().join(Path::new(path).file_name().unwrap());
        std::fs::write(&f, data).unwrap();
        assert_modinfo_signed(&f, &kp2, "sha256");
        cms_verify(dir.path(), data, &kp2.cert);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_into_another_repository_with_credentials_p384() {
    let fx = fixtures();
    let reg = Registry::start(Some(("kmm", "s3cret-pass")));
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::P384, "p384 image signer");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let basic = RegistryAuth::Basic("kmm".into(), "s3cret-pass".into());
    let unsigned = push_unsigned(&reg, "build/kmod:unsigned", &basic).await;
    let files = files_to_sign(&fx.kver);
    let from = unsigned.whole();
    let to = format!("{}/signed/kmod:v1", reg.host);

    // without credentials: a clear registry error, nothing pushed
    let none = DockerConfigAuth::default();
    let err = sign_image(&request(&from, &to, &files, &signer, &none))
        .await
        .expect_err("anonymous access must fail");
    assert!(matches!(err, ImageSignError::Registry { .. }), "{err}");

    let json = serde_json::json!({"auths": {reg.host.clone(): {"username": "kmm", "password": "s3cret-pass"}}});
    let auth = DockerConfigAuth::parse(json.to_string().as_bytes(), "test secret").unwrap();
    let out = sign_image(&request(&from, &to, &files, &signer, &auth))
        .await
        .expect("signing with credentials");
    check_signed(&unsigned, &to.parse().unwrap(), &out, &basic, &kp, false).await;
}

/// Bad input: each a clear error, and the target tag is never created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_pushes_nothing() {
    let fx = fixtures();
    let reg = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::Rsa(2048), "bad input signer");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let anon = RegistryAuth::Anonymous;
    let unsigned = push_unsigned(&reg, "kmm/kmod:unsigned", &anon).await;
    let from = unsigned.whole();
    let to = format!("{}/kmm/kmod:signed", reg.host);
    let auth = DockerConfigAuth::default();
    let mut files = files_to_sign(&fx.kver);

    let target_absent = || async {
        let r: Reference = to.parse().unwrap();
        let res = client().fetch_manifest_digest(&r, &anon).await;
        assert!(res.is_err(), "the target tag was pushed: {res:?}");
    };

    // a filesToSign path that is not in the image
    files.push("/opt/lib/modules/0.0.0-missing/nothere.ko".into());
    let err = sign_image(&request(&from, &to, &files, &signer, &auth))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageSignError::MissingFile { .. }), "{err}");
    assert!(
        err.to_string().contains("/opt/lib/modules/0.0.0-missing/nothere.ko"),
        "{err}"
    );
    target_absent().await;

    // a file that is not ELF
    files.pop();
    files.push(format!("/opt/lib/modules/{}/modules.dep", fx.kver));
    let err = sign_image(&request(&from, &to, &files, &signer, &auth))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageSignError::Module { .. }), "{err}");
    assert!(
        err.to_string().contains("modules.dep") && err.to_string().contains("not a kernel module"),
        "{err}"
    );
    target_absent().await;

    // key and certificate that do not match never get as far as the registry
    let other = keypair(dir.path(), KeyType::Rsa(2048), "other");
    let mismatch = Signer::from_bytes(
        &std::fs::read(&kp.key).unwrap(),
        "Secret default/signing-key, key \"key\"",
        &std::fs::read(&other.cert).unwrap(),
        "Secret default/signing-cert, key \"cert\"",
    )
    .unwrap_err()
    .to_string();
    assert!(
        mismatch.contains("do not match") && mismatch.contains("default/signing-key"),
        "{mismatch}"
    );

    // an unsigned image that does not exist
    let files = files_to_sign(&fx.kver);
    let missing_from = format!("{}/kmm/nothing:here", reg.host);
    let err = sign_image(&request(&missing_from, &to, &files, &signer, &auth))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageSignError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("kmm/nothing"), "{err}");
    target_absent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_a_timely_error() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::P256, "unreachable");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let files = files_to_sign(&fx.kver);
    let auth = DockerConfigAuth::default();

    // nothing listens
    let port = free_port();
    let from = format!("127.0.0.1:{port}/kmm/kmod:unsigned");
    let mut req = request(&from, &from, &files, &signer, &auth);
    req.timeout = Duration::from_secs(3);
    let t = Instant::now();
    let err = sign_image(&req).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(
        matches!(err, ImageSignError::Registry { .. } | ImageSignError::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");

    // something listens but never answers
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let from = format!("{addr}/kmm/kmod:unsigned");
    let mut req = request(&from, &from, &files, &signer, &auth);
    req.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let err = sign_image(&req).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(matches!(err, ImageSignError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    drop(silent);
}

/// The command line: `kmm-hub sign image` with a docker config file, prints the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_signs_an_image() {
    let fx = fixtures();
    let reg = Registry::start(Some(("robot", "pw")));
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::Rsa(4096), "cli image signer");
    let basic = RegistryAuth::Basic("robot".into(), "pw".into());
    let unsigned = push_unsigned(&reg, "kmm/kmod:unsigned", &basic).await;
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"auths": {reg.host.clone(): {"auth": "cm9ib3Q6cHc="}}}).to_string(),
    )
    .unwrap();
    let to = format!("{}/kmm/kmod:cli", reg.host);
    let mut cmd = kmm_hub();
    cmd.args(["sign", "image", "--insecure", "--key"])
        .arg(&kp.key)
        .arg("--cert")
        .arg(&kp.cert)
        .args(["--from", &unsigned.whole(), "--to", &to, "--auth"])
        .arg(&cfg);
    // variables are substituted by the CLI, as the controller does for filesToSign
    cmd.args(["--kernel", &fx.kver]);
    for m in ["kmm_ci_a", "kmm_ci_b", "kmm_ci_fw"] {
        cmd.args(["--file", &format!("/opt/lib/modules/${{KERNEL_FULL_VERSION}}/{m}.ko")]);
    }
    let stdout = tokio::task::spawn_blocking(move || run(&mut cmd)).await.unwrap();
    let digest = String::from_utf8(stdout).unwrap().trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest:?}");
    let after = pull(&to.parse().unwrap(), &basic).await;
    assert_eq!(after.digest, digest);
    let top = layer_files(after.layers.last().unwrap());
    assert_eq!(top.len(), 3);
    for (path, data, _) in &top {
        let f = dir.path().join(Path::new(path).file_name().unwrap());
        std::fs::write(&f, data).unwrap();
        assert_modinfo_signed(&f, &kp, "sha256");
    }
}

/// Images pushed with Docker schema 2 media types (kaniko's default) stay Docker-typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_a_docker_schema2_image() {
    let fx = fixtures();
    let reg = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::Rsa(2048), "docker image signer");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let anon = RegistryAuth::Anonymous;
    let unsigned = push_unsigned_as(&reg, "kmm/docker:unsigned", &anon, true).await;
    let files = files_to_sign(&fx.kver);
    let from = unsigned.whole();
    let to = format!("{}/kmm/docker:signed", reg.host);
    let auth = DockerConfigAuth::default();
    let out = sign_image(&request(&from, &to, &files, &signer, &auth))
        .await
        .expect("signing the docker-typed image");
    check_signed(&unsigned, &to.parse().unwrap(), &out, &anon, &kp, true).await;
}

/// registryTLS against an HTTPS registry with a self-signed certificate: verification fails
/// (nothing pushed) unless `insecureSkipTLSVerify` or `insecure` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_tls_options() {
    let fx = fixtures();
    let reg = Registry::start_with(None, true);
    let dir = tempfile::tempdir().unwrap();
    let kp = keypair(dir.path(), KeyType::P256, "tls signer");
    let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
    let anon = RegistryAuth::Anonymous;
    let unsigned = push_unsigned(&reg, "kmm/kmod:unsigned", &anon).await;
    let files = files_to_sign(&fx.kver);
    let from = unsigned.whole();
    let auth = DockerConfigAuth::default();

    let to = format!("{}/kmm/kmod:verified", reg.host);
    let mut req = request(&from, &to, &files, &signer, &auth);
    req.tls = RegistryTls::default();
    let err = sign_image(&req).await.unwrap_err().to_string();
    assert!(
        err.contains(&reg.host) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    let res = client().fetch_manifest_digest(&to.parse().unwrap(), &anon).await;
    assert!(res.is_err(), "pushed despite the error: {res:?}");

    for (name, tls) in [
        (
            "skip-verify",
            RegistryTls {
                insecure: false,
                insecure_skip_tls_verify: true,
            },
        ),
        (
            "insecure",
            RegistryTls {
                insecure: true,
                insecure_skip_tls_verify: false,
            },
        ),
    ] {
        let to = format!("{}/kmm/kmod:{name}", reg.host);
        let mut req = request(&from, &to, &files, &signer, &auth);
        req.tls = tls;
        let out = sign_image(&req).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_signed(&unsigned, &to.parse().unwrap(), &out, &anon, &kp, false).await;
    }
}
