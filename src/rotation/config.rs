//! Rotation policies: `[[rotations]]` in the config, or set through `Admin.SetRotationPolicy`
//! (same shape, same checks).
use super::schedule::{Cron, Schedule};
use crate::duration::parse_duration;
use crate::generate::{Encoding, PasswordRules};
use crate::secrets::path::SecretPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One policy as written (TOML table or API message).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRotation {
    /// Secret path.
    pub path: String,
    /// Interval, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Cron expression (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Jitter window after the scheduled time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How long the replaced version stays readable as `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// Generators by field name.
    #[serde(default)]
    pub fields: BTreeMap<String, RawField>,
    /// A PostgreSQL static role keygate owns the password of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<RawPostgres>,
}

/// A field generator as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    /// `password`, `bytes`, `ed25519`.
    pub generator: String,
    /// Characters (password) or bytes (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// Character classes that must appear (password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// Characters to draw from (password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<String>,
    /// `hex`, `base64`, `base64url` (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

/// The PostgreSQL rotator as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// `[[databases]]` name.
    pub database: String,
    /// One role (its password changes) or two (alternating users).
    pub roles: Vec<String>,
    /// Password length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_length: Option<u32>,
}

/// How a field gets its new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generator {
    /// A random password.
    Password(PasswordRules),
    /// Random bytes, encoded.
    Bytes(usize, Encoding),
    /// An Ed25519 key pair: the field holds the private key (PKCS#8 PEM), `<field>_public` the
    /// public key (SPKI PEM).
    Ed25519,
}

/// A PostgreSQL static role (or pair of roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresRotator {
    /// `[[databases]]` name.
    pub database: String,
    /// One role, or two that alternate.
    pub roles: Vec<String>,
    /// Password length (letters and digits).
    pub password_length: usize,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Secret path.
    pub path: SecretPath,
    /// When.
    pub schedule: Schedule,
    /// Jitter window, seconds.
    pub window_secs: u64,
    /// Overlap, seconds.
    pub overlap_secs: u64,
    /// Field generators.
    pub fields: BTreeMap<String, Generator>,
    /// External rotator.
    pub postgres: Option<PostgresRotator>,
    /// Where it was defined: `config` or `api`.
    pub source: &'static str,
    /// The policy as written (for status and the API).
    pub raw: RawRotation,
}

fn pg_role_name(r: &str) -> bool {
    (1..=63).contains(&r.len())
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks one policy. Errors are `(key, message)`.
pub fn check(raw: &RawRotation, source: &'static str) -> Result<Policy, (&'static str, String)> {
    let path = SecretPath::parse(&raw.path).map_err(|m| ("path", m.to_string()))?;
    if path.is_reserved() {
        return Err(("path", "_sys/ paths are keygate's own".into()));
    }
    let schedule = match (&raw.every, &raw.cron) {
        (Some(e), None) => {
            let s = parse_duration(e).map_err(|m| ("every", m.to_string()))?;
            if s < 60 {
                return Err(("every", "rotate at most once a minute".into()));
            }
            Schedule::Every(s)
        }
        (None, Some(c)) => Schedule::Cron(Cron::parse(c).map_err(|m| ("cron", m.to_string()))?),
        _ => return Err(("every", "set exactly one of every or cron".into())),
    };
    let window_secs = raw
        .window
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| ("window", m.to_string()))?
        .unwrap_or(0);
    if window_secs >= schedule.min_gap_secs() {
        return Err((
            "window",
            "the jitter window must be shorter than the time between two runs".into(),
        ));
    }
    let overlap_secs = raw
        .overlap
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| ("overlap", m.to_string()))?
        .unwrap_or(0);
    if overlap_secs > schedule.min_gap_secs() {
        return Err((
            "overlap",
            "the overlap must not be longer than the time between two runs".into(),
        ));
    }
    let mut fields = BTreeMap::new();
    for (name, f) in &raw.fields {
        crate::secrets::path::validate_field(name).map_err(|m| ("fields", m.to_string()))?;
        let g = match f.generator.as_str() {
            "password" => Generator::Password(
                PasswordRules::new(
                    f.length.unwrap_or(32) as usize,
                    if f.require.is_empty() {
                        vec!["lower".into(), "upper".into(), "digit".into()]
                    } else {
                        f.require.clone()
                    },
                    f.alphabet.as_deref(),
                )
                .map_err(|m| ("fields", format!("{name}: {m}")))?,
            ),
            "bytes" => {
                let n = f.length.unwrap_or(32) as usize;
                if !(8..=4096).contains(&n) {
                    return Err(("fields", format!("{name}: bytes length must be 8 to 4096")));
                }
                Generator::Bytes(
                    n,
                    Encoding::parse(f.encoding.as_deref().unwrap_or("hex"))
                        .map_err(|m| ("fields", format!("{name}: {m}")))?,
                )
            }
            "ed25519" => Generator::Ed25519,
            other => {
                return Err((
                    "fields",
                    format!("{name}: unknown generator {other:?} (password, bytes, ed25519)"),
                ))
            }
        };
        fields.insert(name.clone(), g);
    }
    let postgres = match &raw.postgres {
        None => None,
        Some(p) => {
            if !(1..=2).contains(&p.roles.len()) || !p.roles.iter().all(|r| pg_role_name(r)) {
                return Err((
                    "postgres",
                    "roles: one role, or two that alternate (names of A-Z a-z 0-9 _ -)".into(),
                ));
            }
            if p.roles.len() == 2 && p.roles[0] == p.roles[1] {
                return Err(("postgres", "the two alternating roles must differ".into()));
            }
            for f in ["username", "password"] {
                if fields.contains_key(f) {
                    return Err(("fields", format!("{f} is written by the postgres rotator")));
                }
            }
            Some(PostgresRotator {
                database: p.database.clone(),
                roles: p.roles.clone(),
                password_length: p.password_length.unwrap_or(32).clamp(16, 128) as usize,
            })
        }
    };
    if fields.is_empty() && postgres.is_none() {
        return Err((
            "fields",
            "nothing to rotate: add [rotations.fields.<name>] generators or [rotations.postgres]"
                .into(),
        ));
    }
    Ok(Policy {
        path,
        schedule,
        window_secs,
        overlap_secs,
        fields,
        postgres,
        source,
        raw: raw.clone(),
    })
}

/// Is every role of a postgres rotator declared in its database's `rotatable_roles`?
pub fn may_manage(
    databases: &[crate::database::config::DatabaseConfig],
    pg: &PostgresRotator,
) -> Result<(), String> {
    let Some(db) = databases.iter().find(|d| d.name == pg.database) else {
        return Err(format!("no [[databases]] entry is named {:?}", pg.database));
    };
    match pg.roles.iter().find(|r| !db.may_rotate(r)) {
        None => Ok(()),
        Some(r) => Err(format!(
            "role {r:?} is not in rotatable_roles of database {:?}: rotation may change the \
             password only of roles declared there",
            db.name
        )),
    }
}

/// Checks `[[rotations]]` (paths unique; postgres databases configured, roles declared).
pub(crate) fn parse(
    ctx: &crate::config_error::Ctx<'_>,
    raw: Vec<RawRotation>,
    databases: &[crate::database::config::DatabaseConfig],
) -> Result<Vec<Policy>, crate::config_error::ConfigError> {
    let mut out: Vec<Policy> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let p = check(r, "config").map_err(|(k, m)| ctx.err_at("rotations", i, k, m))?;
        if out.iter().any(|x| x.path == p.path) {
            return Err(ctx.err_at(
                "rotations",
                i,
                "path",
                format!("{:?} has two rotation policies", p.path),
            ));
        }
        if let Some(pg) = &p.postgres {
            may_manage(databases, pg).map_err(|m| ctx.err_at("rotations", i, "postgres", m))?;
        }
        out.push(p);
    }
    Ok(out)
}
