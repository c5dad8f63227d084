//! Answers in Vault's shapes: `{"errors": [...]}` with Vault's status codes, and the envelope
//! (`request_id`, `lease_id`, `data`, `auth`, `warnings`, …) of every successful answer.
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error answer: Vault's status and `{"errors": [message]}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "errors": [message.into()] }).to_string(),
    )
        .into_response()
}

/// A `tonic` status from the translated call, as Vault would answer it.
pub fn status(st: &tonic::Status) -> Response {
    use tonic::Code;
    let msg = st.message();
    match st.code() {
        // Vault's own words for a check-and-set mismatch, which clients match on
        Code::FailedPrecondition if msg.contains("check-and-set") => error(
            StatusCode::BAD_REQUEST,
            format!("check-and-set parameter did not match the current version ({msg})"),
        ),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            error(StatusCode::BAD_REQUEST, msg)
        }
        // Vault answers a missing, expired or revoked token with 403 "permission denied"
        Code::Unauthenticated | Code::PermissionDenied => error(
            StatusCode::FORBIDDEN,
            if msg.is_empty() {
                "permission denied".to_string()
            } else {
                format!("permission denied: {msg}")
            },
        ),
        Code::NotFound => error(StatusCode::NOT_FOUND, msg),
        Code::ResourceExhausted => error(StatusCode::TOO_MANY_REQUESTS, msg),
        Code::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, msg),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

/// A successful answer with `data` (and `warnings` when there are some).
pub fn data(request_id: &str, data: Value, warnings: &[String]) -> Response {
    envelope(request_id, data, Value::Null, warnings)
}

/// A successful answer of a login: `auth` set, `data` null.
pub fn auth(request_id: &str, auth: Value, warnings: &[String]) -> Response {
    envelope(request_id, Value::Null, auth, warnings)
}

/// A successful answer that carries a lease (dynamic credentials, a renewal).
pub fn lease(
    request_id: &str,
    lease_id: &str,
    duration: u64,
    renewable: bool,
    data: Value,
) -> Response {
    json_ok(json!({
        "request_id": request_id,
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": duration,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    }))
}

fn json_ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn envelope(request_id: &str, data: Value, auth: Value, warnings: &[String]) -> Response {
    let body = json!({
        "request_id": request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": auth,
    });
    json_ok(body)
}

/// A write that answers nothing (Vault's 204).
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A plain JSON body (sys endpoints answer without the envelope).
pub fn raw(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A protobuf time as Vault's RFC 3339 text (`""` when absent).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map(|t| {
        crate::audit::writer::rfc3339(
            (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000,
        )
    })
    .unwrap_or_default()
}

/// A protobuf time as RFC 3339, or JSON null when absent.
pub fn time_or_null(t: Option<&prost_types::Timestamp>) -> Value {
    match t {
        Some(_) => Value::String(time(t)),
        None => Value::Null,
    }
}

/// Seconds from now until `t` (0 when past or absent).
pub fn ttl(t: Option<&prost_types::Timestamp>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    t.map(|t| (t.seconds - now).max(0) as u64).unwrap_or(0)
}
