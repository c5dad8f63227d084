//! Verifying platform OIDC tokens: every check of RFC 7519 and RFC 8725, against configured
//! issuers only. The clock is passed in; jsonwebtoken only checks the signature.
pub mod issuer;
pub mod jwks;
pub mod trust;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError, Txn};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use issuer::IssuerConfig;
use jsonwebtoken::{Algorithm, Validation};
use jwks::{KeyCache, KeyError};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

/// Largest token accepted, checked before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. `code()` is what a caller learns; `Display` is for logs and Explain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Over 16 KiB.
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a well-formed JWS/JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `iss` is not a configured issuer (no request is made for it).
    #[error("issuer {0:?} is not configured")]
    UntrustedIssuer(String),
    /// The header's algorithm is not in the issuer's allowlist.
    #[error("algorithm {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    /// No matching key.
    #[error("{0}")]
    UnknownKey(String),
    /// The issuer's keys could not be fetched and none are cached.
    #[error("{0}")]
    IssuerUnavailable(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// A claim has the wrong JSON type (e.g. a string `exp`).
    #[error("claim {0:?} has the wrong type")]
    ClaimType(&'static str),
    /// A required claim is missing.
    #[error("claim {0:?} is required")]
    MissingClaim(&'static str),
    /// `aud` does not contain keygate's audience, or lists others when that is not allowed.
    #[error("{0}")]
    Audience(String),
    /// Past `exp` + leeway.
    #[error("token expired")]
    Expired,
    /// Before `nbf` - leeway.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `iat` in the future.
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    /// Older than the issuer's maximum age.
    #[error("token is older than the maximum age of {0} s")]
    TooOld(u64),
    /// `jti` seen before.
    #[error("token already used (jti replay)")]
    Replayed,
    /// The replay store failed.
    #[error("replay store unavailable: {0}")]
    Store(String),
}

impl VerifyError {
    /// The stable reason code a caller sees.
    pub fn code(&self) -> &'static str {
        use VerifyError::*;
        match self {
            TooLarge => "token_too_large",
            UntrustedIssuer(_) => "untrusted_issuer",
            IssuerUnavailable(_) | Store(_) => "issuer_unavailable",
            Audience(_) => "invalid_audience",
            Expired => "token_expired",
            NotYetValid | IssuedInFuture => "token_not_yet_valid",
            TooOld(_) => "token_too_old",
            Replayed => "token_replayed",
            Malformed(_)
            | AlgorithmNotAllowed(_)
            | UnknownKey(_)
            | BadSignature
            | ClaimType(_)
            | MissingClaim(_) => "invalid_token",
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The configured issuer it came from.
    pub issuer: Arc<IssuerConfig>,
    /// Its claims.
    pub claims: Value,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
}

struct Runtime {
    cfg: Arc<IssuerConfig>,
    keys: KeyCache,
}

/// Verifies tokens from the configured issuers.
pub struct Verifier {
    issuers: Vec<Runtime>,
    clock: Arc<dyn Clock>,
    replay: Arc<dyn Storage>,
}

/// Reads a time claim: absent is `None`; present must be a JSON number (CVE-2026-25537: a
/// string `exp` is an error, not an absent claim).
fn time_claim(claims: &Value, name: &'static str) -> Result<Option<u64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64() {
                if f.is_finite() && f >= 0.0 {
                    Ok(Some(f as u64))
                } else {
                    Err(VerifyError::ClaimType(name))
                }
            } else {
                Err(VerifyError::ClaimType(name))
            }
        }
        Some(_) => Err(VerifyError::ClaimType(name)),
    }
}

/// The unverified `iss`, only to pick a configured issuer by exact match.
fn peek_iss(token: &str) -> Result<String, VerifyError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let bytes = B64URL
        .decode(payload)
        .map_err(|_| VerifyError::Malformed("payload is not base64url".into()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| VerifyError::Malformed("payload is not JSON".into()))?;
    match v.get("iss") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(VerifyError::ClaimType("iss")),
        None => Err(VerifyError::MissingClaim("iss")),
    }
}

impl Verifier {
    /// Builds key caches for every issuer.
    pub fn new(
        issuers: &[IssuerConfig],
        allow_http_loopback: bool,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        replay: Arc<dyn Storage>,
    ) -> Result<Self, String> {
        let mut rts = Vec::new();
        for i in issuers {
            let cfg = Arc::new(i.clone());
            let keys = KeyCache::new(cfg.clone(), allow_http_loopback, metrics.clone())
                .map_err(|e| format!("issuer {}: {e}", i.name))?;
            rts.push(Runtime { cfg, keys });
        }
        Ok(Self {
            issuers: rts,
            clock,
            replay,
        })
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerConfig>> {
        self.issuers.iter().map(|r| &r.cfg)
    }

    /// Runs every check; the token never chooses where keys come from.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let token = token.trim();
        let iss = peek_iss(token)?;
        let rt = self
            .issuers
            .iter()
            .find(|r| r.cfg.issuer == iss)
            .ok_or_else(|| VerifyError::UntrustedIssuer(iss.chars().take(200).collect()))?;
        let cfg = &rt.cfg;
        // decode_header refuses `none` and unknown algorithms; `jku`, `x5u` and `jwk` are never read.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(format!("header: {e}")))?;
        if !cfg.algorithms.contains(&header.alg) {
            return Err(VerifyError::AlgorithmNotAllowed(format!(
                "{:?}",
                header.alg
            )));
        }
        let key = rt
            .keys
            .key(header.kid.as_deref(), header.alg)
            .await
            .map_err(|e| match e {
                KeyError::UnknownKey { .. } => VerifyError::UnknownKey(e.to_string()),
                KeyError::Unavailable(m) => VerifyError::IssuerUnavailable(m),
            })?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.required_spec_claims = HashSet::new();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => VerifyError::BadSignature,
            _ => VerifyError::Malformed(e.to_string()),
        })?;
        let claims = data.claims;
        self.check_claims(cfg, &claims).await.map(|exp| Verified {
            issuer: cfg.clone(),
            claims,
            exp,
        })
    }

    async fn check_claims(&self, cfg: &IssuerConfig, claims: &Value) -> Result<u64, VerifyError> {
        if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
            return Err(VerifyError::UntrustedIssuer("iss changed".into()));
        }
        match claims.get("aud") {
            Some(Value::String(a)) if *a == cfg.audience => {}
            Some(Value::Array(list)) => {
                let auds: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                if auds.len() != list.len() {
                    return Err(VerifyError::ClaimType("aud"));
                }
                if !auds.contains(&cfg.audience.as_str()) {
                    return Err(VerifyError::Audience(format!(
                        "aud does not contain {:?}",
                        cfg.audience
                    )));
                }
                if auds.len() > 1 && !cfg.allow_extra_audiences {
                    return Err(VerifyError::Audience(
                        "aud lists other audiences too (allow_extra_audiences is off)".into(),
                    ));
                }
            }
            Some(Value::String(_)) => {
                return Err(VerifyError::Audience(format!(
                    "aud is not {:?}",
                    cfg.audience
                )))
            }
            Some(_) => return Err(VerifyError::ClaimType("aud")),
            None => return Err(VerifyError::MissingClaim("aud")),
        }
        let now = self.clock.now_millis() / 1000;
        let leeway = cfg.leeway_secs;
        let exp = time_claim(claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
        let nbf = time_claim(claims, "nbf")?;
        let iat = time_claim(claims, "iat")?.ok_or(VerifyError::MissingClaim("iat"))?;
        if now > exp.saturating_add(leeway) {
            return Err(VerifyError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if iat > now + leeway {
            return Err(VerifyError::IssuedInFuture);
        }
        if now.saturating_sub(iat) > cfg.max_token_age_secs {
            return Err(VerifyError::TooOld(cfg.max_token_age_secs));
        }
        if cfg.refuse_jti_replay {
            let jti = match claims.get("jti") {
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
                Some(Value::String(_)) | Some(_) => return Err(VerifyError::ClaimType("jti")),
                None => return Err(VerifyError::MissingClaim("jti")),
            };
            let key = format!("j/{}/{}", cfg.name, jti).into_bytes();
            let until = exp.saturating_add(leeway);
            match self
                .replay
                .commit(
                    Txn::default()
                        .expect(key.clone(), None)
                        .put(key, until.to_string().into_bytes()),
                )
                .await
            {
                Ok(()) => {}
                Err(StorageError::Conflict) => return Err(VerifyError::Replayed),
                Err(e) => return Err(VerifyError::Store(e.to_string())),
            }
        }
        Ok(exp)
    }

    /// Removes replay entries past `exp` + leeway. Returns how many were removed.
    pub async fn sweep_replay(&self) -> Result<usize, StorageError> {
        let now = self.clock.now_millis() / 1000;
        let mut removed = 0;
        for (k, v) in self.replay.scan_prefix(b"j/").await? {
            let until: u64 = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if until < now {
                self.replay
                    .commit(Txn::default().expect(k.clone(), Some(v)).delete(k))
                    .await
                    .ok();
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// For `Explain`: the algorithm name of a token header, if readable.
pub fn header_alg(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}
