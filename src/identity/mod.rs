//! Verifying platform OIDC tokens: every check of RFC 7519 and RFC 8725, against configured
//! issuers only. The checks themselves are the pure [`core`]; this module is the async shell
//! that finds keys and replay markers. The clock is passed in; jsonwebtoken only checks the
//! signature.
pub mod issuer;
pub mod issuer_tls;
pub mod jwks;
pub mod replay;
pub mod setup_error;
pub mod trust;

pub use setup_error::{IssuerError, SetupError};

use crate::clock::Clock;
use crate::metrics::Metrics;
use core::ClaimRules;
use issuer::IssuerConfig;
use jsonwebtoken::Algorithm;
use jwks::{KeyCache, KeyError};
use replay::{Marker, ReplayError, ReplayStore};
use serde_json::Value;
use std::sync::Arc;

pub use keygate_identity::{
    core, refusal, Refusal, VerifyError, MAX_NUMERIC_DATE, MAX_TOKEN_BYTES,
};

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The configured issuer it came from.
    pub issuer: Arc<IssuerConfig>,
    /// Its claims.
    pub claims: Value,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// With `refuse_jti_replay`: the replay marker [`Verifier::consume`] takes. Verifying
    /// alone consumes nothing, so `Admin.Explain` and a refused exchange leave the token
    /// usable.
    pub replay: Option<Marker>,
}

struct Runtime {
    cfg: Arc<IssuerConfig>,
    keys: Arc<KeyCache>,
}

/// Verifies tokens from the configured issuers: the async shell around [`core`] (keys from the
/// background-refreshed caches, replay markers from the [`ReplayStore`]).
pub struct Verifier {
    issuers: Vec<Runtime>,
    clock: Arc<dyn Clock>,
    replay: Arc<ReplayStore>,
}

impl IssuerConfig {
    /// The claim rules of this issuer, for [`core::check_claims`].
    pub fn rules(&self) -> ClaimRules<'_> {
        ClaimRules {
            issuer: &self.issuer,
            audience: &self.audience,
            allow_extra_audiences: self.allow_extra_audiences,
            leeway_secs: self.leeway_secs,
            max_age_secs: self.max_token_age_secs,
            max_lifetime_secs: self.max_token_lifetime_secs,
            require_jti: self.refuse_jti_replay,
        }
    }
}

impl Verifier {
    /// Builds key caches for every issuer. [`Verifier::start_refresh`] starts their fetching.
    pub fn new(
        issuers: &[IssuerConfig],
        allow_http_loopback: bool,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        replay: Arc<ReplayStore>,
    ) -> Result<Self, IssuerError> {
        let mut rts = Vec::new();
        for i in issuers {
            let cfg = Arc::new(i.clone());
            let keys = KeyCache::new(
                cfg.clone(),
                allow_http_loopback,
                metrics.clone(),
                clock.clone(),
            )
            .map_err(|source| IssuerError {
                issuer: i.name.clone(),
                source,
            })?;
            rts.push(Runtime {
                cfg,
                keys: Arc::new(keys),
            });
        }
        Ok(Self {
            issuers: rts,
            clock,
            replay,
        })
    }

    /// Spawns each fetching issuer's background key refresher (they end when this verifier is
    /// dropped; static keys need none).
    pub fn start_refresh(&self) {
        for r in self
            .issuers
            .iter()
            .filter(|r| !matches!(r.cfg.keys, issuer::KeySource::Static(_)))
        {
            tokio::spawn(KeyCache::refresher(Arc::downgrade(&r.keys)));
        }
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerConfig>> {
        self.issuers.iter().map(|r| &r.cfg)
    }

    /// Runs every check; the token never chooses where keys come from.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let parsed = core::parse(token, MAX_TOKEN_BYTES)?;
        let rt = self
            .issuers
            .iter()
            .find(|r| r.cfg.issuer == parsed.iss)
            .ok_or_else(|| VerifyError::UntrustedIssuer(parsed.iss.chars().take(200).collect()))?;
        let cfg = &rt.cfg;
        core::check_algorithm(&parsed, &cfg.algorithms)?;
        let key = match rt.keys.lookup(parsed.kid.as_deref(), parsed.alg) {
            Some(k) => k,
            None => rt
                .keys
                .key(parsed.kid.as_deref(), parsed.alg)
                .await
                .map_err(|e| match e {
                    KeyError::UnknownKey { .. } => VerifyError::UnknownKey(e.to_string()),
                    KeyError::Unavailable(m) => VerifyError::IssuerUnavailable(m),
                })?,
        };
        core::verify_signature(&parsed, &key)?;
        let now = self.clock.now_millis() / 1000;
        let checked = core::check_claims(&cfg.rules(), &parsed.claims, now)?;
        let replay = match &checked.jti {
            None => None,
            Some(jti) => {
                let m = ReplayStore::marker(
                    &cfg.name,
                    jti,
                    checked.exp.saturating_add(cfg.leeway_secs),
                );
                if self.replay.seen(&m).await.map_err(replay_error)? {
                    return Err(VerifyError::Replayed);
                }
                Some(m)
            }
        };
        Ok(Verified {
            issuer: cfg.clone(),
            claims: parsed.claims,
            exp: checked.exp,
            replay,
        })
    }

    /// Sweeps replay markers past `exp` + leeway; returns how many were removed.
    pub async fn sweep_replay(&self) -> Result<usize, crate::storage::StorageError> {
        self.replay.sweep().await
    }

    /// Takes the replay marker of a verified token (once: a second use is `Replayed`).
    pub async fn consume(&self, v: &Verified) -> Result<(), VerifyError> {
        match &v.replay {
            None => Ok(()),
            Some(m) => self.replay.consume(m).await.map_err(replay_error),
        }
    }
}

fn replay_error(e: ReplayError) -> VerifyError {
    match e {
        ReplayError::Replayed => VerifyError::Replayed,
        other => VerifyError::Store(other.to_string()),
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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;

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
        let clock = Arc::new(FixedClock::at(1_800_000_000_000));
        let v = Verifier::new(
            &[cfg],
            false,
            Arc::new(Metrics::new()),
            clock.clone(),
            Arc::new(ReplayStore::new(storage, clock, 1000)),
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
