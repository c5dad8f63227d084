//! Errors with their causes in one line, TLS failures in plain words. A leaf module: the issuer
//! TLS verifier (`identity::issuer_tls`) and the PostgreSQL storage both report through it.
use rustls::CertificateError;

/// A TLS failure explained (which certificate, why, what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlainTlsError(pub String);

/// An error and its sources in one line, TLS failures in the words of [`PlainTlsError`]
/// (reqwest and hyper wrap them several times; the explanation is what the operator needs).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(p) = find_plain(c) {
            return format!("{}: TLS: {p}", parts.first().cloned().unwrap_or_default());
        }
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

fn find_plain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        if let rustls::Error::InvalidCertificate(CertificateError::Other(o)) = r {
            if let Some(p) = o.0.downcast_ref::<PlainTlsError>() {
                return Some(p.0.clone());
            }
        }
        return Some(r.to_string());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return find_plain(inner);
        }
    }
    None
}
