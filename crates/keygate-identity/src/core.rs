//! The pure identity core: parse → check the algorithm → verify the signature → check the
//! claims, as synchronous functions with the time passed in. No storage, network, clock or
//! metrics: the async shell ([`super::Verifier`]) fetches keys and keeps replay markers, and
//! these functions can be tested and fuzzed alone.
use crate::VerifyError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The largest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Longest `jti` accepted where replay protection needs one.
pub const MAX_JTI_BYTES: usize = 256;

/// A token split and decoded once: header and payload JSON are parsed here and nowhere else.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// Header `alg` (never `none`: it is not an [`Algorithm`]).
    pub alg: Algorithm,
    /// Header `kid`, only a lookup key into the configured issuer's keys.
    pub kid: Option<String>,
    /// The unverified `iss`, only to pick a configured issuer by exact match.
    pub iss: String,
    /// The payload (unverified until [`verify_signature`] passed).
    pub claims: Value,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    /// The base64url signature.
    signature: &'a str,
}

/// Splits and decodes a compact JWS: exactly three segments, header JSON with a known
/// asymmetric-or-HMAC `alg` name (the issuer's allowlist decides later), no `crit`, a JSON
/// payload with a string `iss`. `max_bytes` is checked before anything else.
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, VerifyError> {
    if token.len() > max_bytes {
        return Err(VerifyError::TooLarge);
    }
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let header: Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| VerifyError::Malformed("header is not base64url JSON".into()))?;
    let Value::Object(header) = header else {
        return Err(VerifyError::Malformed("header is not a JSON object".into()));
    };
    // RFC 7515 §4.1.11: keygate implements no extension, so any `crit` (even []) is refused
    if header.contains_key("crit") {
        return Err(VerifyError::Critical);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => serde_json::from_value::<Algorithm>(Value::String(a.clone()))
            .map_err(|_| {
                VerifyError::Malformed(format!(
                    "header: unknown algorithm {:?}",
                    a.chars().take(20).collect::<String>()
                ))
            })?,
        _ => return Err(VerifyError::Malformed("header: alg is required".into())),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(VerifyError::Malformed("header: kid is not a string".into())),
    };
    let claims: Value = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| VerifyError::Malformed("payload is not base64url JSON".into()))?;
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(VerifyError::ClaimType("iss")),
        None => return Err(VerifyError::MissingClaim("iss")),
    };
    Ok(Parsed {
        alg,
        kid,
        iss,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// The header's algorithm must be in the issuer's allowlist (never taken from the token).
pub fn check_algorithm(parsed: &Parsed<'_>, allowed: &[Algorithm]) -> Result<(), VerifyError> {
    if allowed.contains(&parsed.alg) {
        Ok(())
    } else {
        Err(VerifyError::AlgorithmNotAllowed(format!(
            "{:?}",
            parsed.alg
        )))
    }
}

/// Verifies the signature with `key` (which must be of the algorithm's family).
pub fn verify_signature(parsed: &Parsed<'_>, key: &DecodingKey) -> Result<(), VerifyError> {
    match jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.signing_input.as_bytes(),
        key,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(VerifyError::BadSignature),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                Err(VerifyError::Malformed("signature is not base64url".into()))
            }
            _ => Err(VerifyError::Malformed(format!("signature: {e}"))),
        },
    }
}

/// What an issuer requires of a token's claims.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    /// Exact `iss`.
    pub issuer: &'a str,
    /// keygate's audience: `aud` must contain it.
    pub audience: &'a str,
    /// Accept an `aud` list naming other audiences too.
    pub allow_extra_audiences: bool,
    /// Clock skew allowed for `exp`, `nbf`, `iat`.
    pub leeway_secs: u64,
    /// Refuse `now - iat` beyond this.
    pub max_age_secs: u64,
    /// Refuse `exp - iat` beyond this.
    pub max_lifetime_secs: u64,
    /// A `jti` (1 to 256 bytes) is required.
    pub require_jti: bool,
}

/// What the claim checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// `jti`, when the rules require one.
    pub jti: Option<String>,
}

/// Reads a time claim: absent is `None`; present must be a JSON number in
/// [0, [`MAX_NUMERIC_DATE`]] (CVE-2026-25537: a string `exp` is an error, not an absent claim;
/// 1e20 or a negative number is not "never expires").
pub fn time_claim(claims: &Value, name: &'static str) -> Result<Option<u64>, VerifyError> {
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

/// Every claim check of RFC 7519 and RFC 8725 keygate makes, at `now` (seconds).
pub fn check_claims(
    rules: &ClaimRules<'_>,
    claims: &Value,
    now: u64,
) -> Result<Checked, VerifyError> {
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(VerifyError::UntrustedIssuer("iss changed".into()));
    }
    match claims.get("aud") {
        Some(Value::String(a)) if a == rules.audience => {}
        Some(Value::Array(list)) => {
            let auds: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            if auds.len() != list.len() {
                return Err(VerifyError::ClaimType("aud"));
            }
            if !auds.contains(&rules.audience) {
                return Err(VerifyError::Audience(format!(
                    "aud does not contain {:?}",
                    rules.audience
                )));
            }
            if auds.len() > 1 && !rules.allow_extra_audiences {
                return Err(VerifyError::Audience(
                    "aud lists other audiences too (allow_extra_audiences is off)".into(),
                ));
            }
        }
        Some(Value::String(_)) => {
            return Err(VerifyError::Audience(format!(
                "aud is not {:?}",
                rules.audience
            )))
        }
        Some(_) => return Err(VerifyError::ClaimType("aud")),
        None => return Err(VerifyError::MissingClaim("aud")),
    }
    let leeway = rules.leeway_secs;
    let exp = time_claim(claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    let nbf = time_claim(claims, "nbf")?;
    let iat = time_claim(claims, "iat")?.ok_or(VerifyError::MissingClaim("iat"))?;
    if now > exp.saturating_add(leeway) {
        return Err(VerifyError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(VerifyError::NotYetValid);
    }
    if iat > now.saturating_add(leeway) {
        return Err(VerifyError::IssuedInFuture);
    }
    if now.saturating_sub(iat) > rules.max_age_secs {
        return Err(VerifyError::TooOld(rules.max_age_secs));
    }
    if exp.saturating_sub(iat) > rules.max_lifetime_secs {
        return Err(VerifyError::LifetimeTooLong(rules.max_lifetime_secs));
    }
    let jti = if rules.require_jti {
        match claims.get("jti") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_JTI_BYTES => Some(s.clone()),
            Some(_) => return Err(VerifyError::ClaimType("jti")),
            None => return Err(VerifyError::MissingClaim("jti")),
        }
    } else {
        None
    };
    Ok(Checked { exp, jti })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tok(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}.c2ln",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        )
    }

    const RULES: ClaimRules<'static> = ClaimRules {
        issuer: "https://i",
        audience: "a",
        allow_extra_audiences: false,
        leeway_secs: 30,
        max_age_secs: 600,
        max_lifetime_secs: 86_400,
        require_jti: true,
    };

    #[test]
    fn parse_refuses_by_rule() {
        let c = json!({"iss": "https://i"});
        let ok = tok(&json!({"alg": "RS256", "kid": "k"}), &c);
        let p = parse(&ok, 16384).unwrap();
        assert_eq!(
            (p.alg, p.kid.as_deref(), p.iss.as_str()),
            (Algorithm::RS256, Some("k"), "https://i")
        );
        assert_eq!(parse(&ok, 10).unwrap_err(), VerifyError::TooLarge);
        for (h, want) in [
            (json!({"alg": "RS256", "crit": []}), "crit"),
            (json!({"alg": "RS256", "crit": ["exp"]}), "crit"),
            (json!({"alg": "none"}), "unknown algorithm"),
            (json!({"alg": 7}), "alg is required"),
            (json!({}), "alg is required"),
            (json!({"alg": "RS256", "kid": 1}), "kid"),
            (json!([]), "object"),
        ] {
            let e = parse(&tok(&h, &c), 16384).unwrap_err().to_string();
            assert!(e.contains(want), "{h}: {e}");
        }
        assert_eq!(
            parse(&tok(&json!({"alg": "RS256"}), &json!({"iss": 5})), 16384).unwrap_err(),
            VerifyError::ClaimType("iss")
        );
        assert!(parse("a.b", 100).is_err());
        assert!(parse("a.b.c.d", 100).is_err());
    }

    #[test]
    fn claims_checked_at_the_time_given() {
        let now = 1_800_000_000u64;
        let base =
            json!({"iss": "https://i", "aud": "a", "iat": now - 10, "exp": now + 300, "jti": "j"});
        assert_eq!(
            check_claims(&RULES, &base, now),
            Ok(Checked {
                exp: now + 300,
                jti: Some("j".into())
            })
        );
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            check_claims(&RULES, &c, now)
        };
        assert_eq!(with("exp", json!(now - 31)), Err(VerifyError::Expired));
        assert!(with("exp", json!(now - 29)).is_ok(), "leeway");
        assert_eq!(
            with("exp", json!(1e20)),
            Err(VerifyError::TimeOutOfRange("exp"))
        );
        assert_eq!(
            with("exp", json!(-1)),
            Err(VerifyError::TimeOutOfRange("exp"))
        );
        assert_eq!(
            with("exp", json!("soon")),
            Err(VerifyError::ClaimType("exp"))
        );
        assert_eq!(with("nbf", json!(now + 100)), Err(VerifyError::NotYetValid));
        assert_eq!(
            with("iat", json!(now + 100)),
            Err(VerifyError::IssuedInFuture)
        );
        assert_eq!(with("iat", json!(now - 700)), Err(VerifyError::TooOld(600)));
        assert_eq!(
            with("exp", json!(now + 90_000)),
            Err(VerifyError::LifetimeTooLong(86_400))
        );
        assert_eq!(with("jti", json!("")), Err(VerifyError::ClaimType("jti")));
        assert_eq!(
            with("jti", json!("x".repeat(257))),
            Err(VerifyError::ClaimType("jti"))
        );
        assert!(matches!(
            with("aud", json!(["a", "b"])),
            Err(VerifyError::Audience(_))
        ));
        assert!(with("aud", json!(["a"])).is_ok());
        assert!(matches!(
            with("aud", json!("b")),
            Err(VerifyError::Audience(_))
        ));
        assert_eq!(
            with("aud", json!(["a", 1])),
            Err(VerifyError::ClaimType("aud"))
        );
        assert!(matches!(
            with("iss", json!("https://j")),
            Err(VerifyError::UntrustedIssuer(_))
        ));
        // the same token is valid or not only by the time passed in
        assert_eq!(
            check_claims(&RULES, &base, now + 400),
            Err(VerifyError::Expired)
        );
    }
}
