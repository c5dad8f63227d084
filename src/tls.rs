//! rustls setup (aws-lc-rs provider only): PEM loading, server configs, client-cert identity.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS material locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// CA for client certificates; enables mTLS.
    pub client_ca_file: Option<PathBuf>,
}

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    // Err only means one is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why TLS material cannot be used. Names the file; never holds key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not PEM, or no certificate in it.
    #[error("{}: not a PEM certificate file{}", path.display(), detail(source))]
    NotCertificates {
        /// The file.
        path: PathBuf,
        /// The PEM error (none: the file holds no certificate).
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// No usable private key.
    #[error("{}: no usable PEM private key: {source}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the material (a CA certificate it cannot use, a key that does not match
    /// the certificate).
    #[error("{}: {source}", path.display())]
    Refused {
        /// The file at fault.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier cannot be built from the CA file.
    #[error("{}: {source}", path.display())]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// No protocol version the provider supports.
    #[error("TLS protocol versions: {0}")]
    Protocol(#[source] rustls::Error),
}

fn detail(e: &Option<rustls::pki_types::pem::Error>) -> String {
    match e {
        Some(e) => format!(": {e}"),
        None => " (no certificate found)".into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM certificate chain; the error says what is wrong with the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotCertificates {
            path: path.to_path_buf(),
            source: Some(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotCertificates {
            path: path.to_path_buf(),
            source: None,
        });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::NoKey {
        path: path.to_path_buf(),
        source,
    })
}

/// The rustls server config for the HTTPS side listener: the same certificate, key and
/// optional client CA as the gRPC listener.
pub fn http_server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(cfg, &[b"h2", b"http/1.1"])
}

/// The rustls server config of the gRPC listener: HTTP/2 only.
pub fn grpc_rustls_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(cfg, &[b"h2"])
}

fn server_config(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|source| TlsError::Refused {
                    path: ca.clone(),
                    source,
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|source| TlsError::ClientVerifier {
                path: ca.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&cfg.cert_file)?, load_key(&cfg.key_file)?)
        .map_err(|source| TlsError::Refused {
            path: cfg.key_file.clone(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The subject of a (verified) client certificate, normalised like config subjects.
pub fn cert_subject(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(normalize_dn(&cert.subject().to_string()))
}

/// Normalises a distinguished name for comparison: `CN=a, O=b` → `CN=a,O=b`.
pub fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|p| {
            let p = p.trim();
            match p.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
                None => p.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
