//! Generated protobuf and gRPC code for `keygate.v1`.
//!
//! Messages that carry secret values are generated without `Debug`; their `Debug` here prints
//! field names only, so a `{:?}` in a log line cannot leak a value.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("keygate.v1");

/// Encoded descriptor set of every keygate proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keygate_descriptor");

use std::fmt;

fn keys<'a, V>(m: impl IntoIterator<Item = (&'a String, V)>) -> Vec<&'a str> {
    m.into_iter().map(|(k, _)| k.as_str()).collect()
}

impl fmt::Debug for GetSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetSecretResponse")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("fields", &keys(&self.fields))
            .field("values", &"[redacted]")
            .finish()
    }
}

impl fmt::Debug for PutSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("path", &self.path)
            .field("fields", &keys(&self.fields))
            .field("values", &"[redacted]")
            .field("cas", &self.cas)
            .finish()
    }
}

impl fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .field("role", &self.role)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl fmt::Debug for ExchangeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeResponse")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

impl fmt::Debug for DatabaseCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseCredential")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

impl fmt::Debug for RenewLeaseResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewLeaseResponse")
            .field("lease", &self.lease)
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl fmt::Debug for AuditHashRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHashRequest")
            .field("value", &"[redacted]")
            .finish()
    }
}

impl fmt::Debug for ExplainRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExplainRequest")
            .field("token", &"[redacted]")
            .field("role", &self.role)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_values_never_debug_print_them() {
        let m = "MARKER-7f3a9c";
        let shown = [
            format!(
                "{:?}",
                GetSecretResponse {
                    path: "p".into(),
                    fields: [("pw".to_string(), m.as_bytes().to_vec())].into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:#?}",
                PutSecretRequest {
                    path: "p".into(),
                    fields: [("pw".to_string(), m.as_bytes().to_vec())].into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ExchangeRequest {
                    subject_token: m.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ExchangeResponse {
                    access_token: m.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                DatabaseCredential {
                    password: m.into(),
                    ..Default::default()
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains(m), "{s}");
            // byte vectors print as numbers: check that form too
            assert!(!s.contains("77, 65, 82, 75"), "{s}");
            assert!(s.contains("[redacted]"), "{s}");
        }
    }
}
