//! `keygate audit … --config F`: opens the log a daemon config names — its segment directory,
//! or its database table with the trust anchor of the keys the config names — for the tools in
//! `audit::cli`, which know no config, storage or KEK.
use crate::audit::cli::{Db, Log};
use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::path::Path;
use std::sync::Arc;

/// Opens the log `config` names; for the database, its anchor comes from the key file the
/// config names or from the store (unsealed with the config's KEK).
pub async fn open_config(config: &Path) -> anyhow::Result<Log> {
    use crate::config::{AuditKeySource, AuditStore, Config, StorageConfig};
    let cfg = Config::load(config)?;
    if cfg.audit.store == AuditStore::Files {
        return Ok(Log::Dir(cfg.audit.dir));
    }
    let StorageConfig::Postgres(pg) = &cfg.storage else {
        anyhow::bail!(
            "{}: [audit] store = \"postgres\" needs the PostgreSQL storage backend",
            config.display()
        );
    };
    crate::tls::install_crypto_provider();
    let storage = Arc::new(crate::storage::PgStorage::open(pg).await?);
    let anchor = match &cfg.audit.keys {
        AuditKeySource::Files { signing, hmac } => crate::audit::AuditKeys::load(signing, hmac)
            .map(|k| k.anchor_public_base64())
            .map_err(|e| e.to_string()),
        AuditKeySource::Store => stored_anchor(&cfg, storage.clone()).await,
    }
    .and_then(|b| B64.decode(b).map_err(|e| e.to_string()));
    Ok(Log::Db(Db {
        table: storage,
        label: pg.url.clone(),
        node: cfg.server.node_id.clone(),
        anchor,
    }))
}

/// The anchor of the keys the replicas share from the store.
async fn stored_anchor(
    cfg: &crate::config::Config,
    storage: Arc<crate::storage::PgStorage>,
) -> Result<String, String> {
    let kek = crate::server::kek_from(cfg).map_err(|e| e.to_string())?;
    let store =
        crate::secrets::SecretStore::open(storage, kek, Arc::new(crate::clock::SystemClock))
            .await
            .map_err(|e| e.to_string())?;
    match crate::audit::AuditKeys::stored(&store)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(k) => Ok(k.anchor_public_base64()),
        None => Err("the database holds no audit keys yet (no replica has started)".into()),
    }
}

/// `keygate audit anchor`: the trust anchor (base64, `audit.pub` format) of the log a config
/// names, printed or written to `out`.
pub async fn anchor(config: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let b64 = match open_config(config).await? {
        Log::Dir(d) => {
            let p = d.join("audit.pub");
            let t =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            t.trim().to_string()
        }
        Log::Db(db) => B64.encode(db.anchor.map_err(|e| anyhow!("the audit anchor: {e}"))?),
    };
    match out {
        Some(p) => std::fs::write(p, format!("{b64}\n"))
            .with_context(|| format!("writing {}", p.display()))?,
        None => println!("{b64}"),
    }
    Ok(())
}

/// The audit table of a scratch database for `keygate bench audit --store postgres`.
pub async fn bench_table(url: &str) -> anyhow::Result<Arc<dyn crate::audit::table::AuditTable>> {
    use crate::storage::postgres::config::{
        PgConfig, PgTls, DEFAULT_CHANGE_LOG_RETENTION, DEFAULT_OPERATION_TIMEOUT,
    };
    crate::tls::install_crypto_provider();
    let cfg = PgConfig {
        url: url.to_string(),
        password_file: None,
        tls: PgTls::DangerousDisable,
        pool_size: 8,
        connect_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(10),
        operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        change_log_retention: DEFAULT_CHANGE_LOG_RETENTION,
    };
    Ok(Arc::new(crate::storage::PgStorage::open(&cfg).await?))
}
