//! Signing keys and certificates: PKCS#8, PKCS#1 or SEC1 private keys and X.509 certificates,
//! each in PEM or DER. Nothing here prints or returns key material: errors name the source
//! (a file path, or a Secret and its key) and the reason only.

use std::fmt;

use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::DecodePrivateKey as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::SignError;
use super::der::{self, Reader};

// OID contents (without tag and length).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];

/// A private key the kernel can verify module signatures of.
pub enum PrivateKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

impl PrivateKey {
    /// A short description without secrets, e.g. `RSA 4096` or `ECDSA P-256`.
    pub fn describe(&self) -> String {
        match self {
            PrivateKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts as _;
                format!("RSA {}", k.size() * 8)
            }
            PrivateKey::P256(_) => "ECDSA P-256".into(),
            PrivateKey::P384(_) => "ECDSA P-384".into(),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, redacted)", self.describe())
    }
}

/// The public key of a certificate, in the forms we can compare with a private key.
#[derive(Debug, Clone, PartialEq)]
enum CertKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

impl CertKey {
    fn describe(&self) -> String {
        match self {
            CertKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts as _;
                format!("RSA {}", k.size() * 8)
            }
            CertKey::P256(_) => "ECDSA P-256".into(),
            CertKey::P384(_) => "ECDSA P-384".into(),
        }
    }
}

/// What a module signature needs from the certificate: the exact DER of its issuer Name and
/// serial number INTEGER (copied into the signer identifier), and its public key.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// DER of the issuer `Name`, verbatim from the certificate.
    pub issuer_der: Vec<u8>,
    /// DER of the serial number `INTEGER`, verbatim from the certificate.
    pub serial_der: Vec<u8>,
    key: CertKey,
}

impl Certificate {
    /// The serial number as colon-separated hex, as `modinfo` prints `sig_key`.
    pub fn serial_hex(&self) -> String {
        let content = Reader::new(&self.serial_der).next().map(|t| t.content).unwrap_or(&[]);
        let trimmed = match content {
            [0, rest @ ..] if !rest.is_empty() => rest,
            c => c,
        };
        trimmed.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }
}

/// A private key and the certificate that goes with it, checked to match.
pub struct Signer {
    pub(crate) key: PrivateKey,
    pub(crate) cert: Certificate,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key", &self.key)
            .field("cert_serial", &self.cert.serial_hex())
            .finish()
    }
}

impl Signer {
    /// Parses a key and a certificate (PEM or DER each) and checks that they belong together.
    /// `key_source` and `cert_source` name where the bytes came from, for errors only
    /// (e.g. `signing_key.pem` or `Secret ns/name, key "key"`).
    pub fn from_bytes(key: &[u8], key_source: &str, cert: &[u8], cert_source: &str) -> Result<Self, SignError> {
        let key = parse_private_key(key, key_source)?;
        let cert = parse_certificate(cert, cert_source)?;
        let matches = match (&key, &cert.key) {
            (PrivateKey::Rsa(k), CertKey::Rsa(c)) => k.to_public_key() == *c,
            (PrivateKey::P256(k), CertKey::P256(c)) => k.public_key() == *c,
            (PrivateKey::P384(k), CertKey::P384(c)) => k.public_key() == *c,
            _ => false,
        };
        if !matches {
            let reason = if key.describe() == cert.key.describe() {
                format!(
                    "the certificate's {} public key is not the public half of the private key",
                    cert.key.describe()
                )
            } else {
                format!(
                    "the certificate holds an {} key but the private key is {}",
                    cert.key.describe(),
                    key.describe()
                )
            };
            return Err(SignError::KeyCertMismatch {
                key: key_source.to_string(),
                cert: cert_source.to_string(),
                reason,
            });
        }
        Ok(Signer { key, cert })
    }

    /// Reads key and certificate from files.
    pub fn from_files(key: &std::path::Path, cert: &std::path::Path) -> Result<Self, SignError> {
        let key_bytes = Zeroizing::new(std::fs::read(key).map_err(|e| SignError::Io {
            path: key.display().to_string(),
            source: e,
        })?);
        let cert_bytes = std::fs::read(cert).map_err(|e| SignError::Io {
            path: cert.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(
            &key_bytes,
            &key.display().to_string(),
            &cert_bytes,
            &cert.display().to_string(),
        )
    }

    /// `RSA 2048`, `ECDSA P-256`, ...
    pub fn key_description(&self) -> String {
        self.key.describe()
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }
}

/// A PEM block: label, whether its headers say it is encrypted, and the decoded body.
struct PemBlock {
    label: String,
    encrypted_headers: bool,
    body: Zeroizing<Vec<u8>>,
}

/// Every PEM block in `text`, in order. `None` when the input has no PEM armour at all.
fn pem_blocks(input: &[u8], source: &str) -> Result<Option<Vec<PemBlock>>, SignError> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(None);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(None);
    }
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut encrypted_headers = false;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if l.contains(':') {
                // RFC 1421 headers, e.g. "Proc-Type: 4,ENCRYPTED" and "DEK-Info: ...".
                if l.starts_with("Proc-Type:") && l.contains("ENCRYPTED") {
                    encrypted_headers = true;
                }
                continue;
            }
            b64.push_str(l);
        }
        if !closed {
            return Err(SignError::Pem {
                source_name: source.to_string(),
                reason: format!("PEM block \"{label}\" has no END line"),
            });
        }
        let body: Zeroizing<Vec<u8>> = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| SignError::Pem {
                source_name: source.to_string(),
                reason: format!("PEM block \"{label}\" is not valid base64"),
            })?;
        // The base64 text may hold key material: wipe our copy.
        b64.zeroize();
        blocks.push(PemBlock {
            label: label.to_string(),
            encrypted_headers,
            body,
        });
    }
    Ok(Some(blocks))
}

/// Parses a private key: PEM (`PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY`, possibly
/// alongside other blocks such as a certificate or `EC PARAMETERS`) or DER (PKCS#8, PKCS#1 or
/// SEC1). Encrypted keys are refused with [`SignError::EncryptedKey`].
pub fn parse_private_key(input: &[u8], source: &str) -> Result<PrivateKey, SignError> {
    let bad = |reason: String| SignError::Key {
        source_name: source.to_string(),
        reason,
    };
    match pem_blocks(input, source)? {
        None => parse_private_key_der(input, source),
        Some(blocks) => {
            let mut found = None;
            for b in &blocks {
                match b.label.as_str() {
                    "ENCRYPTED PRIVATE KEY" => {
                        return Err(SignError::EncryptedKey {
                            source_name: source.to_string(),
                        });
                    }
                    "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                        if b.encrypted_headers {
                            return Err(SignError::EncryptedKey {
                                source_name: source.to_string(),
                            });
                        }
                        if found.is_some() {
                            return Err(bad("more than one private key in the PEM input".into()));
                        }
                        found = Some(b);
                    }
                    _ => {}
                }
            }
            let b = found.ok_or_else(|| {
                let labels: Vec<_> = blocks.iter().map(|b| b.label.as_str()).collect();
                bad(format!(
                    "no private key in the PEM input (found blocks: {})",
                    if labels.is_empty() {
                        "none".to_string()
                    } else {
                        labels.join(", ")
                    }
                ))
            })?;
            parse_private_key_der(&b.body, source)
        }
    }
}

fn parse_private_key_der(der_bytes: &[u8], source: &str) -> Result<PrivateKey, SignError> {
    let bad = |reason: &str| SignError::Key {
        source_name: source.to_string(),
        reason: reason.to_string(),
    };
    let seq = Reader::new(der_bytes)
        .expect(der::SEQUENCE, "")
        .map_err(|_| bad("neither a PEM private key nor a DER-encoded one"))?;
    let mut r = Reader::new(seq.content);
    let first = r
        .next()
        .map_err(|_| bad("not a DER private key (empty or truncated SEQUENCE)"))?;
    if first.tag == der::SEQUENCE {
        // EncryptedPrivateKeyInfo ::= SEQUENCE { encryptionAlgorithm, encryptedData }
        return Err(SignError::EncryptedKey {
            source_name: source.to_string(),
        });
    }
    if first.tag != der::INTEGER {
        return Err(bad("not a DER private key (no version INTEGER)"));
    }
    let second = r
        .next()
        .map_err(|_| bad("not a DER private key (truncated after the version)"))?;
    match second.tag {
        // PKCS#8 PrivateKeyInfo: version, AlgorithmIdentifier, privateKey OCTET STRING
        der::SEQUENCE => {
            let mut alg = Reader::new(second.content);
            let oid = alg
                .expect(der::OID, "")
                .map_err(|_| bad("PKCS#8 key without an algorithm OID"))?;
            let key_err = |e: String| bad(&format!("invalid PKCS#8 key: {e}"));
            match oid.content {
                OID_RSA_ENCRYPTION => rsa::RsaPrivateKey::from_pkcs8_der(der_bytes)
                    .map(|k| PrivateKey::Rsa(Box::new(k)))
                    .map_err(|e| key_err(e.to_string())),
                OID_EC_PUBLIC_KEY => {
                    let curve = alg
                        .expect(der::OID, "")
                        .map_err(|_| bad("EC key without a named curve"))?;
                    match curve.content {
                        OID_P256 => p256::SecretKey::from_pkcs8_der(der_bytes)
                            .map(PrivateKey::P256)
                            .map_err(|e| key_err(e.to_string())),
                        OID_P384 => p384::SecretKey::from_pkcs8_der(der_bytes)
                            .map(PrivateKey::P384)
                            .map_err(|e| key_err(e.to_string())),
                        _ => Err(bad("unsupported EC curve (the kernel verifies P-256 and P-384 only)")),
                    }
                }
                OID_ED25519 => Err(bad(
                    "Ed25519 keys are not supported for kernel module signatures (use RSA or ECDSA P-256/P-384)",
                )),
                OID_RSA_PSS => Err(bad(
                    "RSA-PSS keys are not supported for kernel module signatures (use an rsaEncryption key)",
                )),
                _ => Err(bad("unsupported key algorithm (use RSA or ECDSA P-256/P-384)")),
            }
        }
        // PKCS#1 RSAPrivateKey: version, modulus INTEGER, ...
        der::INTEGER => rsa::RsaPrivateKey::from_pkcs1_der(der_bytes)
            .map(|k| PrivateKey::Rsa(Box::new(k)))
            .map_err(|e| bad(&format!("invalid PKCS#1 RSA key: {e}"))),
        // SEC1 ECPrivateKey: version 1, privateKey OCTET STRING, [0] parameters, [1] publicKey
        der::OCTET_STRING => {
            let mut curve = None;
            while !r.is_empty() {
                let t = r.next().map_err(|_| bad("invalid SEC1 EC key"))?;
                if t.tag == der::CONTEXT_0 {
                    curve = Reader::new(t.content).expect(der::OID, "").ok();
                }
            }
            let curve = curve.ok_or_else(|| {
                bad("SEC1 EC key without a named curve (write it with `openssl ec -param_enc named_curve`)")
            })?;
            let sec1_err = |e: String| bad(&format!("invalid SEC1 EC key: {e}"));
            match curve.content {
                OID_P256 => p256::SecretKey::from_sec1_der(der_bytes)
                    .map(PrivateKey::P256)
                    .map_err(|e| sec1_err(e.to_string())),
                OID_P384 => p384::SecretKey::from_sec1_der(der_bytes)
                    .map(PrivateKey::P384)
                    .map_err(|e| sec1_err(e.to_string())),
                _ => Err(bad("unsupported EC curve (the kernel verifies P-256 and P-384 only)")),
            }
        }
        _ => Err(bad("not a PKCS#8, PKCS#1 or SEC1 private key")),
    }
}

/// Parses an X.509 certificate, PEM (the first `CERTIFICATE` block; other blocks such as a
/// private key in the same file are ignored) or DER.
pub fn parse_certificate(input: &[u8], source: &str) -> Result<Certificate, SignError> {
    let bad = |reason: String| SignError::Certificate {
        source_name: source.to_string(),
        reason,
    };
    let blocks = pem_blocks(input, source).map_err(|e| match e {
        SignError::Pem { reason, .. } => bad(reason),
        other => other,
    })?;
    let der_owned;
    let der_bytes: &[u8] = match blocks {
        None => input,
        Some(blocks) => {
            let b = blocks
                .into_iter()
                .find(|b| b.label == "CERTIFICATE" || b.label == "X509 CERTIFICATE")
                .ok_or_else(|| bad("no CERTIFICATE block in the PEM input".into()))?;
            der_owned = b.body.to_vec();
            &der_owned
        }
    };
    parse_certificate_der(der_bytes).map_err(|reason| bad(reason.to_string()))
}

fn parse_certificate_der(der_bytes: &[u8]) -> Result<Certificate, &'static str> {
    const NOT_CERT: &str = "neither a PEM certificate nor a DER-encoded X.509 certificate";
    let mut top = Reader::new(der_bytes);
    let cert = top.expect(der::SEQUENCE, NOT_CERT)?;
    let mut c = Reader::new(cert.content);
    let tbs = c.expect(der::SEQUENCE, NOT_CERT)?;
    let mut t = Reader::new(tbs.content);
    let mut field = t.next().map_err(|_| NOT_CERT)?;
    if field.tag == der::CONTEXT_0 {
        // [0] EXPLICIT version
        field = t.next().map_err(|_| NOT_CERT)?;
    }
    if field.tag != der::INTEGER {
        return Err("certificate without a serial number");
    }
    let serial = field;
    t.expect(der::SEQUENCE, "certificate without a signature algorithm")?;
    let issuer = t.expect(der::SEQUENCE, "certificate without an issuer")?;
    t.expect(der::SEQUENCE, "certificate without a validity")?;
    t.expect(der::SEQUENCE, "certificate without a subject")?;
    let spki = t.expect(der::SEQUENCE, "certificate without a public key")?;
    let mut s = Reader::new(spki.content);
    let alg = s.expect(der::SEQUENCE, "certificate public key without an algorithm")?;
    let bits = s.expect(der::BIT_STRING, "certificate public key without key bits")?;
    let key_bytes = match bits.content {
        [0, rest @ ..] => rest,
        _ => return Err("certificate public key bits are not byte-aligned"),
    };
    let mut a = Reader::new(alg.content);
    let oid = a.expect(der::OID, "certificate public key without an algorithm OID")?;
    let key = match oid.content {
        OID_RSA_ENCRYPTION => CertKey::Rsa(
            rsa::RsaPublicKey::from_pkcs1_der(key_bytes).map_err(|_| "certificate RSA public key is malformed")?,
        ),
        OID_EC_PUBLIC_KEY => {
            let curve = a.expect(der::OID, "certificate EC key without a named curve")?.content;
            match curve {
                OID_P256 => CertKey::P256(
                    p256::PublicKey::from_sec1_bytes(key_bytes)
                        .map_err(|_| "certificate EC P-256 public key is malformed")?,
                ),
                OID_P384 => CertKey::P384(
                    p384::PublicKey::from_sec1_bytes(key_bytes)
                        .map_err(|_| "certificate EC P-384 public key is malformed")?,
                ),
                _ => {
                    return Err("certificate EC curve is not supported (the kernel verifies P-256 and P-384 only)");
                }
            }
        }
        _ => return Err("certificate key algorithm is not supported (use RSA or ECDSA)"),
    };
    Ok(Certificate {
        issuer_der: issuer.raw.to_vec(),
        serial_der: serial.raw.to_vec(),
        key,
    })
}
