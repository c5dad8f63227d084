//! Named limits on every field a caller controls (`[limits]` in the config), checked by each
//! handler before it does any work. A request over a limit is refused with INVALID_ARGUMENT
//! naming the field and the config key; its audit record holds only a bounded prefix.
use super::ApiError;
use crate::pb;

/// The limits (docs/operations.md lists them with their defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A secret path, prefix or rotation path.
    pub max_path_bytes: usize,
    /// A role name (exchange, explain, database role).
    pub max_role_bytes: usize,
    /// Requested scopes per exchange.
    pub max_scopes: usize,
    /// One scope string.
    pub max_scope_bytes: usize,
    /// A platform token or credential.
    pub max_token_bytes: usize,
    /// Fields per secret version.
    pub max_fields: usize,
    /// A field name.
    pub max_field_name_bytes: usize,
    /// A field value.
    pub max_field_value_bytes: usize,
    /// Custom metadata entries per secret.
    pub max_metadata_entries: usize,
    /// One custom metadata key or value.
    pub max_metadata_bytes: usize,
    /// Versions, paths or prefixes named in one request.
    pub max_list_items: usize,
    /// Any other string (lease ids, file names, generator names, schedules).
    pub max_string_bytes: usize,
    /// An untrusted string longer than this is recorded in audit as a prefix, its length and
    /// its `hmac-sha256:` reference.
    pub audit_string_bytes: usize,
    /// The largest request message (`server.max_message_bytes`).
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_path_bytes: 512,
            max_role_bytes: 128,
            max_scopes: 32,
            max_scope_bytes: 600,
            max_token_bytes: crate::identity::MAX_TOKEN_BYTES,
            max_fields: 128,
            max_field_name_bytes: 128,
            max_field_value_bytes: 1024 * 1024,
            max_metadata_entries: 64,
            max_metadata_bytes: 512,
            max_list_items: 256,
            max_string_bytes: 1024,
            audit_string_bytes: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    fn len(&self, field: &str, key: &str, n: usize, max: usize) -> Result<(), ApiError> {
        if n > max {
            Err(ApiError::InvalidArgument(format!(
                "{field} is {n} bytes; the limit is {max} (limits.{key})"
            )))
        } else {
            Ok(())
        }
    }

    fn count(&self, field: &str, key: &str, n: usize, max: usize) -> Result<(), ApiError> {
        if n > max {
            Err(ApiError::InvalidArgument(format!(
                "{field} has {n} entries; the limit is {max} (limits.{key})"
            )))
        } else {
            Ok(())
        }
    }

    fn path(&self, field: &str, p: &str) -> Result<(), ApiError> {
        self.len(field, "max_path_bytes", p.len(), self.max_path_bytes)
    }

    fn string(&self, field: &str, s: &str) -> Result<(), ApiError> {
        self.len(field, "max_string_bytes", s.len(), self.max_string_bytes)
    }

    fn role(&self, field: &str, s: &str) -> Result<(), ApiError> {
        self.len(field, "max_role_bytes", s.len(), self.max_role_bytes)
    }

    fn token(&self, field: &str, s: &str) -> Result<(), ApiError> {
        self.len(field, "max_token_bytes", s.len(), self.max_token_bytes)
    }

    fn items(&self, field: &str, n: usize) -> Result<(), ApiError> {
        self.count(field, "max_list_items", n, self.max_list_items)
    }

    /// Checks a request against the limits.
    pub fn check<T: Bounded>(&self, req: &T) -> Result<(), ApiError> {
        req.check(self)
    }
}

/// A request message whose caller-controlled fields have limits.
pub trait Bounded {
    /// `Ok` when every field is within its limit.
    fn check(&self, l: &Limits) -> Result<(), ApiError>;
}

macro_rules! no_fields {
    ($($t:ty),*) => {
        $(impl Bounded for $t {
            fn check(&self, _: &Limits) -> Result<(), ApiError> { Ok(()) }
        })*
    };
}

no_fields!(
    pb::AuditHeadRequest,
    pb::RotateSigningKeyRequest,
    pb::ListRolesRequest,
    pb::ReloadConfigRequest,
    pb::ServerInfoRequest,
    pb::IssueAdminTokenRequest
);

macro_rules! one_path {
    ($($t:ty => $f:ident),*) => {
        $(impl Bounded for $t {
            fn check(&self, l: &Limits) -> Result<(), ApiError> {
                l.path(stringify!($f), &self.$f)
            }
        })*
    };
}

one_path!(
    pb::RotateSecretRequest => path,
    pb::RotationStatusRequest => prefix,
    pb::DeleteRotationPolicyRequest => path,
    pb::GetSecretRequest => path,
    pb::ListSecretsRequest => prefix,
    pb::RevokePrefixRequest => prefix,
    pb::ListLeasesRequest => prefix
);

macro_rules! one_field {
    ($($t:ty => $f:ident as $kind:ident),*) => {
        $(impl Bounded for $t {
            fn check(&self, l: &Limits) -> Result<(), ApiError> {
                l.$kind(stringify!($f), &self.$f)
            }
        })*
    };
}

one_field!(
    pb::GetRoleRequest => name as role,
    pb::GenerateDatabaseCredentialsRequest => role as role,
    pb::RotateKekRequest => new_kek_file as string,
    pb::RenewLeaseRequest => lease_id as string,
    pb::RevokeLeaseRequest => lease_id as string,
    pb::LookupLeaseRequest => lease_id as string
);

impl Bounded for pb::VersionsRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.path("path", &self.path)?;
        l.items("versions", self.versions.len())
    }
}

impl Bounded for pb::WatchRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.items("paths", self.paths.len())?;
        l.items("prefixes", self.prefixes.len())?;
        for p in self.paths.iter().chain(&self.prefixes) {
            l.path("path", p)?;
        }
        Ok(())
    }
}

impl Bounded for pb::PutSecretRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.path("path", &self.path)?;
        l.count("fields", "max_fields", self.fields.len(), l.max_fields)?;
        for (k, v) in &self.fields {
            l.len(
                "a field name",
                "max_field_name_bytes",
                k.len(),
                l.max_field_name_bytes,
            )?;
            l.len(
                "a field value",
                "max_field_value_bytes",
                v.len(),
                l.max_field_value_bytes,
            )?;
        }
        l.count(
            "custom_metadata",
            "max_metadata_entries",
            self.custom_metadata.len(),
            l.max_metadata_entries,
        )?;
        for (k, v) in &self.custom_metadata {
            l.len(
                "a custom_metadata key",
                "max_metadata_bytes",
                k.len(),
                l.max_metadata_bytes,
            )?;
            l.len(
                "a custom_metadata value",
                "max_metadata_bytes",
                v.len(),
                l.max_metadata_bytes,
            )?;
        }
        Ok(())
    }
}

impl Bounded for pb::ExchangeRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.token("subject_token", &self.subject_token)?;
        l.string("subject_token_type", &self.subject_token_type)?;
        l.role("role", &self.role)?;
        l.string("audience", &self.audience)?;
        l.role("issuer", &self.issuer)?;
        l.count("scopes", "max_scopes", self.scopes.len(), l.max_scopes)?;
        for s in &self.scopes {
            l.len("a scope", "max_scope_bytes", s.len(), l.max_scope_bytes)?;
        }
        Ok(())
    }
}

impl Bounded for pb::ExplainRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.token("token", &self.token)?;
        l.role("role", &self.role)
    }
}

impl Bounded for pb::AuditHashRequest {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.len(
            "value",
            "max_field_value_bytes",
            self.value.len(),
            l.max_field_value_bytes,
        )
    }
}

impl Bounded for pb::RotationPolicy {
    fn check(&self, l: &Limits) -> Result<(), ApiError> {
        l.path("path", &self.path)?;
        for s in [&self.every, &self.cron, &self.window, &self.overlap] {
            l.string("a schedule field", s)?;
        }
        l.count("fields", "max_fields", self.fields.len(), l.max_fields)?;
        for (k, g) in &self.fields {
            l.len(
                "a field name",
                "max_field_name_bytes",
                k.len(),
                l.max_field_name_bytes,
            )?;
            l.string("generator", &g.generator)?;
            l.string("alphabet", &g.alphabet)?;
            l.string("encoding", &g.encoding)?;
            l.items("require", g.require.len())?;
            for r in &g.require {
                l.string("require", r)?;
            }
        }
        if let Some(p) = &self.postgres {
            l.string("postgres.database", &p.database)?;
            l.items("postgres.roles", p.roles.len())?;
            for r in &p.roles {
                l.role("postgres.roles", r)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_fields_are_named_with_their_limit() {
        let l = Limits::default();
        let r = pb::ExchangeRequest {
            role: "r".repeat(129),
            ..Default::default()
        };
        let e = l.check(&r).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("role is 129 bytes") && e.contains("limits.max_role_bytes"),
            "{e}"
        );
        let mut p = pb::PutSecretRequest {
            path: "a/b".into(),
            ..Default::default()
        };
        assert!(l.check(&p).is_ok());
        for i in 0..129 {
            p.fields.insert(format!("f{i}"), vec![]);
        }
        let e = l.check(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("limits.max_fields"), "{e}");
    }
}
