//! A gRPC channel to the daemon over TLS (mTLS when a client certificate is given).
use super::Conn;
use anyhow::{anyhow, Context};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Connects to the daemon named by `conn`.
pub async fn connect(conn: &Conn) -> anyhow::Result<Channel> {
    crate::tls::install_crypto_provider();
    let uri: http::Uri = conn
        .addr
        .parse()
        .with_context(|| format!("KEYGATE_ADDR {:?} is not a URL", conn.addr))?;
    if uri.scheme_str() != Some("https") {
        return Err(anyhow!(
            "KEYGATE_ADDR must be an https:// URL (got {:?})",
            conn.addr
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("KEYGATE_ADDR has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let mut tls = ClientTlsConfig::new().domain_name(host);
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
    Channel::builder(uri)
        .tls_config(tls)
        .context("TLS configuration")?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.addr))
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
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;

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
