//! Why an issuer cannot be set up (at start or reload). Each variant keeps its cause as the
//! error source, so the log shows the whole chain (see [`super::issuer_tls::error_chain`]).
use std::path::PathBuf;

/// What is wrong with one configured issuer.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key or discovery URL that keygate will not fetch from.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The `ca_file` cannot be read or parsed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The `ca_file` holds certificates, but none that rustls can parse as a trust anchor.
    #[error("{}: no certificate in it can be used (not even pinned)", .0.display())]
    NoUsableCertificate(PathBuf),
    /// The verifier over the `ca_file` cannot be built.
    #[error("{}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    /// The system trust store cannot be used.
    #[error("system trust store: {0}")]
    SystemTrustStore(#[source] rustls::Error),
    /// No protocol version the provider supports.
    #[error("TLS: {0}")]
    Protocol(#[source] rustls::Error),
    /// The HTTP client cannot be built.
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Inline (`jwks = "..."`) keys are unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// A configured issuer, and why it cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: {source}")]
pub struct IssuerError {
    /// The issuer's `name`.
    pub issuer: String,
    /// Why.
    #[source]
    pub source: SetupError,
}

/// Why a key or discovery URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL.
    #[error("{url:?} is not a URL: {reason}")]
    Malformed {
        /// As configured.
        url: String,
        /// The parser's words.
        reason: String,
    },
    /// `http://` to a host that is not a loopback IP.
    #[error("{0:?}: http:// is allowed only to a loopback IP address")]
    HttpNotLoopback(String),
    /// `http://` without the test switch.
    #[error("{0:?}: keys are fetched over HTTPS only (identity.dangerous_allow_http_loopback_issuers allows http://127.0.0.1 for tests)")]
    HttpRefused(String),
    /// Another scheme.
    #[error("{url:?}: unsupported scheme {scheme:?}")]
    Scheme {
        /// As configured.
        url: String,
        /// Its scheme.
        scheme: String,
    },
}

/// Why a JWKS document gives no keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not a JWK Set.
    #[error("JWKS is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Only symmetric keys, unsupported curves or malformed keys.
    #[error("JWKS has no usable asymmetric key")]
    NoUsableKey,
}
