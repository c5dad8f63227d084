//! keygate's PostgreSQL storage over real TLS: a second PostgreSQL cluster made for this test
//! (`pg_createcluster`, its own port) that accepts only `hostssl` with a SCRAM password, a server
//! certificate from a test CA. verify-full with the CA connects (and the session is encrypted);
//! without the CA, or to a name the certificate does not carry, or with a wrong password, the
//! store does not open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{run, Cluster};
use keygate::storage::postgres::config::PgConfig;
use keygate::storage::{PgStorage, Storage, Txn};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A TLS-only cluster with the certificate of `certs` (devenv's CA, server cert for localhost
/// and 127.0.0.1) and `postgres`'s password set to `password`.
fn tls_cluster(certs: &Path, password: &str) -> Cluster {
    let c = Cluster::create(
        "local all postgres peer\nhostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n",
    );
    let data = c.data_dir();
    for (from, to) in [
        ("server.pem", "server.pem"),
        ("server-key.pem", "server.key"),
    ] {
        std::fs::copy(certs.join(from), data.join(to)).unwrap();
        run(Command::new("chown").args(["postgres", data.join(to).to_str().unwrap()]));
    }
    run(Command::new("chmod").args(["600", data.join("server.key").to_str().unwrap()]));
    c.append_conf(&format!(
        "ssl = on\nssl_cert_file = '{0}/server.pem'\nssl_key_file = '{0}/server.key'\n",
        data.display()
    ));
    c.ctl("start");
    c.psql(&format!("ALTER USER postgres PASSWORD '{password}'"));
    c
}

fn config(url: &str, password_file: &Path, ca: Option<&Path>) -> PgConfig {
    PgConfig::check(
        url,
        Some(password_file.to_path_buf()),
        "verify-full",
        ca.map(Path::to_path_buf),
        4,
        Duration::from_secs(3),
        Duration::from_secs(3),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_connects_to_the_right_certificate_only() {
    keygate::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let paths = keygate::devenv::init(
        &tmp.path().join("kg"),
        &keygate::devenv::DevOptions {
            grpc_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            issuer_listen: "127.0.0.1:0".into(),
            vault_listen: None,
        },
    )
    .unwrap();
    let password = "tls-pw-0c1d";
    let cluster = tls_cluster(&paths.dir, password);
    let pw_file = tmp.path().join("db-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let url = format!("postgres://postgres@localhost:{}/postgres", cluster.port);

    // the right CA and host: the store opens and works (the cluster accepts nothing but
    // hostssl, so the session is encrypted)
    let s = PgStorage::open(&config(&url, &pw_file, Some(&paths.ca)))
        .await
        .expect("verify-full with the database's CA");
    s.commit(Txn::default().put(b"tls/k".to_vec(), b"v".to_vec()))
        .await
        .unwrap();
    assert_eq!(s.get(b"tls/k").await.unwrap(), Some(b"v".to_vec()));
    drop(s);

    // the system trust store does not know the test CA
    let e = PgStorage::open(&config(&url, &pw_file, None))
        .await
        .err()
        .expect("an unknown CA is refused");
    println!("unknown CA: {e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    // a name the certificate does not carry
    let other = format!(
        "postgres://postgres@db.other.test:{}/postgres?hostaddr=127.0.0.1",
        cluster.port
    );
    let e = PgStorage::open(&config(&other, &pw_file, Some(&paths.ca)))
        .await
        .err()
        .expect("a host the certificate does not name is refused");
    println!("wrong host: {e}");
    assert!(
        e.to_string().contains("TLS"),
        "refused by the certificate check: {e}"
    );
    // a wrong password, and the error does not show it
    let bad = tmp.path().join("bad-password");
    std::fs::write(&bad, "not-it").unwrap();
    let e = PgStorage::open(&config(&url, &bad, Some(&paths.ca)))
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(!e.to_string().contains(password) && !e.to_string().contains("not-it"));
    println!("wrong password: {e}");
}
