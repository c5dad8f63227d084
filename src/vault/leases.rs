//! `database/creds/<role>` (a dynamic PostgreSQL user behind a lease) and `sys/leases/renew|
//! revoke|lookup`. Lease ids are keygate's (`db:<role>/<user>`), opaque to clients.
use super::reply::{time_or_null as rfc3339, ttl};
use super::{reply, Body, Ctx, VaultApi};
use crate::pb;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

/// `GET /v1/database/creds/<role>`: `DatabaseCredentials.Generate`.
pub async fn creds(api: &VaultApi, ctx: &Ctx, role: &str) -> Response {
    let req = match ctx.request(pb::GenerateDatabaseCredentialsRequest {
        role: role.to_string(),
        ttl_seconds: 0,
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match pb::database_credentials_client::DatabaseCredentialsClient::new(api.grpc())
        .generate(req)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    reply::lease(
        &ctx.request_id,
        &got.lease_id,
        ttl(got.expires_at.as_ref()),
        true,
        json!({ "username": got.username, "password": got.password }),
    )
}

fn lease_id<'a>(body: &'a Body, from_path: &'a str) -> Option<&'a str> {
    body.str("lease_id")
        .or((!from_path.is_empty()).then_some(from_path))
}

/// Vault's `increment`: seconds as a number or a string, or a duration (`"1h"`); absent = 0
/// (the lease's default).
#[allow(clippy::result_large_err)] // the error is the answer, returned at once
pub fn increment(body: &Body) -> Result<u64, Response> {
    match body.json.get("increment") {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_str().and_then(|s| {
                    s.trim()
                        .parse()
                        .ok()
                        .or_else(|| crate::duration::parse_duration(s).ok())
                })
            })
            .ok_or_else(|| {
                reply::error(
                    StatusCode::BAD_REQUEST,
                    "increment must be a number of seconds or a duration like \"1h\"",
                )
            }),
    }
}

/// `PUT /v1/sys/leases/renew` `{lease_id, increment}`: `Leases.Renew`.
pub async fn renew(api: &VaultApi, ctx: &Ctx, mut body: Body, from_path: &str) -> Response {
    body.ignore_unknown(&["lease_id", "increment"]);
    let Some(id) = lease_id(&body, from_path).map(str::to_string) else {
        return reply::error(StatusCode::BAD_REQUEST, "lease_id must be specified");
    };
    let increment = match increment(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let req = match ctx.request(pb::RenewLeaseRequest {
        lease_id: id.clone(),
        increment_seconds: increment,
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match pb::leases_client::LeasesClient::new(api.grpc())
        .renew(req)
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let renewable = r.lease.as_ref().map(|l| l.renewable).unwrap_or(false);
            reply::lease(
                &ctx.request_id,
                &id,
                r.expires_in,
                renewable,
                serde_json::Value::Null,
            )
        }
        Err(st) => reply::status(&st),
    }
}

/// `PUT /v1/sys/leases/revoke` `{lease_id}`: `Leases.Revoke` (204).
pub async fn revoke(api: &VaultApi, ctx: &Ctx, mut body: Body, from_path: &str) -> Response {
    body.ignore_unknown(&["lease_id", "sync"]);
    let Some(id) = lease_id(&body, from_path).map(str::to_string) else {
        return reply::error(StatusCode::BAD_REQUEST, "lease_id must be specified");
    };
    let req = match ctx.request(pb::RevokeLeaseRequest { lease_id: id }) {
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

/// `PUT /v1/sys/leases/lookup` `{lease_id}`: `Leases.Lookup`.
pub async fn lookup(api: &VaultApi, ctx: &Ctx, body: Body) -> Response {
    let Some(id) = body.str("lease_id").map(str::to_string) else {
        return reply::error(StatusCode::BAD_REQUEST, "missing lease ID");
    };
    let req = match ctx.request(pb::LookupLeaseRequest {
        lease_id: id.clone(),
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match pb::leases_client::LeasesClient::new(api.grpc())
        .lookup(req)
        .await
    {
        Ok(r) => {
            let l = r.into_inner();
            // Vault forgets a revoked lease; keygate keeps it for the record, and answers as
            // Vault does
            if l.revoked_at.is_some() {
                return reply::error(StatusCode::BAD_REQUEST, "invalid lease");
            }
            reply::data(
                &ctx.request_id,
                json!({
                    "id": id,
                    "issue_time": rfc3339(l.issued_at.as_ref()),
                    "expire_time": rfc3339(l.expires_at.as_ref()),
                    "last_renewal": null,
                    "renewable": l.renewable,
                    "ttl": ttl(l.expires_at.as_ref()),
                }),
                &body.warnings,
            )
        }
        Err(st) => reply::status(&st),
    }
}
