//! Who may do what. Handlers ask the [`Authorizer`]; they hold no policy themselves.
//!
//! Until the identity issue lands the only principal is an administrator proved by an mTLS
//! client certificate whose subject is listed under `[admin]`. The identity issue adds
//! credential-based access behind the same trait.
use std::sync::RwLock;

/// What is being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read secret values.
    Read,
    /// List names and metadata.
    List,
    /// Write new versions.
    Write,
    /// Soft-delete or undelete.
    Delete,
    /// Destroy versions.
    Destroy,
    /// Watch for changes.
    Watch,
    /// Operator actions (KEK rotation, reload).
    Admin,
}

/// What is known about the caller from the connection.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Subject of the verified client certificate, if one was presented.
    pub cert_subject: Option<String>,
    /// Peer address.
    pub peer: Option<std::net::SocketAddr>,
}

/// Who the caller was found to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An administrator, by certificate subject.
    Admin(String),
}

/// Why access was refused. The messages are what the caller sees: stable, no policy internals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// No usable identity was presented.
    #[error("authentication required: present a client certificate listed under [admin]")]
    Unauthenticated,
    /// An identity was presented but may not do this.
    #[error("permission denied")]
    PermissionDenied,
}

/// Decides whether a caller may perform an action on a resource.
pub trait Authorizer: Send + Sync {
    /// `Ok(principal)` to allow; the error is safe to return to the caller.
    fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        resource: &str,
    ) -> Result<Principal, AuthzError>;
}

/// Allows everything to certificate subjects listed in `[admin]`; reloadable.
#[derive(Debug, Default)]
pub struct AdminCertAuthorizer {
    subjects: RwLock<Vec<String>>,
}

impl AdminCertAuthorizer {
    /// With the given (normalised) subjects.
    pub fn new(subjects: Vec<String>) -> Self {
        Self {
            subjects: RwLock::new(subjects),
        }
    }

    /// Replaces the subject list (config reload).
    pub fn set_subjects(&self, subjects: Vec<String>) {
        if let Ok(mut s) = self.subjects.write() {
            *s = subjects;
        }
    }
}

impl Authorizer for AdminCertAuthorizer {
    fn authorize(
        &self,
        caller: &Caller,
        _action: Action,
        _resource: &str,
    ) -> Result<Principal, AuthzError> {
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

    #[test]
    fn only_listed_subjects() {
        let a = AdminCertAuthorizer::new(vec!["CN=admin".into()]);
        let anon = Caller::default();
        assert_eq!(
            a.authorize(&anon, Action::Read, "x"),
            Err(AuthzError::Unauthenticated)
        );
        let other = Caller {
            cert_subject: Some("CN=other".into()),
            peer: None,
        };
        assert_eq!(
            a.authorize(&other, Action::Read, "x"),
            Err(AuthzError::PermissionDenied)
        );
        let admin = Caller {
            cert_subject: Some("CN=admin".into()),
            peer: None,
        };
        assert!(a.authorize(&admin, Action::Read, "x").is_ok());
        a.set_subjects(vec![]);
        assert_eq!(
            a.authorize(&admin, Action::Read, "x"),
            Err(AuthzError::PermissionDenied)
        );
    }
}
