//! In-process Secure Boot signing of kernel modules, for single files and whole kmod images.
//!
//! - [`keys`]: private keys (PKCS#8, PKCS#1, SEC1; PEM or DER) and certificates (PEM or DER).
//! - [`module`]: the kernel module signature, byte-identical to `scripts/sign-file` for RSA.
//! - [`image`]: pull an image, sign files in it, push the result as one new layer.
//! - [`cli`]: `kmm-hub sign module|image|bench`.
//!
//! Key material never appears in errors, logs or `Debug` output.

/// Registry credentials from `imageRepoSecret`: shared with the worker's pulls.
pub use shared_api::registry_auth as auth;
pub mod bench;
pub mod cli;
mod der;
pub mod image;
pub mod keys;
pub mod module;

pub use image::{ImageSignError, RegistryTls, SignImageRequest, sign_image};
pub use keys::Signer;
pub use module::{HashAlgo, sign_module, sign_module_file};

/// Errors from key, certificate and module handling. Each names the file (or Secret) it is
/// about and the reason, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: {reason}")]
    Pem { source_name: String, reason: String },
    #[error("private key {source_name}: {reason}")]
    Key { source_name: String, reason: String },
    #[error(
        "private key {source_name} is encrypted; a signing key must be stored unencrypted \
         (decrypt it with `openssl pkey -in KEY -out KEY.plain.pem`)"
    )]
    EncryptedKey { source_name: String },
    #[error("certificate {source_name}: {reason}")]
    Certificate { source_name: String, reason: String },
    #[error("private key {key} and certificate {cert} do not match: {reason}")]
    KeyCertMismatch { key: String, cert: String, reason: String },
    #[error("{source_name} is not a kernel module: {reason}")]
    NotElf { source_name: String, reason: String },
    #[error("{source_name}: the existing module signature is malformed: {reason}")]
    BadSignature { source_name: String, reason: String },
    #[error("unsupported hash algorithm {0:?} (use sha256, sha384 or sha512)")]
    UnsupportedHash(String),
    #[error("signing {source_name} failed: {reason}")]
    Sign { source_name: String, reason: String },
}
