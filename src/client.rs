//! A gRPC channel to the daemon over TLS (mTLS when a client certificate is given).
pub use crate::failover::Failover;
use crate::pb;
use anyhow::{anyhow, Context};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How the CLI reaches a daemon (the Vault CLI convention: flags or `KEYGATE_*` variables).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Daemon address, e.g. https://127.0.0.1:8443; several replicas separated by commas
    /// (https://a:8443,https://b:8443) are tried in order, moving on when one cannot be reached
    /// or answers UNAVAILABLE.
    #[arg(
        long,
        env = "KEYGATE_ADDR",
        default_value = "https://127.0.0.1:8443",
        global = true
    )]
    pub addr: String,
    /// CA certificate that signed the daemon's certificate (PEM).
    #[arg(long, env = "KEYGATE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    #[arg(long, env = "KEYGATE_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client key for mTLS (PEM).
    #[arg(long, env = "KEYGATE_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// A keygate credential (from `keygate exchange`), sent as `authorization: Bearer`.
    #[arg(long, env = "KEYGATE_TOKEN", global = true, hide_env_values = true)]
    pub credential: Option<String>,
}

/// Connects to the daemons named by `conn` (`--addr`/`KEYGATE_ADDR`: one address, or several
/// separated by commas, tried in order for every call; see [`Failover`]).
pub async fn connect(conn: &Conn) -> anyhow::Result<Failover> {
    crate::tls::install_crypto_provider();
    let addrs: Vec<&str> = conn
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.is_empty() {
        return Err(anyhow!("KEYGATE_ADDR names no address"));
    }
    let tls = client_tls(conn)?;
    let mut channels = Vec::new();
    for addr in &addrs {
        let uri: http::Uri = addr
            .parse()
            .with_context(|| format!("KEYGATE_ADDR {addr:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(anyhow!("KEYGATE_ADDR must be https:// URLs (got {addr:?})"));
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("KEYGATE_ADDR {addr:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let endpoint = Channel::builder(uri)
            .tls_config(tls.clone().domain_name(host))
            .context("TLS configuration")?;
        let ch = if addrs.len() == 1 {
            // one address: say at once why it cannot be reached
            // the cause in one line: tonic and hyper wrap the same failure several times
            endpoint.connect().await.map_err(|e| {
                anyhow!(
                    "cannot connect to {addr}: {}",
                    crate::error_chain::error_chain(&e)
                )
            })?
        } else {
            endpoint.connect_lazy()
        };
        channels.push((addr.to_string(), ch));
    }
    Ok(Failover::new(channels))
}

fn client_tls(conn: &Conn) -> anyhow::Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new();
    match &conn.cacert {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading KEYGATE_CACERT {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => {
            return Err(anyhow!(
                "set KEYGATE_CACERT (or --cacert) to the CA that signed the daemon's certificate"
            ))
        }
    }
    match (&conn.client_cert, &conn.client_key) {
        (Some(c), Some(k)) => {
            let cert = std::fs::read(c)
                .with_context(|| format!("reading KEYGATE_CLIENT_CERT {}", c.display()))?;
            let key = std::fs::read(k)
                .with_context(|| format!("reading KEYGATE_CLIENT_KEY {}", k.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(anyhow!(
                "set both KEYGATE_CLIENT_CERT and KEYGATE_CLIENT_KEY, or neither"
            ))
        }
    }
    Ok(tls)
}

/// A gRPC status as a one-line CLI error.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", crate::metrics::code_name(s.code()), s.message())
}

/// Adds `authorization: Bearer <credential>` when the CLI has one (`KEYGATE_TOKEN`).
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel plus the credential interceptor.
pub type Authed = tonic::service::interceptor::InterceptedService<Failover, Auth>;

/// The `authorization` interceptor for a credential (none: no header).
pub fn auth_for(credential: Option<&str>) -> anyhow::Result<Auth> {
    Ok(match credential {
        Some(t) if !t.trim().is_empty() => {
            let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| anyhow!("KEYGATE_TOKEN is not a valid credential"))?;
            v.set_sensitive(true);
            Auth(Some(v))
        }
        _ => Auth(None),
    })
}

/// Connects and prepares the credential header.
pub async fn connect_authed(conn: &Conn) -> anyhow::Result<Authed> {
    let ch = connect(conn).await?;
    let auth = auth_for(conn.credential.as_deref())?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch, auth,
    ))
}

/// A field name as an environment variable suffix.
pub fn env_suffix(field: &str) -> String {
    field
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Reads the current version of every path concurrently over one channel: path → fields.
/// The first failure is the error, naming its path.
pub async fn fetch_all<'a>(
    ch: &Authed,
    paths: impl Iterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, std::collections::HashMap<String, Vec<u8>>>> {
    let gets = paths.map(|p| {
        let mut c = pb::secrets_client::SecretsClient::new(ch.clone());
        let path = p.to_string();
        async move {
            let r = c
                .get(pb::GetSecretRequest {
                    path: path.clone(),
                    version: 0,
                    previous: false,
                })
                .await
                .map_err(|s| anyhow!("secret {path}: {}", status_error(s)))?
                .into_inner();
            Ok::<_, anyhow::Error>((path, r.fields))
        }
    });
    Ok(futures::future::try_join_all(gets)
        .await?
        .into_iter()
        .collect())
}
