//! `auth/<mount>/login` (a keygate exchange), `auth/cert/login` (an admin certificate's
//! token) and `auth/token/*-self` (the credential's own lease).
use super::reply::{time_or_null as rfc3339, ttl};
use super::{reply, Body, Ctx, VaultApi};
use crate::pb;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

/// Login mounts that take a token of any configured issuer (the role decides which it accepts);
/// any other mount name is an issuer's `name`, and takes only that issuer's tokens.
const ANY_ISSUER_MOUNTS: &[&str] = &["jwt", "oidc", "kubernetes"];

/// `POST /v1/auth/<mount>/login` with `{role, jwt}`: the exchange of a platform token for a
/// keygate credential, answered as Vault's `auth` block.
pub async fn login(api: &VaultApi, ctx: &Ctx, mount: &str, mut body: Body) -> Response {
    body.ignore_unknown(&["role", "jwt"]);
    let (Some(role), Some(jwt)) = (body.str("role"), body.str("jwt")) else {
        return reply::error(StatusCode::BAD_REQUEST, "missing role or jwt");
    };
    let req = match ctx.request(pb::ExchangeRequest {
        subject_token: jwt.to_string(),
        subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
        role: role.to_string(),
        issuer: if ANY_ISSUER_MOUNTS.contains(&mount) {
            String::new()
        } else {
            mount.to_string()
        },
        ..Default::default()
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match pb::token_exchange_client::TokenExchangeClient::new(api.grpc())
        .exchange(req)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    reply::auth(
        &ctx.request_id,
        auth_block(
            &got.access_token,
            &got.lease_id,
            &got.scopes,
            got.expires_in,
            true,
        ),
        &body.warnings,
    )
}

/// Vault's `auth` block for a keygate credential.
fn auth_block(
    token: &str,
    lease_id: &str,
    scopes: &[String],
    lease_duration: u64,
    renewable: bool,
) -> Value {
    json!({
        "client_token": token,
        "accessor": lease_id,
        "policies": scopes,
        "token_policies": scopes,
        "identity_policies": null,
        "metadata": metadata(token),
        "lease_duration": lease_duration,
        "renewable": renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    })
}

/// Vault's token `metadata`: the role and the source identity's key claims (`repository`,
/// `ref`, `namespace`, …) as strings, which is how Go clients decode it (string → string).
/// Only for a token keygate has just issued or verified; its payload is read, not checked.
fn metadata(token: &str) -> Map<String, Value> {
    use base64::Engine;
    let mut out = Map::new();
    let claims: Option<Value> = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(claims) = claims else { return out };
    if let Some(r) = claims.get("role").and_then(Value::as_str) {
        out.insert("role".into(), Value::String(r.to_string()));
    }
    if let Some(src) = claims.get("src").and_then(Value::as_object) {
        for (k, v) in src {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            out.insert(k.clone(), Value::String(s));
        }
    }
    out
}

/// `POST /v1/auth/cert/login`: the administrator proved by this connection's client
/// certificate gets a short-lived admin credential (`Admin.IssueAdminToken`). A token sent
/// along is ignored: the certificate alone decides.
pub async fn cert_login(api: &VaultApi, ctx: &Ctx, mut body: Body) -> Response {
    body.ignore_unknown(&["name"]);
    if ctx.conn.cert_subject.is_none() {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "client certificate must be supplied",
        );
    }
    let by_cert = ctx.with_token(None);
    let req = match by_cert.request(pb::IssueAdminTokenRequest::default()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match pb::admin_client::AdminClient::new(api.grpc())
        .issue_admin_token(req)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    reply::auth(
        &ctx.request_id,
        auth_block(
            &got.access_token,
            &got.lease_id,
            &got.scopes,
            got.expires_in,
            false,
        ),
        &body.warnings,
    )
}

/// `POST /v1/auth/token/renew-self` `{increment}`: `Leases.Renew` of the caller's own lease.
/// The token the caller holds keeps working until the renewed expiry (keygate checks a
/// credential against its lease on every call).
pub async fn renew_self(api: &VaultApi, ctx: &Ctx, mut body: Body) -> Response {
    body.ignore_unknown(&["increment", "token"]);
    let Some(token) = ctx.token.clone() else {
        return reply::error(StatusCode::FORBIDDEN, "permission denied");
    };
    let increment = match super::leases::increment(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req = match ctx.request(pb::RenewLeaseRequest {
        lease_id: String::new(),
        increment_seconds: increment,
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match pb::leases_client::LeasesClient::new(api.grpc())
        .renew(req)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    let lease = got.lease.unwrap_or_default();
    reply::auth(
        &ctx.request_id,
        auth_block(
            &token,
            &lease.lease_id,
            &lease.scopes,
            got.expires_in,
            lease.renewable,
        ),
        &body.warnings,
    )
}

/// `auth/token/renew|lookup|revoke` with `{token}`: the same as the `-self` call made with
/// that token (possessing a token is what lets a caller act on it).
pub fn as_body_token(ctx: &Ctx, body: &Body) -> Option<Ctx> {
    body.str("token")
        .filter(|t| !t.is_empty())
        .map(|t| ctx.with_token(Some(t.to_string())))
}

/// The caller's own lease (its token must be a valid, unrevoked keygate credential).
#[allow(clippy::result_large_err)] // the error is the answer, returned at once
pub async fn lookup(api: &VaultApi, ctx: &Ctx) -> Result<pb::Lease, Response> {
    if ctx.token.is_none() && ctx.conn.cert_subject.is_none() {
        return Err(reply::error(StatusCode::FORBIDDEN, "permission denied"));
    }
    let req = ctx.request(pb::LookupLeaseRequest::default())?;
    pb::leases_client::LeasesClient::new(api.grpc())
        .lookup(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|st| match st.code() {
            // an admin certificate without a credential has no lease of its own
            tonic::Code::NotFound | tonic::Code::InvalidArgument
                if ctx.conn.cert_subject.is_some() =>
            {
                reply::error(StatusCode::FORBIDDEN, "permission denied")
            }
            _ => reply::status(&st),
        })
}

/// `GET /v1/auth/token/lookup-self`: what External Secrets Operator's store validation reads.
pub async fn lookup_self(api: &VaultApi, ctx: &Ctx) -> Response {
    let lease = match lookup(api, ctx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let ttl = ttl(lease.expires_at.as_ref());
    let mut meta = ctx.token.as_deref().map(metadata).unwrap_or_default();
    meta.insert("role".into(), Value::String(lease.role.clone()));
    meta.insert("subject".into(), Value::String(lease.subject.clone()));
    reply::data(
        &ctx.request_id,
        json!({
            "id": ctx.token.clone().unwrap_or_default(),
            "accessor": lease.lease_id,
            "policies": lease.scopes,
            "path": "auth/jwt/login",
            "display_name": lease.subject,
            "meta": meta,
            "type": "service",
            "ttl": ttl,
            "creation_ttl": ttl,
            "explicit_max_ttl": 0,
            "expire_time": rfc3339(lease.expires_at.as_ref()),
            "issue_time": rfc3339(lease.issued_at.as_ref()),
            "renewable": lease.renewable,
            "orphan": true,
            "num_uses": 0,
            "entity_id": "",
        }),
        &[],
    )
}

/// `POST /v1/auth/token/revoke-self`: `Leases.Revoke` of the caller's credential; every
/// replica refuses it from then on.
pub async fn revoke_self(api: &VaultApi, ctx: &Ctx) -> Response {
    if ctx.token.is_none() {
        return reply::error(StatusCode::FORBIDDEN, "permission denied");
    }
    let req = match ctx.request(pb::RevokeLeaseRequest::default()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match pb::leases_client::LeasesClient::new(api.grpc())
        .revoke(req)
        .await
    {
        Ok(_) => reply::no_content(),
        Err(st) => reply::status(&st),
    }
}
