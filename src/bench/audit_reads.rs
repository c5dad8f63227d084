//! `keygate bench audit --reads`: audited secret reads end to end (gRPC over TLS, mTLS admin,
//! decrypt, durable audit record) against a daemon started in a temporary directory.
use crate::pb;
use std::time::{Duration, Instant};

/// Runs `clients` concurrent readers for `duration`; one line of results. With `database`
/// (a PostgreSQL URL), the daemon's store is that database and, with `audit_in_db`, its audit
/// log too.
pub async fn run(
    dir: &std::path::Path,
    clients: usize,
    duration: Duration,
    database: Option<&str>,
    audit_in_db: bool,
) -> anyhow::Result<String> {
    let tmp = dir.join(format!(
        "keygate-read-bench-{}-{clients}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let paths = crate::devenv::init(
        &tmp,
        &crate::devenv::DevOptions {
            grpc_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            issuer_listen: "127.0.0.1:0".into(),
            vault_listen: None,
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    // a database of the run's own on that server (a fresh KEK each run), dropped at the end
    let scratch = match database {
        Some(url) => Some(Scratch::create(url, clients).await?),
        None => None,
    };
    if let Some(url) = scratch.as_ref().map(|s| s.url.as_str()) {
        let text = std::fs::read_to_string(&paths.config)?;
        let sled = "[storage]\nbackend = \"sled\"\npath = \"data\"\n";
        anyhow::ensure!(
            text.contains(sled),
            "the dev config has no sled [storage] section"
        );
        let mut text = text.replace(
            sled,
            &format!(
                "[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\ntls = \"dangerous_disable\"\n"
            ),
        );
        if audit_in_db {
            text.push_str("\n[audit]\nstore = \"postgres\"\n");
        }
        std::fs::write(&paths.config, text)?;
    }
    let cfg = crate::config::Config::load(&paths.config)?;
    let audit_store = match (&cfg.storage, cfg.audit.store) {
        (crate::config::StorageConfig::Sled { .. }, _) => "sled+files",
        (_, crate::config::AuditStore::Files) => "postgres+files",
        (_, crate::config::AuditStore::Postgres) => "postgres+postgres",
    };
    let daemon = crate::server::Daemon::start(cfg)
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let fields = [(
        "password".to_string(),
        crate::sensitive::SecretBytes::new(vec![b'x'; 1024]),
    )]
    .into_iter()
    .collect();
    daemon
        .store()
        .put(
            &crate::secrets::path::SecretPath::parse("bench/db")?,
            &fields,
            &Default::default(),
        )
        .await?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
            &paths.ca,
        )?))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&paths.admin_cert)?,
            std::fs::read(&paths.admin_key)?,
        ));
    let channel =
        tonic::transport::Channel::from_shared(format!("https://{}", daemon.grpc_addr()))?
            .tls_config(tls)?
            .connect()
            .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = pb::secrets_client::SecretsClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                let r = c
                    .get(pb::GetSecretRequest {
                        path: "bench/db".into(),
                        version: 0,
                        previous: false,
                    })
                    .await;
                if r.is_err() {
                    break;
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    daemon
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(s) = scratch {
        s.drop_db().await;
    }
    let l = crate::audit::bench::Latencies::of(all, secs);
    Ok(format!(
        "audited reads: store+audit={audit_store} clients={clients} reads={} reads_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        l.count, l.per_s, l.p50_ms, l.p99_ms
    ))
}

/// A database created for one run on the server `--database` names.
struct Scratch {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(url: &str, clients: usize) -> anyhow::Result<Self> {
        let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let name = format!("keygate_bench_{}_{clients}", std::process::id());
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        // postgres://USER@HOST:PORT/DB[?…] with DB replaced
        let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
        let Some((server, _db)) = base.rsplit_once('/') else {
            anyhow::bail!("--database {url:?} is not postgres://USER@HOST:PORT/DB");
        };
        let url = match query {
            "" => format!("{server}/{name}"),
            q => format!("{server}/{name}?{q}"),
        };
        Ok(Self { admin, name, url })
    }

    async fn drop_db(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}
