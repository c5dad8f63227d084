//! Durations as written in config and on the command line. A leaf module.

/// Parses a duration like `90s`, `15m`, `1h 30m`, `7d`.
pub fn parse_duration(v: &str) -> Result<u64, String> {
    humantime::parse_duration(v.trim())
        .map(|d| d.as_secs())
        .map_err(|e| format!("{v:?} is not a duration like \"90s\", \"15m\" or \"24h\": {e}"))
}
