//! The admission webhook server: HTTPS with the certificate and key of `webhook.certDir`
//! (`tls.crt`, `tls.key`), re-read when they change, HTTP/1.1 only when `webhook.disableHTTP2`.
//!
//! The routes come from [`crate::admission`]: [`crate::admission::spoke_routes`] on the spoke,
//! [`crate::admission::hub_routes`] on the hub.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::tls::{self, FileCertResolver};

/// When to serve the admission webhooks (`--webhook`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve them when `<webhook.certDir>/tls.crt` and `tls.key` exist (the manifests mount them).
    Auto,
    /// Always serve them; a missing or unusable certificate is a start-up error.
    On,
    /// Never serve them.
    Off,
}

impl Mode {
    /// Whether to serve the webhooks with this configuration.
    pub fn enabled(self, cfg: &config::Webhook) -> bool {
        match self {
            Mode::Auto => certs_present(cfg),
            Mode::On => true,
            Mode::Off => false,
        }
    }
}

/// True when `<certDir>/tls.crt` and `<certDir>/tls.key` both exist (the manifests mount them).
pub fn certs_present(cfg: &config::Webhook) -> bool {
    cfg.cert_file().is_file() && cfg.key_file().is_file()
}

/// Loads the certificate, binds `webhook.host:webhook.port` (an error at once when the files are
/// unusable or the port is taken), then serves `routes` over HTTPS on a background task until
/// `shutdown` is cancelled.
pub async fn serve(cfg: &config::Webhook, routes: Router, shutdown: CancellationToken) -> anyhow::Result<()> {
    let resolver = FileCertResolver::new(&cfg.cert_file(), &cfg.key_file()).with_context(|| {
        format!(
            "loading the webhook certificate (webhook.certDir {})",
            cfg.cert_dir.display()
        )
    })?;
    let http2 = !cfg.disable_http2;
    let tls = tls::server_config(Arc::new(resolver), http2)?;
    let addr = cfg.bind_address();
    let listener = tls::bind(addr, "webhook").await?;
    tracing::info!(%addr, cert_dir = %cfg.cert_dir.display(), http2, "serving admission webhooks");
    tls::spawn_https(listener, tls, routes, http2, shutdown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{Ca, request};

    #[tokio::test]
    async fn serves_the_routes_and_fails_at_once_without_certs_or_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config::Webhook {
            cert_dir: dir.path().to_path_buf(),
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            ..Default::default()
        };
        // Find a free port, then let the server take it.
        cfg.port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!certs_present(&cfg));
        let err = serve(&cfg, Router::new(), CancellationToken::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("webhook.certDir"), "{err:#}");

        let ca = Ca::new();
        let (crt, key) = ca.server();
        std::fs::write(cfg.cert_file(), crt).unwrap();
        std::fs::write(cfg.key_file(), key).unwrap();
        assert!(certs_present(&cfg));
        let token = CancellationToken::new();
        let routes = Router::new().route("/x", axum::routing::post(|| async { "ok" }));
        serve(&cfg, routes.clone(), token.clone()).await.unwrap();
        let (_, _, out) = request(
            cfg.port,
            &ca.cert,
            &[],
            "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("ok"), "{out}");

        let err = serve(&cfg, routes, token.clone()).await.unwrap_err();
        assert!(format!("{err:#}").contains("binding the webhook address"), "{err:#}");
        token.cancel();
    }
}
