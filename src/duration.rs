//! Durations as written in config and on the command line. A leaf module.

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{input:?} is not a duration like \"90s\", \"15m\" or \"24h\": {source}")]
pub struct DurationError {
    /// What was written (config values are not secret), cut to 100 characters.
    pub input: String,
    /// The parser's reason.
    #[source]
    pub source: humantime::DurationError,
}

/// Parses a duration like `90s`, `15m`, `1h 30m`, `7d`.
pub fn parse_duration(v: &str) -> Result<u64, DurationError> {
    humantime::parse_duration(v.trim())
        .map(|d| d.as_secs())
        .map_err(|source| DurationError {
            input: v.chars().take(100).collect(),
            source,
        })
}
