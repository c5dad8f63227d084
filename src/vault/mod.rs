//! The Vault-compatible HTTP API (`[vault_api]`, docs/vault-compat.md): a subset of Vault's
//! HTTP API over HTTPS for the Vault clients platform teams already run (hvac, node-vault,
//! vault-action, External Secrets Operator), mapped onto keygate's own model. Handlers here
//! only translate: each request becomes the gRPC call it means (a login is an exchange, a KV
//! read a `Secrets.Get`), made in process through the same layer every gRPC call goes through
//! — authentication, scopes, the audit record (with `api: "vault"`) and metrics — and the
//! answer is put in Vault's shapes.
pub mod auth;
pub mod kv;
pub mod leases;
pub mod reply;
pub mod sys;

use crate::api::layer::{RpcService, Translated};
use crate::config::VaultApiConfig;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::watch;

/// The gRPC services, in process, behind the RPC layer.
pub type Grpc = RpcService<tonic::service::Routes>;

/// The API's shared state.
pub struct VaultApi {
    grpc: Grpc,
    cfg: VaultApiConfig,
    max_body: usize,
    shutdown: watch::Receiver<bool>,
}

/// One request: who sent it (its connection) and with which token.
pub struct Ctx {
    conn: Translated,
    token: Option<String>,
    /// Vault's `request_id` of the answer.
    pub request_id: String,
}

impl Ctx {
    /// The same caller presenting `token` instead.
    pub fn with_token(&self, token: Option<String>) -> Ctx {
        Ctx {
            conn: self.conn.clone(),
            token,
            request_id: self.request_id.clone(),
        }
    }

    /// `msg` as a gRPC request from this caller: its connection's certificate and address,
    /// its token as the bearer credential.
    // the error is the answer itself, returned at once: boxing it would buy nothing
    #[allow(clippy::result_large_err)]
    pub fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, Response> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(self.conn.clone());
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}").parse().map_err(|_| {
                reply::error(StatusCode::FORBIDDEN, "permission denied: malformed token")
            })?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

/// A parsed request body: the JSON object (empty when there was no body) and the warnings to
/// answer with (unknown fields are accepted, as Vault accepts them, and named).
pub struct Body {
    /// The object.
    pub json: serde_json::Map<String, Value>,
    /// Warnings for the answer.
    pub warnings: Vec<String>,
}

impl Body {
    /// Field `name` as a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.json.get(name).and_then(Value::as_str)
    }

    /// Notes every field not in `known` as ignored.
    pub fn ignore_unknown(&mut self, known: &[&str]) {
        for k in self.json.keys() {
            if !known.contains(&k.as_str()) {
                self.warnings.push(format!(
                    "Endpoint ignored these unrecognized parameters: [{k}]"
                ));
            }
        }
    }
}

impl VaultApi {
    /// Over the in-process gRPC services.
    pub fn new(
        grpc: Grpc,
        cfg: VaultApiConfig,
        max_body: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            grpc,
            cfg,
            max_body,
            shutdown,
        }
    }

    /// The in-process gRPC channel.
    pub fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    /// Is the daemon shutting down (Vault: sealed, 503)?
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

fn new_request_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The token of a request: `X-Vault-Token`, or `Authorization: Bearer`.
fn token_of(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Vault's methods: `LIST` and `GET ?list=true|1` are one; `PUT` and `POST` are one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET.
    Read,
    /// HEAD (sys/health).
    Head,
    /// POST or PUT.
    Write,
    /// DELETE.
    Delete,
    /// LIST, or GET with `list=true`.
    List,
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Every request lands here; the path decides.
async fn handle(State(api): State<Arc<VaultApi>>, req: Request) -> Response {
    let conn = req
        .extensions()
        .get::<Translated>()
        .cloned()
        .unwrap_or(Translated {
            api: "vault",
            cert_subject: None,
            peer: None,
        });
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_string();
    let listing = matches!(query_param(&query, "list"), Some("true" | "1"));
    let op = match parts.method.as_str() {
        "GET" if listing => Op::List,
        "GET" => Op::Read,
        "HEAD" => Op::Head,
        "POST" | "PUT" => Op::Write,
        "DELETE" => Op::Delete,
        "LIST" => Op::List,
        _ => return reply::error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation"),
    };
    // a client that thinks it works in a namespace must not be served the root one instead
    if let Some(ns) = parts.headers.get("x-vault-namespace") {
        let ns = ns.to_str().unwrap_or("?").trim().trim_matches('/');
        if !ns.is_empty() && ns != "root" {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "namespaces are not supported: send no X-Vault-Namespace, or an empty one",
            );
        }
    }
    let bytes = match axum::body::to_bytes(body, api.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than the limit of {} bytes",
                    api.max_body
                ),
            )
        }
    };
    let json = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return reply::error(
                    StatusCode::BAD_REQUEST,
                    "failed to parse JSON input: the body must be a JSON object",
                )
            }
            Err(e) => {
                return reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("failed to parse JSON input: {e}"),
                )
            }
        }
    };
    let ctx = Ctx {
        conn,
        token: token_of(&parts.headers),
        request_id: new_request_id(),
    };
    let body = Body {
        json,
        warnings: Vec::new(),
    };
    let Some(path) = parts.uri.path().strip_prefix("/v1/") else {
        return reply::error(StatusCode::NOT_FOUND, "no handler for route");
    };
    let path = path.trim_end_matches('/').to_string();
    let trailing_slash = parts.uri.path().ends_with('/');
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["sys", "health"] => sys::health(&api, op, &query),
        ["sys", "seal-status"] if op == Op::Read => sys::seal_status(),
        ["sys", "mounts"] if op == Op::Read => sys::mounts(&api, &ctx).await,
        ["sys", "internal", "ui", "mounts", rest @ ..] if op == Op::Read => {
            sys::ui_mount(&api, &ctx, &rest.join("/")).await
        }
        ["auth", "token", "lookup-self"] if matches!(op, Op::Read | Op::Write) => {
            auth::lookup_self(&api, &ctx).await
        }
        ["database", "creds", role] if op == Op::Read => leases::creds(&api, &ctx, role).await,
        ["sys", "leases", "renew", rest @ ..] if op == Op::Write => {
            leases::renew(&api, &ctx, body, &rest.join("/")).await
        }
        ["sys", "leases", "revoke", rest @ ..] if op == Op::Write => {
            leases::revoke(&api, &ctx, body, &rest.join("/")).await
        }
        ["sys", "leases", "lookup"] if op == Op::Write => leases::lookup(&api, &ctx, body).await,
        ["auth", "token", "revoke-self"] if op == Op::Write => auth::revoke_self(&api, &ctx).await,
        ["auth", "token", "renew-self"] if op == Op::Write => {
            auth::renew_self(&api, &ctx, body).await
        }
        ["auth", "token", which @ ("lookup" | "renew" | "revoke")] if op == Op::Write => {
            let Some(as_token) = auth::as_body_token(&ctx, &body) else {
                return reply::error(StatusCode::BAD_REQUEST, "missing token");
            };
            match *which {
                "lookup" => auth::lookup_self(&api, &as_token).await,
                "renew" => auth::renew_self(&api, &as_token, body).await,
                _ => auth::revoke_self(&api, &as_token).await,
            }
        }
        ["auth", "cert", "login"] if op == Op::Write => auth::cert_login(&api, &ctx, body).await,
        ["auth", mount, "login"] if op == Op::Write => auth::login(&api, &ctx, mount, body).await,
        [mount, rest @ ..] if *mount == api.cfg.kv_mount => {
            let mut rest = rest.join("/");
            if trailing_slash && !rest.is_empty() {
                rest.push('/');
            }
            kv::route(&api, &ctx, op, &rest, &query, body).await
        }
        _ => reply::error(StatusCode::NOT_FOUND, "no handler for route"),
    }
}

/// The API's router. Each connection's requests must carry a [`Translated`] extension (its
/// client certificate and peer): `server::http::serve_translated` serves it that way, on the
/// bounded accept loop every keygate listener uses.
pub fn router(api: Arc<VaultApi>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(api)
        .method_not_allowed_fallback(|| async {
            reply::error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
        })
}
