//! `keygate.v1.Admin`.
use super::{ApiError, AppState, RpcScope};
use crate::authz::Action;
use crate::pb;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Admin service.
pub struct AdminApi {
    state: Arc<AppState>,
}

impl AdminApi {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The bytes of a backup file, in chunks.
type BackupStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Bytes per streamed backup chunk (well under the 4 MiB gRPC message default).
const BACKUP_CHUNK: usize = 1 << 20;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = async {
            scope.principal()?.require(Action::Admin, "backup")?;
            // what was acknowledged is in the copy: pending leases first, then durable
            self.state.credentials.leases.flush_pending().await?;
            let storage = self.state.store.storage();
            storage.flush().await?;
            let entries = storage.snapshot().await?;
            scope.resource(format!("entries:{}", entries.len()));
            Ok(crate::backup::encode(
                &entries,
                self.state.clock.now_millis(),
                storage.backend(),
                storage.schema_version(),
                &self.state.store.kek_id().await,
            ))
        }
        .await;
        let file = scope.finish(result)?.into_inner();
        let chunks: Vec<Result<pb::BackupChunk, Status>> = file
            .chunks(BACKUP_CHUNK)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotationStatus>, Status> {
        super::rotation::rotate(&self.state, request).await
    }

    async fn get_rotation_status(
        &self,
        request: Request<pb::RotationStatusRequest>,
    ) -> Result<Response<pb::RotationStatusResponse>, Status> {
        super::rotation::status(&self.state, request).await
    }

    async fn set_rotation_policy(
        &self,
        request: Request<pb::RotationPolicy>,
    ) -> Result<Response<pb::RotationStatus>, Status> {
        super::rotation::set(&self.state, request).await
    }

    async fn delete_rotation_policy(
        &self,
        request: Request<pb::DeleteRotationPolicyRequest>,
    ) -> Result<Response<pb::DeleteRotationPolicyResponse>, Status> {
        super::rotation::delete(&self.state, request).await
    }

    async fn rotate_kek(
        &self,
        request: Request<pb::RotateKekRequest>,
    ) -> Result<Response<pb::RotateKekResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Admin, "kek")?;
            if req.new_kek_file.is_empty() {
                return Err(ApiError::InvalidArgument("new_kek_file is required".into()));
            }
            let kek = crate::secrets::kek::load_file(Path::new(&req.new_kek_file))
                .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
            scope.intent().await?;
            let r = self.state.store.rotate_kek(kek).await?;
            tracing::warn!(
                old_kek_id = %r.old_kek_id,
                new_kek_id = %r.new_kek_id,
                rewrapped = r.rewrapped,
                new_kek_file = %req.new_kek_file,
                "KEK rotated; set kek.file to the new KEK before the next restart"
            );
            Ok(pb::RotateKekResponse {
                old_kek_id: r.old_kek_id,
                new_kek_id: r.new_kek_id,
                rewrapped: r.rewrapped,
            })
        }
        .await;
        scope.finish(result)
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = async {
            scope.principal()?.require(Action::Admin, "config")?;
            scope.intent().await?;
            let needs_restart = self
                .state
                .reload
                .reload()
                .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
            Ok(pb::ReloadConfigResponse { needs_restart })
        }
        .await;
        scope.finish(result)
    }

    async fn server_info(
        &self,
        request: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = async {
            scope.principal()?.require(Action::Admin, "info")?;
            Ok(pb::ServerInfoResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                node_id: self.state.node_id.clone(),
                storage_backend: self.state.store.storage().backend().to_string(),
                kek_id: self.state.store.kek_id().await,
                secrets: self.state.store.count().await?,
                schema_version: self.state.store.storage().schema_version(),
                leader: self.state.leadership.leader().unwrap_or_default(),
            })
        }
        .await;
        scope.finish(result)
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("role:{}", req.role));
        let token_ref = self.state.audit_ref(req.token.as_bytes());
        scope.caller(|c| c.token_hmac = Some(token_ref));
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Admin, "roles")?;
            let trust = self.state.trust();
            let only = (!req.role.is_empty()).then_some(req.role.as_str());
            if let Some(r) = only {
                if trust.role(r).is_none() {
                    return Err(ApiError::NotFound(format!("no role named {r:?}")));
                }
            }
            match trust.verify(&req.token).await {
                Err(e) => Ok(pb::ExplainResponse {
                    token_valid: false,
                    token_code: e.code().to_string(),
                    token_error: e.to_string(),
                    issuer: String::new(),
                    roles: Vec::new(),
                }),
                Ok(v) => Ok(pb::ExplainResponse {
                    token_valid: true,
                    token_code: String::new(),
                    token_error: String::new(),
                    issuer: v.issuer.name.clone(),
                    roles: trust
                        .decide(&v, only)
                        .into_iter()
                        .map(|d| {
                            let failed = d.result.err().unwrap_or_default();
                            pb::RoleMatch {
                                role: d.role.name.clone(),
                                matched: failed.is_empty(),
                                reason: crate::policy::describe_all(&failed),
                                failed: failed
                                    .into_iter()
                                    .map(|m| pb::FailedCondition {
                                        missing: m.actual.is_none(),
                                        actual: m.actual.unwrap_or_default(),
                                        claim: m.claim,
                                        expected: m.expected,
                                    })
                                    .collect(),
                            }
                        })
                        .collect(),
                }),
            }
        }
        .await;
        scope.finish(result)
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = async {
            scope.principal()?.require(Action::Admin, "roles")?;
            Ok(pb::ListRolesResponse {
                roles: self.state.trust().roles.iter().map(role_info).collect(),
            })
        }
        .await;
        scope.finish(result)
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = self.rotate_signing(&scope).await;
        scope.finish(result)
    }

    async fn audit_head(
        &self,
        request: Request<pb::AuditHeadRequest>,
    ) -> Result<Response<pb::AuditHeadResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let result = async {
            scope.principal()?.require(Action::Admin, "audit")?;
            let (seq, chain_hash) = self.state.audit.head();
            Ok(pb::AuditHeadResponse {
                seq,
                chain_hash,
                // the key checkpoints are signed with now (after rotations, not the anchor)
                public_key: {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(self.state.audit.public_key())
                },
                healthy: self.state.audit.healthy(),
                anchor_public_key: self.state.audit_keys.anchor_public_base64(),
                node: self.state.node_id.clone(),
                store: self.state.audit.store().to_string(),
            })
        }
        .await;
        scope.finish(result)
    }

    async fn audit_hash(
        &self,
        request: Request<pb::AuditHashRequest>,
    ) -> Result<Response<pb::AuditHashResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Admin, "audit")?;
            let hmac = self.state.audit_ref(&req.value);
            // the record of this lookup holds the reference, never the value
            scope.resource(hmac.clone());
            Ok(pb::AuditHashResponse { hmac })
        }
        .await;
        scope.finish(result)
    }

    async fn issue_admin_token(
        &self,
        request: Request<pb::IssueAdminTokenRequest>,
    ) -> Result<Response<pb::IssueAdminTokenResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        let result = super::admin_token::issue(&self.state, &scope, req).await;
        scope.finish(result)
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::RoleInfo>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Admin, "roles")?;
            let trust = self.state.trust();
            trust
                .role(&req.name)
                .map(role_info)
                .ok_or_else(|| ApiError::NotFound(format!("no role named {:?}", req.name)))
        }
        .await;
        scope.finish(result)
    }
}

impl AdminApi {
    async fn rotate_signing(
        &self,
        scope: &RpcScope,
    ) -> Result<pb::RotateSigningKeyResponse, ApiError> {
        scope.resource("signing-keys");
        scope.principal()?.require(Action::Admin, "signing-keys")?;
        scope.intent().await?;
        // through the rotation state machine, like any secret
        self.state
            .rotator
            .rotate(
                &crate::credential::SIGNING_KEYS_PATH,
                crate::rotation::state::Trigger::Manual,
            )
            .await?;
        self.state
            .credentials
            .reload()
            .await
            .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
        Ok(pb::RotateSigningKeyResponse {
            kids: self.state.credentials.kids().await,
        })
    }
}

fn role_info(r: &crate::policy::Role) -> pb::RoleInfo {
    let mut conditions: Vec<String> = r
        .bound_subject
        .iter()
        .map(|m| format!("sub {}", m.describe()))
        .collect();
    conditions.extend(
        r.claims
            .iter()
            .map(|(k, m)| format!("{k} {}", m.describe())),
    );
    pb::RoleInfo {
        name: r.name.clone(),
        issuer: r.issuer.clone(),
        conditions,
        scopes: r.scopes.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: r.ttl_secs,
        max_ttl_seconds: r.max_ttl_secs,
        cap_at_token_expiry: r.cap_at_token_expiry,
        allow_pull_request_target: r.allow_pull_request_target,
    }
}
