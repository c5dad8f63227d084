//! A real OIDC issuer on loopback over HTTPS: discovery and JWKS for several "tenants"
//! (`/gh`, `/gl`, `/k8s`, …), each claiming a configured `iss`, with freshly generated RSA and
//! EC keys. Counts every request so tests can assert what keygate fetched (and what it did not).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::{Path as AxPath, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    pub public_pem: String,
}

impl TestKey {
    pub fn rsa(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der_ok(&spki);
        let x509_parser::public_key::PublicKey::RSA(rsa) = info.parsed().unwrap() else {
            panic!("not RSA")
        };
        let trim = |b: &[u8]| {
            let i = b.iter().position(|x| *x != 0).unwrap_or(0);
            b[i..].to_vec()
        };
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": B64URL.encode(trim(rsa.modulus)), "e": B64URL.encode(trim(rsa.exponent))}),
            public_pem: kp.public_key_pem(),
        }
    }

    pub fn ec(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der_ok(&spki);
        let point = info.subject_public_key.data.to_vec();
        assert_eq!(point.len(), 65);
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..])}),
            public_pem: kp.public_key_pem(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    pub fn sign_with(&self, h: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

trait FromDerOk<'a> {
    fn from_der_ok(b: &'a [u8]) -> (&'a [u8], x509_parser::x509::SubjectPublicKeyInfo<'a>);
}

impl<'a> FromDerOk<'a> for x509_parser::x509::SubjectPublicKeyInfo<'a> {
    fn from_der_ok(b: &'a [u8]) -> (&'a [u8], x509_parser::x509::SubjectPublicKeyInfo<'a>) {
        use x509_parser::prelude::FromDer;
        x509_parser::x509::SubjectPublicKeyInfo::from_der(b).unwrap()
    }
}

#[derive(Default)]
pub struct IssuerState {
    /// tenant → iss it claims
    pub tenants: Mutex<HashMap<String, String>>,
    /// Published JWKs.
    pub keys: Mutex<Vec<Value>>,
    pub hits: Mutex<Vec<String>>,
    pub down: AtomicBool,
    pub jwks_hits: AtomicUsize,
    pub cache_control: Mutex<Option<String>>,
    /// Where the `redirect` tenant's JWKS redirects to.
    pub redirect_to: Mutex<Option<String>>,
    /// What the GitHub-Actions-like token endpoint hands out, and what it was asked.
    pub actions_token: Mutex<Option<String>>,
    pub actions_requests: Mutex<Vec<(String, String)>>,
}

pub struct TestIssuer {
    pub addr: SocketAddr,
    pub base: String,
    pub state: Arc<IssuerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(
    AxPath(tenant): AxPath<String>,
    State(s): State<(Arc<IssuerState>, String)>,
) -> impl IntoResponse {
    let (st, base) = s;
    st.hits
        .lock()
        .unwrap()
        .push(format!("/{tenant}/.well-known/openid-configuration"));
    if tenant == "slow" {
        // slower than the issuer's fetch timeout
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if st.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new()).into_response();
    }
    let Some(iss) = st.tenants.lock().unwrap().get(&tenant).cloned() else {
        return (StatusCode::NOT_FOUND, String::new()).into_response();
    };
    // Like GitHub's and Kubernetes': no authorization_endpoint.
    let doc = json!({
        "issuer": iss,
        "jwks_uri": format!("{base}/{tenant}/jwks"),
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

async fn jwks(
    AxPath(tenant): AxPath<String>,
    State(s): State<(Arc<IssuerState>, String)>,
) -> impl IntoResponse {
    let (st, _) = s;
    st.hits.lock().unwrap().push(format!("/{tenant}/jwks"));
    st.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if st.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new()).into_response();
    }
    if tenant == "redirect" {
        let to = st.redirect_to.lock().unwrap().clone().unwrap_or_default();
        return (StatusCode::FOUND, [(header::LOCATION, to)], String::new()).into_response();
    }
    let keys: Vec<Value> = st.keys.lock().unwrap().clone();
    let cc = st
        .cache_control
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "max-age=3600".into());
    let mut body = json!({ "keys": keys }).to_string();
    if tenant == "huge" {
        // a valid JWKS padded past keygate's 256 KiB cap
        body = format!("{body}{}", " ".repeat(300 * 1024));
    }
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CACHE_CONTROL, cc),
        ],
        body,
    )
        .into_response()
}

/// Like GitHub's ACTIONS_ID_TOKEN_REQUEST_URL: `GET ?audience=…` with `authorization: bearer …`.
async fn actions_token(
    State(s): State<(Arc<IssuerState>, String)>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.0.actions_requests
        .lock()
        .unwrap()
        .push((uri.query().unwrap_or("").to_string(), auth.clone()));
    if auth != "bearer actions-request-token" {
        return (StatusCode::FORBIDDEN, String::new()).into_response();
    }
    let t =
        s.0.actions_token
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "count": 1, "value": t }).to_string(),
    )
        .into_response()
}

async fn anything(
    State(s): State<(Arc<IssuerState>, String)>,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    s.0.hits.lock().unwrap().push(uri.path().to_string());
    (StatusCode::NOT_FOUND, "")
}

impl TestIssuer {
    /// Serves HTTPS on loopback with a certificate from the dev CA in `ca_dir`.
    pub async fn start(ca_dir: &Path, name: &str) -> Self {
        let cert = ca_dir.join(format!("{name}-issuer.pem"));
        let key = ca_dir.join(format!("{name}-issuer-key.pem"));
        keygate::devenv::issue_server_cert(ca_dir, &["localhost", "127.0.0.1"], &cert, &key)
            .unwrap();
        Self::start_with(cert, key).await
    }

    /// Serves HTTPS with the self-signed certificate `openssl req -x509` makes by default
    /// (CA:TRUE, no subjectAltName), written to `<dir>/<name>-selfsigned.pem`.
    pub async fn start_self_signed(dir: &Path, name: &str) -> Self {
        let cert = dir.join(format!("{name}-selfsigned.pem"));
        let key = dir.join(format!("{name}-selfsigned-key.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{out:?}");
        Self::start_with(cert, key).await
    }

    async fn start_with(cert: std::path::PathBuf, key: std::path::PathBuf) -> Self {
        let cfg = keygate::tls::http_server_config(&keygate::config::TlsConfig {
            cert_file: cert,
            key_file: key,
            client_ca_file: None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("https://localhost:{}", addr.port());
        let state = Arc::new(IssuerState::default());
        let app = Router::new()
            .route("/{tenant}/.well-known/openid-configuration", get(discovery))
            .route("/{tenant}/jwks", get(jwks))
            .route("/actions-token", get(actions_token))
            .fallback(anything)
            .with_state((state.clone(), base.clone()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let _keep = tx;
            keygate::server::http::serve_router(listener, cfg, app, rx).await
        });
        Self {
            addr,
            base,
            state,
            task,
        }
    }

    pub fn tenant(&self, tenant: &str, iss: &str) -> String {
        self.state
            .tenants
            .lock()
            .unwrap()
            .insert(tenant.into(), iss.into());
        format!("{}/{tenant}/.well-known/openid-configuration", self.base)
    }

    /// Publishes a key's JWK (the test keeps the signing half).
    pub fn publish(&self, k: &TestKey) {
        self.state.keys.lock().unwrap().push(k.jwk.clone());
    }

    pub fn hits(&self) -> Vec<String> {
        self.state.hits.lock().unwrap().clone()
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fixture's claims with fresh times, `iss` and `aud`.
pub fn fixture(name: &str, iss: &str, aud: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let n = now();
    v["iss"] = json!(iss);
    v["aud"] = json!(aud);
    v["iat"] = json!(n);
    v["nbf"] = json!(n - 5);
    v["exp"] = json!(n + 300);
    v
}

/// Config for one CI issuer (`ci`, tenant discovery `disc`, claiming `iss` for `aud`) and one
/// role `ci` for subject `pipeline:deploy` with `scopes`, under `[identity] url`.
pub fn ci_role_config(
    identity_url: &str,
    iss: &str,
    disc: &str,
    aud: &str,
    scopes: &str,
    extra_issuer_keys: &str,
) -> String {
    format!(
        r#"
[identity]
url = "{identity_url}"

[[issuers]]
name = "ci"
issuer = "{iss}"
discovery_url = "{disc}"
ca_file = "ca.pem"
audience = "{aud}"
{extra_issuer_keys}
[[roles]]
name = "ci"
issuer = "ci"
bound_subject = "pipeline:deploy"
scopes = {scopes}
ttl_secs = 600
max_ttl_secs = 600
"#
    )
}

/// A token of `key` for the `ci` role of [`ci_role_config`], valid for five minutes.
pub fn ci_token(key: &TestKey, iss: &str, aud: &str, jti: Option<&str>) -> String {
    let mut claims = json!({
        "iss": iss, "aud": aud, "sub": "pipeline:deploy",
        "iat": now(), "nbf": now() - 5, "exp": now() + 300,
    });
    if let Some(j) = jti {
        claims["jti"] = json!(j);
    }
    key.sign(&claims)
}
