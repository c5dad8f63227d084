//! Who the caller is and what they may do. Handlers ask the [`Authorizer`]; they hold no policy.
//!
//! Two kinds of principal: a keygate credential (`authorization: Bearer …`), limited to its
//! scopes and checked against its lease on every call; and an administrator proved by an mTLS
//! client certificate listed under `[admin]` (break-glass, allowed everything but keygate's
//! reserved `_sys/` paths).
use crate::credential::{Authenticated, CredentialError, Credentials};
use crate::policy::scope::Scope;
use crate::sensitive::SecretBytes;
use std::sync::{Arc, RwLock};

/// What is being attempted: the capability a scope must grant for it (one type, so an action
/// and the scope that allows it cannot drift apart).
pub use crate::policy::scope::Capability as Action;

/// What is known about the caller from the connection.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Subject of the verified client certificate, if one was presented.
    pub cert_subject: Option<String>,
    /// Bearer credential from `authorization` metadata.
    pub bearer: Option<SecretBytes>,
    /// Peer address.
    pub peer: Option<std::net::SocketAddr>,
    /// The API the call came through when not gRPC (`vault`).
    pub api: Option<&'static str>,
}

/// Who the caller was found to be.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An administrator, by certificate subject.
    Admin(String),
    /// A keygate credential.
    Credential(Box<Authenticated>),
}

use crate::secrets::path::is_reserved;

impl Principal {
    /// May this principal do `action` on `path`?
    pub fn allows(&self, action: Action, path: &str) -> bool {
        if is_reserved(path) {
            // keygate's own keys: the admin may rotate them; nobody reads, lists or writes them
            return self.is_admin() && action == Action::Rotate;
        }
        match self {
            Principal::Admin(_) => true,
            Principal::Credential(c) => c.scopes.iter().any(|s| s.allows(action, path)),
        }
    }

    /// `Ok` if allowed, else `PermissionDenied`.
    pub fn require(&self, action: Action, path: &str) -> Result<(), AuthzError> {
        if self.allows(action, path) {
            Ok(())
        } else {
            Err(AuthzError::PermissionDenied)
        }
    }

    /// The scopes held (admins: none listed, everything allowed).
    pub fn scopes(&self) -> &[Scope] {
        match self {
            Principal::Admin(_) => &[],
            Principal::Credential(c) => &c.scopes,
        }
    }

    /// The lease id of a credential principal.
    pub fn lease_id(&self) -> Option<&str> {
        match self {
            Principal::Admin(_) => None,
            Principal::Credential(c) => Some(&c.claims.lease_id),
        }
    }

    /// Credential expiry (s), for ending streams.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::Admin(_) => None,
            Principal::Credential(c) => Some(c.claims.exp),
        }
    }

    /// Is this the break-glass administrator?
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin(_))
    }
}

/// Why access was refused. The messages are what the caller sees: stable, no policy internals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// No usable identity was presented.
    #[error("authentication required: present a keygate credential (authorization: Bearer) or an admin client certificate")]
    Unauthenticated,
    /// The credential is expired, revoked or invalid.
    #[error("credential refused: {0}")]
    BadCredential(&'static str),
    /// An identity was presented but may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// The credential store is unavailable.
    #[error("credential check unavailable")]
    Unavailable,
}

/// Finds out who a caller is.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync {
    /// The principal, or why none.
    async fn authenticate(&self, caller: &Caller) -> Result<Principal, AuthzError>;
}

/// Credentials first, then `[admin]` certificate subjects (reloadable).
pub struct Gate {
    subjects: RwLock<Vec<String>>,
    credentials: Option<Arc<Credentials>>,
}

impl Gate {
    /// With the given (normalised) admin subjects and credential checker.
    pub fn new(subjects: Vec<String>, credentials: Option<Arc<Credentials>>) -> Self {
        Self {
            subjects: RwLock::new(subjects),
            credentials,
        }
    }

    /// Replaces the admin subject list (config reload).
    pub fn set_subjects(&self, subjects: Vec<String>) {
        if let Ok(mut s) = self.subjects.write() {
            *s = subjects;
        }
    }
}

#[async_trait::async_trait]
impl Authorizer for Gate {
    async fn authenticate(&self, caller: &Caller) -> Result<Principal, AuthzError> {
        if let Some(token) = &caller.bearer {
            let creds = self
                .credentials
                .as_ref()
                .ok_or(AuthzError::Unauthenticated)?;
            let token = std::str::from_utf8(token.expose())
                .map_err(|_| AuthzError::BadCredential("invalid"))?;
            return match creds.authenticate(token).await {
                Ok(a) => Ok(Principal::Credential(Box::new(a))),
                Err(CredentialError::Expired) => Err(AuthzError::BadCredential("expired")),
                Err(CredentialError::Revoked) => Err(AuthzError::BadCredential("revoked")),
                Err(CredentialError::Invalid(_)) => Err(AuthzError::BadCredential("invalid")),
                Err(CredentialError::Store(e)) => {
                    tracing::error!(error = %e, "credential check failed");
                    Err(AuthzError::Unavailable)
                }
            };
        }
        let Some(subject) = &caller.cert_subject else {
            return Err(AuthzError::Unauthenticated);
        };
        let subjects = self
            .subjects
            .read()
            .map_err(|_| AuthzError::PermissionDenied)?;
        if subjects.iter().any(|s| s == subject) {
            Ok(Principal::Admin(subject.clone()))
        } else {
            Err(AuthzError::PermissionDenied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_listed_subjects() {
        let a = Gate::new(vec!["CN=admin".into()], None);
        let anon = Caller::default();
        assert_eq!(
            a.authenticate(&anon).await.err(),
            Some(AuthzError::Unauthenticated)
        );
        let other = Caller {
            cert_subject: Some("CN=other".into()),
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(&other).await.err(),
            Some(AuthzError::PermissionDenied)
        );
        let admin = Caller {
            cert_subject: Some("CN=admin".into()),
            ..Default::default()
        };
        let p = a.authenticate(&admin).await.unwrap();
        assert!(p.allows(Action::Read, "x"));
        assert!(!p.allows(Action::Read, "_sys/signing-keys"));
        a.set_subjects(vec![]);
        assert_eq!(
            a.authenticate(&admin).await.err(),
            Some(AuthzError::PermissionDenied)
        );
    }
}
