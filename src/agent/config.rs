//! `agent.toml`: where the agent gets its identity, what it renders, what it restarts.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole agent configuration (a file, or `KEYGATE_AGENT_CONFIG` from the injector).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Daemon address, `https://…`, or several replicas separated by commas (tried in order).
    pub addr: String,
    /// CA of the daemon's certificate.
    pub cacert: PathBuf,
    /// Role to exchange the platform token for.
    pub role: String,
    /// The platform token (a projected service-account token), re-read at every exchange.
    pub token_file: PathBuf,
    /// Where files are rendered.
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    /// Local health endpoint (plain HTTP, keep it on loopback), e.g. `127.0.0.1:8099`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<String>,
    /// Files to render.
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
    /// Exec mode: variables for the supervised command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecConfig>,
}

fn default_output() -> PathBuf {
    PathBuf::from("/keygate/secrets")
}

fn default_mode() -> String {
    "0400".into()
}

/// One rendered file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// File name under `output_dir` (no `/`).
    pub destination: String,
    /// Template text (minijinja): `{{ secret("app/db").password }}`, filters `tojson`,
    /// `b64encode`, `dotenv`, `envfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// …or a template file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Octal file mode.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// What to do when the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<OnChange>,
}

/// A reaction to a changed file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OnChange {
    /// Signal name (`HUP`, `TERM`, `USR1`…) sent to `pidfile` or `process_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Pid file of the process to signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// Name of the process to signal (shared process namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    /// A command to run instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// Exec mode settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// `NAME = "path#field"`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `"path" = "PREFIX_"`: every field of path.
    #[serde(default)]
    pub env_prefix: BTreeMap<String, String>,
    /// Signal that stops the command before a restart.
    #[serde(default = "default_restart_signal")]
    pub restart_signal: String,
    /// Seconds to wait after the signal before SIGKILL.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            env: BTreeMap::new(),
            env_prefix: BTreeMap::new(),
            restart_signal: default_restart_signal(),
            grace_secs: default_grace(),
        }
    }
}

fn default_restart_signal() -> String {
    "TERM".into()
}
fn default_grace() -> u64 {
    10
}

/// Parses a signal name (`HUP`, `SIGHUP`, `1`).
pub fn signal_number(name: &str) -> Result<i32, String> {
    let n = name.trim().trim_start_matches("SIG").to_ascii_uppercase();
    Ok(match n.as_str() {
        "HUP" | "1" => 1,
        "INT" | "2" => 2,
        "QUIT" | "3" => 3,
        "KILL" | "9" => 9,
        "USR1" | "10" => 10,
        "USR2" | "12" => 12,
        "TERM" | "15" => 15,
        _ => {
            return Err(format!(
                "unknown signal {name:?} (HUP, INT, QUIT, TERM, USR1, USR2, KILL)"
            ))
        }
    })
}

impl AgentConfig {
    /// Parses and checks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    /// Checks names, modes and signals.
    pub fn check(&self) -> Result<(), String> {
        // one address, or several replicas separated by commas (tried in order)
        if self
            .addr
            .split(',')
            .any(|a| !a.trim().starts_with("https://"))
        {
            return Err("addr must be an https:// URL, or several separated by commas".into());
        }
        if self.role.is_empty() {
            return Err("role is required".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.templates {
            if !valid_file_name(&t.destination) || !seen.insert(&t.destination) {
                return Err(format!(
                    "templates: destination {:?} must be a unique file name (A-Z a-z 0-9 . _ -)",
                    t.destination
                ));
            }
            if t.contents.is_some() == t.source.is_some() {
                return Err(format!(
                    "templates: {}: set exactly one of contents or source",
                    t.destination
                ));
            }
            u32::from_str_radix(&t.mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    format!(
                        "templates: {}: mode {:?} is not octal",
                        t.destination, t.mode
                    )
                })?;
            if let Some(oc) = &t.on_change {
                if let Some(s) = &oc.signal {
                    signal_number(s)?;
                    if oc.pidfile.is_none() && oc.process_name.is_none() {
                        return Err(format!(
                            "templates: {}: on_change.signal needs pidfile or process_name",
                            t.destination
                        ));
                    }
                }
            }
        }
        if let Some(e) = &self.exec {
            signal_number(&e.restart_signal)?;
        }
        Ok(())
    }
}

/// A plain file name: 1-128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn valid_file_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
