//! Roles: which verified platform tokens get which scopes, and why a token does or does not
//! match. Pure logic, no I/O; the clock and the token are passed in.
pub mod glob;
pub mod scope;

use glob::Glob;
use scope::Scope;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The platform an issuer belongs to; presets decide the safe defaults per platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// GitHub Actions (`token.actions.githubusercontent.com`).
    GithubActions,
    /// GitLab CI `id_tokens`.
    Gitlab,
    /// Buildkite agents.
    Buildkite,
    /// CircleCI.
    Circleci,
    /// A Kubernetes cluster's service-account issuer.
    Kubernetes,
    /// Any other OIDC issuer.
    Generic,
}

/// One condition on a claim value, as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Matcher {
    /// Exact string (also matches a JSON boolean or number with the same text).
    Exact(Scalar),
    /// Any of these exact values.
    AnyOf(Vec<Scalar>),
    /// A glob (`*` does not cross `/`, `**` does).
    Glob {
        /// The pattern, compiled at load.
        glob: Glob,
    },
    /// Any of these globs.
    AnyGlob {
        /// The patterns, compiled at load.
        any_glob: Vec<Glob>,
    },
}

/// A TOML scalar used as an exact value: strings, booleans and integers compare by text,
/// because platforms emit IDs and booleans as strings (`"ref_protected": "true"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
        }
    }
}

impl Matcher {
    /// Does the matcher accept this text?
    pub fn accepts(&self, text: &str) -> bool {
        match self {
            Matcher::Exact(s) => s.text() == text,
            Matcher::AnyOf(v) => v.iter().any(|s| s.text() == text),
            Matcher::Glob { glob: g } => g.matches(text),
            Matcher::AnyGlob { any_glob } => any_glob.iter().any(|g| g.matches(text)),
        }
    }

    /// Is this a wildcard-free pin (exact or any-of literals)?
    pub fn is_pin(&self) -> bool {
        match self {
            Matcher::Exact(_) | Matcher::AnyOf(_) => true,
            Matcher::Glob { glob: g } => g.is_literal(),
            Matcher::AnyGlob { any_glob } => any_glob.iter().all(Glob::is_literal),
        }
    }

    /// Human description for `Explain`.
    pub fn describe(&self) -> String {
        match self {
            Matcher::Exact(s) => format!("= {:?}", s.text()),
            Matcher::AnyOf(v) => format!(
                "any of [{}]",
                v.iter()
                    .map(|s| format!("{:?}", s.text()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Matcher::Glob { glob } => format!("glob {:?}", glob.as_str()),
            Matcher::AnyGlob { any_glob } => format!(
                "any glob of {:?}",
                any_glob.iter().map(Glob::as_str).collect::<Vec<_>>()
            ),
        }
    }
}

/// A claim's value(s) as text: strings as is, booleans and numbers by their JSON text, arrays
/// element by element (a matcher accepts an array if it accepts any element).
fn claim_texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a.iter().flat_map(claim_texts).collect(),
        _ => Vec::new(),
    }
}

/// Looks a claim up: a name, or a JSON pointer when it starts with `/` (nested claims such as
/// `/kubernetes.io/namespace`; `~1` escapes `/` in a key, per RFC 6901).
pub fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// A role as loaded from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Name callers ask for.
    pub name: String,
    /// Name of the issuer whose tokens it accepts.
    pub issuer: String,
    /// Condition on `sub`.
    pub bound_subject: Option<Matcher>,
    /// Conditions on other claims, by claim name or JSON pointer.
    pub claims: BTreeMap<String, Matcher>,
    /// What a credential may do.
    pub scopes: Vec<Scope>,
    /// Default credential lifetime.
    pub ttl_secs: u64,
    /// Longest lifetime, renewals included.
    pub max_ttl_secs: u64,
    /// Never outlive the platform token.
    pub cap_at_token_expiry: bool,
    /// GitHub: accept `event_name = pull_request_target` (off by default).
    pub allow_pull_request_target: bool,
}

/// One condition of a role that a token does not meet: the claim, what the role requires and
/// what the token has (`None`: the claim is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Claim name or JSON pointer (`iss` for the issuer, `event_name` for the GitHub guard).
    pub claim: String,
    /// What the role requires, in words.
    pub expected: String,
    /// The token's value as JSON text; `None` when the claim is missing.
    pub actual: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.actual {
            None => write!(
                f,
                "claim {:?} is missing; role requires {}",
                self.claim, self.expected
            ),
            Some(a) => write!(
                f,
                "claim {:?} is {a}; role requires {}",
                self.claim, self.expected
            ),
        }
    }
}

/// Joins mismatches for a log line or an Explain reason.
pub fn describe_all(m: &[Mismatch]) -> String {
    m.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a role is refused at config load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// No scope: it could grant nothing.
    #[error("a role needs at least one scope")]
    NoScope,
    /// `ttl_secs` of 0 or above `max_ttl_secs`.
    #[error("ttl_secs must be at least 1 and at most max_ttl_secs")]
    Ttl,
    /// Only issuer and audience checked: every token of the issuer would match.
    #[error(
        "a role must constrain the token beyond issuer and audience: set bound_subject or claims"
    )]
    Unconstrained,
    /// A shared issuer's role that any of its tenants could satisfy.
    #[error("the issuer is shared by every {} tenant: pin an organisation or project ({})", tenant(*.0), pins(*.0))]
    SharedIssuerUnpinned(Platform),
}

fn tenant(p: Platform) -> &'static str {
    match p {
        Platform::GithubActions => "GitHub",
        Platform::Gitlab => "gitlab.com",
        Platform::Buildkite => "Buildkite",
        _ => "",
    }
}

fn pins(p: Platform) -> &'static str {
    match p {
        Platform::GithubActions => "repository, repository_id, repository_owner_id, or bound_subject \"repo:OWNER/…\" with a literal owner",
        Platform::Gitlab => "project_id, project_path, namespace_id, namespace_path (or the job_project_* forms), or bound_subject \"project_path:GROUP/…\"",
        _ => "organization_slug, or bound_subject \"organization:ORG:…\"",
    }
}

impl Role {
    /// Checks the token's claims against every condition; the error lists every condition that
    /// failed (not only the first), in config order.
    pub fn check(
        &self,
        issuer_name: &str,
        platform: Platform,
        claims: &Value,
    ) -> Result<(), Vec<Mismatch>> {
        let mut failed = Vec::new();
        if issuer_name != self.issuer {
            failed.push(Mismatch {
                claim: "iss".into(),
                expected: format!("a token of issuer {:?}", self.issuer),
                actual: Some(format!("{issuer_name:?}")),
            });
        }
        let mut conds: Vec<(&str, &Matcher)> = Vec::new();
        if let Some(m) = &self.bound_subject {
            conds.push(("sub", m));
        }
        conds.extend(self.claims.iter().map(|(k, m)| (k.as_str(), m)));
        for (name, m) in conds {
            match lookup(claims, name) {
                None => failed.push(Mismatch {
                    claim: name.to_string(),
                    expected: m.describe(),
                    actual: None,
                }),
                Some(v) => {
                    if !claim_texts(v).iter().any(|t| m.accepts(t)) {
                        failed.push(Mismatch {
                            claim: name.to_string(),
                            expected: m.describe(),
                            actual: Some(serde_json::to_string(v).unwrap_or_default()),
                        });
                    }
                }
            }
        }
        if platform == Platform::GithubActions && !self.allow_pull_request_target {
            if let Some(Value::String(ev)) = claims.get("event_name") {
                if ev == "pull_request_target" {
                    failed.push(Mismatch {
                        claim: "event_name".into(),
                        expected: "not \"pull_request_target\" (it runs with the base branch's \
                                   context on code from a fork; the role does not set \
                                   allow_pull_request_target)"
                            .into(),
                        actual: Some("\"pull_request_target\"".into()),
                    });
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Refuses roles that any tenant of a shared issuer could satisfy. `shared` is true for
    /// github.com's Actions issuer, Buildkite and gitlab.com.
    pub fn validate(&self, platform: Platform, shared: bool) -> Result<(), RoleError> {
        if self.scopes.is_empty() {
            return Err(RoleError::NoScope);
        }
        if self.ttl_secs == 0 || self.ttl_secs > self.max_ttl_secs {
            return Err(RoleError::Ttl);
        }
        if self.bound_subject.is_none() && self.claims.is_empty() {
            return Err(RoleError::Unconstrained);
        }
        if !shared {
            return Ok(());
        }
        let pinned = |names: &[&str]| {
            names
                .iter()
                .any(|n| self.claims.get(*n).map(Matcher::is_pin).unwrap_or(false))
        };
        let sub_pins = |prefix: &str, sep: char| match &self.bound_subject {
            // `repo:OWNER/...`: the owner part must be literal
            Some(Matcher::Exact(s)) => s.text().starts_with(prefix),
            Some(Matcher::AnyOf(v)) => v.iter().all(|s| s.text().starts_with(prefix)),
            Some(Matcher::Glob { glob: g }) => g
                .as_str()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split(sep).next())
                .map(|owner| {
                    !owner.is_empty()
                        && glob::is_literal(owner)
                        && g.as_str().len() > prefix.len() + owner.len()
                })
                .unwrap_or(false),
            _ => false,
        };
        let ok = match platform {
            Platform::GithubActions => {
                pinned(&["repository", "repository_id", "repository_owner_id"])
                    || sub_pins("repo:", '/')
            }
            Platform::Gitlab => {
                pinned(&[
                    "project_id",
                    "project_path",
                    "namespace_id",
                    "namespace_path",
                    "job_project_id",
                    "job_project_path",
                    "job_namespace_id",
                    "job_namespace_path",
                ]) || sub_pins("project_path:", '/')
            }
            Platform::Buildkite => {
                pinned(&["organization_slug", "organization_id"]) || sub_pins("organization:", ':')
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(RoleError::SharedIssuerUnpinned(platform))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(claims: &[(&str, Matcher)], sub: Option<Matcher>) -> Role {
        Role {
            name: "r".into(),
            issuer: "gh".into(),
            bound_subject: sub,
            claims: claims
                .iter()
                .map(|(k, m)| (k.to_string(), m.clone()))
                .collect(),
            scopes: vec![Scope::parse("read:prod/*").unwrap()],
            ttl_secs: 60,
            max_ttl_secs: 120,
            cap_at_token_expiry: false,
            allow_pull_request_target: false,
        }
    }

    fn ex(s: &str) -> Matcher {
        Matcher::Exact(Scalar::Str(s.into()))
    }

    #[test]
    fn matchers_and_nested_claims() {
        let claims = json!({
            "sub": "system:serviceaccount:prod:api",
            "ref_protected": "true",
            "runner_id": 42,
            "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "api"}},
            "oidc.circleci.com/context-ids": ["c1", "c2"],
        });
        let r = role(
            &[
                ("/kubernetes.io/namespace", ex("prod")),
                (
                    "/kubernetes.io/serviceaccount/name",
                    Matcher::AnyOf(vec![Scalar::Str("api".into()), Scalar::Str("web".into())]),
                ),
                ("ref_protected", Matcher::Exact(Scalar::Bool(true))),
                ("runner_id", Matcher::Exact(Scalar::Int(42))),
                ("oidc.circleci.com/context-ids", ex("c2")),
            ],
            Some(Matcher::Glob {
                glob: "system:serviceaccount:prod:*".into(),
            }),
        );
        assert_eq!(r.check("gh", Platform::Generic, &claims), Ok(()));
        let mut bad = claims.clone();
        bad["kubernetes.io"]["namespace"] = json!("dev");
        let e = r.check("gh", Platform::Generic, &bad).unwrap_err();
        assert_eq!(
            e,
            vec![Mismatch {
                claim: "/kubernetes.io/namespace".into(),
                expected: "= \"prod\"".into(),
                actual: Some("\"dev\"".into()),
            }]
        );
        assert!(r.check("other", Platform::Generic, &claims).is_err());
        // every failing condition is listed, in order, missing claims included
        bad["runner_id"] = json!(7);
        bad.as_object_mut().unwrap().remove("ref_protected");
        let e = r.check("other", Platform::Generic, &bad).unwrap_err();
        let names: Vec<&str> = e.iter().map(|m| m.claim.as_str()).collect();
        assert_eq!(
            names,
            [
                "iss",
                "/kubernetes.io/namespace",
                "ref_protected",
                "runner_id"
            ]
        );
        assert_eq!(e[2].actual, None);
        assert!(describe_all(&e).contains("claim \"ref_protected\" is missing"));
    }

    #[test]
    fn pull_request_target_refused_unless_allowed() {
        let claims = json!({"repository": "acme/app", "event_name": "pull_request_target"});
        let mut r = role(&[("repository", ex("acme/app"))], None);
        let e = r.check("gh", Platform::GithubActions, &claims).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("pull_request_target"), "{}", e[0]);
        r.allow_pull_request_target = true;
        assert!(r.check("gh", Platform::GithubActions, &claims).is_ok());
    }

    #[test]
    fn shared_issuer_roles_must_pin_a_tenant() {
        let gh = Platform::GithubActions;
        assert!(role(&[("aud", ex("x"))], None).validate(gh, true).is_err());
        assert!(role(&[("repository_owner", ex("acme"))], None)
            .validate(gh, true)
            .is_err());
        assert!(role(
            &[(
                "repository",
                Matcher::Glob {
                    glob: "*/app".into()
                }
            )],
            None
        )
        .validate(gh, true)
        .is_err());
        assert!(role(
            &[],
            Some(Matcher::Glob {
                glob: "repo:*".into()
            })
        )
        .validate(gh, true)
        .is_err());
        assert!(role(
            &[],
            Some(Matcher::Glob {
                glob: "repo:acme/*:ref:refs/heads/main".into()
            })
        )
        .validate(gh, true)
        .is_ok());
        assert!(
            role(&[("repository_id", Matcher::Exact(Scalar::Int(123)))], None)
                .validate(gh, true)
                .is_ok()
        );
        assert!(role(&[("repository_owner", ex("acme"))], None)
            .validate(gh, false)
            .is_ok());
        assert!(role(&[], None)
            .validate(Platform::Kubernetes, false)
            .is_err());
        let bk = Platform::Buildkite;
        assert!(role(&[("pipeline_slug", ex("deploy"))], None)
            .validate(bk, true)
            .is_err());
        assert!(role(&[("organization_slug", ex("acme"))], None)
            .validate(bk, true)
            .is_ok());
    }
}
