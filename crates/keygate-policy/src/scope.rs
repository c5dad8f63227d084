//! Scopes: a capability on a path glob, written `capability:glob` (`read:prod/api/*`).
use super::glob::Glob;

/// What a scope lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Read secret values.
    Read,
    /// List names and metadata.
    List,
    /// Write new versions.
    Write,
    /// Soft-delete, undelete, destroy.
    Delete,
    /// Rotate now.
    Rotate,
    /// Operator actions on a path (rotation policies, leases of others).
    Admin,
    /// Generate users of a database role: `db:<role>`.
    Db,
    /// Let a rotation policy manage a database's static role: `db-rotate:<database>/<role>`
    /// (the role glob-able). Needed, besides `admin:<path>`, to set such a policy.
    DbRotate,
}

impl Capability {
    /// Path capabilities, as written before `:`.
    pub const PATH: [Capability; 6] = [
        Capability::Read,
        Capability::List,
        Capability::Write,
        Capability::Delete,
        Capability::Rotate,
        Capability::Admin,
    ];

    /// As written in a scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::List => "list",
            Capability::Write => "write",
            Capability::Delete => "delete",
            Capability::Rotate => "rotate",
            Capability::Admin => "admin",
            Capability::Db => "db",
            Capability::DbRotate => "db-rotate",
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// What it allows.
    pub capability: Capability,
    /// Path glob (see [`super::glob`]); for `db:` the database role name, for `db-rotate:`
    /// `<database>/<role glob>`. Compiled once, here.
    pub pattern: Glob,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.capability, self.pattern)
    }
}

/// A database or role name in a `db-rotate:` scope.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why a scope string is refused. The text is the caller's (scopes are not secret), cut to
/// 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// `db:` with a glob or nothing.
    #[error("scope {0:?}: db:<name> needs a plain database role name")]
    DbName(String),
    /// `db-rotate:` without `<database>/<role>`.
    #[error("scope {0:?}: db-rotate:<database>/<role> (role may use * and ?)")]
    DbRotate(String),
    /// No `:`.
    #[error("scope {0:?} is not capability:path-glob")]
    Shape(String),
    /// A capability keygate does not have.
    #[error("scope {scope:?}: unknown capability {capability:?} (one of {}, db:<name>, db-rotate:<database>/<role>)", Capability::PATH.map(Capability::as_str).join(", "))]
    UnknownCapability {
        /// The scope.
        scope: String,
        /// Its capability part.
        capability: String,
    },
    /// An empty or over-long path glob.
    #[error("scope {0:?}: the path glob must be 1 to 256 bytes")]
    GlobLength(String),
}

fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Scope {
    /// Parses `capability:glob`; `db:<name>` has no path (its pattern is the database role);
    /// `db-rotate:<database>/<role>` names a database's static role (`*`, `?` allowed in the
    /// role part only).
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        if let Some(name) = s.strip_prefix("db:") {
            if name.is_empty() || name.contains(['*', '?', ':']) {
                return Err(ScopeError::DbName(cut(s)));
            }
            return Ok(Self {
                capability: Capability::Db,
                pattern: Glob::from(name),
            });
        }
        if let Some(target) = s.strip_prefix("db-rotate:") {
            let ok = target.split_once('/').is_some_and(|(db, role)| {
                plain(db)
                    && !role.is_empty()
                    && role.len() <= 63
                    && role
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-*?".contains(c))
            });
            if !ok {
                return Err(ScopeError::DbRotate(cut(s)));
            }
            return Ok(Self {
                capability: Capability::DbRotate,
                pattern: Glob::from(target),
            });
        }
        let (cap, pattern) = s.split_once(':').ok_or_else(|| ScopeError::Shape(cut(s)))?;
        let Some(capability) = Capability::PATH.into_iter().find(|c| c.as_str() == cap) else {
            return Err(ScopeError::UnknownCapability {
                scope: cut(s),
                capability: cut(cap),
            });
        };
        if pattern.is_empty() || pattern.len() > 256 {
            return Err(ScopeError::GlobLength(cut(s)));
        }
        Ok(Self {
            capability,
            pattern: Glob::from(pattern),
        })
    }

    /// Does this scope allow `capability` on `path`?
    pub fn allows(&self, capability: Capability, path: &str) -> bool {
        self.capability == capability && self.pattern.matches(path)
    }

    /// Is every use of `other` also allowed by `self`?
    pub fn covers(&self, other: &Scope) -> bool {
        self.capability == other.capability && self.pattern.covers(&other.pattern)
    }
}

/// The granted scopes: each requested scope that some allowed scope covers. An empty request
/// asks for everything the role allows. Never grants more than both sides.
pub fn intersect(requested: &[Scope], allowed: &[Scope]) -> Vec<Scope> {
    if requested.is_empty() {
        return allowed.to_vec();
    }
    let mut out: Vec<Scope> = requested
        .iter()
        .filter(|r| allowed.iter().any(|a| a.covers(r)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    #[test]
    fn parse() {
        assert_eq!(s("read:prod/api/*").pattern.as_str(), "prod/api/*");
        assert_eq!(s("db:readonly").capability, Capability::Db);
        let r = s("db-rotate:main/app_*");
        assert_eq!(r.capability, Capability::DbRotate);
        assert!(r.allows(Capability::DbRotate, "main/app_user"));
        assert!(!r.allows(Capability::DbRotate, "main/postgres"));
        assert!(!r.allows(Capability::Rotate, "main/app_user"));
        assert_eq!(r.to_string(), "db-rotate:main/app_*");
        for bad in [
            "db-rotate:main",
            "db-rotate:*/x",
            "db-rotate:m/",
            "db-rotate:m/a/b",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        // a path scope never grants a database role, whatever its glob
        assert!(!s("rotate:**").allows(Capability::DbRotate, "main/postgres"));
        assert!(Scope::parse("fly:prod").is_err());
        assert!(Scope::parse("read").is_err());
        assert!(Scope::parse("db:*").is_err());
    }

    #[test]
    fn intersection_never_widens() {
        let allowed = vec![s("read:prod/api/*"), s("list:prod/**")];
        assert_eq!(intersect(&[], &allowed), allowed);
        assert_eq!(
            intersect(&[s("read:prod/api/db"), s("write:prod/api/db")], &allowed),
            vec![s("read:prod/api/db")]
        );
        assert!(intersect(&[s("read:prod/**")], &allowed).is_empty());
        assert_eq!(
            intersect(&[s("list:prod/x/*")], &allowed),
            vec![s("list:prod/x/*")]
        );
    }

    /// Property: over random roles and requests, granted ⊆ requested ∩ allowed — checked on
    /// random concrete (capability, path) uses.
    #[test]
    fn property_granted_within_requested_and_allowed() {
        let caps = [Capability::Read, Capability::List, Capability::Write];
        let segs = ["prod", "api", "db", "billing", "*", "**", "a*"];
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut checked = 0;
        for _ in 0..2000 {
            let pattern = |next: &mut dyn FnMut(usize) -> usize| {
                let len = 1 + next(3);
                (0..len)
                    .map(|_| segs[next(segs.len())])
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let allowed: Vec<Scope> = (0..1 + next(3))
                .map(|_| Scope {
                    capability: caps[next(3)],
                    pattern: Glob::from(pattern(&mut next)),
                })
                .collect();
            let requested: Vec<Scope> = (0..next(4))
                .map(|_| Scope {
                    capability: caps[next(3)],
                    pattern: Glob::from(pattern(&mut next)),
                })
                .collect();
            let granted = intersect(&requested, &allowed);
            for g in &granted {
                if !requested.is_empty() {
                    assert!(requested.contains(g), "granted something not requested");
                }
            }
            let lits = ["prod", "api", "db", "billing", "ax", "x"];
            for _ in 0..30 {
                let path = (0..1 + next(3))
                    .map(|_| lits[next(lits.len())])
                    .collect::<Vec<_>>()
                    .join("/");
                let cap = caps[next(3)];
                let g = granted.iter().any(|x| x.allows(cap, &path));
                let a = allowed.iter().any(|x| x.allows(cap, &path));
                let r = requested.is_empty() || requested.iter().any(|x| x.allows(cap, &path));
                assert!(
                    !g || (a && r),
                    "{cap}:{path} granted by {granted:?} beyond {allowed:?} ∩ {requested:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000);
    }
}
