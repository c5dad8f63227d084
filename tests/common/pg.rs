//! The real PostgreSQL the tests use (`KEYGATE_TEST_POSTGRES_URL`, default the local server).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use base64::Engine;
use tokio_postgres::{Client, NoTls};

pub fn url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A superuser connection. PostgreSQL is part of the test environment: no server is a failure.
pub async fn admin() -> Client {
    connect(&url()).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} is required (start it with `pg_ctlcluster ... main start` or run .ci/run): {e}",
            url()
        )
    })
}

pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// Connects as `user` (this server trusts loopback, so the password is checked separately with
/// [`password_matches`]).
pub async fn connect_as(user: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = url().parse().unwrap();
    cfg.user(user);
    let (c, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

pub async fn role_exists(c: &Client, name: &str) -> bool {
    c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// `rolvaliduntil` as seconds since the epoch.
pub async fn valid_until(c: &Client, name: &str) -> Option<i64> {
    c.query_one(
        "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

/// Does the server's stored SCRAM-SHA-256 verifier for `role` accept `password`? (RFC 5802:
/// StoredKey = H(HMAC(PBKDF2(password, salt, i), "Client Key")).)
pub async fn password_matches(c: &Client, role: &str, password: &str) -> bool {
    let row = c
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let stored: Option<String> = row.get(0);
    let stored = stored.expect("role has no password");
    let rest = stored
        .strip_prefix("SCRAM-SHA-256$")
        .expect("not a SCRAM verifier");
    let (iter_salt, keys) = rest.split_once('$').unwrap();
    let (iter, salt) = iter_salt.split_once(':').unwrap();
    let (stored_key, _) = keys.split_once(':').unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(salt).unwrap();
    let mut salted = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iter.parse().unwrap()).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &salted);
    let client_key = aws_lc_rs::hmac::sign(&k, b"Client Key");
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client_key.as_ref());
    b64.encode(h.as_ref()) == stored_key
}

/// A fresh schema with two tables, `items` (to be granted) and `private` (never granted).
pub async fn fresh_schema(c: &Client) -> String {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let schema = format!("kgt_{}", hex::encode(b));
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id int);
         INSERT INTO {schema}.items VALUES (1), (2);
         CREATE TABLE {schema}.private (id int);"
    ))
    .await
    .unwrap();
    schema
}

pub async fn drop_schema(c: &Client, schema: &str) {
    let _ = c
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
}

/// Waits up to `secs` for `cond`.
pub async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cond().await
}

/// A new empty database on the test server (for keygate's own PostgreSQL storage), and its URL.
/// Dropped by [`drop_database`].
pub async fn fresh_database() -> (String, String) {
    let c = admin().await;
    let mut b = [0u8; 6];
    getrandom_fill(&mut b);
    let name = format!("kg_store_{}", hex_lower(&b));
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut cfg: tokio_postgres::Config = url().parse().unwrap();
    cfg.dbname(&name);
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres").to_string();
    (
        name.clone(),
        format!("postgres://{user}@{host}:{port}/{name}"),
    )
}

/// Drops a database made by [`fresh_database`] (its connections are ended first).
pub async fn drop_database(name: &str) {
    let c = admin().await;
    let _ = c
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

fn getrandom_fill(b: &mut [u8]) {
    aws_lc_rs::rand::fill(b).unwrap();
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// keygate's PostgreSQL storage config for a test database (plain TCP to loopback).
pub fn store_config(url: &str) -> keygate::storage::postgres::config::PgConfig {
    keygate::storage::postgres::config::PgConfig::check(
        url,
        None,
        "dangerous_disable",
        None,
        8,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(5),
    )
    .unwrap()
}
