//! `keygate injector --config injector.toml`: serves `POST /mutate` (AdmissionReview) and
//! `GET /healthz` over HTTPS.
use super::{review, InjectorConfig};
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    injector: InjectorConfig,
}

/// Reads and checks the injector's config file.
pub fn load(path: &Path) -> Result<InjectorConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut c = f.injector;
    let base = path.parent().unwrap_or(Path::new("."));
    if c.cert_file.is_relative() {
        c.cert_file = base.join(&c.cert_file);
    }
    if c.key_file.is_relative() {
        c.key_file = base.join(&c.key_file);
    }
    if !c.keygate_addr.starts_with("https://") {
        return Err("injector.keygate_addr must be an https:// URL".into());
    }
    if c.on_error != "deny" && c.on_error != "allow" {
        return Err("injector.on_error must be \"deny\" or \"allow\"".into());
    }
    if c.audience.trim().is_empty() || c.image.trim().is_empty() {
        return Err("injector.audience and injector.image are required".into());
    }
    if !(600..=86_400).contains(&c.token_expiration_secs) {
        return Err(
            "injector.token_expiration_secs must be 600 to 86400 (Kubernetes' range)".into(),
        );
    }
    Ok(c)
}

async fn mutate(
    State(cfg): State<Arc<InjectorConfig>>,
    body: axum::body::Bytes,
) -> impl axum::response::IntoResponse {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let out = review(&body, &cfg);
    let pod = body
        .pointer("/request/object/metadata/name")
        .or_else(|| body.pointer("/request/object/metadata/generateName"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let ns = body
        .pointer("/request/namespace")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    tracing::info!(
        namespace = ns,
        pod,
        allowed = out
            .pointer("/response/allowed")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        patched = out.pointer("/response/patch").is_some(),
        "admission review"
    );
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&out).unwrap_or_default(),
    )
}

/// Runs the webhook until SIGTERM; returns the exit code.
pub async fn run(config: &Path) -> i32 {
    crate::logging::init(crate::config::LogFormat::Json, "info");
    crate::tls::install_crypto_provider();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keygate injector: {e}");
            return crate::EXIT_CONFIG;
        }
    };
    let tls = match crate::tls::http_server_config(&crate::config::TlsConfig {
        cert_file: cfg.cert_file.clone(),
        key_file: cfg.key_file.clone(),
        client_ca_file: None,
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keygate injector: tls: {e}");
            return crate::EXIT_CONFIG;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keygate injector: listen {}: {e}", cfg.listen);
            return 1;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let app = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(Arc::new(cfg));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tracing::info!(listen = %addr, "keygate injector serving");
    let server = tokio::spawn(crate::server::http::serve_router(listener, tls, app, rx));
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
    }
    let _ = tx.send(true);
    let _ = server.await;
    0
}
