//! `keygate.v1.TokenExchange`: a platform OIDC token for a scoped keygate credential (RFC 8693
//! semantics). Callers learn a stable reason code only; logs and `Admin.Explain` hold the rest.
use super::{ApiError, AppState, RpcScope};
use crate::credential::lease::{Lease, LeaseStore};
use crate::identity::Refusal;
use crate::pb;
use crate::policy::scope::{self, Scope};
use serde_json::{Map, Value};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// RFC 8693 token type of what keygate issues.
pub const ISSUED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCEPTED_SUBJECT_TYPES: &[&str] = &[
    "",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];

/// Claims copied into the credential's `src` and the lease: what ties an access to one
/// workflow run or pod.
const KEY_CLAIMS: &[&str] = &[
    "repository",
    "repository_id",
    "repository_owner",
    "ref",
    "sha",
    "run_id",
    "run_attempt",
    "workflow",
    "job_workflow_ref",
    "environment",
    "event_name",
    "project_path",
    "project_id",
    "pipeline_id",
    "job_id",
    "organization_slug",
    "pipeline_slug",
    "build_number",
    "oidc.circleci.com/project-id",
];

/// The source identity's key claims.
pub fn source_claims(issuer: &str, claims: &Value) -> Value {
    let mut m = Map::new();
    m.insert("iss".into(), Value::String(issuer.to_string()));
    for k in KEY_CLAIMS {
        if let Some(v) = claims.get(*k) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    if let Some(k8s) = claims.get("kubernetes.io") {
        for (name, ptr) in [
            ("namespace", "/namespace"),
            ("serviceaccount", "/serviceaccount/name"),
            ("pod", "/pod/name"),
        ] {
            if let Some(v) = k8s.pointer(ptr) {
                m.insert(name.into(), v.clone());
            }
        }
    }
    Value::Object(m)
}

/// The TokenExchange service.
pub struct ExchangeApi {
    state: Arc<AppState>,
}

impl ExchangeApi {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn exchange(
        &self,
        req: pb::ExchangeRequest,
        scope: &RpcScope,
    ) -> Result<pb::ExchangeResponse, ApiError> {
        scope.resource(format!("role:{}", req.role));
        let token_ref = self.state.audit_ref(req.subject_token.as_bytes());
        scope.caller(|c| c.token_hmac = Some(token_ref));
        let refuse = |refusal: Refusal, detail: String| ApiError::Exchange { refusal, detail };
        // an exchange answers with its stable reason codes, limits included
        if req.subject_token.len() > self.state.limits.max_token_bytes {
            return Err(refuse(
                Refusal::TokenTooLarge,
                format!(
                    "subject_token is {} bytes; the limit is {} (limits.max_token_bytes)",
                    req.subject_token.len(),
                    self.state.limits.max_token_bytes
                ),
            ));
        }
        self.state
            .limits
            .check(&req)
            .map_err(|e| refuse(Refusal::InvalidRequest, e.to_string()))?;
        if !ACCEPTED_SUBJECT_TYPES.contains(&req.subject_token_type.as_str()) {
            return Err(refuse(
                Refusal::InvalidRequest,
                format!("subject_token_type {:?}", req.subject_token_type),
            ));
        }
        if req.role.is_empty() {
            return Err(refuse(Refusal::InvalidRequest, "role is required".into()));
        }
        if !req.audience.is_empty() && req.audience != self.state.credentials.audience() {
            return Err(refuse(
                Refusal::InvalidTarget,
                format!("audience {:?}", req.audience),
            ));
        }
        let requested: Vec<Scope> = req
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|e| refuse(Refusal::InvalidScope, e.to_string()))?;
        let trust = self.state.trust();
        let v = trust
            .verify(&req.subject_token)
            .await
            .map_err(|e| refuse(e.refusal(), e.to_string()))?;
        scope.caller(|c| {
            c.issuer = Some(v.issuer.issuer.clone());
            c.subject = v
                .claims
                .get("sub")
                .and_then(Value::as_str)
                .map(str::to_string);
            c.claims = Some(source_claims(&v.issuer.issuer, &v.claims));
        });
        if !req.issuer.is_empty() && req.issuer != v.issuer.name {
            return Err(refuse(
                Refusal::NoMatchingRole,
                format!(
                    "the token is from issuer {:?}, not {:?} as asked",
                    v.issuer.name, req.issuer
                ),
            ));
        }
        let role = trust
            .role(&req.role)
            .ok_or_else(|| refuse(Refusal::NoMatchingRole, "no role of that name".to_string()))?;
        // a configured name only: the role a caller typed is not recorded as its role
        scope.caller(|c| c.role = Some(role.name.clone()));
        role.check(&v.issuer.name, v.issuer.platform, &v.claims)
            .map_err(|m| {
                refuse(
                    Refusal::NoMatchingRole,
                    format!("role {}: {}", role.name, crate::policy::describe_all(&m)),
                )
            })?;
        let granted = scope::intersect(&requested, &role.scopes);
        if granted.is_empty() {
            return Err(refuse(
                Refusal::ScopeNotAllowed,
                "no requested scope is allowed by the role".into(),
            ));
        }
        let now = self.state.now();
        let wanted = if req.ttl_seconds == 0 {
            role.ttl_secs
        } else {
            req.ttl_seconds
        };
        let mut ttl = wanted.min(role.ttl_secs).min(role.max_ttl_secs);
        let mut max_expires = now + role.max_ttl_secs;
        if role.cap_at_token_expiry {
            ttl = ttl.min(v.exp.saturating_sub(now));
            max_expires = max_expires.min(v.exp);
        }
        if ttl == 0 {
            return Err(refuse(
                Refusal::TokenExpired,
                "no lifetime left under the platform token's expiry".into(),
            ));
        }
        let sub = v
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let lease = Lease {
            lease_id: LeaseStore::new_id(&role.name, &sub),
            role: role.name.clone(),
            sub,
            scopes: granted.iter().map(|s| s.to_string()).collect(),
            src: source_claims(&v.issuer.issuer, &v.claims),
            issued_at: now,
            expires_at: now + ttl,
            max_expires_at: max_expires,
            revoked_at: None,
            db: None,
        };
        // the replay marker and the lease are changes: their record comes first
        scope.resource(format!("lease:{}", lease.lease_id));
        scope.caller(|c| c.lease_id = Some(lease.lease_id.clone()));
        scope.intent().await?;
        trust
            .consume(&v)
            .await
            .map_err(|e| refuse(e.refusal(), e.to_string()))?;
        self.state.credentials.leases.create(&lease).await?;
        let token = self
            .state
            .credentials
            .mint(&lease, now + ttl)
            .await
            .map_err(|e| refuse(Refusal::ServerError, e.to_string()))?;
        tracing::info!(role = %lease.role, lease_id = %lease.lease_id, ttl, scopes = ?lease.scopes, "credential issued");
        Ok(pb::ExchangeResponse {
            access_token: token,
            issued_token_type: ISSUED_TOKEN_TYPE.into(),
            token_type: "Bearer".into(),
            expires_in: ttl,
            scopes: lease.scopes,
            lease_id: lease.lease_id,
        })
    }
}

#[tonic::async_trait]
impl pb::token_exchange_server::TokenExchange for ExchangeApi {
    async fn exchange(
        &self,
        request: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        // metric labels only from configured role names: anything else is `unknown`
        let role = self
            .state
            .trust()
            .role(&req.role)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| crate::metrics::UNKNOWN.to_string());
        let result = self.exchange(req, &scope).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ApiError::Exchange { refusal, .. }) => refusal.code(),
            Err(_) => "error",
        };
        self.state.metrics.exchange(&role, outcome);
        scope.finish(result)
    }
}
