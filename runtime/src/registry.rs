//! OCI registry clients configured the way upstream KMM (go-containerregistry) configures them,
//! and registry errors rendered on one line for statuses and events.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use shared_api::registry_auth::RegistryCredentials;

/// `registryTLS` of a Module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegistryTls {
    /// Accept any certificate, and use plain HTTP with a registry that does not speak HTTPS.
    pub insecure: bool,
    /// Use HTTPS but accept any certificate.
    pub insecure_skip_tls_verify: bool,
}

impl From<Option<&shared_api::module::TlsOptions>> for RegistryTls {
    fn from(t: Option<&shared_api::module::TlsOptions>) -> Self {
        t.map(|t| RegistryTls {
            insecure: t.insecure,
            insecure_skip_tls_verify: t.insecure_skip_tls_verify,
        })
        .unwrap_or_default()
    }
}

/// Installs the process's rustls provider. reqwest is built without a compiled-in provider; we
/// use ring, as kube does. Safe to call any number of times.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client configuration with `timeout` for connecting and for each read, picking the
/// linux/amd64 entry of multi-platform indexes.
pub fn config(protocol: ClientProtocol, accept_invalid: bool, timeout: Duration) -> ClientConfig {
    ClientConfig {
        protocol,
        accept_invalid_certificates: accept_invalid,
        connect_timeout: Some(timeout),
        read_timeout: Some(timeout),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..Default::default()
    }
}

/// A client for `hosts` with `registryTLS` applied: `insecureSkipTLSVerify` accepts any
/// certificate; `insecure` also accepts any certificate and falls back to plain HTTP for a host
/// that does not answer HTTPS (probed once per host here).
pub async fn connect(tls: RegistryTls, timeout: Duration, hosts: &[&str]) -> Client {
    install_crypto();
    let accept_invalid = tls.insecure || tls.insecure_skip_tls_verify;
    let protocol = if tls.insecure {
        let mut distinct: Vec<&str> = hosts.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut plain = Vec::new();
        for host in distinct {
            if !speaks_https(host, timeout).await {
                plain.push(host.to_string());
            }
        }
        ClientProtocol::HttpsExcept(plain)
    } else {
        ClientProtocol::Https
    };
    Client::new(config(protocol, accept_invalid, timeout))
}

/// Whether `host` answers HTTPS at all: any HTTP answer to `GET /v2/` counts, a connection or
/// TLS failure does not.
pub async fn speaks_https(host: &str, timeout: Duration) -> bool {
    install_crypto();
    let probe = Client::new(config(ClientProtocol::Https, true, timeout));
    let r = Reference::with_tag(host.to_string(), "kmm/probe".into(), "probe".into());
    let answer = tokio::time::timeout(
        timeout,
        probe.auth(&r, &RegistryAuth::Anonymous, RegistryOperation::Pull),
    )
    .await;
    match answer {
        Ok(Ok(_)) => true,
        Ok(Err(oci_client::errors::OciDistributionError::RequestError(_))) => false,
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// Our credentials as oci-client's.
pub fn oci_auth(c: RegistryCredentials) -> RegistryAuth {
    match c {
        RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
        RegistryCredentials::Basic { username, password } => {
            RegistryAuth::Basic(username, password.as_str().to_string())
        }
    }
}

/// An error and its causes on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A hint for the administrator to append to a registry failure, by what the reason says.
pub fn hint(reason: &str) -> Option<&'static str> {
    let lower = reason.to_ascii_lowercase();
    if ["unauthorized", "not authorized", "401", "denied"]
        .iter()
        .any(|w| lower.contains(w))
    {
        Some("check the imageRepoSecret's credentials for this registry")
    } else if lower.contains("certificate") || lower.contains("invalid peer") {
        Some("the registry's certificate is not trusted; see registryTLS")
    } else if lower.contains("connection refused") || lower.contains("error sending request") {
        Some("is the registry reachable, and is registryTLS.insecure right?")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_causes_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "outer: connection refused");
    }

    #[test]
    fn hints_by_reason() {
        assert!(hint("401 Unauthorized").unwrap().contains("imageRepoSecret"));
        assert!(
            hint("invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("registryTLS")
        );
        assert!(
            hint("tcp connect error: Connection refused")
                .unwrap()
                .contains("reachable")
        );
        assert_eq!(hint("manifest unknown"), None);
    }

    #[test]
    fn tls_from_module() {
        let t = shared_api::module::TlsOptions {
            insecure: true,
            insecure_skip_tls_verify: false,
        };
        assert_eq!(
            RegistryTls::from(Some(&t)),
            RegistryTls {
                insecure: true,
                insecure_skip_tls_verify: false
            }
        );
        assert_eq!(RegistryTls::from(None), RegistryTls::default());
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    /// `insecure` falls back to plain HTTP for a registry that answers TLS with plain HTTP.
    #[tokio::test]
    async fn plain_http_server_is_not_https() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        install_crypto();
        let host = format!("127.0.0.1:{port}");
        assert!(!speaks_https(&host, Duration::from_secs(3)).await);
    }
}
