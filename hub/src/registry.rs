//! Registry lookups: does an image exist, and under which digest. One manifest HEAD per call,
//! with the MCM's credentials and `registryTLS`, bounded by a timeout.

use std::time::Duration;

use kmm_runtime::registry::{self, RegistryTls, error_chain, oci_auth};
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use shared_api::registry_auth::DockerConfigAuth;

/// Why a lookup failed (a missing image is not a failure: it is `Ok(None)`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The reference does not parse.
    #[error("image reference {reference:?}: {reason}")]
    Reference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("registry {registry} did not answer the manifest lookup of {reference} within {timeout:?}")]
    Timeout {
        /// Registry host.
        registry: String,
        /// The reference.
        reference: String,
        /// The limit.
        timeout: Duration,
    },
    /// The registry refused or failed.
    #[error("registry {registry}: manifest lookup of {reference} failed: {reason}")]
    Registry {
        /// Registry host.
        registry: String,
        /// The reference.
        reference: String,
        /// What it said, with a hint.
        reason: String,
    },
}

/// Parses a reference, naming it in the error.
pub fn parse(image: &str) -> Result<Reference, LookupError> {
    image.parse::<Reference>().map_err(|e| LookupError::Reference {
        reference: image.to_owned(),
        reason: e.to_string(),
    })
}

/// The digest of `image`'s manifest, or `None` when the registry says it does not exist.
pub async fn digest(
    image: &str,
    auth: &DockerConfigAuth,
    tls: RegistryTls,
    timeout: Duration,
) -> Result<Option<String>, LookupError> {
    let reference = parse(image)?;
    let host = reference.resolve_registry().to_owned();
    let client = registry::connect(tls, timeout, &[&host]).await;
    let creds = oci_auth(auth.for_registry(&host));
    let answer = tokio::time::timeout(timeout, client.fetch_manifest_digest(&reference, &creds)).await;
    match answer {
        Err(_) => Err(LookupError::Timeout {
            registry: host,
            reference: reference.whole(),
            timeout,
        }),
        Ok(Ok(d)) => Ok(Some(d)),
        Ok(Err(e)) if is_not_found(&e) => Ok(None),
        Ok(Err(e)) => {
            let mut reason = error_chain(&e);
            if reason.contains("timed out") {
                return Err(LookupError::Timeout {
                    registry: host,
                    reference: reference.whole(),
                    timeout,
                });
            }
            if let Some(h) = registry::hint(&reason) {
                reason.push_str(&format!(" ({h})"));
            }
            Err(LookupError::Registry {
                registry: host,
                reference: reference.whole(),
                reason,
            })
        }
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

/// `repo@digest` for `image`.
pub fn pinned(image: &str, digest: &str) -> String {
    shared_api::image::ImageRef::parse(image).pinned(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_tags_and_ports() {
        assert_eq!(
            pinned("127.0.0.1:5000/kmm/m:6.1.0", "sha256:ab"),
            "127.0.0.1:5000/kmm/m@sha256:ab"
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_clear_error_not_a_missing_image() {
        // A port nothing listens on, on loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let image = format!("127.0.0.1:{port}/kmm/m:v1");
        let err = digest(
            &image,
            &DockerConfigAuth::default(),
            RegistryTls {
                insecure: true,
                insecure_skip_tls_verify: false,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("registry 127.0.0.1:{port}")), "{text}");
        assert!(
            text.to_lowercase().contains("connect") || text.contains("refused"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_reference_names_it() {
        let err = digest(
            "UPPER/Case:??",
            &DockerConfigAuth::default(),
            RegistryTls::default(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, LookupError::Reference { .. }), "{err}");
    }
}
