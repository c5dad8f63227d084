//! Scheduled rotation without downtime.
//!
//! A rotation is a persisted state machine (`state::Step`): **pending** (new value generated and
//! stored as a pending version nobody reads) → **set** (an external rotator applied it) →
//! **tested** (the rotator verified it) → **current** (promoted; the old version stays readable
//! as `previous` for the overlap). Each transition commits the rotation state and the secret's
//! metadata atomically, is audited before it commits, and is idempotent, so a crash anywhere
//! resumes at the last committed step. A step that keeps failing rolls back after
//! `MAX_ATTEMPTS` (a changed database password is restored first). There is never more than one
//! current version, and only one rotation per secret can be in progress (check-and-set on the
//! state).
pub mod audit_key;
pub mod config;
pub mod schedule;
pub mod signing_key;
pub mod state;

use crate::audit::record::{CallerInfo, Kind, Record};
use crate::audit::writer::AuditWriter;
use crate::clock::Clock;
use crate::database::Databases;
use crate::secrets::path::SecretPath;
use crate::secrets::{SecretStore, SecretsError};
use crate::sensitive::{SecretBytes, SecretFields};
use crate::storage::{StorageError, Txn};
use config::{check, Generator, Policy, RawRotation};
use state::{RotationState, Step, Trigger};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

/// Failed attempts of one step before the rotation rolls back.
pub const MAX_ATTEMPTS: u32 = 5;

/// What rotation fails with.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// No policy for this path.
    #[error("no rotation policy for {0:?}")]
    NoPolicy(SecretPath),
    /// A rotation of this path is already running.
    #[error("a rotation of {0:?} is already in progress")]
    InProgress(SecretPath),
    /// A policy is invalid.
    #[error("rotation policy: {0}")]
    Invalid(String),
    /// A step failed; the rotation stays at its last step and is retried (see status).
    #[error("rotation of {path:?} failed at step {step}: {message}")]
    Step {
        /// Secret path.
        path: SecretPath,
        /// Step that failed.
        step: &'static str,
        /// Why.
        message: String,
    },
    /// Secrets.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The audit record could not be written: the step did not run.
    #[error("audit log unavailable: rotation step not taken")]
    Audit,
    /// On a shared store, rotations run on the leader replica only.
    #[error("rotations run on the leader replica ({}); send the request there", .0.as_deref().unwrap_or("none elected yet"))]
    NotLeader(Option<String>),
}

/// One path's rotation, as `keygate admin rotation status` shows it.
#[derive(Debug, Clone)]
pub struct Status {
    /// Policy.
    pub policy: Policy,
    /// Persisted state.
    pub state: RotationState,
    /// The secret's current, pending and previous versions and the overlap end.
    pub current_version: u64,
    /// Pending version.
    pub pending_version: Option<u64>,
    /// Previous version (in overlap).
    pub previous_version: Option<u64>,
    /// Overlap end (ms).
    pub previous_until: Option<u64>,
}

/// Why a step of one of keygate's own keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The random source or key generator failed.
    #[error("key generation failed")]
    Generate,
    /// A stored or pending key set is not what it must be.
    #[error("{0}")]
    Malformed(&'static str),
    /// The new keys are not in use where they must be.
    #[error("{0}")]
    NotInUse(&'static str),
    /// The audit writer refused the key handover.
    #[error("audit writer: {0}")]
    Audit(#[source] crate::audit::writer::AuditError),
    /// keygate's credential signing keys.
    #[error(transparent)]
    Credentials(#[from] crate::credential::CredentialError),
}

/// One of keygate's own keys, rotated by the same state machine at a reserved `_sys/` path.
#[async_trait::async_trait]
pub trait SystemKey: Send + Sync {
    /// Where the key set is stored.
    fn path(&self) -> &SecretPath;
    /// Rotation period.
    fn every_secs(&self) -> u64;
    /// The next key set from the current one (`None`: no key yet).
    fn next(&self, current: Option<&SecretFields>) -> Result<SecretFields, KeyError>;
    /// Set step: make the pending keys usable where they must be before they are current
    /// (idempotent).
    async fn apply(&self, pending: &SecretFields) -> Result<(), KeyError>;
    /// Tested step: the pending keys work.
    async fn test(&self, pending: &SecretFields) -> Result<(), KeyError>;
    /// After promotion: start using the new keys.
    async fn activated(&self) -> Result<(), KeyError>;
    /// Rollback: go back to the current keys (`None`: the keys keygate started with).
    async fn restore(&self, _current: Option<&SecretFields>) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Fault injection for crash and partition tests, only in builds with the `test-hooks` feature
/// (the test suite's; a release binary has no such hook): `KEYGATE_FAULT_INJECT=
/// rotation-crash-after-<step>` aborts the process right after that step commits (`pending`,
/// `set`, `tested`, `current`); `rotation-pause-after-<step>` holds the rotation there until the
/// file named by `KEYGATE_FAULT_RESUME` exists (at most two minutes), then goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
enum FaultPoint {
    Crash(String),
    Pause(String),
}

#[cfg(feature = "test-hooks")]
fn fault_point() -> Option<FaultPoint> {
    let v = std::env::var("KEYGATE_FAULT_INJECT").ok()?;
    if let Some(step) = v.strip_prefix("rotation-crash-after-") {
        return Some(FaultPoint::Crash(step.to_string()));
    }
    v.strip_prefix("rotation-pause-after-")
        .map(|step| FaultPoint::Pause(step.to_string()))
}

#[cfg(not(feature = "test-hooks"))]
fn fault_point() -> Option<FaultPoint> {
    None
}

/// The rotation engine.
pub struct Rotator {
    store: Arc<SecretStore>,
    databases: Arc<Databases>,
    clock: Arc<dyn Clock>,
    audit: Option<Arc<AuditWriter>>,
    configured: RwLock<Arc<Vec<Policy>>>,
    running: Mutex<HashSet<String>>,
    fault: Option<FaultPoint>,
    leadership: std::sync::OnceLock<Arc<crate::leader::Leadership>>,
    system: RwLock<Vec<Arc<dyn SystemKey>>>,
    /// API policies as stored → as checked.
    api_parsed: Mutex<ApiPolicies>,
}

/// Stored key → (stored bytes, the checked policy or `None` if it no longer checks).
type ApiPolicies = std::collections::HashMap<Vec<u8>, (Vec<u8>, Option<Policy>)>;

/// Releases a path's in-process run marker.
struct Running<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(&self.1);
        }
    }
}

fn policy_key(path: &str) -> Vec<u8> {
    [b"rp/".as_slice(), path.as_bytes()].concat()
}

fn jitter(window_secs: u64) -> u64 {
    if window_secs == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b) % (window_secs * 1000)
}

impl Rotator {
    /// Over the store, with the config's policies.
    pub fn new(
        store: Arc<SecretStore>,
        databases: Arc<Databases>,
        clock: Arc<dyn Clock>,
        audit: Option<Arc<AuditWriter>>,
        configured: Vec<Policy>,
    ) -> Self {
        Self {
            store,
            databases,
            clock,
            audit,
            configured: RwLock::new(Arc::new(configured)),
            running: Mutex::new(HashSet::new()),
            fault: fault_point(),
            leadership: std::sync::OnceLock::new(),
            system: RwLock::new(Vec::new()),
            api_parsed: Mutex::new(Default::default()),
        }
    }

    /// Runs rotations under `leadership`: on a shared store only the leader rotates, and every
    /// state-machine step it commits is fenced by its term.
    pub fn set_leadership(&self, leadership: Arc<crate::leader::Leadership>) {
        let _ = self.leadership.set(leadership);
    }

    /// The leader's term when this replica must fence its steps (shared store), `Ok(None)`
    /// when no fencing applies (a store no other replica shares).
    fn fencing_term(&self) -> Result<Option<u64>, RotationError> {
        match self.leadership.get() {
            Some(l) if self.store.storage().shared() => match l.term() {
                Some(t) => Ok(Some(t)),
                None => Err(RotationError::NotLeader(l.leader())),
            },
            _ => Ok(None),
        }
    }

    /// A state commit, fenced by the leader's term on a shared store (a deposed leader's step
    /// conflicts and is not taken).
    fn state_txn(
        &self,
        path: &str,
        old_raw: Option<Vec<u8>>,
        new: &RotationState,
    ) -> Result<Txn, StorageError> {
        let txn = state::txn(path, old_raw, new)?;
        match self.fencing_term() {
            Ok(Some(term)) => Ok(crate::leader::Leadership::fence(txn, term)),
            Ok(None) => Ok(txn),
            Err(_) => Err(StorageError::Conflict),
        }
    }

    /// Adds one of keygate's own keys to the schedule.
    pub fn register_system(&self, key: Arc<dyn SystemKey>) {
        if let Ok(mut s) = self.system.write() {
            s.push(key);
        }
    }

    fn system_key(&self, path: &str) -> Option<Arc<dyn SystemKey>> {
        self.system
            .read()
            .ok()
            .and_then(|s| s.iter().find(|k| k.path() == path).cloned())
    }

    fn system_policies(&self) -> Vec<Policy> {
        let keys = match self.system.read() {
            Ok(s) => s.clone(),
            Err(_) => Vec::new(),
        };
        keys.iter()
            .map(|k| Policy {
                path: k.path().clone(),
                schedule: schedule::Schedule::Every(k.every_secs()),
                window_secs: 0,
                overlap_secs: 0,
                fields: Default::default(),
                postgres: None,
                source: "system",
                raw: RawRotation {
                    path: k.path().to_string(),
                    every: Some(format!("{}s", k.every_secs())),
                    ..Default::default()
                },
            })
            .collect()
    }

    /// Replaces the config's policies (reload).
    pub fn set_configured(&self, policies: Vec<Policy>) {
        if let Ok(mut c) = self.configured.write() {
            *c = Arc::new(policies);
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    /// Every policy: the config's, then those set through the API (a config policy wins).
    pub async fn policies(&self) -> Result<Vec<Policy>, RotationError> {
        let mut out: Vec<Policy> = match self.configured.read() {
            Ok(c) => c.as_ref().clone(),
            Err(p) => p.into_inner().as_ref().clone(),
        };
        let stored = self.store.storage().scan_prefix(b"rp/").await?;
        let mut parsed = self
            .api_parsed
            .lock()
            .map_err(|_| RotationError::Invalid("policy cache poisoned".into()))?;
        let mut seen = HashSet::new();
        for (k, v) in stored {
            seen.insert(k.clone());
            // parse and check a stored policy once, not on every scheduler pass
            let p = match parsed.get(&k) {
                Some((bytes, p)) if *bytes == v => p.clone(),
                _ => {
                    let p = serde_json::from_slice::<RawRotation>(&v)
                        .ok()
                        .and_then(|raw| check(&raw, "api").ok());
                    parsed.insert(k, (v, p.clone()));
                    p
                }
            };
            if let Some(p) = p {
                if !out.iter().any(|c| c.path == p.path) {
                    out.push(p);
                }
            }
        }
        parsed.retain(|k, _| seen.contains(k));
        drop(parsed);
        out.extend(self.system_policies());
        Ok(out)
    }

    /// The policy of one path.
    pub async fn policy(&self, path: &SecretPath) -> Result<Policy, RotationError> {
        self.policies()
            .await?
            .into_iter()
            .find(|p| &p.path == path)
            .ok_or_else(|| RotationError::NoPolicy(path.clone()))
    }

    /// Stores a policy set through the API. A path with a config policy is refused.
    pub async fn set_policy(&self, raw: RawRotation) -> Result<Policy, RotationError> {
        let p = check(&raw, "api").map_err(|(k, m)| RotationError::Invalid(format!("{k}: {m}")))?;
        if let Some(pg) = &p.postgres {
            config::may_manage(&self.databases.configs(), pg)
                .map_err(|m| RotationError::Invalid(format!("postgres: {m}")))?;
        }
        if let Ok(c) = self.configured.read() {
            if c.iter().any(|x| x.path == p.path) {
                return Err(RotationError::Invalid(format!(
                    "{:?} has a policy in the config file; change it there",
                    p.path
                )));
            }
        }
        let v = serde_json::to_vec(&raw).map_err(|e| RotationError::Invalid(e.to_string()))?;
        self.store
            .storage()
            .commit(Txn::default().put(policy_key(&p.path), v))
            .await?;
        Ok(p)
    }

    /// Removes an API policy (a rotation in progress finishes first).
    pub async fn delete_policy(&self, path: &SecretPath) -> Result<bool, RotationError> {
        let k = policy_key(path);
        let Some(old) = self.store.storage().get(&k).await? else {
            return Ok(false);
        };
        let (_, st) = state::load(self.store.storage().as_ref(), path).await?;
        if st.step != Step::Idle {
            return Err(RotationError::InProgress(path.clone()));
        }
        self.store
            .storage()
            .commit(Txn::default().expect(k.clone(), Some(old)).delete(k))
            .await?;
        Ok(true)
    }

    /// Status of every policy under `prefix`.
    pub async fn status(&self, prefix: &str) -> Result<Vec<Status>, RotationError> {
        let mut out = Vec::new();
        for p in self.policies().await? {
            if !p.path.starts_with(prefix) {
                continue;
            }
            let (_, st) = state::load(self.store.storage().as_ref(), &p.path).await?;
            let meta = match self.store.metadata(&p.path).await {
                Ok(m) => Some(m),
                Err(SecretsError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            out.push(Status {
                current_version: meta.as_ref().map_or(0, |m| m.current_version),
                pending_version: meta.as_ref().and_then(|m| m.pending_version),
                previous_version: meta.as_ref().and_then(|m| m.previous_version),
                previous_until: meta.as_ref().and_then(|m| m.previous_until),
                policy: p,
                state: st,
            });
        }
        Ok(out)
    }

    /// One scheduler pass: ends overlaps, resumes unfinished rotations, runs due ones (a run
    /// missed while the daemon was down runs once), schedules new policies.
    pub async fn tick(&self) -> Result<usize, RotationError> {
        if self.fencing_term().is_err() {
            // a follower: the leader schedules
            return Ok(0);
        }
        let mut ran = 0;
        for p in self.policies().await? {
            if let Ok(Some(v)) = self.store.end_overlap(&p.path).await {
                self.record(
                    "rotation.overlap_end",
                    &p.path,
                    vec![format!("version:{v}")],
                    None,
                )
                .await;
            }
            let now = self.now();
            let (raw, st) = state::load(self.store.storage().as_ref(), &p.path).await?;
            let due = match st.step {
                Step::Idle => match st.next_run_at {
                    Some(t) => (t <= now).then(|| {
                        if now.saturating_sub(t) > 60_000 {
                            Trigger::Missed
                        } else {
                            Trigger::Schedule
                        }
                    }),
                    None => {
                        // keygate's own keys exist from the start (not created by a rotation)
                        let exists =
                            p.source == "system" || self.store.metadata(&p.path).await.is_ok();
                        if exists {
                            let mut s = st.clone();
                            s.next_run_at = self.next_run(&p, now);
                            let _ = self
                                .store
                                .storage()
                                .commit(self.state_txn(&p.path, raw, &s)?)
                                .await;
                            None
                        } else {
                            Some(Trigger::Initial)
                        }
                    }
                },
                _ => st
                    .retry_at
                    .is_none_or(|t| t <= now)
                    .then_some(Trigger::Resume),
            };
            if let Some(trigger) = due {
                match self.rotate(&p.path, trigger).await {
                    Ok(_) => ran += 1,
                    Err(RotationError::InProgress(_)) => {}
                    Err(e) => {
                        tracing::warn!(path = %p.path, error = %e, "rotation did not complete")
                    }
                }
            }
        }
        Ok(ran)
    }

    fn next_run(&self, p: &Policy, after: u64) -> Option<u64> {
        p.schedule
            .next_after(after)
            .map(|t| t + jitter(p.window_secs))
    }

    /// Rotates `path` now (or resumes its unfinished rotation) and drives it to current.
    pub async fn rotate(
        &self,
        path: &SecretPath,
        trigger: Trigger,
    ) -> Result<RotationState, RotationError> {
        self.fencing_term()?;
        let p = self.policy(path).await?;
        // the scheduler skips a path that is being rotated; an operator's "rotate now" waits
        // for the run in flight (up to 30 s) and then rotates again
        let waits = if trigger == Trigger::Manual { 600 } else { 0 };
        let mut tries = 0;
        let _running = loop {
            let taken = {
                let mut r = self
                    .running
                    .lock()
                    .map_err(|_| RotationError::InProgress(path.clone()))?;
                r.insert(path.to_string())
            };
            if taken {
                break Running(&self.running, path.to_string());
            }
            if tries >= waits {
                return Err(RotationError::InProgress(path.clone()));
            }
            tries += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let (_, st) = state::load(self.store.storage().as_ref(), path).await?;
        if st.step == Step::Idle {
            if trigger == Trigger::Resume {
                return Ok(st);
            }
            self.start(&p, trigger).await?;
        }
        self.drive(&p).await
    }

    async fn fault_after(&self, step: &str) {
        match &self.fault {
            Some(FaultPoint::Crash(s)) if s == step => {
                tracing::error!(step, "fault injection: aborting after rotation step");
                std::process::abort();
            }
            Some(FaultPoint::Pause(s)) if s == step => {
                tracing::warn!(step, "fault injection: pausing after rotation step");
                let resume = std::env::var_os("KEYGATE_FAULT_RESUME");
                for _ in 0..1200 {
                    if resume
                        .as_ref()
                        .is_some_and(|f| std::path::Path::new(f).exists())
                    {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                tracing::warn!(step, "fault injection: resuming after rotation step");
            }
            _ => {}
        }
    }

    /// Writes an audit record for a rotation event. `false` if it could not be written.
    async fn record(
        &self,
        op: &str,
        path: &str,
        mut resources: Vec<String>,
        error: Option<&str>,
    ) -> bool {
        let Some(audit) = &self.audit else {
            return true;
        };
        resources.insert(0, format!("path:{path}"));
        let rec = Record {
            seq: 0,
            time: crate::audit::writer::now_rfc3339(),
            node: String::new(),
            kind: Kind::Request,
            prev: String::new(),
            request_id: None,
            op: Some(op.to_string()),
            api: None,
            caller: Some(CallerInfo {
                principal: Some("keygate-rotation".into()),
                ..Default::default()
            }),
            resources,
            decision: Some(if error.is_some() { "error" } else { "allow" }.into()),
            reason: error.map(str::to_string),
            status: Some(if error.is_some() { "FAILED" } else { "OK" }.into()),
            sig: None,
            truncated_bytes: None,
            key: None,
            unverified: None,
            seal: None,
        };
        match audit.append(rec).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(op, path, error = %e, "audit record not written");
                false
            }
        }
    }

    /// New field values: generated fields replaced, the rest carried over from the current
    /// version; for PostgreSQL, `username` (the inactive role) and `password`.
    async fn generate(&self, p: &Policy) -> Result<(SecretFields, u64), RotationError> {
        if let Some(k) = self.system_key(&p.path) {
            let (cur, from) = match self.store.get(&p.path, 0).await {
                Ok(v) => (Some(v.fields), v.version),
                Err(SecretsError::NotFound(_)) => (None, 0),
                Err(e) => return Err(e.into()),
            };
            let fields = k
                .next(cur.as_ref())
                .map_err(|e| RotationError::Invalid(e.to_string()))?;
            return Ok((fields, from));
        }
        let (mut fields, from) = match self.store.get(&p.path, 0).await {
            Ok(v) => (v.fields, v.version),
            Err(SecretsError::NotFound(_)) => (SecretFields::new(), 0),
            // current deleted or destroyed: start from nothing, keep the numbering
            Err(SecretsError::VersionDeleted { .. })
            | Err(SecretsError::VersionDestroyed { .. }) => (
                SecretFields::new(),
                self.store.metadata(&p.path).await?.current_version,
            ),
            Err(e) => return Err(e.into()),
        };
        let bad = |m: crate::generate::GenerateError| RotationError::Invalid(m.to_string());
        for (name, g) in &p.fields {
            match g {
                Generator::Password(rules) => {
                    fields.insert(name.clone(), crate::generate::password(rules).map_err(bad)?)
                }
                Generator::Bytes(n, enc) => fields.insert(
                    name.clone(),
                    crate::generate::random_bytes(*n, *enc).map_err(bad)?,
                ),
                Generator::Ed25519 => {
                    let (private, public) = crate::generate::ed25519_pem().map_err(bad)?;
                    fields.insert(name.clone(), private);
                    fields.insert(
                        format!("{name}_public"),
                        SecretBytes::new(public.into_bytes()),
                    );
                }
            }
        }
        if let Some(pg) = &p.postgres {
            let active = fields
                .get("username")
                .map(|u| String::from_utf8_lossy(u.expose()).into_owned());
            // two roles alternate: the new password goes to the one not in use
            let target = match (&pg.roles[..], active) {
                ([a, b], Some(u)) if u == *a => b.clone(),
                ([a, _], _) => a.clone(),
                ([a], _) => a.clone(),
                _ => return Err(RotationError::Invalid("postgres: no role".into())),
            };
            fields.insert("username".into(), SecretBytes::new(target.into_bytes()));
            fields.insert(
                "password".into(),
                crate::generate::password(&crate::generate::PasswordRules::alphanumeric(
                    pg.password_length,
                ))
                .map_err(bad)?,
            );
        }
        Ok((fields, from))
    }

    /// Idle → pending: the new version is stored, not current.
    async fn start(&self, p: &Policy, trigger: Trigger) -> Result<(), RotationError> {
        let (raw, st) = state::load(self.store.storage().as_ref(), &p.path).await?;
        if st.step != Step::Idle {
            return Err(RotationError::InProgress(p.path.clone()));
        }
        let (fields, from) = self.generate(p).await?;
        let meta = self.store.metadata(&p.path).await.ok();
        let next_version = meta.as_ref().map_or(1, |m| m.next_version());
        if !self
            .record(
                "rotation.pending",
                &p.path,
                vec![
                    format!("version:{next_version}"),
                    format!("trigger:{trigger}"),
                ],
                None,
            )
            .await
        {
            return Err(RotationError::Audit);
        }
        let now = self.now();
        let new = RotationState {
            step: Step::Pending,
            pending_version: Some(next_version),
            from_version: from,
            started_at: Some(now),
            trigger: Some(trigger),
            attempts: 0,
            retry_at: None,
            ..st
        };
        let with = self.state_txn(&p.path, raw, &new)?;
        match self.store.stage(&p.path, &fields, from, with).await {
            Ok(v) if v == next_version => {}
            Ok(v) => {
                return Err(RotationError::Step {
                    path: p.path.clone(),
                    step: "pending",
                    message: format!("staged version {v}, expected {next_version}"),
                })
            }
            Err(SecretsError::Storage(StorageError::Conflict))
            | Err(SecretsError::RotationInProgress(_)) => {
                return Err(RotationError::InProgress(p.path.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(path = %p.path, version = next_version, trigger = trigger.as_str(), "rotation started");
        self.fault_after("pending").await;
        Ok(())
    }

    /// Runs the next step until current (or a failure, recorded in the state).
    async fn drive(&self, p: &Policy) -> Result<RotationState, RotationError> {
        loop {
            let (raw, st) = state::load(self.store.storage().as_ref(), &p.path).await?;
            let Some(version) = st.pending_version.filter(|_| st.step != Step::Idle) else {
                return Ok(st);
            };
            let result = match st.step {
                Step::Idle => return Ok(st),
                Step::Pending => self.apply(p, version).await.map(|_| Step::Set),
                Step::Set => self.verify(p, version).await.map(|_| Step::Tested),
                Step::Tested => {
                    return match self.promote(p, version, raw, st.clone()).await {
                        Ok(s) => Ok(s),
                        Err(RotationError::Step { message, .. }) => {
                            self.fail(p, Step::Tested, message).await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(next) => {
                    let op = format!("rotation.{}", next.name());
                    if !self
                        .record(&op, &p.path, vec![format!("version:{version}")], None)
                        .await
                    {
                        return Err(RotationError::Audit);
                    }
                    let new = RotationState {
                        step: next,
                        attempts: 0,
                        retry_at: None,
                        ..st.clone()
                    };
                    match self
                        .store
                        .storage()
                        .commit(self.state_txn(&p.path, raw, &new)?)
                        .await
                    {
                        Ok(()) => self.fault_after(next.name()).await,
                        Err(StorageError::Conflict) => {
                            return Err(RotationError::InProgress(p.path.clone()))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(message) => return self.fail(p, st.step, message).await,
            }
        }
    }

    /// Pending → set: the external rotator applies the new value.
    async fn apply(&self, p: &Policy, _version: u64) -> Result<(), String> {
        if let Some(k) = self.system_key(&p.path) {
            let v = self
                .store
                .get_pending(&p.path)
                .await
                .map_err(|e| e.to_string())?;
            return k.apply(&v.fields).await.map_err(|e| e.to_string());
        }
        let Some(pg) = &p.postgres else {
            return Ok(());
        };
        let v = self
            .store
            .get_pending(&p.path)
            .await
            .map_err(|e| e.to_string())?;
        let (user, pw) = pg_fields(&v.fields)?;
        self.databases
            .set_password(&pg.database, &user, pw)
            .await
            .map_err(|e| e.to_string())
    }

    /// Set → tested: the new value works (a login with the new password; for generated values,
    /// the pending version decrypts and holds every field).
    async fn verify(&self, p: &Policy, _version: u64) -> Result<(), String> {
        let v = self
            .store
            .get_pending(&p.path)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(k) = self.system_key(&p.path) {
            return k.test(&v.fields).await.map_err(|e| e.to_string());
        }
        for name in p.fields.keys() {
            if v.fields.get(name).is_none_or(|x| x.is_empty()) {
                return Err(format!("field {name} is missing from the pending version"));
            }
        }
        if let Some(pg) = &p.postgres {
            let (user, pw) = pg_fields(&v.fields)?;
            self.databases
                .login_test(&pg.database, &user, pw)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Tested → current, atomically with the state going idle and the next run scheduled.
    async fn promote(
        &self,
        p: &Policy,
        version: u64,
        raw: Option<Vec<u8>>,
        st: RotationState,
    ) -> Result<RotationState, RotationError> {
        if !self
            .record(
                "rotation.current",
                &p.path,
                vec![
                    format!("version:{version}"),
                    format!("overlap:{}s", p.overlap_secs),
                ],
                None,
            )
            .await
        {
            return Err(RotationError::Audit);
        }
        let now = self.now();
        let new = RotationState {
            step: Step::Idle,
            next_run_at: self.next_run(p, now),
            last_rotated_at: Some(now),
            pending_version: None,
            started_at: None,
            attempts: 0,
            last_error: None,
            retry_at: None,
            rotations: st.rotations + 1,
            ..st
        };
        let with = self.state_txn(&p.path, raw, &new)?;
        match self
            .store
            .promote(&p.path, version, p.overlap_secs * 1000, with)
            .await
        {
            Ok(true) => {}
            // promoted before a crash, state not yet idle: finish the state alone
            Ok(false) => {
                let (raw, _) = state::load(self.store.storage().as_ref(), &p.path).await?;
                self.store
                    .storage()
                    .commit(self.state_txn(&p.path, raw, &new)?)
                    .await?;
            }
            Err(SecretsError::Storage(StorageError::Conflict)) => {
                return Err(RotationError::InProgress(p.path.clone()))
            }
            Err(e) => {
                return Err(RotationError::Step {
                    path: p.path.clone(),
                    step: "current",
                    message: e.to_string(),
                })
            }
        }
        if let Some(k) = self.system_key(&p.path) {
            if let Err(e) = k.activated().await {
                tracing::warn!(path = %p.path, error = %e, "new key is current but not yet loaded; the next reload picks it up");
            }
        }
        tracing::info!(path = %p.path, version, overlap_secs = p.overlap_secs, "rotation complete: new version is current");
        self.fault_after("current").await;
        Ok(new)
    }

    /// Records a failed step; after `MAX_ATTEMPTS` rolls the rotation back.
    async fn fail(
        &self,
        p: &Policy,
        step: Step,
        message: String,
    ) -> Result<RotationState, RotationError> {
        let _ = self
            .record(
                "rotation.failure",
                &p.path,
                vec![format!("step:{}", step.name())],
                Some(&message),
            )
            .await;
        let (raw, st) = state::load(self.store.storage().as_ref(), &p.path).await?;
        let attempts = st.attempts + 1;
        let now = self.now();
        tracing::warn!(path = %p.path, step = step.name(), attempts, error = %message, "rotation step failed");
        if attempts >= MAX_ATTEMPTS {
            return self.rollback(p, raw, st, message).await;
        }
        let backoff = (5_000u64 << attempts.min(6)).min(300_000);
        let new = RotationState {
            attempts,
            last_error: Some(message.clone()),
            retry_at: Some(now + backoff),
            ..st
        };
        self.store
            .storage()
            .commit(self.state_txn(&p.path, raw, &new)?)
            .await?;
        Err(RotationError::Step {
            path: p.path.clone(),
            step: step.name(),
            message,
        })
    }

    /// A rollback that cannot proceed: the rotation stays where it is, visible with the reason,
    /// and is retried in a minute.
    async fn stuck(
        &self,
        p: &Policy,
        raw: Option<Vec<u8>>,
        st: RotationState,
        message: String,
    ) -> Result<RotationState, RotationError> {
        let new = RotationState {
            last_error: Some(message.clone()),
            retry_at: Some(self.now() + 60_000),
            ..st
        };
        let _ = self
            .store
            .storage()
            .commit(self.state_txn(&p.path, raw, &new)?)
            .await;
        Err(RotationError::Step {
            path: p.path.clone(),
            step: "rollback",
            message,
        })
    }

    /// Undoes a rotation: restores a changed database password, discards the pending version.
    async fn rollback(
        &self,
        p: &Policy,
        raw: Option<Vec<u8>>,
        st: RotationState,
        message: String,
    ) -> Result<RotationState, RotationError> {
        let version = st.pending_version.unwrap_or(0);
        if let Some(k) = self.system_key(&p.path) {
            let cur = self.store.get(&p.path, 0).await.ok().map(|v| v.fields);
            if let Err(e) = k.restore(cur.as_ref()).await {
                let m = format!("rollback could not restore the current key: {e}");
                return self.stuck(p, raw, st, m).await;
            }
        }
        if let (Some(pg), Step::Set | Step::Tested | Step::Pending) = (&p.postgres, st.step) {
            // single role: its password may have changed; put the current one back
            if pg.roles.len() == 1 {
                if let Ok(cur) = self.store.get(&p.path, 0).await {
                    if let Ok((user, pw)) = pg_fields(&cur.fields) {
                        if let Err(e) = self.databases.set_password(&pg.database, &user, pw).await {
                            let m = format!("rollback could not restore the password: {e}");
                            return self.stuck(p, raw, st, m).await;
                        }
                    }
                }
            }
        }
        let _ = self
            .record(
                "rotation.rollback",
                &p.path,
                vec![format!("version:{version}")],
                Some(&message),
            )
            .await;
        let now = self.now();
        let new = RotationState {
            step: Step::Idle,
            pending_version: None,
            started_at: None,
            attempts: 0,
            retry_at: None,
            next_run_at: self.next_run(p, now),
            last_error: Some(format!(
                "rolled back after {MAX_ATTEMPTS} failed attempts: {message}"
            )),
            ..st
        };
        let with = self.state_txn(&p.path, raw.clone(), &new)?;
        if !self.store.discard_pending(&p.path, version, with).await? {
            // nothing pending any more (discarded before a crash): settle the state alone
            self.store
                .storage()
                .commit(self.state_txn(&p.path, raw, &new)?)
                .await?;
        }
        tracing::error!(path = %p.path, version, error = %message, "rotation rolled back");
        Err(RotationError::Step {
            path: p.path.clone(),
            step: "rollback",
            message,
        })
    }
}

fn pg_fields(f: &SecretFields) -> Result<(String, &SecretBytes), String> {
    let user = f
        .get("username")
        .map(|u| String::from_utf8_lossy(u.expose()).into_owned())
        .ok_or("the version has no username field")?;
    let pw = f
        .get("password")
        .ok_or("the version has no password field")?;
    Ok((user, pw))
}
