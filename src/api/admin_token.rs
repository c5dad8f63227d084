//! `Admin.IssueAdminToken`: a short-lived credential for the administrator a client certificate
//! proves (what Vault's `auth/cert/login` answers). It is an ordinary keygate credential — a
//! lease of its own, revocable, checked on every call — whose scopes cover every capability on
//! every path the certificate itself may reach (keygate's reserved `_sys/` paths stay out of
//! reach of any scope). Only the certificate may ask: a credential, even this one, cannot mint
//! another, so a leaked token dies with its lease.
use super::{ApiError, AppState, RpcScope};
use crate::credential::lease::{Lease, LeaseStore};
use crate::pb;

/// The lease role of admin tokens (configured role names cannot start with `_`).
pub const ROLE: &str = "_admin-cert";

/// Lifetime when none is asked for.
pub const DEFAULT_TTL_SECS: u64 = 15 * 60;

/// The longest lifetime an admin token gets (renewals included): break-glass, not a session.
pub const MAX_TTL_SECS: u64 = 60 * 60;

/// The scopes of an admin token: every path capability on `**`, and the database roles and
/// static roles configured now (`db:` scopes name one role each).
pub fn scopes(state: &AppState) -> Vec<String> {
    let mut out: Vec<String> = crate::policy::scope::Capability::PATH
        .iter()
        .map(|c| format!("{}:**", c.as_str()))
        .collect();
    for d in state.databases.configs().iter() {
        out.extend(d.roles.iter().map(|r| format!("db:{}", r.name)));
        out.push(format!("db-rotate:{}/*", d.name));
    }
    out
}

/// Issues the token for the certificate principal of `scope`.
pub async fn issue(
    state: &AppState,
    scope: &RpcScope,
    req: pb::IssueAdminTokenRequest,
) -> Result<pb::IssueAdminTokenResponse, ApiError> {
    state.limits.check(&req)?;
    let who = scope.principal()?;
    let crate::authz::Principal::Admin(subject) = who else {
        // a credential (admin-scoped or not) cannot extend itself into a new one
        return Err(crate::authz::AuthzError::PermissionDenied.into());
    };
    let ttl = match req.ttl_seconds {
        0 => DEFAULT_TTL_SECS,
        t => t.min(MAX_TTL_SECS),
    };
    let now = state.now();
    let lease = Lease {
        lease_id: LeaseStore::new_id(ROLE, subject),
        role: ROLE.to_string(),
        sub: subject.clone(),
        scopes: scopes(state),
        src: serde_json::json!({ "tls_client": subject }),
        issued_at: now,
        expires_at: now + ttl,
        max_expires_at: now + ttl,
        revoked_at: None,
        db: None,
    };
    scope.resource(format!("lease:{}", lease.lease_id));
    scope.caller(|c| {
        c.role = Some(ROLE.to_string());
        c.lease_id = Some(lease.lease_id.clone());
    });
    scope.intent().await?;
    state.credentials.leases.create(&lease).await?;
    let token = state
        .credentials
        .mint(&lease, lease.expires_at)
        .await
        .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
    tracing::info!(lease_id = %lease.lease_id, ttl, "admin credential issued to a client certificate");
    Ok(pb::IssueAdminTokenResponse {
        access_token: token,
        expires_in: ttl,
        scopes: lease.scopes,
        lease_id: lease.lease_id,
    })
}
