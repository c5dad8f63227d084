//! rustls setup (aws-lc-rs provider only): PEM loading, server configs, client-cert identity.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// TLS material locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_file: std::path::PathBuf,
    /// Server private key (PEM).
    pub key_file: std::path::PathBuf,
    /// CA for client certificates; enables mTLS.
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    // Err only means one is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM certificate chain; the error says what is wrong with the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// The rustls server config for the HTTPS side listener: the same certificate, key and
/// optional client CA as the gRPC listener.
pub fn http_server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(cfg, &[b"h2", b"http/1.1"])
}

/// The rustls server config of the gRPC listener: HTTP/2 only.
pub fn grpc_rustls_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(cfg, &[b"h2"])
}

fn server_config(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&cfg.cert_file)?, load_key(&cfg.key_file)?)
        .map_err(|e| format!("{}: {e}", cfg.key_file.display()))?;
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
