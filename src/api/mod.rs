//! gRPC handlers. They translate between protobuf and the domain modules and hold no policy.
//! [`ApiError::to_status`] is the one place that decides what a caller may learn from an error.
pub mod admin;
pub mod admin_token;
pub mod database;
pub mod exchange;
pub mod layer;
pub mod leases;
pub mod limits;
pub mod rotation;
pub mod scope;
pub mod secrets;

use crate::authz::{Authorizer, AuthzError};
use crate::credential::Credentials;
use crate::identity::trust::Trust;
use crate::metrics::Metrics;
use crate::secrets::{SecretStore, SecretsError};
use crate::storage::StorageError;
use std::sync::Arc;
use tonic::{Code, Status};

pub use scope::RpcScope;

/// Reloads the daemon's config; implemented by the server.
pub trait ConfigReload: Send + Sync {
    /// Re-reads the config file: `Ok(settings needing a restart)` or the reason it was refused.
    fn reload(&self) -> Result<Vec<String>, ReloadError>;
}

/// Why a config reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not load.
    #[error(transparent)]
    Config(#[from] crate::config_error::ConfigError),
    /// An issuer of the new file cannot be set up.
    #[error(transparent)]
    Issuer(#[from] crate::identity::IssuerError),
    /// A previous reload panicked while holding the config.
    #[error("config lock poisoned")]
    Poisoned,
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
    /// Which replica leads (runs the once-only work).
    pub leadership: Arc<crate::leader::Leadership>,
    /// Limits on caller-controlled fields.
    pub limits: limits::Limits,
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
    /// A malformed secret path, prefix or field name.
    #[error(transparent)]
    Path(#[from] crate::secrets::path::PathError),
    /// A precondition on the server side (e.g. a bad KEK file for rotation).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A token exchange refused: the stable reason code is all the caller learns.
    #[error("exchange refused: {refusal} ({detail})")]
    Exchange {
        /// Why (its code is what the caller sees).
        refusal: crate::identity::Refusal,
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
    /// The intent record of a state change could not be written: nothing was changed.
    #[error("audit log unavailable: nothing was changed")]
    AuditUnavailable,
}

/// The gRPC status of an exchange refusal: exhaustive, no default.
pub fn refusal_status(r: crate::identity::Refusal) -> Code {
    use crate::identity::Refusal as R;
    match r {
        R::InvalidRequest | R::InvalidScope | R::InvalidTarget => Code::InvalidArgument,
        R::NoMatchingRole | R::ScopeNotAllowed => Code::PermissionDenied,
        R::IssuerUnavailable | R::ServerError => Code::Unavailable,
        R::TokenTooLarge
        | R::UntrustedIssuer
        | R::InvalidAudience
        | R::TokenExpired
        | R::TokenNotYetValid
        | R::TokenTooOld
        | R::TokenReplayed
        | R::InvalidToken => Code::Unauthenticated,
    }
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
            ApiError::Exchange { refusal, .. } => {
                Status::new(refusal_status(*refusal), refusal.code())
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
                    // a client with several addresses moves on to the next replica
                    R::NotLeader(_) => Status::unavailable(e.to_string()),
                    R::Secrets(s) => secrets_status(s),
                    R::Storage(StorageError::Conflict) => {
                        Status::aborted("concurrent change; retry")
                    }
                    R::Storage(StorageError::Backend(_)) => {
                        Status::unavailable("storage is unavailable")
                    }
                    R::Storage(StorageError::Full(_)) => Status::unavailable(DISK_FULL),
                }
            }
            ApiError::Database(e) => {
                use crate::database::DbError as D;
                match e {
                    D::UnknownRole(_) => Status::not_found(e.to_string()),
                    D::Lease(m) => Status::failed_precondition(m.clone()),
                    D::Template(_) => Status::internal("database statement template error"),
                    D::Generate(_) => Status::internal("generating the database password failed"),
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
            ApiError::Storage(StorageError::Full(_)) => Status::unavailable(DISK_FULL),
            ApiError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            ApiError::Path(e) => Status::invalid_argument(e.to_string()),
            ApiError::AuditUnavailable => {
                Status::unavailable("audit log unavailable: the request was not served")
            }
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            ApiError::Secrets(e) => secrets_status(e),
        }
    }
}

/// What a caller is told while the data disk is full.
pub const DISK_FULL: &str =
    "the data disk is full: writes are refused until space is freed (reads still work)";

/// What a caller sees of a secret-store error.
fn secrets_status(e: &SecretsError) -> Status {
    let code = match e {
        SecretsError::InvalidArgument(_) | SecretsError::Path(_) => Code::InvalidArgument,
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
        SecretsError::Storage(StorageError::Backend(_) | StorageError::Full(_)) => {
            Code::Unavailable
        }
    };
    match e {
        // Backend details (file names, OS errors) stay in the operator's log.
        SecretsError::Storage(StorageError::Backend(_)) => {
            Status::new(code, "storage is unavailable")
        }
        SecretsError::Storage(StorageError::Full(_)) => Status::new(code, DISK_FULL),
        _ => Status::new(code, e.to_string()),
    }
}

impl ApiError {
    /// A failure on keygate's side (logged as an error), not a refusal of the caller.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            ApiError::Secrets(SecretsError::Integrity { .. })
                | ApiError::Secrets(SecretsError::Corrupt(_))
                | ApiError::Secrets(SecretsError::Storage(
                    StorageError::Backend(_) | StorageError::Full(_)
                ))
                | ApiError::Storage(StorageError::Backend(_) | StorageError::Full(_))
                | ApiError::Database(_)
                | ApiError::AuditUnavailable
        )
    }
}

impl AppState {
    /// `hmac-sha256:` reference to a value.
    pub fn audit_ref(&self, value: &[u8]) -> String {
        crate::audit::hmac_ref(&self.audit_keys.hmac, value)
    }
}
