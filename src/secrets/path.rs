//! Secret paths as a type. A [`SecretPath`] is `segment(/segment)*`, each segment of
//! `[A-Za-z0-9._-]`, no `.`/`..` segments, at most 256 bytes; it is only made by
//! [`SecretPath::parse`] (or deserialized through it), so whatever holds one holds a valid path
//! and the store never re-checks. A [`PathPrefix`] (for `List`/`Watch`) follows the same
//! alphabet and may end with `/` or be empty. Errors name the path (paths are not secret).
use std::borrow::Cow;
use std::fmt;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 256;
/// Longest accepted field name, in bytes.
pub const MAX_FIELD_LEN: usize = 128;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Why a path, prefix or field name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing given.
    #[error("path is empty")]
    Empty,
    /// Over [`MAX_PATH_LEN`].
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// `a//b`, `/a`, `a/`.
    #[error("path {0:?} has an empty segment")]
    EmptySegment(String),
    /// `.` or `..`.
    #[error("path {path:?} has a '{segment}' segment")]
    DotSegment {
        /// The path.
        path: String,
        /// `.` or `..`.
        segment: &'static str,
    },
    /// A character outside the alphabet.
    #[error("path {path:?} has the character {ch:?}; allowed are A-Z a-z 0-9 . _ - and /")]
    Character {
        /// The path, escaped.
        path: String,
        /// The first refused character.
        ch: char,
    },
    /// A prefix of only `/`.
    #[error("prefix \"/\" is not valid; use \"\" for everything")]
    RootPrefix,
    /// A field name of the wrong length.
    #[error("field names are 1 to {MAX_FIELD_LEN} bytes")]
    FieldLength,
    /// A field name with a character outside the alphabet.
    #[error("field name {name:?} has the character {ch:?}; allowed are A-Z a-z 0-9 . _ -")]
    FieldCharacter {
        /// The name, escaped.
        name: String,
        /// The first refused character.
        ch: char,
    },
}

fn check(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(PathError::EmptySegment(path.to_string()));
        }
        if seg == "." || seg == ".." {
            let segment = if seg == "." { "." } else { ".." };
            return Err(PathError::DotSegment {
                path: path.to_string(),
                segment,
            });
        }
        if let Some(ch) = seg.chars().find(|c| !allowed(*c)) {
            return Err(PathError::Character {
                path: path.escape_debug().to_string(),
                ch,
            });
        }
    }
    Ok(())
}

/// A valid secret path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretPath(Cow<'static, str>);

impl SecretPath {
    /// Checks `path` and makes it a [`SecretPath`].
    pub fn parse(path: &str) -> Result<Self, PathError> {
        check(path)?;
        Ok(Self(Cow::Owned(path.to_string())))
    }

    /// One of keygate's own paths, spelled in the source: `_sys/` and then segments of the
    /// path alphabet. Checked at compile time (a bad literal in a `const` does not build).
    pub const fn system(path: &'static str) -> Self {
        let b = path.as_bytes();
        assert!(b.len() > 5 && b.len() <= MAX_PATH_LEN, "system path length");
        let head = b"_sys/";
        let mut i = 0;
        while i < head.len() {
            assert!(b[i] == head[i], "system paths start with _sys/");
            i += 1;
        }
        let mut seg_start = head.len();
        while i <= b.len() {
            if i == b.len() || b[i] == b'/' {
                let n = i - seg_start;
                assert!(n > 0, "empty segment in a system path");
                let dots = b[seg_start] == b'.' && (n == 1 || (n == 2 && b[seg_start + 1] == b'.'));
                assert!(!dots, "dot segment in a system path");
                seg_start = i + 1;
            } else {
                let c = b[i];
                assert!(
                    c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-',
                    "character outside the path alphabet in a system path"
                );
            }
            i += 1;
        }
        Self(Cow::Borrowed(path))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of keygate's own paths (`_sys`, `_sys/...`), which no caller reaches.
    pub fn is_reserved(&self) -> bool {
        is_reserved(&self.0)
    }
}

impl TryFrom<String> for SecretPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        check(&s)?;
        Ok(Self(Cow::Owned(s)))
    }
}

impl From<SecretPath> for String {
    fn from(p: SecretPath) -> String {
        p.0.into_owned()
    }
}

impl std::str::FromStr for SecretPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::parse(s)
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::ops::Deref for SecretPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SecretPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for SecretPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SecretPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A valid `List`/`Watch` prefix: empty (everything), or a path, optionally ending with `/`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// Checks `prefix`.
    pub fn parse(prefix: &str) -> Result<Self, PathError> {
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        if trimmed.is_empty() {
            return if prefix.is_empty() {
                Ok(Self::default())
            } else {
                Err(PathError::RootPrefix)
            };
        }
        if prefix.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        check(trimmed)?;
        Ok(Self(prefix.to_string()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Paths no caller reaches (keygate's own keys).
pub fn is_reserved(path: &str) -> bool {
    path == "_sys" || path.starts_with("_sys/")
}

/// Checks a field name: 1-128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_field(name: &str) -> Result<(), PathError> {
    if name.is_empty() || name.len() > MAX_FIELD_LEN {
        return Err(PathError::FieldLength);
    }
    if let Some(ch) = name.chars().find(|c| !allowed(*c)) {
        return Err(PathError::FieldCharacter {
            name: name.escape_debug().to_string(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["prod/api", "a", "a.b/c_d-e/1"] {
            assert_eq!(SecretPath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a\0b", "ä"] {
            assert!(SecretPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SecretPath::parse(&"a".repeat(257)), Err(PathError::TooLong));
        assert!(SecretPath::parse(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn deserializing_checks_the_path() {
        let p: SecretPath = serde_json::from_str("\"prod/db\"").unwrap();
        assert_eq!(p, "prod/db");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"prod/db\"");
        for bad in ["\"a/../b\"", "\"\"", "\"/x\""] {
            assert!(serde_json::from_str::<SecretPath>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn system_paths_are_reserved() {
        const KEYS: SecretPath = SecretPath::system("_sys/signing-keys");
        assert!(KEYS.is_reserved());
        assert_eq!(SecretPath::parse(&KEYS).unwrap(), KEYS);
        assert!(!SecretPath::parse("sys/x").unwrap().is_reserved());
        for bad in [
            "prod/x", "_sys/", "_sys//a", "_sys/..", "_sys/a b", "_sys/./a",
        ] {
            let owned: &'static str = Box::leak(bad.to_string().into_boxed_str());
            assert!(
                std::panic::catch_unwind(|| SecretPath::system(owned)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn prefixes() {
        for ok in ["", "prod/", "prod", "prod/ap"] {
            assert_eq!(PathPrefix::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["/", "//", "a//", "../"] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fields() {
        assert!(validate_field("db_password").is_ok());
        assert_eq!(validate_field(""), Err(PathError::FieldLength));
        assert!(matches!(
            validate_field("a=b"),
            Err(PathError::FieldCharacter { ch: '=', .. })
        ));
    }
}
