//! The identity half of the running config: verifier and roles, swapped whole on reload.
//! Roles are indexed by name (an exchange names its role) and by issuer (Explain), so the cost
//! of a decision does not grow with the number of roles configured.
use super::{Verified, Verifier, VerifyError};
use crate::policy::Role;
use std::collections::HashMap;

/// Issuers' verifier plus the roles bound to them.
pub struct Trust {
    /// Token verification.
    pub verifier: Verifier,
    /// Roles by config order.
    pub roles: Vec<Role>,
    by_name: HashMap<String, usize>,
    by_issuer: HashMap<String, Vec<usize>>,
}

/// The outcome of matching a verified token against one role.
pub struct RoleDecision<'a> {
    /// The role.
    pub role: &'a Role,
    /// `Err` holds every failed condition.
    pub result: Result<(), Vec<crate::policy::Mismatch>>,
}

impl Trust {
    /// The verifier and roles, indexed.
    pub fn new(verifier: Verifier, roles: Vec<Role>) -> Self {
        let mut by_name = HashMap::with_capacity(roles.len());
        let mut by_issuer: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in roles.iter().enumerate() {
            by_name.insert(r.name.clone(), i);
            by_issuer.entry(r.issuer.clone()).or_default().push(i);
        }
        Self {
            verifier,
            roles,
            by_name,
            by_issuer,
        }
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name).and_then(|i| self.roles.get(*i))
    }

    /// Matches `v` against the roles of its issuer (or only `only`).
    pub fn decide<'a>(&'a self, v: &Verified, only: Option<&str>) -> Vec<RoleDecision<'a>> {
        let candidates: Vec<&Role> = match only {
            Some(o) => self.role(o).into_iter().collect(),
            None => self
                .by_issuer
                .get(&v.issuer.name)
                .map(|ix| ix.iter().filter_map(|i| self.roles.get(*i)).collect())
                .unwrap_or_default(),
        };
        candidates
            .into_iter()
            .map(|role| RoleDecision {
                role,
                result: role.check(&v.issuer.name, v.issuer.platform, &v.claims),
            })
            .collect()
    }

    /// Verifies a token.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        self.verifier.verify(token).await
    }

    /// Consumes a verified token's `jti` (with `refuse_jti_replay`).
    pub async fn consume(&self, v: &Verified) -> Result<(), VerifyError> {
        self.verifier.consume(v).await
    }
}
