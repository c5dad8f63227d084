//! gRPC handlers. They translate between protobuf and the domain modules and hold no policy.
//! [`ApiError::to_status`] is the one place that decides what a caller may learn from an error.
pub mod admin;
pub mod database;
pub mod exchange;
pub mod leases;
pub mod rotation;
pub mod secrets;

use crate::authz::{Authorizer, AuthzError, Caller};
use crate::credential::Credentials;
use crate::identity::trust::Trust;
use crate::metrics::Metrics;
use crate::secrets::{SecretStore, SecretsError};
use crate::storage::StorageError;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Request, Response, Status};

/// Reloads the daemon's config; implemented by the server.
pub trait ConfigReload: Send + Sync {
    /// Re-reads the config file: `Ok(settings needing a restart)` or the reason it was refused.
    fn reload(&self) -> Result<Vec<String>, String>;
}

/// What every handler shares.
pub struct AppState {
    /// Secrets.
    pub store: Arc<SecretStore>,
    /// Access decisions.
    pub authz: Arc<dyn Authorizer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Config reload.
    pub reload: Arc<dyn ConfigReload>,
    /// This replica's id.
    pub node_id: String,
    /// Turns true when the daemon shuts down; open streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Credentials (minting, checking, leases).
    pub credentials: Arc<Credentials>,
    /// Issuers and roles; replaced whole on config reload.
    pub trust: Arc<std::sync::RwLock<Arc<Trust>>>,
    /// The clock.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// The durable audit log.
    pub audit: Arc<crate::audit::writer::AuditWriter>,
    /// Key of the `hmac-sha256:` references in audit records.
    pub audit_keys: Arc<crate::audit::AuditKeys>,
    /// Databases (generated users, static roles).
    pub databases: Arc<crate::database::Databases>,
    /// Scheduled rotation.
    pub rotator: Arc<crate::rotation::Rotator>,
}

/// What a handler learned for its audit record.
#[derive(Default)]
pub struct Audit {
    /// Who, as far as known.
    pub caller: crate::audit::record::CallerInfo,
    /// Paths, versions, roles, leases touched.
    pub resources: Vec<String>,
}

impl Audit {
    /// Adds a resource.
    pub fn resource(&mut self, r: impl Into<String>) {
        self.resources.push(r.into());
    }
}

impl AppState {
    /// The current issuers and roles.
    pub fn trust(&self) -> Arc<Trust> {
        match self.trust.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Seconds since the epoch.
    pub fn now(&self) -> u64 {
        self.clock.now_millis() / 1000
    }
}

/// Every error a handler can produce.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused by the authorizer.
    #[error(transparent)]
    Authz(#[from] AuthzError),
    /// From the secret store.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// A precondition on the server side (e.g. a bad KEK file for rotation).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A token exchange refused: the stable reason code is all the caller learns.
    #[error("exchange refused: {code} ({detail})")]
    Exchange {
        /// Stable reason code.
        code: &'static str,
        /// Full reason, for logs only.
        detail: String,
    },
    /// Something a caller asked for that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A database keygate administers.
    #[error(transparent)]
    Database(#[from] crate::database::DbError),
    /// Rotation.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
}

impl ApiError {
    /// The status a caller sees. Messages name paths and versions, never values or policy.
    pub fn to_status(&self) -> Status {
        match self {
            ApiError::Authz(e @ AuthzError::Unauthenticated) => {
                Status::unauthenticated(e.to_string())
            }
            ApiError::Authz(e @ AuthzError::PermissionDenied) => {
                Status::permission_denied(e.to_string())
            }
            ApiError::Authz(e @ AuthzError::BadCredential(_)) => {
                Status::unauthenticated(e.to_string())
            }
            ApiError::Authz(e @ AuthzError::Unavailable) => Status::unavailable(e.to_string()),
            ApiError::Exchange { code, .. } => {
                let c = match *code {
                    "invalid_request" | "invalid_scope" => Code::InvalidArgument,
                    "no_matching_role" | "scope_not_allowed" => Code::PermissionDenied,
                    "issuer_unavailable" | "server_error" => Code::Unavailable,
                    _ => Code::Unauthenticated,
                };
                Status::new(c, *code)
            }
            ApiError::NotFound(m) => Status::not_found(m.clone()),
            ApiError::Rotation(e) => {
                use crate::rotation::RotationError as R;
                match e {
                    R::NoPolicy(_) => Status::not_found(e.to_string()),
                    R::InProgress(_) => Status::aborted(e.to_string()),
                    R::Invalid(_) => Status::invalid_argument(e.to_string()),
                    R::Step { .. } => Status::failed_precondition(e.to_string()),
                    R::Audit => Status::unavailable(e.to_string()),
                    R::Secrets(s) => secrets_status(s),
                    R::Storage(StorageError::Conflict) => {
                        Status::aborted("concurrent change; retry")
                    }
                    R::Storage(StorageError::Backend(_)) => {
                        Status::unavailable("storage is unavailable")
                    }
                }
            }
            ApiError::Database(e) => {
                use crate::database::DbError as D;
                match e {
                    D::UnknownRole(_) => Status::not_found(e.to_string()),
                    D::Lease(m) => Status::failed_precondition(m.clone()),
                    D::Invalid(_) => Status::internal("database statement template error"),
                    D::Storage(StorageError::Conflict) => {
                        Status::aborted("concurrent change; retry")
                    }
                    // server-side details (host names, SQL errors) stay in the operator's log
                    D::UnknownDatabase(_) | D::Secret { .. } | D::Statement { .. } => {
                        Status::failed_precondition(
                            "the database refused the operation (see the keygate log)",
                        )
                    }
                    D::Unavailable { .. } | D::Storage(_) => {
                        Status::unavailable("the database is unavailable")
                    }
                }
            }
            ApiError::Storage(StorageError::Conflict) => {
                Status::aborted("concurrent change; retry")
            }
            ApiError::Storage(StorageError::Backend(_)) => {
                Status::unavailable("storage is unavailable")
            }
            ApiError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            ApiError::Secrets(e) => secrets_status(e),
        }
    }
}

/// What a caller sees of a secret-store error.
fn secrets_status(e: &SecretsError) -> Status {
    let code = match e {
        SecretsError::InvalidArgument(_) => Code::InvalidArgument,
        SecretsError::NotFound(_)
        | SecretsError::VersionNotFound { .. }
        | SecretsError::VersionDeleted { .. }
        | SecretsError::VersionDestroyed { .. } => Code::NotFound,
        SecretsError::CasMismatch { .. }
        | SecretsError::RotationInProgress(_)
        | SecretsError::VersionPending { .. } => Code::FailedPrecondition,
        SecretsError::Integrity { .. } | SecretsError::Corrupt(_) => Code::DataLoss,
        SecretsError::Kek(_) => Code::FailedPrecondition,
        SecretsError::Contention(_) => Code::Aborted,
        SecretsError::Storage(StorageError::Conflict) => Code::Aborted,
        SecretsError::Storage(StorageError::Backend(_)) => Code::Unavailable,
    };
    match e {
        // Backend details (file names, OS errors) stay in the operator's log.
        SecretsError::Storage(StorageError::Backend(_)) => {
            Status::new(code, "storage is unavailable")
        }
        _ => Status::new(code, e.to_string()),
    }
}

/// What the connection says about the caller.
pub fn caller_of<T>(req: &Request<T>) -> Caller {
    let cert_subject = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(crate::tls::cert_subject));
    let bearer = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| crate::sensitive::SecretBytes::new(token.trim().as_bytes().to_vec()))
        });
    Caller {
        cert_subject,
        bearer,
        peer: req.remote_addr(),
    }
}

impl AppState {
    /// Authenticates the caller and notes who it is for the audit record.
    pub async fn who(
        &self,
        caller: &Caller,
        audit: &mut Audit,
    ) -> Result<crate::authz::Principal, ApiError> {
        let p = self.authz.authenticate(caller).await?;
        match &p {
            crate::authz::Principal::Admin(_) => audit.caller.principal = Some("admin".into()),
            crate::authz::Principal::Credential(c) => {
                let cl = &c.claims;
                audit.caller.principal = Some("credential".into());
                audit.caller.issuer = cl
                    .src
                    .get("iss")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                audit.caller.subject = Some(cl.sub.clone());
                audit.caller.role = Some(cl.role.clone());
                audit.caller.jti = Some(cl.jti.clone());
                audit.caller.lease_id = Some(cl.lease_id.clone());
                audit.caller.claims = Some(cl.src.clone());
            }
        }
        Ok(p)
    }

    /// `hmac-sha256:` reference to a value.
    pub fn audit_ref(&self, value: &[u8]) -> String {
        crate::audit::hmac_ref(&self.audit_keys.hmac, value)
    }

    /// Records the request in the audit log, durably, then answers. If the record cannot be
    /// written the caller gets `UNAVAILABLE` and nothing else (fail closed).
    pub async fn finish<T>(
        &self,
        rpc: &'static str,
        started: Instant,
        caller: &Caller,
        audit: Audit,
        result: Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let (decision, reason, code) = match &result {
            Ok(_) => ("allow", None, Code::Ok),
            Err(e) => {
                let decision = match e {
                    ApiError::Authz(_) | ApiError::Exchange { .. } => "deny",
                    _ => "error",
                };
                (decision, Some(e.to_string()), e.to_status().code())
            }
        };
        let mut who = audit.caller;
        who.peer = caller.peer.map(|p| p.to_string());
        who.tls_client = caller.cert_subject.clone();
        if let Some(b) = &caller.bearer {
            who.token_hmac
                .get_or_insert_with(|| self.audit_ref(b.expose()));
        }
        let mut id = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut id);
        let record = crate::audit::record::Record {
            seq: 0,
            time: crate::audit::writer::now_rfc3339(),
            node: String::new(),
            kind: crate::audit::record::Kind::Request,
            prev: String::new(),
            request_id: Some(hex::encode(id)),
            op: Some(rpc.to_string()),
            caller: Some(who),
            resources: audit.resources,
            decision: Some(decision.to_string()),
            reason,
            status: Some(crate::metrics::code_name(code).to_string()),
            sig: None,
            truncated_bytes: None,
            key: None,
        };
        if let Err(e) = self.audit.append(record).await {
            tracing::error!(rpc, error = %e, "audit record not written: refusing the request");
            self.metrics.observe(rpc, Code::Unavailable, started);
            return Err(Status::unavailable(
                "audit log unavailable: the request was not served",
            ));
        }
        match result {
            Ok(v) => {
                self.metrics.observe(rpc, Code::Ok, started);
                Ok(Response::new(v))
            }
            Err(e) => {
                let status = e.to_status();
                self.metrics.observe(rpc, status.code(), started);
                match &e {
                    ApiError::Secrets(SecretsError::Integrity { .. })
                    | ApiError::Secrets(SecretsError::Corrupt(_))
                    | ApiError::Secrets(SecretsError::Storage(StorageError::Backend(_))) => {
                        tracing::error!(rpc, error = %e, "request failed")
                    }
                    ApiError::Storage(StorageError::Backend(_)) => {
                        tracing::error!(rpc, error = %e, "request failed")
                    }
                    ApiError::Database(_) => tracing::error!(rpc, error = %e, "request failed"),
                    _ => tracing::info!(rpc, code = ?status.code(), error = %e, "request refused"),
                }
                Err(status)
            }
        }
    }
}
