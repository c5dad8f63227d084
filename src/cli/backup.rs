//! `keygate admin backup` (online, through the daemon) and `keygate admin restore` (offline,
//! into the empty store a config names).
use super::Conn;
use crate::client::{connect_authed as connect, status_error};
use crate::config::{Config, StorageConfig};
use crate::pb;
use crate::storage::{PgStorage, SledStorage, Storage};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// `keygate admin backup --out FILE`: the daemon's point-in-time copy, into a new 0600 file.
pub async fn backup(conn: &Conn, out: &Path) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let mut stream = c
        .backup(pb::BackupRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        file.extend_from_slice(&chunk.data);
    }
    // checked before it is written: a cut stream never leaves a file that looks whole
    let (header, _) = crate::backup::decode(&file).context("the daemon's backup")?;
    crate::fsutil::write_private_bytes(out, &file)?;
    println!(
        "backup of {} entries ({} store, KEK {}) written to {}",
        header.entries,
        header.backend,
        header.kek_id,
        out.display()
    );
    Ok(())
}

/// `keygate admin restore --config FILE --from BACKUP`: into the config's store, which must be
/// empty, with the daemon stopped.
pub async fn restore(config: &Path, from: &Path) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let cfg = Config::load(config)?;
    let kek = crate::server::kek_from(&cfg)?;
    let raw = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let (header, entries) = crate::backup::decode(&raw)?;
    let storage: Arc<dyn Storage> = match &cfg.storage {
        StorageConfig::Sled { path } => Arc::new(
            SledStorage::open(path)
                .with_context(|| format!("opening the store at {}", path.display()))?,
        ),
        StorageConfig::Postgres(pg) => Arc::new(PgStorage::open(pg).await?),
    };
    let n = crate::backup::restore(storage.as_ref(), &header, entries, kek.id()).await?;
    println!(
        "restored {n} entries (backup of {} from a {} store) into the {} store",
        crate::audit::writer::rfc3339(header.created_at),
        header.backend,
        storage.backend()
    );
    Ok(())
}
