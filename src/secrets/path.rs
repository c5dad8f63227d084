//! Secret path rules: `segment(/segment)*`, each segment of `[A-Za-z0-9._-]`, no `.`/`..`
//! segments, at most 256 bytes. Prefixes for `List`/`Watch` follow the same alphabet and may end
//! with `/` or be empty.

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 256;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Paths no caller reaches (keygate's own keys).
pub fn is_reserved(path: &str) -> bool {
    path == "_sys" || path.starts_with("_sys/")
}

/// Checks a secret path; the error says what is wrong (the path is not secret).
pub fn validate(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path is longer than {MAX_PATH_LEN} bytes"));
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(format!("path {path:?} has an empty segment"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("path {path:?} has a '{seg}' segment"));
        }
        if let Some(c) = seg.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "path {:?} has the character {:?}; allowed are A-Z a-z 0-9 . _ - and /",
                path.escape_debug().to_string(),
                c
            ));
        }
    }
    Ok(())
}

/// Checks a prefix for `List`/`Watch` (may be empty, may end with `/`).
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return if prefix.is_empty() {
            Ok(())
        } else {
            Err("prefix \"/\" is not valid; use \"\" for everything".into())
        };
    }
    if prefix.len() > MAX_PATH_LEN {
        return Err(format!("prefix is longer than {MAX_PATH_LEN} bytes"));
    }
    validate(trimmed)
}

/// Field names: 1-128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_field(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("field names are 1 to 128 bytes".into());
    }
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "field name {:?} has the character {c:?}; allowed are A-Z a-z 0-9 . _ -",
            name.escape_debug().to_string()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["prod/api", "a", "a.b/c_d-e/1"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a\0b", "ä"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&"a".repeat(257)).is_err());
    }

    #[test]
    fn prefixes() {
        for ok in ["", "prod/", "prod", "prod/ap"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["/", "//", "a//", "../"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fields() {
        assert!(validate_field("db_password").is_ok());
        assert!(validate_field("").is_err());
        assert!(validate_field("a=b").is_err());
    }
}
