//! The versioned, encrypted secret store, on top of any [`Storage`].
pub mod envelope;
pub mod kek;
pub mod model;
pub mod path;
pub mod record_cache;

use crate::clock::Clock;
use crate::sensitive::SecretFields;
use crate::storage::{Storage, StorageError, Txn};
use envelope::{EnvelopeError, Kek, Keyring};
use model::{
    meta_key, parse_version_key, version_key, ChangeEvent, ChangeKind, SecretMeta, VersionMeta,
    VersionRecord, ACTIVE_KEK_KEY, DEFAULT_MAX_VERSIONS,
};
use path::{PathError, PathPrefix, SecretPath};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{broadcast, RwLock};

/// How often a write retries after losing a race to a concurrent writer.
const MAX_RETRIES: usize = 32;
/// Largest accepted `max_versions`.
pub const MAX_MAX_VERSIONS: u32 = 1000;

/// What secret operations fail with. Messages name paths and versions, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such secret.
    #[error("secret {0:?} not found")]
    NotFound(String),
    /// No such version (never written, or pruned).
    #[error("version {version} of secret {path:?} not found")]
    VersionNotFound {
        /// Secret path.
        path: String,
        /// Version asked for.
        version: u64,
    },
    /// The version is soft-deleted.
    #[error("version {version} of secret {path:?} is deleted")]
    VersionDeleted {
        /// Secret path.
        path: String,
        /// Version asked for.
        version: u64,
    },
    /// The version is destroyed.
    #[error("version {version} of secret {path:?} is destroyed")]
    VersionDestroyed {
        /// Secret path.
        path: String,
        /// Version asked for.
        version: u64,
    },
    /// Check-and-set failed.
    #[error(
        "check-and-set failed for {path:?}: expected version {expected}, current is {current}"
    )]
    CasMismatch {
        /// Secret path.
        path: String,
        /// The caller's `cas`.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// The stored record does not authenticate.
    #[error("integrity check failed for version {version} of secret {path:?}: the stored record was modified or moved")]
    Integrity {
        /// Secret path.
        path: String,
        /// Version.
        version: u64,
    },
    /// Stored metadata or record cannot be decoded.
    #[error("stored data for {0:?} is corrupt")]
    Corrupt(String),
    /// A key-encryption-key problem.
    #[error("KEK: {0}")]
    Kek(String),
    /// A rotation of this secret is in progress.
    #[error("a rotation of {0:?} is in progress; retry when it completes (keygate admin rotation status)")]
    RotationInProgress(String),
    /// A version is pending (staged by a rotation, not current yet).
    #[error("version {version} of secret {path:?} is pending rotation")]
    VersionPending {
        /// Secret path.
        path: String,
        /// Version asked for.
        version: u64,
    },
    /// Too many concurrent writers on one secret.
    #[error("too much contention on {0:?}; retry")]
    Contention(String),
    /// A field name (or path) is not valid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One version read back.
#[derive(Debug)]
pub struct SecretVersion {
    /// Path.
    pub path: String,
    /// Version number.
    pub version: u64,
    /// Decrypted fields.
    pub fields: SecretFields,
    /// The secret's metadata.
    pub meta: SecretMeta,
}

/// A write request.
#[derive(Debug, Default)]
pub struct PutOptions {
    /// Check-and-set: current version must equal this (0 = must not exist).
    pub cas: Option<u64>,
    /// New `max_versions`.
    pub max_versions: Option<u32>,
    /// New custom metadata (replaces the old).
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

/// Outcome of a KEK rotation.
#[derive(Debug, Clone)]
pub struct KekRotation {
    /// Id of the retired KEK.
    pub old_kek_id: String,
    /// Id of the new KEK.
    pub new_kek_id: String,
    /// Data keys rewrapped.
    pub rewrapped: u64,
}

/// The secret store.
pub struct SecretStore {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    /// Writers hold a read guard from sealing to commit; KEK rotation takes the write guard to
    /// swap keyrings, so no record sealed under a retired KEK can land after the rewrap scan.
    keyring: RwLock<Arc<Keyring>>,
    rotation: tokio::sync::Mutex<()>,
    /// Sealed records of readable versions (see [`record_cache`]).
    records: Arc<record_cache::RecordCache>,
}

fn corrupt(path: &str) -> impl Fn(serde_json::Error) -> SecretsError + '_ {
    move |_| SecretsError::Corrupt(path.to_string())
}

fn new_meta(now: u64) -> SecretMeta {
    SecretMeta {
        current_version: 0,
        max_versions: DEFAULT_MAX_VERSIONS,
        created_at: now,
        updated_at: now,
        custom_metadata: BTreeMap::new(),
        versions: BTreeMap::new(),
        pending_version: None,
        previous_version: None,
        previous_until: None,
    }
}

fn decode_meta(path: &str, raw: &[u8]) -> Result<SecretMeta, SecretsError> {
    serde_json::from_slice(raw).map_err(corrupt(path))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, SecretsError> {
    serde_json::to_vec(v).map_err(|_| SecretsError::Corrupt("encoding".into()))
}

fn events(evs: &[ChangeEvent]) -> Result<Vec<u8>, SecretsError> {
    encode(&evs)
}

fn map_envelope(path: &str, version: u64, e: EnvelopeError) -> SecretsError {
    match e {
        EnvelopeError::Integrity | EnvelopeError::Malformed(_) => SecretsError::Integrity {
            path: path.to_string(),
            version,
        },
        EnvelopeError::UnknownKek(id) => SecretsError::Kek(format!(
            "version {version} of {path:?} is wrapped by KEK {id}, which is not loaded"
        )),
        EnvelopeError::Crypto => SecretsError::Kek("crypto failure".into()),
    }
}

/// Keeps `cache` in step with the store's change notifications (from every replica), until the
/// store is dropped.
fn forget_on_changes(
    mut changes: broadcast::Receiver<Vec<u8>>,
    cache: std::sync::Weak<record_cache::RecordCache>,
) {
    tokio::spawn(async move {
        loop {
            let change = changes.recv().await;
            let Some(cache) = cache.upgrade() else { return };
            match change {
                Ok(payload) => cache.on_change(&payload),
                // missed notifications: forget everything rather than guess
                Err(broadcast::error::RecvError::Lagged(_)) => cache.clear(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

impl SecretStore {
    /// Opens the store with `kek`. A store already bound to another KEK is refused with a
    /// message that says which KEK it needs.
    pub async fn open(
        storage: Arc<dyn Storage>,
        kek: Kek,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SecretsError> {
        match storage.get(ACTIVE_KEK_KEY).await? {
            Some(id) if id != kek.id().as_bytes() => {
                return Err(SecretsError::Kek(format!(
                    "the configured KEK (id {}) is not the one this store is encrypted with (id {}); \
                     after `keygate admin rotate-kek` point kek.file at the new KEK",
                    kek.id(),
                    String::from_utf8_lossy(&id)
                )));
            }
            Some(_) => {}
            None => {
                storage
                    .commit(
                        Txn::default()
                            .expect(ACTIVE_KEK_KEY, None)
                            .put(ACTIVE_KEK_KEY, kek.id().as_bytes().to_vec()),
                    )
                    .await?;
            }
        }
        let records = Arc::new(record_cache::RecordCache::default());
        forget_on_changes(storage.subscribe(), Arc::downgrade(&records));
        Ok(Self {
            storage,
            clock,
            keyring: RwLock::new(Arc::new(Keyring::single(kek))),
            rotation: tokio::sync::Mutex::new(()),
            records,
        })
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Id of the active KEK.
    pub async fn kek_id(&self) -> String {
        self.keyring.read().await.active.id().to_string()
    }

    async fn load_meta(
        &self,
        path: &str,
    ) -> Result<(Option<Vec<u8>>, Option<SecretMeta>), SecretsError> {
        let raw = self.storage.get(&meta_key(path)).await?;
        let meta = raw.as_deref().map(|r| decode_meta(path, r)).transpose()?;
        Ok((raw, meta))
    }

    /// Writes a new version of `path`.
    pub async fn put(
        &self,
        path: &SecretPath,
        fields: &SecretFields,
        opts: &PutOptions,
    ) -> Result<(u64, SecretMeta), SecretsError> {
        let path = path.as_str();
        if fields.is_empty() {
            return Err(SecretsError::InvalidArgument(
                "a secret needs at least one field".into(),
            ));
        }
        for (name, _) in fields.iter() {
            path::validate_field(name)?;
        }
        if let Some(m) = opts.max_versions {
            if m == 0 || m > MAX_MAX_VERSIONS {
                return Err(SecretsError::InvalidArgument(format!(
                    "max_versions must be 1 to {MAX_MAX_VERSIONS}"
                )));
            }
        }
        for _ in 0..MAX_RETRIES {
            let (raw, meta) = self.load_meta(path).await?;
            let now = self.clock.now_millis();
            let mut meta = meta.unwrap_or_else(|| new_meta(now));
            if meta.pending_version.is_some() {
                return Err(SecretsError::RotationInProgress(path.to_string()));
            }
            if let Some(expected) = opts.cas {
                if expected != meta.current_version {
                    return Err(SecretsError::CasMismatch {
                        path: path.to_string(),
                        expected,
                        current: meta.current_version,
                    });
                }
            }
            let version = meta.next_version();
            meta.current_version = version;
            meta.updated_at = now;
            if let Some(m) = opts.max_versions {
                meta.max_versions = m;
            }
            if let Some(c) = &opts.custom_metadata {
                meta.custom_metadata = c.clone();
            }
            let created = ChangeEvent {
                path: path.to_string(),
                version,
                kind: ChangeKind::Created,
                at: now,
            };
            let (txn, _ring) = self
                .version_txn(path, raw, &mut meta, version, fields, now, vec![created])
                .await?;
            match self.storage.commit(txn).await {
                Ok(()) => return Ok((version, meta)),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SecretsError::Contention(path.to_string()))
    }

    /// The writes of a new `version` (already chosen and set in `meta`): its record sealed, the
    /// oldest versions pruned, the metadata, and `evs` plus the prunes as the notification. The
    /// returned keyring guard must be held until the commit (KEK rotation waits for it).
    #[allow(clippy::too_many_arguments)]
    async fn version_txn(
        &self,
        path: &str,
        raw: Option<Vec<u8>>,
        meta: &mut SecretMeta,
        version: u64,
        fields: &SecretFields,
        now: u64,
        mut evs: Vec<ChangeEvent>,
    ) -> Result<(Txn, tokio::sync::RwLockReadGuard<'_, Arc<Keyring>>), SecretsError> {
        meta.versions.insert(
            version,
            VersionMeta {
                created_at: now,
                deleted_at: None,
                destroyed: false,
            },
        );
        let mut txn = Txn::default().expect(meta_key(path), raw);
        for oldest in meta.prune() {
            txn = txn.delete(version_key(path, oldest));
            evs.push(ChangeEvent {
                path: path.to_string(),
                version: oldest,
                kind: ChangeKind::Pruned,
                at: now,
            });
        }
        let ring = self.keyring.read().await;
        let record = envelope::seal_version(&ring, path, version, fields)
            .map_err(|e| map_envelope(path, version, e))?;
        let mut txn = txn
            .put(meta_key(path), encode(&*meta)?)
            .put(version_key(path, version), encode(&record)?);
        if !evs.is_empty() {
            txn = txn.notify(events(&evs)?);
        }
        Ok((txn, ring))
    }

    /// Reads `version` of `path` (0 = current). A pending version is not readable.
    pub async fn get(
        &self,
        path: &SecretPath,
        version: u64,
    ) -> Result<SecretVersion, SecretsError> {
        let path = path.as_str();
        let meta = self.meta_of(path).await?;
        if version != 0 && meta.pending_version == Some(version) {
            return Err(SecretsError::VersionPending {
                path: path.to_string(),
                version,
            });
        }
        self.read(path, version, meta, true).await
    }

    /// Reads the version a rotation replaced, while its overlap lasts.
    pub async fn get_previous(&self, path: &SecretPath) -> Result<SecretVersion, SecretsError> {
        let path = path.as_str();
        let meta = self.meta_of(path).await?;
        let now = self.clock.now_millis();
        match (meta.previous_version, meta.previous_until) {
            (Some(v), Some(until)) if now < until => self.read(path, v, meta, true).await,
            _ => Err(SecretsError::NotFound(format!(
                "{path} has no previous version in overlap"
            ))),
        }
    }

    /// Reads the pending version (rotation only).
    pub async fn get_pending(&self, path: &SecretPath) -> Result<SecretVersion, SecretsError> {
        let path = path.as_str();
        let meta = self.meta_of(path).await?;
        let v = meta
            .pending_version
            .ok_or_else(|| SecretsError::NotFound(format!("{path} has no pending version")))?;
        // a pending version can still be discarded: never cached
        self.read(path, v, meta, false).await
    }

    /// Reads `version` (0: the current one) as `meta` allows. `cacheable`: the version is
    /// readable (not pending), so its record may come from and go to the record cache.
    async fn read(
        &self,
        path: &str,
        version: u64,
        meta: SecretMeta,
        cacheable: bool,
    ) -> Result<SecretVersion, SecretsError> {
        let version = if version == 0 {
            meta.current_version
        } else {
            version
        };
        let vm = meta
            .versions
            .get(&version)
            .ok_or_else(|| SecretsError::VersionNotFound {
                path: path.to_string(),
                version,
            })?;
        if vm.destroyed {
            return Err(SecretsError::VersionDestroyed {
                path: path.to_string(),
                version,
            });
        }
        if vm.deleted_at.is_some() {
            return Err(SecretsError::VersionDeleted {
                path: path.to_string(),
                version,
            });
        }
        let created_at = vm.created_at;
        let ring = self.keyring.read().await.clone();
        if cacheable {
            if let Some(record) = self.records.get(path, version, created_at) {
                // a record sealed under a KEK since retired falls through to the store's copy
                if let Ok(fields) = envelope::open_version(&ring, path, version, &record) {
                    return Ok(SecretVersion {
                        path: path.to_string(),
                        version,
                        fields,
                        meta,
                    });
                }
                self.records.forget(path, version);
            }
        }
        let raw = self
            .storage
            .get(&version_key(path, version))
            .await?
            .ok_or_else(|| SecretsError::VersionNotFound {
                path: path.to_string(),
                version,
            })?;
        let record: VersionRecord =
            serde_json::from_slice(&raw).map_err(|_| SecretsError::Integrity {
                path: path.to_string(),
                version,
            })?;
        let fields = envelope::open_version(&ring, path, version, &record)
            .map_err(|e| map_envelope(path, version, e))?;
        if cacheable {
            self.records
                .insert(path, version, created_at, Arc::new(record));
        }
        Ok(SecretVersion {
            path: path.to_string(),
            version,
            fields,
            meta,
        })
    }

    /// Reads a keygate-internal secret (reserved `_sys/` paths, never reachable by callers).
    pub async fn get_internal(&self, path: &SecretPath) -> Result<SecretVersion, SecretsError> {
        self.get(path, 0).await
    }

    /// Writes a keygate-internal secret (reserved `_sys/` paths).
    pub async fn put_internal(
        &self,
        path: &SecretPath,
        fields: &SecretFields,
        opts: &PutOptions,
    ) -> Result<(u64, SecretMeta), SecretsError> {
        self.put(path, fields, opts).await
    }

    /// Metadata of one secret.
    pub async fn metadata(&self, path: &SecretPath) -> Result<SecretMeta, SecretsError> {
        self.meta_of(path.as_str()).await
    }

    async fn meta_of(&self, path: &str) -> Result<SecretMeta, SecretsError> {
        self.load_meta(path)
            .await?
            .1
            .ok_or_else(|| SecretsError::NotFound(path.to_string()))
    }

    /// Secrets under `prefix` with their metadata, in path order.
    pub async fn list(
        &self,
        prefix: &PathPrefix,
    ) -> Result<Vec<(String, SecretMeta)>, SecretsError> {
        let rows = self.storage.scan_prefix(&meta_key(prefix.as_str())).await?;
        rows.into_iter()
            .map(|(k, v)| {
                let path = String::from_utf8_lossy(&k[2..]).into_owned();
                let meta = decode_meta(&path, &v)?;
                Ok((path, meta))
            })
            .collect()
    }

    /// Number of secrets stored (keygate's own `_sys/` records not counted).
    pub async fn count(&self) -> Result<u64, SecretsError> {
        Ok(self
            .storage
            .scan_prefix(b"m/")
            .await?
            .iter()
            .filter(|(k, _)| !k.starts_with(b"m/_sys/"))
            .count() as u64)
    }

    /// Soft-deletes versions (empty = current).
    pub async fn delete(
        &self,
        path: &SecretPath,
        versions: &[u64],
    ) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path.as_str(), versions, ChangeKind::Deleted)
            .await
    }

    /// Restores soft-deleted versions (empty = current).
    pub async fn undelete(
        &self,
        path: &SecretPath,
        versions: &[u64],
    ) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path.as_str(), versions, ChangeKind::Undeleted)
            .await
    }

    /// Erases the ciphertext of versions (empty = current). Irreversible.
    pub async fn destroy(
        &self,
        path: &SecretPath,
        versions: &[u64],
    ) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path.as_str(), versions, ChangeKind::Destroyed)
            .await
    }

    async fn change_versions(
        &self,
        path: &str,
        versions: &[u64],
        kind: ChangeKind,
    ) -> Result<SecretMeta, SecretsError> {
        for _ in 0..MAX_RETRIES {
            let (raw, meta) = self.load_meta(path).await?;
            let mut meta = meta.ok_or_else(|| SecretsError::NotFound(path.to_string()))?;
            let now = self.clock.now_millis();
            let targets: Vec<u64> = if versions.is_empty() {
                vec![meta.current_version]
            } else {
                versions.to_vec()
            };
            let mut txn = Txn::default().expect(meta_key(path), raw);
            let mut evs = Vec::new();
            for &v in &targets {
                if meta.pending_version == Some(v) {
                    return Err(SecretsError::VersionPending {
                        path: path.to_string(),
                        version: v,
                    });
                }
                let vm =
                    meta.versions
                        .get_mut(&v)
                        .ok_or_else(|| SecretsError::VersionNotFound {
                            path: path.to_string(),
                            version: v,
                        })?;
                match kind {
                    ChangeKind::Deleted => {
                        if vm.deleted_at.is_none() {
                            vm.deleted_at = Some(now);
                        }
                    }
                    ChangeKind::Undeleted => {
                        if vm.destroyed {
                            return Err(SecretsError::VersionDestroyed {
                                path: path.to_string(),
                                version: v,
                            });
                        }
                        vm.deleted_at = None;
                    }
                    ChangeKind::Destroyed => {
                        vm.destroyed = true;
                        txn = txn.delete(version_key(path, v));
                    }
                    ChangeKind::Created | ChangeKind::Pruned => {
                        return Err(SecretsError::InvalidArgument("unsupported change".into()))
                    }
                }
                evs.push(ChangeEvent {
                    path: path.to_string(),
                    version: v,
                    kind,
                    at: now,
                });
            }
            meta.updated_at = now;
            let txn = txn
                .put(meta_key(path), encode(&meta)?)
                .notify(events(&evs)?);
            match self.storage.commit(txn).await {
                Ok(()) => return Ok(meta),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SecretsError::Contention(path.to_string()))
    }

    /// Writes `fields` as a pending version of `path` (not current, not readable), in the same
    /// atomic commit as `with` (the rotation's state). Refused if a version is already pending
    /// or the current version is no longer `expect_current` (0 = the secret must not exist).
    pub async fn stage(
        &self,
        path: &SecretPath,
        fields: &SecretFields,
        expect_current: u64,
        with: Txn,
    ) -> Result<u64, SecretsError> {
        let path = path.as_str();
        let (raw, meta) = self.load_meta(path).await?;
        let now = self.clock.now_millis();
        let mut meta = meta.unwrap_or_else(|| new_meta(now));
        if meta.pending_version.is_some() {
            return Err(SecretsError::RotationInProgress(path.to_string()));
        }
        if meta.current_version != expect_current {
            return Err(SecretsError::CasMismatch {
                path: path.to_string(),
                expected: expect_current,
                current: meta.current_version,
            });
        }
        let version = meta.next_version();
        meta.pending_version = Some(version);
        // no Created event: watchers hear of the version when it becomes current
        let (txn, _ring) = self
            .version_txn(path, raw, &mut meta, version, fields, now, Vec::new())
            .await?;
        self.storage.commit(txn.merge(with)).await?;
        Ok(version)
    }

    /// Makes the pending `version` current; the old current stays readable as `previous` for
    /// `overlap_ms` (an older previous is soft-deleted). Commits atomically with `with`.
    /// Already current: nothing to do (`Ok(false)`).
    pub async fn promote(
        &self,
        path: &SecretPath,
        version: u64,
        overlap_ms: u64,
        with: Txn,
    ) -> Result<bool, SecretsError> {
        let path = path.as_str();
        let (raw, meta) = self.load_meta(path).await?;
        let mut meta = meta.ok_or_else(|| SecretsError::NotFound(path.to_string()))?;
        if meta.pending_version != Some(version) {
            if meta.current_version == version {
                return Ok(false);
            }
            return Err(SecretsError::VersionNotFound {
                path: path.to_string(),
                version,
            });
        }
        let now = self.clock.now_millis();
        let mut evs = vec![ChangeEvent {
            path: path.to_string(),
            version,
            kind: ChangeKind::Created,
            at: now,
        }];
        if let Some(old) = meta.previous_version.take() {
            if let Some(vm) = meta.versions.get_mut(&old) {
                if vm.deleted_at.is_none() {
                    vm.deleted_at = Some(now);
                    evs.push(ChangeEvent {
                        path: path.to_string(),
                        version: old,
                        kind: ChangeKind::Deleted,
                        at: now,
                    });
                }
            }
        }
        let had_current =
            meta.current_version != 0 && meta.versions.contains_key(&meta.current_version);
        if had_current {
            meta.previous_version = Some(meta.current_version);
            meta.previous_until = Some(now + overlap_ms);
        } else {
            meta.previous_until = None;
        }
        meta.current_version = version;
        meta.pending_version = None;
        meta.updated_at = now;
        let txn = Txn::default()
            .expect(meta_key(path), raw)
            .put(meta_key(path), encode(&meta)?)
            .merge(with)
            .notify(events(&evs)?);
        self.storage.commit(txn).await?;
        Ok(true)
    }

    /// Rolls back a pending `version`: its ciphertext is erased and the secret is as before.
    /// Commits atomically with `with`. Not pending (any more): `Ok(false)`.
    pub async fn discard_pending(
        &self,
        path: &SecretPath,
        version: u64,
        with: Txn,
    ) -> Result<bool, SecretsError> {
        let path = path.as_str();
        let (raw, meta) = self.load_meta(path).await?;
        let Some(mut meta) = meta else {
            return Ok(false);
        };
        if meta.pending_version != Some(version) {
            return Ok(false);
        }
        meta.pending_version = None;
        if let Some(vm) = meta.versions.get_mut(&version) {
            vm.destroyed = true;
        }
        let txn = Txn::default()
            .expect(meta_key(path), raw)
            .put(meta_key(path), encode(&meta)?)
            .delete(version_key(path, version))
            .merge(with);
        self.storage.commit(txn).await?;
        Ok(true)
    }

    /// Ends the overlap of `path` if it is over: the previous version is soft-deleted.
    pub async fn end_overlap(&self, path: &SecretPath) -> Result<Option<u64>, SecretsError> {
        let path = path.as_str();
        let (raw, meta) = self.load_meta(path).await?;
        let Some(mut meta) = meta else {
            return Ok(None);
        };
        let now = self.clock.now_millis();
        let (Some(v), Some(until)) = (meta.previous_version, meta.previous_until) else {
            return Ok(None);
        };
        if now < until {
            return Ok(None);
        }
        meta.previous_version = None;
        meta.previous_until = None;
        if let Some(vm) = meta.versions.get_mut(&v) {
            vm.deleted_at.get_or_insert(now);
        }
        let ev = ChangeEvent {
            path: path.to_string(),
            version: v,
            kind: ChangeKind::Deleted,
            at: now,
        };
        let txn = Txn::default()
            .expect(meta_key(path), raw)
            .put(meta_key(path), encode(&meta)?)
            .notify(events(&[ev])?);
        match self.storage.commit(txn).await {
            Ok(()) => Ok(Some(v)),
            Err(StorageError::Conflict) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Change events as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.storage.subscribe()
    }

    /// Rewraps every data key under `new_kek`, online: reads keep working throughout (both KEKs
    /// are loaded until the last record is rewrapped), then the old KEK is dropped.
    pub async fn rotate_kek(&self, new_kek: Kek) -> Result<KekRotation, SecretsError> {
        let _one_at_a_time = self.rotation.lock().await;
        let old_id = self.kek_id().await;
        let new_id = new_kek.id().to_string();
        if old_id == new_id {
            return Err(SecretsError::Kek(
                "the new KEK is the one already in use".into(),
            ));
        }
        {
            let mut guard = self.keyring.write().await;
            let retired = vec![Arc::clone(&guard.active)];
            *guard = Arc::new(Keyring {
                active: Arc::new(new_kek),
                retired,
            });
        }
        let ring = self.keyring.read().await.clone();
        let mut rewrapped = 0u64;
        for (key, raw) in self.storage.scan_prefix(b"v/").await? {
            let Some((path, version)) = parse_version_key(&key) else {
                continue;
            };
            let mut current = Some(raw);
            for _ in 0..MAX_RETRIES {
                let Some(raw) = current.take() else { break };
                let record: VersionRecord =
                    serde_json::from_slice(&raw).map_err(|_| SecretsError::Integrity {
                        path: path.clone(),
                        version,
                    })?;
                if record.kek_id == new_id {
                    break;
                }
                let moved = envelope::rewrap(&ring, &path, version, &record)
                    .map_err(|e| map_envelope(&path, version, e))?;
                let txn = Txn::default()
                    .expect(key.clone(), Some(raw))
                    .put(key.clone(), encode(&moved)?);
                match self.storage.commit(txn).await {
                    Ok(()) => {
                        rewrapped += 1;
                        break;
                    }
                    // Destroyed or pruned meanwhile: re-read; gone means nothing to rewrap.
                    Err(StorageError::Conflict) => current = self.storage.get(&key).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.storage
            .commit(
                Txn::default()
                    .expect(ACTIVE_KEK_KEY, Some(old_id.as_bytes().to_vec()))
                    .put(ACTIVE_KEK_KEY, new_id.as_bytes().to_vec()),
            )
            .await?;
        {
            let mut guard = self.keyring.write().await;
            *guard = Arc::new(Keyring {
                active: Arc::clone(&guard.active),
                retired: Vec::new(),
            });
        }
        // what is cached was sealed under the retired KEK
        self.records.clear();
        Ok(KekRotation {
            old_kek_id: old_id,
            new_kek_id: new_id,
            rewrapped,
        })
    }
}
