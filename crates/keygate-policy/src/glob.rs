//! Globs for claim values and secret paths.
//!
//! `*` matches any run of characters **except `/`** (it never crosses a path segment); `**`
//! matches any run including `/`; `?` matches one character other than `/`. Everything else is
//! literal. So `refs/heads/*` matches `refs/heads/main` but not `refs/heads/feature/x`, and
//! `prod/**` matches everything under `prod/`.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Tok {
    Lit(char),
    Star,
    DoubleStar,
    One,
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                Tok::DoubleStar
            }
            '*' => Tok::Star,
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    out
}

/// A glob compiled once (at config load or scope parse), matched many times.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(from = "String")]
pub struct Glob {
    text: String,
    toks: Vec<Tok>,
}

impl From<String> for Glob {
    fn from(text: String) -> Self {
        let toks = tokens(&text);
        Self { text, toks }
    }
}

impl From<&str> for Glob {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does the pattern match all of `text`?
    pub fn matches(&self, text: &str) -> bool {
        match_tokens(&self.toks, text)
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        is_literal(&self.text)
    }

    /// See [`covers`].
    pub fn covers(&self, inner: &Glob) -> bool {
        covers(&self.text, &inner.text)
    }
}

/// Does `pattern` match all of `text`? (Compiles the pattern: use [`Glob`] for a pattern
/// matched more than once.)
pub fn matches(pattern: &str, text: &str) -> bool {
    match_tokens(&tokens(pattern), text)
}

/// Bottom-up DP: no recursion, no panics, O(p·t).
fn match_tokens(p: &[Tok], text: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (n, m) = (p.len(), t.len());
    // row[j]: p[i..] matches t[j..], computed from the row for i + 1
    let mut next = vec![false; m + 1];
    next[m] = true;
    for i in (0..n).rev() {
        let mut row = vec![false; m + 1];
        for j in (0..=m).rev() {
            row[j] = match p[i] {
                Tok::DoubleStar => next[j] || (j < m && row[j + 1]),
                Tok::Star => next[j] || (j < m && t[j] != '/' && row[j + 1]),
                Tok::One => j < m && t[j] != '/' && next[j + 1],
                Tok::Lit(c) => j < m && t[j] == c && next[j + 1],
            };
        }
        next = row;
    }
    next[0]
}

/// True when the pattern has no wildcard.
pub fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

/// Does every string matched by `inner` also match `outer`? Conservative: `false` when unsure,
/// so scope intersection can only ever grant less.
pub fn covers(outer: &str, inner: &str) -> bool {
    if outer == inner {
        return true;
    }
    if is_literal(inner) {
        return matches(outer, inner);
    }
    // `P/**` (P literal) covers anything starting with `P/`.
    if let Some(prefix) = outer.strip_suffix("**") {
        if is_literal(prefix) && inner.starts_with(prefix) {
            return true;
        }
    }
    // `P/*` (P literal) covers `P/x` where x has no `/` and no `**`.
    if let Some(prefix) = outer.strip_suffix('*') {
        if is_literal(prefix) && prefix.ends_with('/') {
            if let Some(rest) = inner.strip_prefix(prefix) {
                return !rest.contains('/') && !rest.contains("**");
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_in_a_segment() {
        assert!(matches("refs/heads/*", "refs/heads/main"));
        assert!(!matches("refs/heads/*", "refs/heads/feature/x"));
        assert!(matches("refs/heads/**", "refs/heads/feature/x"));
        assert!(matches("prod/**", "prod/a/b/c"));
        assert!(!matches("prod/**", "production/a"));
        assert!(matches("repo:acme/*:ref:*", "repo:acme/app:ref:refs"));
        assert!(!matches(
            "repo:acme/*:ref:*",
            "repo:acme/app:ref:refs/heads/main"
        ));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "a/c"));
        assert!(matches("", ""));
        assert!(!matches("", "x"));
        assert!(matches("*", ""));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exact2"));
    }

    #[test]
    fn covers_is_sound_on_samples() {
        let patterns = [
            "prod/**",
            "prod/*",
            "prod/api/*",
            "prod/api/db",
            "prod/a*",
            "*",
            "**",
            "prod/api/**",
            "staging/*",
        ];
        let paths = [
            "prod/api",
            "prod/api/db",
            "prod/a",
            "prod/api/x/y",
            "staging/x",
            "prod",
            "x",
            "prod/billing/db",
        ];
        for o in patterns {
            for i in patterns {
                if covers(o, i) {
                    for p in paths {
                        if matches(i, p) {
                            assert!(matches(o, p), "{o} covers {i} but not {p}");
                        }
                    }
                }
            }
        }
    }
}
