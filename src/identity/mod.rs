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
    /// The header lists critical extensions (`crit`); keygate implements none (RFC 7515
    /// §4.1.11: the token must be refused).
    #[error("header lists critical extensions (crit) keygate does not implement")]
    Critical,
    /// A NumericDate claim outside [0, 253402300799] (year 9999) or not a plain number.
    #[error("claim {0:?} is not a NumericDate in the accepted range")]
    TimeOutOfRange(&'static str),
    /// `exp - iat` longer than the issuer's maximum token lifetime.
    #[error("token lifetime (exp - iat) exceeds the maximum of {0} s")]
    LifetimeTooLong(u64),
}

/// The largest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

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
            | MissingClaim(_)
            | Critical
            | TimeOutOfRange(_)
            | LifetimeTooLong(_) => "invalid_token",
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
    /// With `refuse_jti_replay`: the replay marker [`Verifier::consume`] writes (key, keep
    /// until). Verifying alone consumes nothing, so `Admin.Explain` and a refused exchange
    /// leave the token usable.
    pub replay: Option<(Vec<u8>, u64)>,
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
            let secs = if let Some(u) = n.as_u64() {
                u
            } else if let Some(f) = n.as_f64() {
                // a fraction is allowed (RFC 7519 §2); negative, non-finite or huge is not
                if !(f.is_finite() && f >= 0.0 && f <= MAX_NUMERIC_DATE as f64) {
                    return Err(VerifyError::TimeOutOfRange(name));
                }
                f as u64
            } else {
                return Err(VerifyError::TimeOutOfRange(name));
            };
            if secs > MAX_NUMERIC_DATE {
                return Err(VerifyError::TimeOutOfRange(name));
            }
            Ok(Some(secs))
        }
        Some(_) => Err(VerifyError::ClaimType(name)),
    }
}

/// Refuses a header with `crit` (any value, `[]` too): keygate understands no extension.
fn refuse_crit(token: &str) -> Result<(), VerifyError> {
    let header = token.split('.').next().unwrap_or("");
    let bytes = B64URL
        .decode(header)
        .map_err(|_| VerifyError::Malformed("header is not base64url".into()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| VerifyError::Malformed("header is not JSON".into()))?;
    if v.get("crit").is_some() {
        return Err(VerifyError::Critical);
    }
    Ok(())
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
        refuse_crit(token)?;
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
        self.check_claims(cfg, &claims)
            .await
            .map(|(exp, replay)| Verified {
                issuer: cfg.clone(),
                claims,
                exp,
                replay,
            })
    }

    async fn check_claims(
        &self,
        cfg: &IssuerConfig,
        claims: &Value,
    ) -> Result<(u64, Option<(Vec<u8>, u64)>), VerifyError> {
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
        if exp.saturating_sub(iat) > cfg.max_token_lifetime_secs {
            return Err(VerifyError::LifetimeTooLong(cfg.max_token_lifetime_secs));
        }
        let mut replay = None;
        if cfg.refuse_jti_replay {
            let jti = match claims.get("jti") {
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
                Some(Value::String(_)) | Some(_) => return Err(VerifyError::ClaimType("jti")),
                None => return Err(VerifyError::MissingClaim("jti")),
            };
            let key = format!("j/{}/{}", cfg.name, jti).into_bytes();
            if self
                .replay
                .get(&key)
                .await
                .map_err(|e| VerifyError::Store(e.to_string()))?
                .is_some()
            {
                return Err(VerifyError::Replayed);
            }
            replay = Some((key, exp.saturating_add(leeway)));
        }
        Ok((exp, replay))
    }

    /// Writes the replay marker of a verified token (once: a second use is `Replayed`).
    pub async fn consume(&self, v: &Verified) -> Result<(), VerifyError> {
        let Some((key, until)) = &v.replay else {
            return Ok(());
        };
        match self
            .replay
            .commit(
                Txn::default()
                    .expect(key.clone(), None)
                    .put(key.clone(), until.to_string().into_bytes()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(StorageError::Conflict) => Err(VerifyError::Replayed),
            Err(e) => Err(VerifyError::Store(e.to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::policy::Platform;

    fn verifier() -> (Verifier, tempfile::TempDir) {
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"k","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
        let cfg = issuer::IssuerConfig {
            name: "t".into(),
            platform: Platform::Generic,
            issuer: "https://t.example".into(),
            keys: issuer::KeySource::Static(jwks.into()),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            audience: "aud".into(),
            allow_extra_audiences: false,
            leeway_secs: 30,
            max_token_age_secs: 600,
            max_token_lifetime_secs: 86_400,
            refuse_jti_replay: false,
            shared: false,
            ca_file: None,
            cache_min_secs: 60,
            cache_max_secs: 3600,
            unknown_kid_refetch_secs: 30,
            fetch_timeout_secs: 5,
            max_response_bytes: 4096,
        };
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::SledStorage::open(&dir.path().join("db")).unwrap());
        let v = Verifier::new(
            &[cfg],
            false,
            Arc::new(Metrics::new()),
            Arc::new(FixedClock::at(1_800_000_000_000)),
            storage,
        )
        .unwrap();
        (v, dir)
    }

    /// Never panic on network input: random and half-valid tokens only ever get an error.
    #[tokio::test]
    async fn garbage_tokens_are_errors_not_panics() {
        let (v, _dir) = verifier();
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let b64 = |s: &str| B64URL.encode(s);
        let headers = [
            r#"{"alg":"RS256","kid":"k"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","kid":"k"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"alg":"RS256","kid":"k","jku":"https://evil"}"#,
            r#"{"alg":7}"#,
            "[]",
            "",
        ];
        let payloads = [
            r#"{"iss":"https://t.example","aud":"aud","exp":1800000100,"iat":1800000000}"#,
            r#"{"iss":"https://t.example","aud":["aud","x"],"exp":"soon","iat":null}"#,
            r#"{"iss":"https://t.example","exp":1e400}"#,
            r#"{"iss":"https://t.example","exp":-1,"iat":-5}"#,
            r#"{"iss":5}"#,
            r#"{"iss":"https://other"}"#,
            "null",
            "{",
        ];
        for _ in 0..3000 {
            let r = next();
            let h = headers[(r % headers.len() as u64) as usize];
            let p = payloads[((r >> 8) % payloads.len() as u64) as usize];
            let sig: String = (0..(r >> 16) % 400)
                .map(|i| (b'A' + ((r >> (i % 50)) % 26) as u8) as char)
                .collect();
            let token = match (r >> 40) % 5 {
                0 => format!("{}.{}.{}", b64(h), b64(p), sig),
                1 => format!("{}.{}", b64(h), b64(p)),
                2 => format!("{}.{}.{}.{}", b64(h), b64(p), sig, sig),
                3 => {
                    let bytes: Vec<u8> = (0..(r % 300))
                        .map(|i| ((r >> (i % 60)) & 0xff) as u8)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => format!("{}..{}", h, p),
            };
            assert!(v.verify(&token).await.is_err());
        }
    }
}
