//! `sys/health`, `sys/seal-status`, `sys/internal/ui/mounts/<path>`: what Vault clients probe
//! before anything else. Every keygate replica is active and never sealed; one that is shutting
//! down answers as sealed.
use super::{query_param, reply, Ctx, Op, VaultApi};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

fn code(query: &str, name: &str, default: u16) -> StatusCode {
    query_param(query, name)
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::from_u16(default).unwrap_or(StatusCode::OK))
}

/// `GET|HEAD /v1/sys/health`, honouring `activecode` and `sealedcode` (`standbyok`,
/// `standbycode` and `perfstandbyok` change nothing: no keygate replica is a standby).
pub fn health(api: &VaultApi, op: Op, query: &str) -> Response {
    let sealed = api.stopping();
    let status = if sealed {
        code(query, "sealedcode", 503)
    } else {
        code(query, "activecode", 200)
    };
    if op == Op::Head {
        return status.into_response();
    }
    if op != Op::Read {
        return reply::error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    reply::raw(
        status,
        json!({
            "initialized": true,
            "sealed": sealed,
            "standby": false,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": now,
            "version": version(),
            "cluster_name": "keygate",
            "cluster_id": "keygate",
        }),
    )
}

fn version() -> String {
    format!("keygate-{}", env!("CARGO_PKG_VERSION"))
}

/// `GET /v1/sys/seal-status`.
pub fn seal_status() -> Response {
    reply::raw(
        StatusCode::OK,
        json!({
            "type": "shamir",
            "initialized": true,
            "sealed": false,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": version(),
            "build_date": "",
            "migration": false,
            "recovery_seal": false,
            "storage_type": "keygate",
            "cluster_name": "keygate",
            "cluster_id": "keygate",
        }),
    )
}

/// `GET /v1/sys/internal/ui/mounts/<path>`: the mount a path is under and its KV version, for
/// any valid token (what clients ask to tell KV v1 from v2).
pub async fn ui_mount(api: &VaultApi, ctx: &Ctx, path: &str) -> Response {
    if let Err(r) = super::auth::lookup(api, ctx).await {
        return r;
    }
    let mount = &api.cfg.kv_mount;
    if path.split('/').next() != Some(mount.as_str()) {
        return reply::error(
            StatusCode::BAD_REQUEST,
            format!("preflight capability check returned 403, please ensure client's policies grant access to path \"{path}/\""),
        );
    }
    reply::data(
        &ctx.request_id,
        json!({
            "path": format!("{mount}/"),
            "type": "kv",
            "description": "keygate secrets",
            "options": { "version": api.cfg.kv_version.to_string() },
            "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
            "local": false,
            "seal_wrap": false,
            "external_entropy_access": false,
            "accessor": format!("kv_{mount}"),
            "uuid": format!("keygate-kv-{mount}"),
        }),
        &[],
    )
}

/// `GET /v1/sys/mounts` (admin: `Admin.ServerInfo` decides): the KV mount and `database/`.
pub async fn mounts(api: &VaultApi, ctx: &Ctx) -> Response {
    let req = match ctx.request(crate::pb::ServerInfoRequest {}) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(st) = crate::pb::admin_client::AdminClient::new(api.grpc())
        .server_info(req)
        .await
    {
        return reply::status(&st);
    }
    let mount = &api.cfg.kv_mount;
    let kv = json!({
        "type": "kv",
        "description": "keygate secrets",
        "options": { "version": api.cfg.kv_version.to_string() },
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        "local": false,
        "seal_wrap": false,
        "accessor": format!("kv_{mount}"),
        "uuid": format!("keygate-kv-{mount}"),
    });
    let db = json!({
        "type": "database",
        "description": "keygate dynamic PostgreSQL users",
        "options": null,
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        "local": false,
        "seal_wrap": false,
        "accessor": "database_keygate",
        "uuid": "keygate-database",
    });
    let mut m = serde_json::Map::new();
    m.insert(format!("{mount}/"), kv);
    m.insert("database/".into(), db);
    // older clients read the mounts at the top level, newer ones under `data`
    let mut body = m.clone();
    body.insert("data".into(), serde_json::Value::Object(m));
    body.insert("request_id".into(), json!(ctx.request_id));
    reply::raw(StatusCode::OK, serde_json::Value::Object(body))
}
