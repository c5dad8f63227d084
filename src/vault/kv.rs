//! The KV mount: version 2 (`data/`, `metadata/`, `delete/`, `undelete/`, `destroy/`,
//! `config`) or version 1 (the path itself), onto keygate's versioned secrets. A Vault path
//! under the mount is keygate's path: `secret/data/prod/api` is `prod/api`. Values are strings
//! (keygate fields are bytes: a value that is not UTF-8 reads back as base64 with a warning;
//! a non-string JSON value is stored as its JSON text).
use super::reply::time;
use super::{reply, Body, Ctx, Op, VaultApi};
use crate::pb;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};

type Secrets = pb::secrets_client::SecretsClient<super::Grpc>;

fn client(api: &VaultApi) -> Secrets {
    pb::secrets_client::SecretsClient::new(api.grpc())
}

/// Dispatches a request under the mount (`rest` is the path after it).
pub async fn route(
    api: &VaultApi,
    ctx: &Ctx,
    op: Op,
    rest: &str,
    query: &str,
    body: Body,
) -> Response {
    if api.cfg.kv_version == 1 {
        return match op {
            Op::Read => read(api, ctx, rest, 0, 1).await,
            Op::Write => write(api, ctx, rest, body, 1).await,
            Op::Delete => delete(api, ctx, rest, body, "delete").await,
            Op::List => list(api, ctx, rest).await,
            Op::Head => reply::error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation"),
        };
    }
    let (kind, path) = rest.split_once('/').unwrap_or((rest, ""));
    match (kind, op) {
        ("config", Op::Read) => reply::data(
            &ctx.request_id,
            json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0}),
            &[],
        ),
        ("data", Op::Read) => {
            let version = super::query_param(query, "version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            read(api, ctx, path, version, 2).await
        }
        ("data", Op::Write) => write(api, ctx, path, body, 2).await,
        ("data", Op::Delete) => delete(api, ctx, path, body, "delete").await,
        ("delete" | "undelete" | "destroy", Op::Write) => delete(api, ctx, path, body, kind).await,
        ("metadata", Op::List) => list(api, ctx, path).await,
        ("metadata", Op::Read) => metadata(api, ctx, path).await,
        ("config" | "data" | "metadata" | "delete" | "undelete" | "destroy", _) => {
            reply::error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
        }
        _ => reply::error(StatusCode::NOT_FOUND, "no handler for route"),
    }
}

fn version_metadata(v: Option<&pb::VersionMetadata>, custom: &HashMap<String, String>) -> Value {
    let custom = if custom.is_empty() {
        Value::Null
    } else {
        json!(custom)
    };
    match v {
        Some(v) => json!({
            "created_time": time(v.created_at.as_ref()),
            "custom_metadata": custom,
            "deletion_time": time(v.deleted_at.as_ref()),
            "destroyed": v.destroyed,
            "version": v.version,
        }),
        None => Value::Null,
    }
}

async fn read(api: &VaultApi, ctx: &Ctx, path: &str, version: u64, kv: u8) -> Response {
    let req = match ctx.request(pb::GetSecretRequest {
        path: path.to_string(),
        version,
        previous: false,
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match client(api).get(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    let mut warnings = Vec::new();
    let mut data = Map::new();
    let mut names: Vec<&String> = got.fields.keys().collect();
    names.sort();
    for k in names {
        let v = &got.fields[k];
        let value = match std::str::from_utf8(v) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => {
                use base64::Engine;
                warnings.push(format!("field {k:?} is not UTF-8: its value is base64"));
                Value::String(base64::engine::general_purpose::STANDARD.encode(v))
            }
        };
        data.insert(k.clone(), value);
    }
    if kv == 1 {
        return reply::data(&ctx.request_id, Value::Object(data), &warnings);
    }
    let custom = got
        .metadata
        .as_ref()
        .map(|m| m.custom_metadata.clone())
        .unwrap_or_default();
    reply::data(
        &ctx.request_id,
        json!({
            "data": data,
            "metadata": version_metadata(got.version_metadata.as_ref(), &custom),
        }),
        &warnings,
    )
}

async fn write(api: &VaultApi, ctx: &Ctx, path: &str, mut body: Body, kv: u8) -> Response {
    // v2: {"data": {...}, "options": {"cas": N}}; v1: the fields themselves
    let (fields, cas) = if kv == 1 {
        (body.json.clone(), None)
    } else {
        body.ignore_unknown(&["data", "options"]);
        let fields = match body.json.get("data") {
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return reply::error(StatusCode::BAD_REQUEST, "data must be a JSON object"),
            None => return reply::error(StatusCode::BAD_REQUEST, "no data provided"),
        };
        let cas = body
            .json
            .get("options")
            .and_then(|o| o.get("cas"))
            .and_then(|c| {
                c.as_u64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            });
        (fields, cas)
    };
    let fields: HashMap<String, Vec<u8>> = fields
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect();
    let req = match ctx.request(pb::PutSecretRequest {
        path: path.to_string(),
        fields,
        cas,
        ..Default::default()
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let put = match client(api).put(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    if kv == 1 {
        return reply::no_content();
    }
    let now = crate::audit::writer::now_rfc3339();
    reply::data(
        &ctx.request_id,
        json!({
            "created_time": now,
            "custom_metadata": null,
            "deletion_time": "",
            "destroyed": false,
            "version": put.version,
        }),
        &body.warnings,
    )
}

async fn delete(api: &VaultApi, ctx: &Ctx, path: &str, body: Body, kind: &str) -> Response {
    let versions: Vec<u64> = body
        .json
        .get("versions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if kind != "delete" && versions.is_empty() {
        return reply::error(StatusCode::BAD_REQUEST, "no version number provided");
    }
    let req = match ctx.request(pb::VersionsRequest {
        path: path.to_string(),
        versions,
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut c = client(api);
    let done = match kind {
        "undelete" => c.undelete(req).await,
        "destroy" => c.destroy(req).await,
        _ => c.delete(req).await,
    };
    match done {
        Ok(_) => reply::no_content(),
        Err(st) => reply::status(&st),
    }
}

/// The secrets under `prefix`, as Vault lists them: the names one level down, folders ending
/// in `/`; none is a 404.
async fn list(api: &VaultApi, ctx: &Ctx, prefix: &str) -> Response {
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let req = match ctx.request(pb::ListSecretsRequest {
        prefix: prefix.clone(),
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match client(api).list(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    let keys: BTreeSet<String> = got
        .secrets
        .iter()
        .filter_map(|s| s.path.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => rest.to_string(),
        })
        .collect();
    if keys.is_empty() {
        return reply::error(StatusCode::NOT_FOUND, "");
    }
    reply::data(&ctx.request_id, json!({ "keys": keys }), &[])
}

/// `GET <mount>/metadata/<path>`: the secret's versions.
async fn metadata(api: &VaultApi, ctx: &Ctx, path: &str) -> Response {
    let req = match ctx.request(pb::ListSecretsRequest {
        prefix: path.to_string(),
    }) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let got = match client(api).list(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => return reply::status(&st),
    };
    let Some(m) = got.secrets.into_iter().find(|s| s.path == path) else {
        return reply::error(StatusCode::NOT_FOUND, "");
    };
    let versions: Map<String, Value> = m
        .versions
        .iter()
        .map(|v| {
            (
                v.version.to_string(),
                json!({
                    "created_time": time(v.created_at.as_ref()),
                    "deletion_time": time(v.deleted_at.as_ref()),
                    "destroyed": v.destroyed,
                }),
            )
        })
        .collect();
    reply::data(
        &ctx.request_id,
        json!({
            "cas_required": false,
            "created_time": time(m.created_at.as_ref()),
            "current_version": m.current_version,
            "custom_metadata": if m.custom_metadata.is_empty() { Value::Null } else { json!(m.custom_metadata) },
            "delete_version_after": "0s",
            "max_versions": m.max_versions,
            "oldest_version": m.oldest_version,
            "updated_time": time(m.updated_at.as_ref()),
            "versions": versions,
        }),
        &[],
    )
}
