//! The kernel module signature: the module bytes, a detached CMS SignedData over them (no
//! signed attributes, no certificates, issuer-and-serial signer identifier), a 12-byte
//! `struct module_signature` trailer and the magic string. For RSA keys the result is
//! byte-identical to the kernel's `scripts/sign-file`.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use super::SignError;
use super::der::{self, cons, tlv};
use super::keys::{PrivateKey, Signer};

/// The magic string that ends a signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// Size of `struct module_signature` (the trailer between the CMS blob and the magic).
pub const TRAILER_LEN: usize = 12;
/// `PKEY_ID_PKCS7`: the only id type the kernel accepts for module signatures.
const PKEY_ID_PKCS7: u8 = 2;

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Digest algorithms for module signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HashAlgo {
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 3] = [HashAlgo::Sha256, HashAlgo::Sha384, HashAlgo::Sha512];

    /// The name `sign-file` and `modinfo` use.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// The digest of `data`. ring's SHA-2 (BoringSSL's assembly, SHA-NI/AVX2 where the CPU
    /// has them) keeps pace with OpenSSL on large modules; `sha2` checks it in the tests.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlgo::Sha256 => &ring::digest::SHA256,
            HashAlgo::Sha384 => &ring::digest::SHA384,
            HashAlgo::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }

    /// Content of the digest algorithm OID (2.16.840.1.101.3.4.2.x).
    fn oid(self) -> [u8; 9] {
        let last = match self {
            HashAlgo::Sha256 => 1,
            HashAlgo::Sha384 => 2,
            HashAlgo::Sha512 => 3,
        };
        [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, last]
    }

    /// Content of the `ecdsa-with-SHA*` OID (1.2.840.10045.4.3.x).
    fn ecdsa_oid(self) -> [u8; 8] {
        let last = match self {
            HashAlgo::Sha256 => 2,
            HashAlgo::Sha384 => 3,
            HashAlgo::Sha512 => 4,
        };
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, last]
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = SignError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Ok(HashAlgo::Sha256),
            "sha384" | "sha-384" => Ok(HashAlgo::Sha384),
            "sha512" | "sha-512" => Ok(HashAlgo::Sha512),
            _ => Err(SignError::UnsupportedHash(s.to_string())),
        }
    }
}

/// Checks that `data` looks like a kernel module: an ELF relocatable object.
pub fn check_elf(data: &[u8], source: &str) -> Result<(), SignError> {
    let not = |reason: &str| SignError::NotElf {
        source_name: source.to_string(),
        reason: reason.to_string(),
    };
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(not("no ELF magic (\\x7fELF) at the start of the file"));
    }
    if data.len() < 18 {
        return Err(not("truncated ELF header"));
    }
    if !matches!(data[4], 1 | 2) {
        return Err(not("unknown ELF class"));
    }
    let e_type = match data[5] {
        1 => u16::from_le_bytes([data[16], data[17]]),
        2 => u16::from_be_bytes([data[16], data[17]]),
        _ => return Err(not("unknown ELF byte order")),
    };
    if e_type != 1 {
        return Err(not(&format!(
            "ELF type {e_type} is not ET_REL (1); kernel modules are relocatable objects"
        )));
    }
    Ok(())
}

/// A module split at its signature.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// The module without any signature.
    pub content: &'a [u8],
    /// The CMS SignedData (DER), if the module was signed.
    pub signature: Option<&'a [u8]>,
}

/// Splits off an appended module signature, if any. A module with the magic but a trailer
/// that does not add up is an error (rather than being signed a second time).
pub fn split_signature<'a>(data: &'a [u8], source: &str) -> Result<SignedParts<'a>, SignError> {
    let Some(before_magic) = data.strip_suffix(MAGIC) else {
        return Ok(SignedParts {
            content: data,
            signature: None,
        });
    };
    let bad = |reason: String| SignError::BadSignature {
        source_name: source.to_string(),
        reason,
    };
    if before_magic.len() < TRAILER_LEN {
        return Err(bad("signature trailer is truncated".into()));
    }
    let (rest, trailer) = before_magic.split_at(before_magic.len() - TRAILER_LEN);
    let id_type = trailer[2];
    let signer_len = usize::from(trailer[3]);
    let key_id_len = usize::from(trailer[4]);
    let sig_len = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]) as usize;
    if id_type != PKEY_ID_PKCS7 {
        return Err(bad(format!("signature id type {id_type} is not PKCS#7 (2)")));
    }
    let total = sig_len + signer_len + key_id_len;
    if total > rest.len() {
        return Err(bad(format!("signature length {sig_len} is larger than the file")));
    }
    let (content, sig) = rest.split_at(rest.len() - total);
    Ok(SignedParts {
        content,
        signature: Some(&sig[..sig_len]),
    })
}

/// The detached CMS SignedData (DER) over `content`, as `sign-file` makes it.
pub fn cms_signature(content: &[u8], signer: &Signer, hash: HashAlgo, source: &str) -> Result<Vec<u8>, SignError> {
    let digest = hash.digest(content);
    cms_from_digest(&digest, signer, hash, source)
}

fn cms_from_digest(digest: &[u8], signer: &Signer, hash: HashAlgo, source: &str) -> Result<Vec<u8>, SignError> {
    let sign_err = |reason: String| SignError::Sign {
        source_name: source.to_string(),
        reason,
    };
    let (sig_alg, signature) = match &signer.key {
        PrivateKey::Rsa(key) => {
            let scheme = match hash {
                HashAlgo::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                HashAlgo::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                HashAlgo::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            let sig = key.sign(scheme, digest).map_err(|e| sign_err(e.to_string()))?;
            let alg = cons(
                der::SEQUENCE,
                &[&tlv(der::OID, OID_RSA_ENCRYPTION), &tlv(der::NULL, &[])],
            );
            (alg, sig)
        }
        PrivateKey::P256(key) => {
            use p256::ecdsa::signature::hazmat::PrehashSigner as _;
            let sk = p256::ecdsa::SigningKey::from(key);
            let sig: p256::ecdsa::Signature = sk.sign_prehash(digest).map_err(|e| sign_err(e.to_string()))?;
            let alg = cons(der::SEQUENCE, &[&tlv(der::OID, &hash.ecdsa_oid())]);
            (alg, sig.to_der().as_bytes().to_vec())
        }
        PrivateKey::P384(key) => {
            use p384::ecdsa::signature::hazmat::PrehashSigner as _;
            let sk = p384::ecdsa::SigningKey::from(key);
            let sig: p384::ecdsa::Signature = sk.sign_prehash(digest).map_err(|e| sign_err(e.to_string()))?;
            let alg = cons(der::SEQUENCE, &[&tlv(der::OID, &hash.ecdsa_oid())]);
            (alg, sig.to_der().as_bytes().to_vec())
        }
    };

    // SHA-2 AlgorithmIdentifiers carry no parameters (as OpenSSL writes them).
    let digest_alg = cons(der::SEQUENCE, &[&tlv(der::OID, &hash.oid())]);
    let version1 = tlv(der::INTEGER, &[1]);
    let issuer_and_serial = cons(der::SEQUENCE, &[&signer.cert.issuer_der, &signer.cert.serial_der]);
    let signer_info = cons(
        der::SEQUENCE,
        &[
            &version1,
            &issuer_and_serial,
            &digest_alg,
            &sig_alg,
            &tlv(der::OCTET_STRING, &signature),
        ],
    );
    let signed_data = cons(
        der::SEQUENCE,
        &[
            &version1,
            &cons(der::SET, &[&digest_alg]),
            &cons(der::SEQUENCE, &[&tlv(der::OID, OID_DATA)]),
            &cons(der::SET, &[&signer_info]),
        ],
    );
    Ok(cons(
        der::SEQUENCE,
        &[&tlv(der::OID, OID_SIGNED_DATA), &cons(der::CONTEXT_0, &[&signed_data])],
    ))
}

/// The 12-byte `struct module_signature` for a PKCS#7 signature of `sig_len` bytes.
pub fn trailer(sig_len: usize) -> Result<[u8; TRAILER_LEN], SignError> {
    let len = u32::try_from(sig_len).map_err(|_| SignError::Sign {
        source_name: String::new(),
        reason: "signature too large".into(),
    })?;
    let mut t = [0u8; TRAILER_LEN];
    t[2] = PKEY_ID_PKCS7;
    t[8..].copy_from_slice(&len.to_be_bytes());
    Ok(t)
}

/// A module ready to be written: the unsigned content, then `appendix` (the CMS signature,
/// the trailer and the magic). Kept apart so a large module is not copied.
pub struct SignedModule<'a> {
    pub content: &'a [u8],
    pub appendix: Vec<u8>,
    /// Whether an existing signature was replaced.
    pub replaced: bool,
}

impl SignedModule<'_> {
    pub fn len(&self) -> usize {
        self.content.len() + self.appendix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.content);
        v.extend_from_slice(&self.appendix);
        v
    }

    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(self.content)?;
        w.write_all(&self.appendix)
    }
}

/// Signs a module held in memory. Existing signatures are replaced, not appended to.
/// `source` names the module in errors.
pub fn sign_module<'a>(
    data: &'a [u8],
    signer: &Signer,
    hash: HashAlgo,
    source: &str,
) -> Result<SignedModule<'a>, SignError> {
    // Strip every appended signature (sign-file appends a second one to a signed module).
    let mut parts = split_signature(data, source)?;
    let replaced = parts.signature.is_some();
    while parts.signature.is_some() {
        parts = split_signature(parts.content, source)?;
    }
    check_elf(parts.content, source)?;
    let sig = cms_signature(parts.content, signer, hash, source)?;
    let mut appendix = Vec::with_capacity(sig.len() + TRAILER_LEN + MAGIC.len());
    appendix.extend_from_slice(&sig);
    appendix.extend_from_slice(&trailer(sig.len())?);
    appendix.extend_from_slice(MAGIC);
    Ok(SignedModule {
        content: parts.content,
        appendix,
        replaced,
    })
}

/// What [`sign_module_file`] did.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub output: std::path::PathBuf,
    pub replaced: bool,
    pub bytes: usize,
}

/// Signs `input` into `output` (or in place). The file is written to a temporary file next to
/// the destination and renamed, so a failure leaves the destination untouched; the
/// input's permissions are kept.
pub fn sign_module_file(
    input: &Path,
    output: Option<&Path>,
    signer: &Signer,
    hash: HashAlgo,
) -> Result<FileReport, SignError> {
    let source = input.display().to_string();
    let io_err = |path: &Path, e| SignError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let data = std::fs::read(input).map_err(|e| io_err(input, e))?;
    let signed = sign_module(&data, signer, hash, &source)?;
    let out = output.unwrap_or(input);
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kmm-sign-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        signed.write_to(&mut w).map_err(|e| io_err(out, e))?;
        w.flush().map_err(|e| io_err(out, e))?;
    }
    if let Ok(meta) = std::fs::metadata(input) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.persist(out).map_err(|e| io_err(out, e.error))?;
    Ok(FileReport {
        output: out.to_path_buf(),
        replaced: signed.replaced,
        bytes: signed.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_rel() -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[16] = 1;
        v
    }

    #[test]
    fn elf_check() {
        assert!(check_elf(&elf_rel(), "m.ko").is_ok());
        let e = check_elf(b"hello world, not a module", "x.ko").unwrap_err();
        assert!(e.to_string().contains("x.ko"), "{e}");
        assert!(e.to_string().contains("ELF"), "{e}");
        let mut exec = elf_rel();
        exec[16] = 2;
        assert!(check_elf(&exec, "a.out").unwrap_err().to_string().contains("ET_REL"));
    }

    #[test]
    fn trailer_layout() {
        assert_eq!(trailer(0x1ab).unwrap(), [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0xab]);
    }

    #[test]
    fn split_unsigned_and_signed() {
        let m = elf_rel();
        let p = split_signature(&m, "m").unwrap();
        assert!(p.signature.is_none());
        assert_eq!(p.content.len(), m.len());

        let mut s = m.clone();
        s.extend_from_slice(b"SIG");
        s.extend_from_slice(&trailer(3).unwrap());
        s.extend_from_slice(MAGIC);
        let p = split_signature(&s, "m").unwrap();
        assert_eq!(p.content, &m[..]);
        assert_eq!(p.signature, Some(&b"SIG"[..]));

        let mut bad = m.clone();
        bad.extend_from_slice(&trailer(1 << 20).unwrap());
        bad.extend_from_slice(MAGIC);
        assert!(split_signature(&bad, "m").is_err());
    }

    #[test]
    fn digests_match_sha2() {
        use sha2::Digest as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        assert_eq!(HashAlgo::Sha256.digest(&data), sha2::Sha256::digest(&data).to_vec());
        assert_eq!(HashAlgo::Sha384.digest(&data), sha2::Sha384::digest(&data).to_vec());
        assert_eq!(HashAlgo::Sha512.digest(&data), sha2::Sha512::digest(&data).to_vec());
    }

    #[test]
    fn hash_names() {
        for h in HashAlgo::ALL {
            assert_eq!(h.name().parse::<HashAlgo>().unwrap(), h);
        }
        let e = "sha1".parse::<HashAlgo>().unwrap_err().to_string();
        assert!(e.contains("sha1") && e.contains("sha256"), "{e}");
    }
}
