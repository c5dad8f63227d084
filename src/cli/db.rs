//! `keygate db-creds`: a short-lived database user.
use super::Conn;
use crate::client::{connect_authed as connect, status_error};
use crate::pb;
use zeroize::Zeroizing;

/// How to print the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbOutput {
    /// `username: …` lines for people.
    Text,
    /// One JSON object.
    Json,
    /// `PGUSER=…` / `PGPASSWORD=…` lines, for `export $(…)` or an env file.
    Env,
}

/// `keygate db-creds ROLE`.
pub async fn db_creds(
    conn: &Conn,
    role: &str,
    ttl: Option<u64>,
    out: DbOutput,
) -> anyhow::Result<()> {
    let mut c =
        pb::database_credentials_client::DatabaseCredentialsClient::new(connect(conn).await?);
    let r = c
        .generate(pb::GenerateDatabaseCredentialsRequest {
            role: role.to_string(),
            ttl_seconds: ttl.unwrap_or(0),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let password = Zeroizing::new(r.password.clone());
    let expires = r
        .expires_at
        .as_ref()
        .map(|t| crate::audit::writer::rfc3339(t.seconds as u64 * 1000))
        .unwrap_or_default();
    match out {
        DbOutput::Json => println!(
            "{}",
            serde_json::json!({
                "username": r.username,
                "password": password.as_str(),
                "lease_id": r.lease_id,
                "expires_at": expires,
            })
        ),
        DbOutput::Env => {
            println!("PGUSER={}", r.username);
            println!("PGPASSWORD={}", password.as_str());
            println!("KEYGATE_DB_LEASE_ID={}", r.lease_id);
        }
        DbOutput::Text => {
            println!("username: {}", r.username);
            println!("password: {}", password.as_str());
            println!("lease_id: {}", r.lease_id);
            println!("expires:  {expires}");
        }
    }
    Ok(())
}
