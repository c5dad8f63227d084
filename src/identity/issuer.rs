//! Issuer settings, with platform presets that make the safe choice the default.
use crate::policy::Platform;
use jsonwebtoken::Algorithm;
use std::path::PathBuf;

/// Where an issuer's signing keys come from. The token never chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OIDC discovery document URL (its `jwks_uri` must be on the same host).
    Discovery(String),
    /// A JWKS URL.
    Jwks(String),
    /// A JWKS document read from a file at start.
    Static(String),
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Name roles refer to.
    pub name: String,
    /// Platform (decides role pinning rules and claim conventions).
    pub platform: Platform,
    /// Exact `iss` value.
    pub issuer: String,
    /// Key source.
    pub keys: KeySource,
    /// Algorithms accepted (never taken from the token). Asymmetric only.
    pub algorithms: Vec<Algorithm>,
    /// keygate's audience: `aud` must contain it.
    pub audience: String,
    /// Accept tokens whose `aud` lists other audiences too.
    pub allow_extra_audiences: bool,
    /// Clock-skew allowance for `exp`, `nbf`, `iat`.
    pub leeway_secs: u64,
    /// Refuse tokens issued longer ago than this (`now - iat`).
    pub max_token_age_secs: u64,
    /// Refuse tokens meant to live longer than this (`exp - iat`; default 24 h).
    pub max_token_lifetime_secs: u64,
    /// Refuse a `jti` seen before (until `exp` + leeway).
    pub refuse_jti_replay: bool,
    /// Is the issuer shared by many tenants (github.com Actions, Buildkite, gitlab.com)?
    pub shared: bool,
    /// Extra CA for fetching keys (private clusters, tests).
    pub ca_file: Option<PathBuf>,
    /// Key cache lifetime bounds; `Cache-Control: max-age` is clamped into them.
    pub cache_min_secs: u64,
    /// See `cache_min_secs`.
    pub cache_max_secs: u64,
    /// At most one refetch per this interval when a token names an unknown `kid`.
    pub unknown_kid_refetch_secs: u64,
    /// Fetch timeout.
    pub fetch_timeout_secs: u64,
    /// Largest discovery or JWKS response accepted.
    pub max_response_bytes: usize,
}

/// GitHub's Actions issuer (shared by every repository on github.com).
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// Buildkite's issuer (shared by every organisation).
pub const BUILDKITE_ISSUER: &str = "https://agent.buildkite.com";
/// gitlab.com (shared by every project there).
pub const GITLAB_COM: &str = "https://gitlab.com";

/// Defaults a preset fills in.
pub struct Preset {
    /// Platform.
    pub platform: Platform,
    /// Default `iss` when none is configured.
    pub default_issuer: Option<&'static str>,
    /// Default algorithms.
    pub algorithms: &'static [Algorithm],
    /// Default maximum token age.
    pub max_token_age_secs: u64,
}

/// The preset of a platform.
pub fn preset(p: Platform) -> Preset {
    match p {
        // 300 s tokens, nbf back-dated: 10 minutes of age is generous.
        Platform::GithubActions => Preset {
            platform: p,
            default_issuer: Some(GITHUB_ISSUER),
            algorithms: &[Algorithm::RS256],
            max_token_age_secs: 600,
        },
        // tokens live for the job timeout (often hours): keygate's own cap is one hour.
        Platform::Gitlab => Preset {
            platform: p,
            default_issuer: None,
            algorithms: &[Algorithm::RS256],
            max_token_age_secs: 3600,
        },
        Platform::Buildkite => Preset {
            platform: p,
            default_issuer: Some(BUILDKITE_ISSUER),
            algorithms: &[Algorithm::RS256],
            max_token_age_secs: 600,
        },
        Platform::Circleci => Preset {
            platform: p,
            default_issuer: None,
            algorithms: &[Algorithm::RS256],
            max_token_age_secs: 3600,
        },
        // projected tokens default to 1 h; legacy secret-based tokens (a year, no exp) are refused.
        Platform::Kubernetes => Preset {
            platform: p,
            default_issuer: None,
            algorithms: &[Algorithm::RS256, Algorithm::ES256],
            max_token_age_secs: 3600,
        },
        Platform::Generic => Preset {
            platform: p,
            default_issuer: None,
            algorithms: &[Algorithm::RS256],
            max_token_age_secs: 3600,
        },
    }
}

/// Checks the `iss` value against the platform's shape; returns whether it is shared.
pub fn check_issuer(platform: Platform, iss: &str) -> Result<bool, String> {
    match platform {
        Platform::GithubActions => {
            if iss == GITHUB_ISSUER {
                Ok(true)
            } else if iss
                .strip_prefix(GITHUB_ISSUER)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|slug| {
                    !slug.is_empty() && slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
            {
                // GHEC `include_enterprise_slug`: one enterprise's own issuer
                Ok(false)
            } else if is_ghes_issuer(iss) {
                // GitHub Enterprise Server: every organisation on the instance mints tokens
                // from this one issuer, so it is pinned like github.com's
                Ok(true)
            } else {
                Err(format!(
                    "a github-actions issuer is {GITHUB_ISSUER}, {GITHUB_ISSUER}/<enterprise-slug>, \
                     or GitHub Enterprise Server's https://HOST/_services/token (or \
                     https://HOST/_services/token/<enterprise-slug>)"
                ))
            }
        }
        Platform::Buildkite => {
            if iss == BUILDKITE_ISSUER {
                Ok(true)
            } else {
                Err(format!("the buildkite issuer is {BUILDKITE_ISSUER}"))
            }
        }
        Platform::Circleci => {
            let uuid = iss
                .strip_prefix("https://oidc.circleci.com/org/")
                .unwrap_or("");
            let ok = uuid.len() == 36
                && uuid.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if ok {
                Ok(false)
            } else {
                Err("a circleci issuer is https://oidc.circleci.com/org/<organization-uuid>".into())
            }
        }
        Platform::Gitlab => Ok(iss.trim_end_matches('/') == GITLAB_COM),
        Platform::Kubernetes | Platform::Generic => Ok(false),
    }
}

/// `https://HOST[:PORT]/_services/token` or `…/_services/token/<enterprise-slug>`: the issuer
/// of a GitHub Enterprise Server instance (no user info, query or fragment).
fn is_ghes_issuer(iss: &str) -> bool {
    let Ok(u) = url::Url::parse(iss) else {
        return false;
    };
    if u.scheme() != "https"
        || u.host_str().is_none_or(str::is_empty)
        || !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
        // the URL must be written as parsed (no `..`, no trailing slash games)
        || u.as_str().trim_end_matches('/') != iss
    {
        return false;
    }
    match u.path().strip_prefix("/_services/token") {
        Some("") => true,
        Some(rest) => rest.strip_prefix('/').is_some_and(|slug| {
            !slug.is_empty() && slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }),
        None => false,
    }
}

/// Algorithms an issuer may allow: asymmetric only (never `none`, never HMAC).
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    let alg = match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" | "HS384" | "HS512" => {
            return Err(format!(
                "{s} is symmetric: an issuer's public keys would become HMAC secrets"
            ))
        }
        "none" => return Err("\"none\" is never accepted".into()),
        other => return Err(format!("unknown algorithm {other:?}")),
    };
    Ok(alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_shapes() {
        assert_eq!(
            check_issuer(Platform::GithubActions, GITHUB_ISSUER),
            Ok(true)
        );
        assert_eq!(
            check_issuer(Platform::GithubActions, &format!("{GITHUB_ISSUER}/acme")),
            Ok(false)
        );
        assert!(check_issuer(Platform::GithubActions, "https://evil.example").is_err());
        // GitHub Enterprise Server, with and without an enterprise slug: pinned like github.com
        for ok in [
            "https://ghes.acme.example/_services/token",
            "https://ghes.acme.example:8443/_services/token",
            "https://ghes.acme.example/_services/token/acme-corp",
        ] {
            assert_eq!(check_issuer(Platform::GithubActions, ok), Ok(true), "{ok}");
        }
        for bad in [
            "http://ghes.acme.example/_services/token",
            "https://ghes.acme.example/_services/token/",
            "https://ghes.acme.example/_services/tokens",
            "https://ghes.acme.example/x/_services/token",
            "https://u@ghes.acme.example/_services/token",
            "https://ghes.acme.example/_services/token?x=1",
            "https://ghes.acme.example/_services/token/a/b",
            "https://ghes.acme.example/_services/token/../x",
        ] {
            assert!(check_issuer(Platform::GithubActions, bad).is_err(), "{bad}");
        }
        assert!(check_issuer(
            Platform::Circleci,
            "https://oidc.circleci.com/org/1b9f5c2e-4a53-4f6e-9d3e-2c1f0e8a7b6d"
        )
        .is_ok());
        assert!(check_issuer(Platform::Circleci, "https://oidc.circleci.com/org/x").is_err());
        assert_eq!(
            check_issuer(Platform::Gitlab, "https://gitlab.com"),
            Ok(true)
        );
        assert_eq!(
            check_issuer(Platform::Gitlab, "https://gitlab.acme.internal"),
            Ok(false)
        );
        assert_eq!(
            check_issuer(Platform::Buildkite, BUILDKITE_ISSUER),
            Ok(true)
        );
    }

    #[test]
    fn only_asymmetric_algorithms() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }
}
