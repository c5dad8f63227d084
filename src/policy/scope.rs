//! Scopes: a capability on a path glob, written `capability:glob` (`read:prod/api/*`).
use super::glob;

/// Capabilities a scope can grant.
pub const CAPABILITIES: &[&str] = &["read", "list", "write", "delete", "rotate", "admin"];

/// One scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// `read`, `list`, `write`, `delete`, `rotate`, `admin` or `db:<name>`.
    pub capability: String,
    /// Path glob (see [`glob`]).
    pub pattern: String,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.capability, self.pattern)
    }
}

impl Scope {
    /// Parses `capability:glob`; `db:<name>` has no path (its pattern is the database role).
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("db:") {
            if name.is_empty() || name.contains(['*', '?', ':']) {
                return Err(format!(
                    "scope {s:?}: db:<name> needs a plain database role name"
                ));
            }
            return Ok(Self {
                capability: "db".into(),
                pattern: name.to_string(),
            });
        }
        let (cap, pattern) = s
            .split_once(':')
            .ok_or_else(|| format!("scope {s:?} is not capability:path-glob"))?;
        if !CAPABILITIES.contains(&cap) {
            return Err(format!(
                "scope {s:?}: unknown capability {cap:?} (one of {}, db:<name>)",
                CAPABILITIES.join(", ")
            ));
        }
        if pattern.is_empty() || pattern.len() > 256 {
            return Err(format!("scope {s:?}: the path glob must be 1 to 256 bytes"));
        }
        Ok(Self {
            capability: cap.to_string(),
            pattern: pattern.to_string(),
        })
    }

    /// Does this scope allow `capability` on `path`?
    pub fn allows(&self, capability: &str, path: &str) -> bool {
        self.capability == capability && glob::matches(&self.pattern, path)
    }

    /// Is every use of `other` also allowed by `self`?
    pub fn covers(&self, other: &Scope) -> bool {
        self.capability == other.capability && glob::covers(&self.pattern, &other.pattern)
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
        assert_eq!(s("read:prod/api/*").pattern, "prod/api/*");
        assert_eq!(s("db:readonly").capability, "db");
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
        let caps = ["read", "list", "write"];
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
                    capability: caps[next(3)].into(),
                    pattern: pattern(&mut next),
                })
                .collect();
            let requested: Vec<Scope> = (0..next(4))
                .map(|_| Scope {
                    capability: caps[next(3)].into(),
                    pattern: pattern(&mut next),
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
