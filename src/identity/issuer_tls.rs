//! TLS to issuers: which certificates are trusted, and failures said in plain words.
//!
//! Without `ca_file`, the system's trust store (rustls-platform-verifier, as reqwest uses by
//! default). With `ca_file`, only the certificates in it: as CAs, and each also **pinned** as a
//! server certificate, so the self-signed certificate an issuer makes with `openssl req -x509`
//! (CA:TRUE, often without a subjectAltName) works when that exact certificate is in `ca_file`.
//! Pinning is safe: a pinned certificate is accepted only byte for byte, inside its validity
//! period, and the handshake still proves the server holds its private key.
use super::setup_error::SetupError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

pub use crate::error_chain::{error_chain, PlainTlsError};

#[derive(Debug)]
struct IssuerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    /// Where the trusted certificates come from, for messages.
    source: String,
    provider: Arc<CryptoProvider>,
}

/// Subject, issuer, validity and names of a certificate, for messages.
struct Described {
    subject: String,
    issuer: String,
    not_before: i64,
    not_after: i64,
    names: Vec<String>,
    is_ca: bool,
}

fn describe(der: &[u8]) -> Option<Described> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let names = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(ip) => format!("{ip:?}"),
                    other => format!("{other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Described {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        names,
        is_ca: c.is_ca(),
    })
}

fn date(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn plain(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        PlainTlsError(msg),
    ))))
}

impl IssuerVerifier {
    fn explain(&self, e: rustls::Error, der: &[u8], name: &ServerName<'_>) -> rustls::Error {
        let Some(d) = describe(der) else {
            return plain(format!("the issuer's certificate cannot be parsed ({e})"));
        };
        let cert = format!("the issuer's certificate \"{}\"", d.subject);
        let host = name.to_str();
        let msg = match &e {
            // webpki's CaUsedAsEndEntity arrives as `Other`; an unknown self-signed CA too
            rustls::Error::InvalidCertificate(
                CertificateError::Other(_) | CertificateError::UnknownIssuer,
            ) if d.is_ca => format!(
                "{cert} is a CA certificate (basicConstraints CA:TRUE, as openssl req -x509 \
                 makes) used as the server's own certificate: put exactly this certificate in \
                 the issuer's ca_file to pin it"
            ),
            rustls::Error::InvalidCertificate(ce) => match ce {
                CertificateError::UnknownIssuer => format!(
                    "{cert} is issued by \"{}\", which is not among the trusted certificates \
                     ({}): add that CA (or, for a self-signed certificate, the certificate \
                     itself) to the issuer's ca_file",
                    d.issuer, self.source
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("{cert} expired on {}", date(d.not_after))
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("{cert} is not valid before {}", date(d.not_before))
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "{cert} is not valid for {host:?}: it names {}",
                    if d.names.is_empty() {
                        "no subjectAltName at all".to_string()
                    } else {
                        d.names.join(", ")
                    }
                ),
                CertificateError::BadSignature => {
                    format!("{cert} has a signature that does not verify")
                }
                CertificateError::Revoked => format!("{cert} is revoked"),
                _ => format!("{cert} is refused: {e}"),
            },
            _ => format!("{cert} is refused: {e}"),
        };
        plain(msg)
    }
}

impl ServerCertVerifier for IssuerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            let d = describe(end_entity)
                .ok_or_else(|| plain("the pinned certificate cannot be parsed".into()))?;
            let now = now.as_secs() as i64;
            if now > d.not_after {
                return Err(plain(format!(
                    "the issuer's pinned certificate \"{}\" expired on {}",
                    d.subject,
                    date(d.not_after)
                )));
            }
            if now < d.not_before {
                return Err(plain(format!(
                    "the issuer's pinned certificate \"{}\" is not valid before {}",
                    d.subject,
                    date(d.not_before)
                )));
            }
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| self.explain(e, end_entity, server_name))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration for fetching one issuer's keys.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (inner, pinned, source): (Arc<dyn ServerCertVerifier>, _, _) = match ca_file {
        Some(path) => {
            let certs = crate::tls::load_certs(path)?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(SetupError::NoUsableCertificate(path.to_path_buf()));
            }
            let inner: Arc<dyn ServerCertVerifier> =
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|source| SetupError::Verifier {
                    path: path.to_path_buf(),
                    source,
                })?;
            (inner, certs, format!("ca_file {}", path.display()))
        }
        None => (
            Arc::new(
                rustls_platform_verifier::Verifier::new(provider.clone())
                    .map_err(SetupError::SystemTrustStore)?,
            ),
            Vec::new(),
            "the system trust store".to_string(),
        ),
    };
    let verifier = Arc::new(IssuerVerifier {
        inner,
        pinned,
        source,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Protocol)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
