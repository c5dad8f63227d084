//! Leases: one per credential, stored under `l/<lease_id>`, checked on every call.
//! Lease ids are `<role>/<platform subject>/<random>`, so `RevokePrefix` can end everything of
//! one role (`deploy/`) or one repository (`deploy/repo:acme/app:`).
use crate::clock::Clock;
use crate::storage::{Storage, StorageError, Txn};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// One lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Id (also in the credential).
    pub lease_id: String,
    /// Role.
    pub role: String,
    /// Platform subject.
    pub sub: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Key claims of the source identity.
    pub src: Value,
    /// Issued (s).
    pub issued_at: u64,
    /// Expires (s); renewals move it, up to `max_expires_at`.
    pub expires_at: u64,
    /// Hard limit (role max TTL, platform token expiry where capped).
    pub max_expires_at: u64,
    /// Revocation time.
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Set on the lease of a generated database user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<DbLease>,
}

/// What a database-user lease remembers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbLease {
    /// `[[databases]]` name.
    pub database: String,
    /// The generated user.
    pub username: String,
    /// Lease id of the credential that asked for it (it may renew and revoke it).
    pub owner: String,
    /// The user is gone from the database (revocation statements ran).
    #[serde(default)]
    pub dropped: bool,
}

/// Lease persistence.
pub struct LeaseStore {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
}

/// Notification payload when leases are revoked (seen by open `Watch` streams).
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// Revoked lease ids.
    pub revoked: Vec<String>,
}

fn key(id: &str) -> Vec<u8> {
    [b"l/".as_slice(), id.as_bytes()].concat()
}

fn backend(e: serde_json::Error) -> StorageError {
    StorageError::Backend(format!("lease record: {e}"))
}

impl LeaseStore {
    /// Over `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> Self {
        Self { storage, clock }
    }

    /// A new unique lease id for a role and subject.
    pub fn new_id(role: &str, sub: &str) -> String {
        let mut r = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut r);
        format!("{role}/{sub}/{}", hex::encode(r))
    }

    /// Stores a new lease.
    pub async fn create(&self, lease: &Lease) -> Result<(), StorageError> {
        let k = key(&lease.lease_id);
        self.storage
            .commit(
                Txn::default()
                    .expect(k.clone(), None)
                    .put(k, serde_json::to_vec(lease).map_err(backend)?),
            )
            .await
    }

    /// One lease.
    pub async fn get(&self, id: &str) -> Result<Option<Lease>, StorageError> {
        match self.storage.get(&key(id)).await? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw).map_err(backend)?)),
            None => Ok(None),
        }
    }

    /// Applies `change` to a lease with check-and-set; `None` if the lease is missing or
    /// `change` returns false (nothing to do).
    pub async fn update(
        &self,
        id: &str,
        change: impl Fn(&mut Lease) -> bool,
    ) -> Result<Option<Lease>, StorageError> {
        for _ in 0..16 {
            let Some(raw) = self.storage.get(&key(id)).await? else {
                return Ok(None);
            };
            let mut l: Lease = serde_json::from_slice(&raw).map_err(backend)?;
            if !change(&mut l) {
                return Ok(None);
            }
            let txn = Txn::default()
                .expect(key(id), Some(raw))
                .put(key(id), serde_json::to_vec(&l).map_err(backend)?);
            match self.storage.commit(txn).await {
                Ok(()) => return Ok(Some(l)),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::Conflict)
    }

    /// Leases whose id starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Lease>, StorageError> {
        self.storage
            .scan_prefix(&key(prefix))
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(backend))
            .collect()
    }

    /// Moves `expires_at` to now + `increment`, capped at `max_expires_at`. `None` if the lease
    /// is missing, revoked or expired.
    pub async fn renew(&self, id: &str, increment: u64) -> Result<Option<Lease>, StorageError> {
        for _ in 0..16 {
            let Some(raw) = self.storage.get(&key(id)).await? else {
                return Ok(None);
            };
            let mut l: Lease = serde_json::from_slice(&raw).map_err(backend)?;
            let now = self.clock.now_millis() / 1000;
            if l.revoked_at.is_some() || now >= l.expires_at {
                return Ok(None);
            }
            l.expires_at = (now + increment).min(l.max_expires_at).max(l.expires_at);
            let txn = Txn::default()
                .expect(key(id), Some(raw))
                .put(key(id), serde_json::to_vec(&l).map_err(backend)?);
            match self.storage.commit(txn).await {
                Ok(()) => return Ok(Some(l)),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::Conflict)
    }

    /// Revokes every live lease whose id starts with `prefix` (an exact id revokes one).
    pub async fn revoke_prefix(
        &self,
        prefix: &str,
        exact: bool,
    ) -> Result<Vec<String>, StorageError> {
        let now = self.clock.now_millis() / 1000;
        let mut done = Vec::new();
        let rows = if exact {
            self.storage
                .get(&key(prefix))
                .await?
                .map(|v| vec![(key(prefix), v)])
                .unwrap_or_default()
        } else {
            self.storage.scan_prefix(&key(prefix)).await?
        };
        for (k, raw) in rows {
            let mut l: Lease = serde_json::from_slice(&raw).map_err(backend)?;
            if l.revoked_at.is_some() {
                continue;
            }
            l.revoked_at = Some(now);
            let payload = serde_json::to_vec(&Revoked {
                revoked: vec![l.lease_id.clone()],
            })
            .map_err(backend)?;
            let txn = Txn::default()
                .expect(k.clone(), Some(raw))
                .put(k, serde_json::to_vec(&l).map_err(backend)?)
                .notify(payload);
            match self.storage.commit(txn).await {
                Ok(()) | Err(StorageError::Conflict) => done.push(l.lease_id),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Deletes leases past their hard expiry by more than `grace` seconds.
    pub async fn sweep(&self, grace: u64) -> Result<usize, StorageError> {
        let now = self.clock.now_millis() / 1000;
        let mut n = 0;
        for (k, raw) in self.storage.scan_prefix(b"l/").await? {
            let Ok(l) = serde_json::from_slice::<Lease>(&raw) else {
                continue;
            };
            // a database user's lease stays until the user is dropped
            let pending_drop = l.db.as_ref().is_some_and(|d| !d.dropped);
            if l.max_expires_at + grace < now && !pending_drop {
                let _ = self
                    .storage
                    .commit(Txn::default().expect(k.clone(), Some(raw)).delete(k))
                    .await;
                n += 1;
            }
        }
        Ok(n)
    }
}
