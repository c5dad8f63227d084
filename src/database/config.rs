//! `[[databases]]` and `[[databases.roles]]`: connections keygate administers and the roles of
//! short-lived users it creates on them.
use crate::config_error::{ConfigError, Ctx};
use crate::secrets::path::SecretPath;
use serde::Deserialize;

/// Longest generated user name (PostgreSQL's NAMEDATALEN - 1).
pub const MAX_NAME_LEN: usize = 63;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    name: String,
    url: String,
    password_secret: Option<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default)]
    roles: Vec<RawDbRole>,
    #[serde(default)]
    rotatable_roles: Vec<String>,
}

fn default_connect_timeout() -> String {
    "5s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDbRole {
    name: String,
    #[serde(default)]
    creation: Vec<String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    member_of: Vec<String>,
    #[serde(default)]
    revocation: Vec<String>,
    #[serde(default)]
    renewal: Vec<String>,
    #[serde(default = "default_ttl")]
    default_ttl: String,
    #[serde(default = "default_max_ttl")]
    max_ttl: String,
}

fn default_ttl() -> String {
    "1h".into()
}
fn default_max_ttl() -> String {
    "24h".into()
}

/// One database keygate administers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// Name used by roles and rotations.
    pub name: String,
    /// Connection URL without a password (`postgres://admin@host:5432/db`).
    pub url: String,
    /// `path#field` of the keygate secret holding the admin password.
    pub password_secret: Option<(SecretPath, String)>,
    /// Connect timeout.
    pub connect_timeout_secs: u64,
    /// Roles of generated users.
    pub roles: Vec<DbRole>,
    /// Existing (static) roles whose password a rotation policy may manage. A policy naming
    /// any other role is refused, in the config file and through the API.
    pub rotatable_roles: Vec<String>,
}

impl DatabaseConfig {
    /// May a rotation policy manage `role`?
    pub fn may_rotate(&self, role: &str) -> bool {
        self.rotatable_roles.iter().any(|r| r == role)
    }
}

/// A kind of generated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRole {
    /// Role name (scope `db:<name>`); unique across databases.
    pub name: String,
    /// Database it belongs to.
    pub database: String,
    /// Statements creating a user (`{{name}}`, `{{password}}`, `{{expiration}}`).
    pub creation: Vec<String>,
    /// Statements dropping a user (`{{name}}`).
    pub revocation: Vec<String>,
    /// Statements extending a user (`{{name}}`, `{{expiration}}`).
    pub renewal: Vec<String>,
    /// TTL when the caller asks none.
    pub default_ttl_secs: u64,
    /// Longest life of a user, renewals included.
    pub max_ttl_secs: u64,
}

use crate::duration::parse_duration;

/// Default statements creating a user: a login role valid until the lease ends, then `grants`
/// (`GRANT <grant> TO user`) and `member_of` (`GRANT "role" TO user`).
fn default_creation(grants: &[String], member_of: &[String]) -> Vec<String> {
    let mut v = vec![
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
            .to_string(),
    ];
    v.extend(
        grants
            .iter()
            .map(|g| format!("GRANT {g} TO \"{{{{name}}}}\"")),
    );
    v.extend(
        member_of
            .iter()
            .map(|r| format!("GRANT \"{}\" TO \"{{{{name}}}}\"", r.replace('"', "\"\""))),
    );
    v
}

/// Default statements dropping a user: end its sessions, hand what it owns to keygate's admin
/// user, drop its privileges, drop it.
pub fn default_revocation() -> Vec<String> {
    vec![
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'".into(),
        "REASSIGN OWNED BY \"{{name}}\" TO CURRENT_USER".into(),
        "DROP OWNED BY \"{{name}}\"".into(),
        "DROP ROLE IF EXISTS \"{{name}}\"".into(),
    ]
}

fn default_renewal() -> Vec<String> {
    vec!["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'".into()]
}

/// Is `name` a plain role name (`a-z 0-9 _ -`, 1 to 32 bytes)?
fn plain_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Checks `[[databases]]`.
pub(crate) fn parse(
    ctx: &Ctx<'_>,
    raw: Vec<RawDatabase>,
) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let mut out: Vec<DatabaseConfig> = Vec::new();
    let mut role_index = 0usize;
    for (i, d) in raw.into_iter().enumerate() {
        let e = |key: &str, m: String| ctx.err_at("databases", i, key, m);
        if !plain_name(&d.name) || out.iter().any(|x| x.name == d.name) {
            return Err(e(
                "name",
                format!(
                    "database name {:?} must be unique, 1-32 of a-z 0-9 _ -",
                    d.name
                ),
            ));
        }
        let parsed: tokio_postgres::Config = d
            .url
            .parse()
            .map_err(|err| e("url", format!("not a PostgreSQL URL: {err}")))?;
        if parsed.get_password().is_some() {
            return Err(e(
                "url",
                "the URL holds a password: store it as a keygate secret and name it in \
                 password_secret (\"path#field\") instead"
                    .into(),
            ));
        }
        if parsed.get_user().is_none() {
            return Err(e(
                "url",
                "name the admin user in the URL (postgres://user@host/db)".into(),
            ));
        }
        let password_secret = match d.password_secret {
            None => None,
            Some(s) => {
                let (p, f) = s
                    .split_once('#')
                    .ok_or_else(|| e("password_secret", format!("{s:?} is not \"path#field\"")))?;
                let p = SecretPath::parse(p).map_err(|m| e("password_secret", m.to_string()))?;
                crate::secrets::path::validate_field(f)
                    .map_err(|m| e("password_secret", m.to_string()))?;
                Some((p, f.to_string()))
            }
        };
        let connect_timeout_secs =
            parse_duration(&d.connect_timeout).map_err(|m| e("connect_timeout", m.to_string()))?;
        let mut roles = Vec::new();
        for r in d.roles {
            let at = role_index;
            role_index += 1;
            let re = |key: &str, m: String| ctx.err_at("databases.roles", at, key, m);
            let taken = out.iter().flat_map(|x| &x.roles).any(|x| x.name == r.name)
                || roles.iter().any(|x: &DbRole| x.name == r.name);
            if !plain_name(&r.name) || taken {
                return Err(re(
                    "name",
                    format!(
                        "database role name {:?} must be unique across databases, 1-32 of a-z 0-9 _ -",
                        r.name
                    ),
                ));
            }
            if !r.creation.is_empty() && (!r.grants.is_empty() || !r.member_of.is_empty()) {
                return Err(re(
                    "creation",
                    "set either creation statements or grants/member_of, not both".into(),
                ));
            }
            let creation = if r.creation.is_empty() {
                default_creation(&r.grants, &r.member_of)
            } else {
                r.creation
            };
            if !creation.iter().any(|s| s.contains("{{name}}")) {
                return Err(re(
                    "creation",
                    "the creation statements never use {{name}}".into(),
                ));
            }
            for s in creation.iter().chain(&r.revocation).chain(&r.renewal) {
                super::template::check(s).map_err(|m| re("creation", m.to_string()))?;
            }
            let default_ttl_secs =
                parse_duration(&r.default_ttl).map_err(|m| re("default_ttl", m.to_string()))?;
            let max_ttl_secs =
                parse_duration(&r.max_ttl).map_err(|m| re("max_ttl", m.to_string()))?;
            if default_ttl_secs < 1 || max_ttl_secs < default_ttl_secs {
                return Err(re("max_ttl", "need 1s <= default_ttl <= max_ttl".into()));
            }
            roles.push(DbRole {
                name: r.name,
                database: d.name.clone(),
                creation,
                revocation: if r.revocation.is_empty() {
                    default_revocation()
                } else {
                    r.revocation
                },
                renewal: if r.renewal.is_empty() {
                    default_renewal()
                } else {
                    r.renewal
                },
                default_ttl_secs,
                max_ttl_secs,
            });
        }
        for r in &d.rotatable_roles {
            let ok = (1..=63).contains(&r.len())
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(e(
                    "rotatable_roles",
                    format!("{r:?}: a role name of 1-63 of A-Z a-z 0-9 _ -"),
                ));
            }
            if roles.iter().any(|x| x.name == *r) {
                return Err(e(
                    "rotatable_roles",
                    format!("{r:?} is also a role of generated users"),
                ));
            }
        }
        out.push(DatabaseConfig {
            name: d.name,
            url: d.url,
            password_secret,
            connect_timeout_secs: connect_timeout_secs.clamp(1, 60),
            roles,
            rotatable_roles: d.rotatable_roles,
        });
    }
    Ok(out)
}
