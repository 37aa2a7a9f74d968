//! The health probes (`/healthz`, `/readyz`) and the Prometheus `/metrics` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Renders the metrics in the Prometheus text format.
pub type Encoder = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds both addresses (failing at once when one is taken) and serves until `shutdown`.
/// `/readyz` answers 503 until `ready` is set.
pub async fn probes_and_metrics(
    health: SocketAddr,
    metrics_addr: SocketAddr,
    ready: Arc<AtomicBool>,
    encode: Encoder,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let probes = Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }
        }),
    );
    let metrics_router = Router::new().route(
        "/metrics",
        get(move || {
            let encode = encode.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    encode(),
                )
            }
        }),
    );
    for (addr, router, what) in [
        (health, probes, "health probes"),
        (metrics_addr, metrics_router, "metrics"),
    ] {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} address {addr}"))?;
        tracing::info!(%addr, "serving {what}");
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
    }
    Ok(())
}
