//! The health probes (`/healthz`, `/readyz`, plain HTTP) and the Prometheus `/metrics` endpoint:
//! HTTPS when `metrics.secureServing`, and, when `metrics.enableAuthnAuthz`, every request's
//! bearer token checked with a TokenReview and a SubjectAccessReview (non-resource URL
//! `/metrics`, verb `get`), as controller-runtime's `filters.WithAuthenticationAndAuthorization`
//! does. The server's identity then needs `create` on `tokenreviews` and `subjectaccessreviews`
//! (the `system:auth-delegator` ClusterRole), and a scraper `get` on the non-resource URL
//! `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::tls;

/// Renders the metrics in the Prometheus text format.
pub type Encoder = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` (failing at once when it is taken) and serves `/healthz` and `/readyz` over
/// plain HTTP until `shutdown`. `/readyz` answers 503 until `ready` is set.
pub async fn probes(addr: SocketAddr, ready: Arc<AtomicBool>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let router = Router::new().route("/healthz", get(|| async { "ok" })).route(
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
    let listener = tls::bind(addr, "health probes").await?;
    tracing::info!(%addr, "serving health probes");
    tls::spawn_http(listener, router, shutdown);
    Ok(())
}

/// Binds `metrics.bindAddress` (failing at once when it is taken or the certificate is unusable)
/// and serves `/metrics` as configured until `shutdown`; does nothing when the address is `"0"`.
/// `client` makes the TokenReviews and SubjectAccessReviews.
pub async fn metrics(
    cfg: &config::Metrics,
    client: kube::Client,
    encode: Encoder,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(addr) = cfg.bind_address else {
        tracing::info!("metrics disabled (metrics.bindAddress is \"0\")");
        return Ok(());
    };
    let mut router = Router::new().route(
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
    if cfg.enable_authn_authz {
        let auth = Arc::new(Authorizer::new(client));
        router = router.layer(middleware::from_fn_with_state(auth, authn_authz));
    }
    let http2 = !cfg.disable_http2;
    let tls_config = if !cfg.secure_serving {
        None
    } else if let Some(dir) = &cfg.cert_dir {
        let resolver = tls::FileCertResolver::new(&dir.join("tls.crt"), &dir.join("tls.key"))
            .with_context(|| format!("loading the metrics certificate (metrics.certDir {})", dir.display()))?;
        Some(tls::server_config(Arc::new(resolver), http2)?)
    } else {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        Some(tls::self_signed_config(&[host], http2).context("metrics certificate")?)
    };
    let listener = tls::bind(addr, "metrics").await?;
    tracing::info!(
        %addr,
        https = cfg.secure_serving,
        authn_authz = cfg.enable_authn_authz,
        "serving metrics"
    );
    match tls_config {
        Some(tls_config) => drop(tls::spawn_https(listener, tls_config, router, http2, shutdown)),
        None => drop(tls::spawn_http(listener, router, shutdown)),
    }
    Ok(())
}

/// [`probes`] on `healthProbeBindAddress` and [`metrics`] as `metrics` says.
pub async fn probes_and_metrics(
    cfg: &Config,
    client: kube::Client,
    ready: Arc<AtomicBool>,
    encode: Encoder,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    probes(cfg.health_probe_bind_address, ready, shutdown.clone()).await?;
    metrics(&cfg.metrics, client, encode, shutdown).await
}

/// What the API server said about one token for one verb and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// Not a valid token.
    Unauthenticated,
    /// A valid token whose user may not do this.
    Forbidden {
        user: String,
    },
}

/// How long a decision is reused, so scrapes do not hit the API server every time.
const DECISION_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most; tokens that are tried once must not grow the cache without bound.
const CACHE_LIMIT: usize = 1024;

/// Decisions by hash of (token, verb, path), each with when it was made.
#[derive(Default)]
struct DecisionCache {
    entries: HashMap<[u8; 32], (Decision, Instant)>,
}

impl DecisionCache {
    fn key(token: &str, verb: &str, path: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [token, verb, path] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < DECISION_TTL)
            .map(|(d, _)| d.clone())
    }

    fn put(&mut self, key: [u8; 32], decision: Decision, now: Instant) {
        if self.entries.len() >= CACHE_LIMIT {
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < DECISION_TTL);
            if self.entries.len() >= CACHE_LIMIT {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (decision, now));
    }
}

struct Authorizer {
    client: kube::Client,
    cache: Mutex<DecisionCache>,
}

impl Authorizer {
    fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(DecisionCache::default()),
        }
    }

    async fn decide(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let key = DecisionCache::key(token, verb, path);
        if let Some(d) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key, Instant::now())
        {
            return Ok(d);
        }
        let decision = self.ask(token, verb, path).await?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, decision.clone(), Instant::now());
        Ok(decision)
    }

    async fn ask(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Decision::Unauthenticated),
        };
        let username = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answered = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        Ok(if answered.status.is_some_and(|s| s.allowed) {
            Decision::Allowed
        } else {
            Decision::Forbidden { user: username }
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn authn_authz(State(auth): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let Some(token) = bearer_token(req.headers()) else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized: a bearer token is required").into_response();
    };
    // Non-resource verbs are the lower-cased HTTP method, as the API server's own.
    let verb = req.method().as_str().to_ascii_lowercase();
    let path = req.uri().path().to_string();
    match auth.decide(token, &verb, &path).await {
        Ok(Decision::Allowed) => next.run(req).await,
        Ok(Decision::Unauthenticated) => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
        Ok(Decision::Forbidden { user }) => (
            StatusCode::FORBIDDEN,
            format!("Forbidden: user {user:?} may not {verb} {path}"),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "checking a metrics client's token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error: the token could not be checked",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer_token(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  xyz "));
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn decisions_expire_and_the_cache_stays_bounded() {
        let mut c = DecisionCache::default();
        let t0 = Instant::now();
        let k = DecisionCache::key("tok", "get", "/metrics");
        assert_ne!(k, DecisionCache::key("tok", "get", "/metricsx"));
        assert_ne!(k, DecisionCache::key("tokg", "et", "/metrics"));
        c.put(k, Decision::Allowed, t0);
        assert_eq!(c.get(&k, t0 + Duration::from_secs(59)), Some(Decision::Allowed));
        assert_eq!(c.get(&k, t0 + DECISION_TTL), None);

        for i in 1..CACHE_LIMIT {
            c.put(
                DecisionCache::key(&i.to_string(), "get", "/metrics"),
                Decision::Unauthenticated,
                t0,
            );
        }
        assert_eq!(c.entries.len(), CACHE_LIMIT);
        // Once full, expired entries go first.
        let later = t0 + DECISION_TTL;
        c.put(k, Decision::Allowed, later);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.get(&k, later), Some(Decision::Allowed));
    }

    #[tokio::test]
    async fn plain_metrics_and_probes_without_authn() {
        let cfg = config::Metrics {
            bind_address: Some(
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap(),
            ),
            secure_serving: false,
            enable_authn_authz: false,
            ..Default::default()
        };
        let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let token = CancellationToken::new();
        metrics(&cfg, client.clone(), Arc::new(|| "m 1\n".into()), token.clone())
            .await
            .unwrap();
        let port = cfg.bind_address.unwrap().port();
        let out = get_plain(port, "/metrics").await;
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("m 1\n"), "{out}");

        let ready = Arc::new(AtomicBool::new(false));
        let health = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        probes(health, ready.clone(), token.clone()).await.unwrap();
        assert!(get_plain(health.port(), "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::SeqCst);
        assert!(get_plain(health.port(), "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get_plain(health.port(), "/healthz").await.starts_with("HTTP/1.1 200"));

        let disabled = config::Metrics {
            bind_address: None,
            ..Default::default()
        };
        metrics(&disabled, client, Arc::new(String::new), token.clone())
            .await
            .unwrap();
        token.cancel();
    }

    #[tokio::test]
    async fn secure_metrics_refuse_requests_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::testing::Ca::new();
        let (crt, key) = ca.server();
        std::fs::write(dir.path().join("tls.crt"), crt).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = config::Metrics {
            bind_address: Some(addr),
            cert_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let token = CancellationToken::new();
        metrics(&cfg, client, Arc::new(|| "m 1\n".into()), token.clone())
            .await
            .unwrap();
        let (_, alpn, out) = crate::tls::testing::request(
            addr.port(),
            &ca.cert,
            &[b"h2", b"http/1.1"],
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
        token.cancel();
    }

    async fn get_plain(port: u16, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
