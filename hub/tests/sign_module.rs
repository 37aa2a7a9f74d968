//! Module signing against the real tools: Debian's `sign-file` (byte-identical output for RSA),
//! `modinfo` and `openssl cms -verify`, on the real fixture modules from ci/kmods.

mod sign_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kmm_hub::sign::{HashAlgo, Signer, sign_module, sign_module_file};
use sign_common::*;

fn sign_file_output(dir: &Path, hash: &str, kp: &KeyPair, module: &Path, tag: &str) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.{tag}.sign-file.ko",
        module.file_stem().unwrap().to_string_lossy()
    ));
    run(Command::new(sign_file())
        .arg(hash)
        .arg(&kp.key)
        .arg(&kp.cert)
        .arg(module)
        .arg(&out));
    std::fs::read(out).unwrap()
}

#[test]
fn rsa_is_byte_identical_to_sign_file() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for bits in [2048, 4096] {
        let kp = keypair(dir.path(), KeyType::Rsa(bits), &format!("RSA {bits} signer"));
        let signer = Signer::from_files(&kp.key, &kp.cert).unwrap();
        for hash in HashAlgo::ALL {
            for m in &fx.modules {
                let data = std::fs::read(m).unwrap();
                let ours = sign_module(&data, &signer, hash, &m.display().to_string())
                    .unwrap()
                    .to_vec();
                let theirs = sign_file_output(dir.path(), hash.name(), &kp, m, &bits.to_string());
                assert!(
                    ours == theirs,
                    "RSA {bits} {hash} {}: our signed module differs from sign-file's \
                     ({} vs {} bytes)",
                    m.display(),
                    ours.len(),
                    theirs.len()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 3 * fx.modules.len());
}

/// The CLI writes the same bytes as sign-file too, for a DER certificate and the PKCS#1 form
/// of the key.
#[test]
fn cli_rsa_pkcs1_key_der_cert_matches_sign_file() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let kp = keypair(dir.path(), KeyType::Rsa(2048), "RSA cli");
    let key_pkcs1 = format!("{d}/pkcs1.der");
    let cert_der = format!("{d}/cert.der");
    openssl(
        dir.path(),
        &[
            "rsa",
            "-traditional",
            "-in",
            &kp.key.display().to_string(),
            "-outform",
            "DER",
            "-out",
            &key_pkcs1,
        ],
    );
    openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            &kp.cert.display().to_string(),
            "-outform",
            "DER",
            "-out",
            &cert_der,
        ],
    );
    let m = &fx.modules[0];
    let out = dir.path().join("cli.ko");
    run(kmm_hub()
        .args([
            "sign", "module", "--key", &key_pkcs1, "--cert", &cert_der, "--hash", "sha384",
        ])
        .arg(m)
        .arg(&out));
    // sign-file reads the DER certificate as well.
    let kp_der = KeyPair {
        key: kp.key.clone(),
        cert: PathBuf::from(&cert_der),
        cn: kp.cn.clone(),
        serial: kp.serial.clone(),
    };
    let theirs = sign_file_output(dir.path(), "sha384", &kp_der, m, "der");
    assert!(
        std::fs::read(&out).unwrap() == theirs,
        "CLI output differs from sign-file's"
    );
    assert_modinfo_signed(&out, &kp, "sha384");
}

/// Every key type and key encoding: modinfo shows signer, key id and hash; openssl verifies.
#[test]
fn every_key_type_and_format_verifies() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    for kind in [KeyType::Rsa(2048), KeyType::Rsa(4096), KeyType::P256, KeyType::P384] {
        let kp = keypair(dir.path(), kind, &format!("{} signer", kind.name()));
        let key = kp.key.display().to_string();
        let name = kind.name();
        // (label, key file, cert file)
        let mut variants: Vec<(String, String, String)> =
            vec![("pkcs8-pem".into(), key.clone(), kp.cert.display().to_string())];
        let p8der = format!("{d}/{name}.p8.der");
        openssl(dir.path(), &["pkey", "-in", &key, "-outform", "DER", "-out", &p8der]);
        let cert_der = format!("{d}/{name}.crt.der");
        openssl(
            dir.path(),
            &[
                "x509",
                "-in",
                &kp.cert.display().to_string(),
                "-outform",
                "DER",
                "-out",
                &cert_der,
            ],
        );
        variants.push(("pkcs8-der+cert-der".into(), p8der, cert_der.clone()));
        match kind {
            KeyType::Rsa(_) => {
                for (form, ext) in [("PEM", "pem"), ("DER", "der")] {
                    let f = format!("{d}/{name}.pkcs1.{ext}");
                    openssl(
                        dir.path(),
                        &["rsa", "-traditional", "-in", &key, "-outform", form, "-out", &f],
                    );
                    variants.push((format!("pkcs1-{ext}"), f, cert_der.clone()));
                }
            }
            _ => {
                for (form, ext) in [("PEM", "pem"), ("DER", "der")] {
                    let f = format!("{d}/{name}.sec1.{ext}");
                    openssl(dir.path(), &["ec", "-in", &key, "-outform", form, "-out", &f]);
                    variants.push((format!("sec1-{ext}"), f, kp.cert.display().to_string()));
                }
            }
        }
        // key and certificate in one PEM file, like the kernel's signing_key.pem
        let both = format!("{d}/{name}.both.pem");
        std::fs::write(
            &both,
            [std::fs::read(&kp.key).unwrap(), std::fs::read(&kp.cert).unwrap()].concat(),
        )
        .unwrap();
        variants.push(("combined-pem".into(), both.clone(), both));

        for (i, (label, k, c)) in variants.iter().enumerate() {
            let hash = HashAlgo::ALL[i % 3];
            for m in &fx.modules {
                let out = dir
                    .path()
                    .join(format!("{name}-{label}-{}", m.file_name().unwrap().to_string_lossy()));
                run(kmm_hub()
                    .args(["sign", "module", "--key", k, "--cert", c, "--hash", hash.name()])
                    .arg(m)
                    .arg(&out));
                assert_modinfo_signed(&out, &kp, hash.name());
                let signed = std::fs::read(&out).unwrap();
                cms_verify(dir.path(), &signed, &kp.cert);
                let (content, _) = split_signed(&signed);
                assert!(content == std::fs::read(m).unwrap(), "{name} {label}: content changed");
            }
        }
    }
}

/// Signing a signed module replaces its signature: the result equals signing the unsigned
/// module with the new key (for RSA: equals sign-file on the unsigned module).
#[test]
fn resigning_replaces_the_signature() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let first = keypair(dir.path(), KeyType::P256, "first signer");
    let second = keypair(dir.path(), KeyType::Rsa(2048), "second signer");
    let m = &fx.modules[1];
    let work = dir.path().join("m.ko");
    std::fs::copy(m, &work).unwrap();
    // in place, twice with the first key, then with the second
    for kp in [&first, &first, &second] {
        let s = Signer::from_files(&kp.key, &kp.cert).unwrap();
        let r = sign_module_file(&work, None, &s, HashAlgo::Sha256).unwrap();
        assert_eq!(r.output, work);
    }
    let signed = std::fs::read(&work).unwrap();
    assert_eq!(
        signed.windows(MAGIC.len()).filter(|w| *w == MAGIC).count(),
        1,
        "exactly one signature"
    );
    assert_modinfo_signed(&work, &second, "sha256");
    cms_verify(dir.path(), &signed, &second.cert);
    let theirs = sign_file_output(dir.path(), "sha256", &second, m, "resign");
    assert!(
        signed == theirs,
        "re-signed module differs from sign-file on the unsigned module"
    );

    // sign-file appends a second signature to a signed module; we strip both
    let double = dir.path().join("double.ko");
    run(Command::new(sign_file())
        .args(["sha256"])
        .arg(&second.key)
        .arg(&second.cert)
        .arg(&work)
        .arg(&double));
    let s = Signer::from_files(&first.key, &first.cert).unwrap();
    let out = dir.path().join("fixed.ko");
    let r = sign_module_file(&double, Some(&out), &s, HashAlgo::Sha512).unwrap();
    assert!(r.replaced);
    let fixed = std::fs::read(&out).unwrap();
    // both signatures are gone; only ours remains
    let (content, _) = split_signed(&fixed);
    assert!(
        content == std::fs::read(m).unwrap(),
        "content is not the unsigned module"
    );
    assert_modinfo_signed(&out, &first, "sha512");
}

fn error_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let a = keypair(dir.path(), KeyType::Rsa(2048), "A");
    let b = keypair(dir.path(), KeyType::Rsa(2048), "B");
    let e = keypair(dir.path(), KeyType::P256, "E");
    let m = fx.modules[0].display().to_string();
    let out = dir.path().join("out.ko");
    let outs = out.display().to_string();
    let key_text = std::fs::read_to_string(&a.key).unwrap();
    let key_body: String = key_text.lines().nth(1).unwrap().to_string();

    let check = |args: &[&str], want: &[&str]| {
        let err = error_of(kmm_hub().args(["sign", "module"]).args(args));
        for w in want {
            assert!(err.contains(w), "error {err:?} should mention {w:?}");
        }
        assert!(!err.contains(&key_body), "error leaks key material: {err}");
        assert!(!out.exists(), "output written despite the error: {err}");
    };

    // key and certificate that do not match: same type, and different types
    check(
        &[
            "--key",
            &a.key.display().to_string(),
            "--cert",
            &b.cert.display().to_string(),
            &m,
            &outs,
        ],
        &[
            "do not match",
            &a.key.display().to_string(),
            &b.cert.display().to_string(),
        ],
    );
    check(
        &[
            "--key",
            &e.key.display().to_string(),
            "--cert",
            &a.cert.display().to_string(),
            &m,
            &outs,
        ],
        &["do not match", "ECDSA P-256", "RSA 2048"],
    );
    // encrypted keys: PKCS#8 PEM, PKCS#8 DER, legacy PEM
    let enc = format!("{d}/enc.p8.pem");
    openssl(
        dir.path(),
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
            "-in",
            &a.key.display().to_string(),
            "-out",
            &enc,
        ],
    );
    let enc_der = format!("{d}/enc.p8.der");
    openssl(
        dir.path(),
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
            "-in",
            &a.key.display().to_string(),
            "-outform",
            "DER",
            "-out",
            &enc_der,
        ],
    );
    let enc_legacy = format!("{d}/enc.legacy.pem");
    openssl(
        dir.path(),
        &[
            "rsa",
            "-traditional",
            "-aes256",
            "-passout",
            "pass:secret",
            "-in",
            &a.key.display().to_string(),
            "-out",
            &enc_legacy,
        ],
    );
    for k in [&enc, &enc_der, &enc_legacy] {
        check(
            &["--key", k, "--cert", &a.cert.display().to_string(), &m, &outs],
            &["encrypted", k],
        );
    }
    // not ELF
    let txt = format!("{d}/not-a-module.ko");
    std::fs::write(&txt, "#!/bin/sh\necho hello\n").unwrap();
    check(
        &[
            "--key",
            &a.key.display().to_string(),
            "--cert",
            &a.cert.display().to_string(),
            &txt,
            &outs,
        ],
        &["not-a-module.ko", "not a kernel module", "ELF"],
    );
    // certificate file that holds no certificate; key file that holds no key
    check(
        &[
            "--key",
            &a.key.display().to_string(),
            "--cert",
            &a.key.display().to_string(),
            &m,
            &outs,
        ],
        &["certificate", "no CERTIFICATE"],
    );
    check(
        &[
            "--key",
            &a.cert.display().to_string(),
            "--cert",
            &a.cert.display().to_string(),
            &m,
            &outs,
        ],
        &["private key", "no private key"],
    );
    // unsupported hash
    check(
        &[
            "--key",
            &a.key.display().to_string(),
            "--cert",
            &a.cert.display().to_string(),
            "--hash",
            "sha1",
            &m,
            &outs,
        ],
        &["sha1", "sha256"],
    );
    // missing input
    check(
        &[
            "--key",
            &a.key.display().to_string(),
            "--cert",
            &a.cert.display().to_string(),
            &format!("{d}/nope.ko"),
            &outs,
        ],
        &["nope.ko"],
    );
    // Debug output of a signer carries no key material
    let s = Signer::from_files(&a.key, &a.cert).unwrap();
    let dbg = format!("{s:?}");
    assert!(dbg.contains("redacted") && !dbg.contains(&key_body), "{dbg}");
}

/// The benchmark command runs against the real sign-file and prints the ratio (a smoke test
/// with a small generated module; the real figure comes from `kmm-hub sign bench` in release).
#[test]
fn bench_command_prints_the_ratio() {
    let fx = fixtures();
    sign_file();
    openssl_bin();
    let out = run(kmm_hub()
        .args([
            "sign",
            "bench",
            "--large-mib",
            "2",
            "--rounds",
            "1",
            "--rsa-bits",
            "2048",
        ])
        .arg(fx.modules[0].parent().unwrap()));
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("ratio ours/sign-file = "), "{out}");
    assert!(out.contains("large-2MiB.ko"), "{out}");
    for line in out.lines().filter(|l| l.contains(".ko")) {
        assert!(line.trim_end().ends_with("yes"), "not byte-identical: {line}");
    }
    assert_eq!(out.lines().filter(|l| l.contains(".ko")).count(), 4, "{out}");
}
