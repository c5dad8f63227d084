//! The versioned, encrypted secret store, on top of any [`Storage`].
pub mod envelope;
pub mod kek;
pub mod model;
pub mod path;

use crate::clock::Clock;
use crate::sensitive::SecretFields;
use crate::storage::{Storage, StorageError, Txn};
use envelope::{EnvelopeError, Kek, Keyring};
use model::{
    meta_key, parse_version_key, version_key, ChangeEvent, ChangeKind, SecretMeta, VersionMeta,
    VersionRecord, ACTIVE_KEK_KEY, DEFAULT_MAX_VERSIONS,
};
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
    /// Too many concurrent writers on one secret.
    #[error("too much contention on {0:?}; retry")]
    Contention(String),
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
}

fn corrupt(path: &str) -> impl Fn(serde_json::Error) -> SecretsError + '_ {
    move |_| SecretsError::Corrupt(path.to_string())
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
        Ok(Self {
            storage,
            clock,
            keyring: RwLock::new(Arc::new(Keyring::single(kek))),
            rotation: tokio::sync::Mutex::new(()),
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
        path: &str,
        fields: &SecretFields,
        opts: &PutOptions,
    ) -> Result<(u64, SecretMeta), SecretsError> {
        path::validate(path).map_err(SecretsError::InvalidArgument)?;
        if fields.is_empty() {
            return Err(SecretsError::InvalidArgument(
                "a secret needs at least one field".into(),
            ));
        }
        for (name, _) in fields.iter() {
            path::validate_field(name).map_err(SecretsError::InvalidArgument)?;
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
            let mut meta = meta.unwrap_or(SecretMeta {
                current_version: 0,
                max_versions: DEFAULT_MAX_VERSIONS,
                created_at: now,
                updated_at: now,
                custom_metadata: BTreeMap::new(),
                versions: BTreeMap::new(),
            });
            if let Some(expected) = opts.cas {
                if expected != meta.current_version {
                    return Err(SecretsError::CasMismatch {
                        path: path.to_string(),
                        expected,
                        current: meta.current_version,
                    });
                }
            }
            let version = meta.current_version + 1;
            meta.current_version = version;
            meta.updated_at = now;
            if let Some(m) = opts.max_versions {
                meta.max_versions = m;
            }
            if let Some(c) = &opts.custom_metadata {
                meta.custom_metadata = c.clone();
            }
            meta.versions.insert(
                version,
                VersionMeta {
                    created_at: now,
                    deleted_at: None,
                    destroyed: false,
                },
            );
            let mut evs = vec![ChangeEvent {
                path: path.to_string(),
                version,
                kind: ChangeKind::Created,
                at: now,
            }];
            let mut txn = Txn::default().expect(meta_key(path), raw);
            while meta.versions.len() > meta.max_versions as usize {
                let Some((&oldest, _)) = meta.versions.iter().next() else {
                    break;
                };
                meta.versions.remove(&oldest);
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
            let txn = txn
                .put(meta_key(path), encode(&meta)?)
                .put(version_key(path, version), encode(&record)?)
                .notify(events(&evs)?);
            match self.storage.commit(txn).await {
                Ok(()) => return Ok((version, meta)),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SecretsError::Contention(path.to_string()))
    }

    /// Reads `version` of `path` (0 = current).
    pub async fn get(&self, path: &str, version: u64) -> Result<SecretVersion, SecretsError> {
        path::validate(path).map_err(SecretsError::InvalidArgument)?;
        let (_, meta) = self.load_meta(path).await?;
        let meta = meta.ok_or_else(|| SecretsError::NotFound(path.to_string()))?;
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
        let ring = self.keyring.read().await.clone();
        let fields = envelope::open_version(&ring, path, version, &record)
            .map_err(|e| map_envelope(path, version, e))?;
        Ok(SecretVersion {
            path: path.to_string(),
            version,
            fields,
            meta,
        })
    }

    /// Reads a keygate-internal secret (reserved `_sys/` paths, never reachable by callers).
    pub async fn get_internal(&self, path: &str) -> Result<SecretVersion, SecretsError> {
        self.get(path, 0).await
    }

    /// Writes a keygate-internal secret (reserved `_sys/` paths).
    pub async fn put_internal(
        &self,
        path: &str,
        fields: &SecretFields,
        opts: &PutOptions,
    ) -> Result<(u64, SecretMeta), SecretsError> {
        self.put(path, fields, opts).await
    }

    /// Metadata of one secret.
    pub async fn metadata(&self, path: &str) -> Result<SecretMeta, SecretsError> {
        path::validate(path).map_err(SecretsError::InvalidArgument)?;
        self.load_meta(path)
            .await?
            .1
            .ok_or_else(|| SecretsError::NotFound(path.to_string()))
    }

    /// Secrets under `prefix` with their metadata, in path order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, SecretMeta)>, SecretsError> {
        path::validate_prefix(prefix).map_err(SecretsError::InvalidArgument)?;
        let rows = self.storage.scan_prefix(&meta_key(prefix)).await?;
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
    pub async fn delete(&self, path: &str, versions: &[u64]) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path, versions, ChangeKind::Deleted)
            .await
    }

    /// Restores soft-deleted versions (empty = current).
    pub async fn undelete(&self, path: &str, versions: &[u64]) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path, versions, ChangeKind::Undeleted)
            .await
    }

    /// Erases the ciphertext of versions (empty = current). Irreversible.
    pub async fn destroy(&self, path: &str, versions: &[u64]) -> Result<SecretMeta, SecretsError> {
        self.change_versions(path, versions, ChangeKind::Destroyed)
            .await
    }

    async fn change_versions(
        &self,
        path: &str,
        versions: &[u64],
        kind: ChangeKind,
    ) -> Result<SecretMeta, SecretsError> {
        path::validate(path).map_err(SecretsError::InvalidArgument)?;
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
        Ok(KekRotation {
            old_kek_id: old_id,
            new_kek_id: new_id,
            rewrapped,
        })
    }
}
