//! Why an exchange was refused: one exhaustive enum. The stable reason code callers see comes
//! from [`Refusal::code`], the gRPC status from the API layer's exhaustive match on the same
//! enum (`api::refusal_status`), so neither can fall to a string-keyed default.

/// An exchange refusal (RFC 8693 / RFC 6749 error semantics, keygate's codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Malformed request (token type, missing role, a limit).
    InvalidRequest,
    /// A requested scope does not parse.
    InvalidScope,
    /// The requested audience is not keygate's.
    InvalidTarget,
    /// The subject token is over the size limit.
    TokenTooLarge,
    /// Not a configured issuer.
    UntrustedIssuer,
    /// The issuer's keys (or the replay store) are unavailable.
    IssuerUnavailable,
    /// `aud` is wrong.
    InvalidAudience,
    /// Expired, or no lifetime left.
    TokenExpired,
    /// `nbf`/`iat` in the future.
    TokenNotYetValid,
    /// Older than the issuer's maximum age.
    TokenTooOld,
    /// A single-use token used again.
    TokenReplayed,
    /// Anything else wrong with the token (signature, algorithm, claims' types).
    InvalidToken,
    /// No role of that name, or its conditions do not hold.
    NoMatchingRole,
    /// No requested scope is allowed by the role.
    ScopeNotAllowed,
    /// keygate failed (signing).
    ServerError,
}

impl Refusal {
    /// Every refusal (for tests and docs).
    pub const ALL: [Refusal; 15] = [
        Refusal::InvalidRequest,
        Refusal::InvalidScope,
        Refusal::InvalidTarget,
        Refusal::TokenTooLarge,
        Refusal::UntrustedIssuer,
        Refusal::IssuerUnavailable,
        Refusal::InvalidAudience,
        Refusal::TokenExpired,
        Refusal::TokenNotYetValid,
        Refusal::TokenTooOld,
        Refusal::TokenReplayed,
        Refusal::InvalidToken,
        Refusal::NoMatchingRole,
        Refusal::ScopeNotAllowed,
        Refusal::ServerError,
    ];

    /// The stable reason code a caller sees.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidRequest => "invalid_request",
            Refusal::InvalidScope => "invalid_scope",
            Refusal::InvalidTarget => "invalid_target",
            Refusal::TokenTooLarge => "token_too_large",
            Refusal::UntrustedIssuer => "untrusted_issuer",
            Refusal::IssuerUnavailable => "issuer_unavailable",
            Refusal::InvalidAudience => "invalid_audience",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenNotYetValid => "token_not_yet_valid",
            Refusal::TokenTooOld => "token_too_old",
            Refusal::TokenReplayed => "token_replayed",
            Refusal::InvalidToken => "invalid_token",
            Refusal::NoMatchingRole => "no_matching_role",
            Refusal::ScopeNotAllowed => "scope_not_allowed",
            Refusal::ServerError => "server_error",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut codes: Vec<&str> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert!(codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Refusal::ALL.len());
    }
}
