//! The HTTPS side listener: `/healthz`, `/readyz`, `/metrics`.
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the side listener reads.
#[derive(Clone)]
pub struct HttpState {
    /// Secrets (readiness, store sizes).
    pub store: Arc<SecretStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False once shutdown has begun.
    pub accepting: Arc<AtomicBool>,
    /// Which replica leads.
    pub leadership: Arc<crate::leader::Leadership>,
    /// Credentials (discovery and JWKS).
    pub credentials: Arc<crate::credential::Credentials>,
    /// The audit log (not ready while it cannot be written).
    pub audit: Arc<crate::audit::writer::AuditWriter>,
    /// The gRPC listener's counters.
    pub conn_stats: Arc<super::listener::ConnStats>,
}

async fn discovery(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        s.credentials.discovery().to_string(),
    )
}

async fn jwks(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        s.credentials.jwks().await.to_string(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Longest `/readyz` waits for the store.
const READY_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if !s.accepting.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if !s.audit.healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable\n");
    }
    // a probe answers fast: a store that does not answer within READY_PROBE is not ready (a
    // black-holed database would otherwise hold the probe for the whole operation bound)
    let probe = s.store.storage().get(crate::secrets::model::ACTIVE_KEK_KEY);
    match tokio::time::timeout(READY_PROBE, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
        Err(_) => {
            tracing::warn!(timeout = ?READY_PROBE, "not ready: the store did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // store figures are skipped (last values kept) when the store does not answer at once: a
    // scrape during a database outage still reports everything else
    if let Ok(Ok(stats)) = tokio::time::timeout(READY_PROBE, s.store.storage().stats()).await {
        s.metrics.store_keys.set(stats.keys as i64);
        s.metrics.store_bytes.set(stats.bytes_on_disk as i64);
    }
    // monotonic, and concurrent scrapes never add twice
    s.metrics.audit_sink_dropped.inner().fetch_max(
        s.audit
            .sink_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Ok(Ok(n)) = tokio::time::timeout(READY_PROBE, s.store.count()).await {
        s.metrics.store_secrets.set(n as i64);
    }
    if let Some(b) = s.store.storage().backend_stats() {
        s.metrics.storage(&b);
    }
    let term = s.leadership.term();
    s.metrics.leader.set(i64::from(term.is_some()));
    s.metrics.leader_term.set(term.unwrap_or(0) as i64);
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.conn_stats;
    s.metrics
        .connection_events("refused_at_max_connections", c.refused.load(Relaxed));
    s.metrics
        .connection_events("handshake_failed", c.handshake_failed.load(Relaxed));
    s.metrics
        .connection_events("accept_out_of_resources", c.accept_exhausted.load(Relaxed));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// The router (exposed for tests).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

/// Serves the side listener's routes until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: HttpState,
    shutdown: watch::Receiver<bool>,
) {
    serve_router(listener, tls, router(state), shutdown).await
}

/// Serves any axum router over TLS on `listener` until `shutdown` turns true (the side listener,
/// the dev issuer, test issuers).
pub async fn serve_router(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // connections end with the listener: a client then reconnects to whatever serves next
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (tcp, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        conns.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "https tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
    conns.abort_all();
}

/// Serves `app` on connections from [`super::listener::incoming`] (at most `max_connections`,
/// handshake and idle timeouts) until `shutdown`, each request carrying its connection's
/// client certificate and peer as [`crate::api::layer::Translated`] for `api`: what an API
/// translated into gRPC in process (the Vault-compatible API) authenticates and audits with.
pub async fn serve_translated(
    mut incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<super::listener::Conn>>,
    app: Router,
    api: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio_stream::StreamExt;
    use tonic::transport::server::Connected;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            c = incoming.next() => c,
        };
        let conn = match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "connection failed before serving");
                continue;
            }
            Some(Ok(c)) => c,
        };
        let info = conn.connect_info();
        let translated = crate::api::layer::Translated {
            api,
            cert_subject: info
                .peer_certs()
                .and_then(|c| c.first().and_then(crate::tls::cert_subject)),
            peer: info.get_ref().remote_addr(),
        };
        let app = app.clone().layer(axum::Extension(translated));
        conns.spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
    conns.abort_all();
}

/// What a replica serves while it waits for its database at start: every gRPC call answers
/// UNAVAILABLE (clients with several addresses move on), `/healthz` 200 (the process is alive),
/// `/readyz` and everything else 503.
pub fn waiting_routers(why: &'static str) -> (Router, Router) {
    let grpc = Router::new().fallback(move || async move {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/grpc"),
                (header::HeaderName::from_static("grpc-status"), "14"),
                (header::HeaderName::from_static("grpc-message"), why),
            ],
        )
    });
    let http = Router::new()
        .route(
            "/healthz",
            get(|| async { (StatusCode::OK, "alive; waiting for the database\n") }),
        )
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the database\n",
            )
        });
    (grpc, http)
}
