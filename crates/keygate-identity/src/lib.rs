//! keygate's identity core: the pure half of verifying a platform token.
//!
//! [`core`]: parse (size, three segments, header and payload parsed once, `crit` refused,
//! `iss`) → check the algorithm against an allowlist → verify the signature with a key the
//! caller found → check the claims with the time passed in. [`Refusal`]: why an exchange is
//! refused, one exhaustive enum. This crate may not depend on storage, networking, a clock,
//! metrics, tokio or the rest of keygate: everything here is a synchronous function of its
//! arguments, so it can be read, tested and fuzzed alone.
#![forbid(unsafe_code)]

pub mod core;
pub mod refusal;

pub use core::MAX_NUMERIC_DATE;
pub use refusal::Refusal;

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

impl VerifyError {
    /// The refusal a caller learns (exhaustive: a new variant must say which).
    pub fn refusal(&self) -> Refusal {
        use VerifyError::*;
        match self {
            TooLarge => Refusal::TokenTooLarge,
            UntrustedIssuer(_) => Refusal::UntrustedIssuer,
            IssuerUnavailable(_) | Store(_) => Refusal::IssuerUnavailable,
            Audience(_) => Refusal::InvalidAudience,
            Expired => Refusal::TokenExpired,
            NotYetValid | IssuedInFuture => Refusal::TokenNotYetValid,
            TooOld(_) => Refusal::TokenTooOld,
            Replayed => Refusal::TokenReplayed,
            Malformed(_)
            | AlgorithmNotAllowed(_)
            | UnknownKey(_)
            | BadSignature
            | ClaimType(_)
            | MissingClaim(_)
            | Critical
            | TimeOutOfRange(_)
            | LifetimeTooLong(_) => Refusal::InvalidToken,
        }
    }

    /// The stable reason code a caller sees.
    pub fn code(&self) -> &'static str {
        self.refusal().code()
    }
}
