//! The identity half of the running config: verifier and roles, swapped whole on reload.
use super::{Verified, Verifier, VerifyError};
use crate::policy::Role;

/// Issuers' verifier plus the roles bound to them.
pub struct Trust {
    /// Token verification.
    pub verifier: Verifier,
    /// Roles by config order.
    pub roles: Vec<Role>,
}

/// The outcome of matching a verified token against one role.
pub struct RoleDecision<'a> {
    /// The role.
    pub role: &'a Role,
    /// `Err` holds the first failed condition.
    pub result: Result<(), String>,
}

impl Trust {
    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Matches `v` against the roles of its issuer (or only `only`).
    pub fn decide<'a>(&'a self, v: &Verified, only: Option<&str>) -> Vec<RoleDecision<'a>> {
        self.roles
            .iter()
            .filter(|r| only.is_none_or(|o| r.name == o))
            .filter(|r| only.is_some() || r.issuer == v.issuer.name)
            .map(|role| RoleDecision {
                role,
                result: role
                    .check(&v.issuer.name, v.issuer.platform, &v.claims)
                    .map_err(|m| m.0),
            })
            .collect()
    }

    /// Verifies a token.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        self.verifier.verify(token).await
    }
}
