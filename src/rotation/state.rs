//! The persisted state of one secret's rotation, at `r/<path>`. It changes only in the same
//! atomic commit as the secret's metadata (stage, promote, discard), so the two always agree.
use crate::storage::{Storage, StorageError, Txn};
use serde::{Deserialize, Serialize};

/// Where a rotation is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// No rotation in progress.
    #[default]
    Idle,
    /// The new value is generated and stored (pending version), not applied anywhere.
    Pending,
    /// The external rotator applied it (e.g. `ALTER ROLE … PASSWORD`).
    Set,
    /// The external rotator verified it (a login with the new password worked).
    Tested,
}

impl Step {
    /// Name for status and audit.
    pub fn name(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::Pending => "pending",
            Step::Set => "set",
            Step::Tested => "tested",
        }
    }
}

/// The rotation record of one path.
/// What starts (or resumes) a rotation. Stored in the state as its lowercase name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The first rotation of a path with no secret yet.
    Initial,
    /// Its scheduled time came.
    Schedule,
    /// Its scheduled time passed while keygate was down.
    Missed,
    /// An operator or credential asked (`RotateSecret`): waits for a run in flight.
    Manual,
    /// The scheduler resumes a rotation a crash or a failure interrupted.
    Resume,
}

impl Trigger {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Schedule => "schedule",
            Trigger::Missed => "missed",
            Trigger::Manual => "manual",
            Trigger::Resume => "resume",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationState {
    /// Current step.
    pub step: Step,
    /// Next scheduled run (ms since epoch), jitter included.
    #[serde(default)]
    pub next_run_at: Option<u64>,
    /// When the last rotation became current.
    #[serde(default)]
    pub last_rotated_at: Option<u64>,
    /// Version being rotated in.
    #[serde(default)]
    pub pending_version: Option<u64>,
    /// The current version when this rotation started.
    #[serde(default)]
    pub from_version: u64,
    /// When this rotation started.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// What started it.
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// Failed attempts of the current step.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure (kept after a rollback, cleared by the next success).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Not before (ms) — backoff after a failure.
    #[serde(default)]
    pub retry_at: Option<u64>,
    /// Completed rotations.
    #[serde(default)]
    pub rotations: u64,
}

/// Key of a path's rotation state.
pub fn key(path: &str) -> Vec<u8> {
    [b"r/".as_slice(), path.as_bytes()].concat()
}

fn backend(e: serde_json::Error) -> StorageError {
    StorageError::Backend(format!("rotation state: {e}"))
}

/// Reads a state with its raw bytes (for check-and-set).
pub async fn load(
    storage: &dyn Storage,
    path: &str,
) -> Result<(Option<Vec<u8>>, RotationState), StorageError> {
    match storage.get(&key(path)).await? {
        Some(raw) => {
            let s = serde_json::from_slice(&raw).map_err(backend)?;
            Ok((Some(raw), s))
        }
        None => Ok((None, RotationState::default())),
    }
}

/// A transaction writing `new` if the stored state is still `old_raw`.
pub fn txn(path: &str, old_raw: Option<Vec<u8>>, new: &RotationState) -> Result<Txn, StorageError> {
    Ok(Txn::default()
        .expect(key(path), old_raw)
        .put(key(path), serde_json::to_vec(new).map_err(backend)?))
}
