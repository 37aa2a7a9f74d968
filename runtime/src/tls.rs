//! HTTPS for the webhook and metrics servers: rustls (ring provider) with certificates from
//! mounted files that are re-read when they change, or self-signed at start-up, and an axum
//! router served over hyper with HTTP/2 optional.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file holds no usable PEM.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused them.
    #[error("{cert} and {key} cannot be used together: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// Making a self-signed certificate failed.
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// Serves the certificate and key of two PEM files (`tls.crt`, `tls.key`), re-read at every
/// TLS handshake and re-parsed when their bytes change, so rotated certificates (a Secret
/// volume update, cert-manager) are used by the next connection without a restart.
///
/// A changed pair that does not load (for instance the certificate is new and the key not yet,
/// during a rotation) leaves the previous pair in use, with a warning.
pub struct FileCertResolver {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for FileCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCertResolver")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl FileCertResolver {
    /// Loads the pair now; fails when the files are missing or unusable.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let certified = certified_key(cert, key, &cert_pem, &key_pem, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                cert_pem,
                key_pem,
                key: Arc::new(certified),
            }),
        })
    }

    /// The pair to present now: the files' current content when it loads, else the last good one.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let (cert_pem, key_pem) = match (read(&self.cert), read(&self.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "keeping the previous serving certificate");
                return loaded.key.clone();
            }
        };
        if cert_pem == loaded.cert_pem && key_pem == loaded.key_pem {
            return loaded.key.clone();
        }
        match certified_key(&self.cert, &self.key, &cert_pem, &key_pem, &self.provider) {
            Ok(k) => {
                tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                *loaded = Loaded {
                    cert_pem,
                    key_pem,
                    key: Arc::new(k),
                };
            }
            Err(e) => tracing::warn!(error = %e, "keeping the previous serving certificate"),
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for FileCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certified_key(
    cert: &Path,
    key: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            reason: format!("not PEM certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            reason: "holds no CERTIFICATE block".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        reason: format!("holds no usable private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// A rustls server configuration presenting the certificate of `resolver`. ALPN offers `h2`
/// only when `http2`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// A rustls server configuration with a fresh self-signed certificate for `localhost`,
/// `127.0.0.1` and `names` (clients such as Prometheus then skip verification, as with
/// controller-runtime's self-signed metrics certificate).
pub fn self_signed_config(names: &[String], http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
    let generated = rcgen::generate_simple_self_signed(sans)?;
    let chain = vec![generated.cert.der().clone()];
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(|e| TlsError::Pem {
        path: PathBuf::from("<self-signed>"),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider())?;
    server_config(Arc::new(Fixed(Arc::new(certified))), http2)
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Binds `addr` now, so a taken port is an error at start-up.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over HTTPS on `listener` until `shutdown`, on a background task. HTTP/2 is
/// offered only when `tls` offers `h2` by ALPN and `http2` is set.
pub fn spawn_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    http2: bool,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let mut builder = auto::Builder::new(TokioExecutor::new());
                if !http2 {
                    builder = builder.http1_only();
                }
                let conn = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("gave up waiting for open connections"),
        }
    })
}

/// Serves `router` over plain HTTP/1.1 on `listener` until `shutdown`, on a background task.
pub fn spawn_http(listener: TcpListener, router: Router, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! A CA and certificates for tests, and a client that returns the certificate it was shown.

    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A test CA.
    pub struct Ca {
        pub cert: rcgen::Certificate,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            Self {
                cert,
                issuer: Issuer::new(params, key),
            }
        }

        /// (certificate PEM, key PEM) for 127.0.0.1 and localhost.
        pub fn server(&self) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    /// Connects over TLS trusting `ca`, sends a raw HTTP/1.1 request, and returns the leaf
    /// certificate shown, the negotiated ALPN protocol and the response text.
    pub async fn request(
        port: u16,
        ca: &rcgen::Certificate,
        alpn: &[&[u8]],
        raw: &str,
    ) -> (CertificateDer<'static>, Option<Vec<u8>>, String) {
        request_trusting(port, ca.der().clone(), alpn, raw).await
    }

    /// [`request`] trusting the CA certificate `ca` (DER).
    pub async fn request_trusting(
        port: u16,
        ca: CertificateDer<'static>,
        alpn: &[&[u8]],
        raw: &str,
    ) -> (CertificateDer<'static>, Option<Vec<u8>>, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
        let proto = conn.alpn_protocol().map(|p| p.to_vec());
        let mut out = String::new();
        if !raw.is_empty() {
            tls.write_all(raw.as_bytes()).await.unwrap();
            tls.read_to_string(&mut out).await.unwrap();
        }
        (leaf, proto, out)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use axum::routing::get;

    fn write_pair(dir: &Path, pair: &(String, String)) {
        std::fs::write(dir.join("tls.crt"), &pair.0).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.1).unwrap();
    }

    fn leaf_der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn resolver_reloads_changed_files_and_keeps_the_last_good_pair() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (a, b) = (ca.server(), ca.server());
        write_pair(dir.path(), &a);
        let r = FileCertResolver::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        assert_eq!(r.current().cert[0].to_vec(), leaf_der(&a.0));

        write_pair(dir.path(), &b);
        assert_eq!(r.current().cert[0].to_vec(), leaf_der(&b.0));

        // Half-way through a rotation: the new certificate with the old key does not load.
        std::fs::write(dir.path().join("tls.crt"), &a.0).unwrap();
        assert_eq!(r.current().cert[0].to_vec(), leaf_der(&b.0));
        std::fs::write(dir.path().join("tls.key"), &a.1).unwrap();
        assert_eq!(r.current().cert[0].to_vec(), leaf_der(&a.0));

        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert_eq!(r.current().cert[0].to_vec(), leaf_der(&a.0));
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let err = FileCertResolver::new(&crt, &key).unwrap_err().to_string();
        assert!(err.starts_with(&format!("reading {}", crt.display())), "{err}");
        std::fs::write(&crt, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = FileCertResolver::new(&crt, &key).unwrap_err().to_string();
        assert!(err.contains("holds no CERTIFICATE block"), "{err}");
        let ca = Ca::new();
        let (a, b) = (ca.server(), ca.server());
        std::fs::write(&crt, &a.0).unwrap();
        std::fs::write(&key, &b.1).unwrap();
        let err = FileCertResolver::new(&crt, &key).unwrap_err().to_string();
        assert!(err.contains("cannot be used together"), "{err}");
    }

    #[tokio::test]
    async fn https_server_presents_the_rotated_certificate_and_honours_http2_off() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (a, b) = (ca.server(), ca.server());
        write_pair(dir.path(), &a);
        let resolver = FileCertResolver::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let token = CancellationToken::new();
        let router = Router::new().route("/hello", get(|| async { "hi" }));
        let task = spawn_https(
            listener,
            server_config(Arc::new(resolver), false).unwrap(),
            router,
            false,
            token.clone(),
        );

        let get = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (leaf, alpn, body) = request(port, &ca.cert, &[b"h2", b"http/1.1"], get).await;
        assert_eq!(leaf.to_vec(), leaf_der(&a.0));
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert!(body.starts_with("HTTP/1.1 200") && body.ends_with("hi"), "{body}");

        write_pair(dir.path(), &b);
        let (leaf, _, _) = request(port, &ca.cert, &[], "").await;
        assert_eq!(leaf.to_vec(), leaf_der(&b.0));

        // A second server on the same port cannot start.
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], port)), "test").await;
        assert!(taken.unwrap_err().to_string().contains("binding the test address"));

        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn http2_is_offered_when_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        write_pair(dir.path(), &ca.server());
        let resolver = FileCertResolver::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let token = CancellationToken::new();
        let _task = spawn_https(
            listener,
            server_config(Arc::new(resolver), true).unwrap(),
            Router::new(),
            true,
            token.clone(),
        );
        let (_, alpn, _) = request(port, &ca.cert, &[b"h2", b"http/1.1"], "").await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        token.cancel();
    }
}
