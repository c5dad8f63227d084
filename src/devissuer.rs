//! The dev OIDC issuer `keygate dev` runs on loopback: discovery and JWKS over HTTPS (the dev
//! CA's certificate), and GitHub-Actions-shaped tokens for `keygate dev token`. For local trials
//! only: its key sits in the dev directory.
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// Audience the dev role expects.
pub const DEV_AUDIENCE: &str = "keygate-dev";

/// `DIR/dev-issuer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevIssuer {
    /// The `iss` value (`https://localhost:PORT`).
    pub issuer: String,
    /// Listen address.
    pub listen: String,
    /// Key id.
    pub kid: String,
}

fn key_path(dir: &Path) -> std::path::PathBuf {
    dir.join("dev-issuer-key.pem")
}

/// Creates the dev issuer's key and settings in `dir` if missing.
pub fn init(dir: &Path, listen: &str) -> Result<DevIssuer, String> {
    let meta = dir.join("dev-issuer.json");
    if meta.exists() {
        let text = std::fs::read_to_string(&meta).map_err(|e| e.to_string())?;
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta.display()));
    }
    let mut addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| format!("--issuer-listen {listen:?} is not an address"))?;
    if addr.port() == 0 {
        // the issuer URL is written into the config before the issuer runs: pick a free port
        // now (tests and a second `keygate dev` beside a running one use this)
        addr = std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("--issuer-listen {listen}: {e}"))?;
    }
    let listen = addr.to_string();
    let listen = listen.as_str();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| e.to_string())?;
    crate::fsutil::write_private(&key_path(dir), &kp.serialize_pem()).map_err(|e| e.to_string())?;
    let mut id = [0u8; 4];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| "random source failed".to_string())?;
    let d = DevIssuer {
        issuer: format!("https://localhost:{}", addr.port()),
        listen: listen.to_string(),
        kid: format!("dev-{}", hex::encode(id)),
    };
    std::fs::write(
        &meta,
        serde_json::to_vec_pretty(&d).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", meta.display()))?;
    Ok(d)
}

fn load(dir: &Path) -> Result<(DevIssuer, rcgen::KeyPair), String> {
    let meta = dir.join("dev-issuer.json");
    let d: DevIssuer = serde_json::from_str(
        &std::fs::read_to_string(&meta)
            .map_err(|e| format!("{}: {e} (run `keygate dev` first)", meta.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let pem = std::fs::read_to_string(key_path(dir)).map_err(|e| e.to_string())?;
    let kp = rcgen::KeyPair::from_pem(&pem).map_err(|e| e.to_string())?;
    Ok((d, kp))
}

fn jwk(d: &DevIssuer, kp: &rcgen::KeyPair) -> Result<Value, String> {
    use x509_parser::prelude::FromDer;
    let spki = rcgen::PublicKeyData::subject_public_key_info(kp);
    let (_, info) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).map_err(|e| e.to_string())?;
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = info.parsed() else {
        return Err("dev issuer key is not RSA".into());
    };
    let trim = |b: &[u8]| b[b.iter().position(|x| *x != 0).unwrap_or(0)..].to_vec();
    Ok(
        json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": d.kid,
        "n": B64URL.encode(trim(rsa.modulus)), "e": B64URL.encode(trim(rsa.exponent))}),
    )
}

/// A GitHub-Actions-shaped token from the dev issuer; `overrides` replace claims.
pub fn token(dir: &Path, overrides: &[(String, String)], now: u64) -> Result<String, String> {
    let (d, kp) = load(dir)?;
    let mut run = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut run);
    let mut claims = json!({
        "iss": d.issuer, "aud": DEV_AUDIENCE,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "repository_id": "123456", "repository_owner": "acme",
        "repository_owner_id": "4711", "ref": "refs/heads/main", "ref_type": "branch",
        "ref_protected": "true", "sha": "0000000000000000000000000000000000000000",
        "event_name": "push", "workflow": "dev", "run_id": u32::from_be_bytes(run).to_string(),
        "run_attempt": "1", "actor": "dev",
        "job_workflow_ref": "acme/app/.github/workflows/dev.yml@refs/heads/main",
        "iat": now, "nbf": now.saturating_sub(5), "exp": now + 300,
        "jti": hex::encode(run),
    });
    for (k, v) in overrides {
        claims[k] = Value::String(v.clone());
    }
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(d.kid.clone());
    let key =
        EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&h, &claims, &key).map_err(|e| e.to_string())
}

#[derive(Clone)]
struct Docs {
    discovery: Arc<String>,
    jwks: Arc<String>,
}

async fn discovery(State(d): State<Docs>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        d.discovery.to_string(),
    )
}

async fn jwks(State(d): State<Docs>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        d.jwks.to_string(),
    )
}

/// Serves discovery and JWKS over HTTPS until the task is dropped.
pub async fn serve(
    dir: &Path,
    tls: &crate::config::TlsConfig,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let (d, kp) = load(dir)?;
    let docs = Docs {
        discovery: Arc::new(
            json!({
                "issuer": d.issuer,
                "jwks_uri": format!("{}/.well-known/jwks", d.issuer),
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string(),
        ),
        jwks: Arc::new(json!({ "keys": [jwk(&d, &kp)?] }).to_string()),
    };
    let cfg = crate::tls::http_server_config(&crate::config::TlsConfig {
        client_ca_file: None,
        ..tls.clone()
    })
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&d.listen)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "the dev issuer's address {} is in use: is another `keygate dev` running? Stop it, \
                 or start this one in a new directory on ports of its own: keygate dev --dir DIR \
                 --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --issuer-listen 127.0.0.1:0 \
                 --vault-listen 127.0.0.1:0",
                d.listen
            ),
            _ => format!("dev issuer {}: {e}", d.listen),
        })?;
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks", get(jwks))
        .with_state(docs);
    // never signalled: the task is aborted when `keygate dev` stops
    let (tx, rx) = tokio::sync::watch::channel(false);
    Ok(tokio::spawn(async move {
        let _keep = tx;
        crate::server::http::serve_router(listener, cfg, app, rx).await
    }))
}
