//! `auth/<mount>/login` (a keygate exchange) and `auth/token/lookup-self` (the credential's
//! lease).
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
    let mut metadata = Map::new();
    metadata.insert("role".into(), Value::String(role.to_string()));
    reply::auth(
        &ctx.request_id,
        json!({
            "client_token": got.access_token,
            "accessor": got.lease_id,
            "policies": got.scopes,
            "token_policies": got.scopes,
            "identity_policies": null,
            "metadata": metadata,
            "lease_duration": got.expires_in,
            "renewable": true,
            "entity_id": "",
            "token_type": "service",
            "orphan": true,
            "mfa_requirement": null,
            "num_uses": 0,
        }),
        &body.warnings,
    )
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
    let mut meta = Map::new();
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
