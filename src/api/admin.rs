//! `keygate.v1.Admin`.
use super::{caller_of, ApiError, AppState};
use crate::authz::Action;
use crate::pb;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
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

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn rotate_kek(
        &self,
        request: Request<pb::RotateKekRequest>,
    ) -> Result<Response<pb::RotateKekResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state.authz.authorize(&caller, Action::Admin, "kek")?;
            if req.new_kek_file.is_empty() {
                return Err(ApiError::InvalidArgument("new_kek_file is required".into()));
            }
            let kek = crate::secrets::kek::load_file(Path::new(&req.new_kek_file))
                .map_err(ApiError::FailedPrecondition)?;
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
        self.state
            .finish("keygate.v1.Admin/RotateKek", started, result)
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Admin, "config")?;
            let needs_restart = self
                .state
                .reload
                .reload()
                .map_err(ApiError::FailedPrecondition)?;
            Ok(pb::ReloadConfigResponse { needs_restart })
        }
        .await;
        self.state
            .finish("keygate.v1.Admin/ReloadConfig", started, result)
    }

    async fn server_info(
        &self,
        request: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let result = async {
            self.state.authz.authorize(&caller, Action::Admin, "info")?;
            Ok(pb::ServerInfoResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                node_id: self.state.node_id.clone(),
                storage_backend: self.state.store.storage().backend().to_string(),
                kek_id: self.state.store.kek_id().await,
                secrets: self.state.store.count().await?,
            })
        }
        .await;
        self.state
            .finish("keygate.v1.Admin/ServerInfo", started, result)
    }
}
