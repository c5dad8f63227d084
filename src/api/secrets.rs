//! `keygate.v1.Secrets`.
use super::{caller_of, ApiError, AppState};
use crate::authz::Action;
use crate::clock::to_timestamp;
use crate::pb;
use crate::secrets::model::{ChangeEvent, ChangeKind, SecretMeta};
use crate::secrets::{path, PutOptions};
use crate::sensitive::{SecretBytes, SecretFields};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

/// The Secrets service.
pub struct SecretsApi {
    state: Arc<AppState>,
}

impl SecretsApi {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Domain metadata → protobuf.
pub fn meta_to_pb(path: &str, m: &SecretMeta) -> pb::SecretMetadata {
    pb::SecretMetadata {
        path: path.to_string(),
        current_version: m.current_version,
        oldest_version: m.versions.keys().next().copied().unwrap_or(0),
        max_versions: m.max_versions,
        created_at: Some(to_timestamp(m.created_at)),
        updated_at: Some(to_timestamp(m.updated_at)),
        custom_metadata: m.custom_metadata.clone().into_iter().collect(),
        versions: m
            .versions
            .iter()
            .map(|(v, vm)| pb::VersionMetadata {
                version: *v,
                created_at: Some(to_timestamp(vm.created_at)),
                deleted_at: vm.deleted_at.map(to_timestamp),
                destroyed: vm.destroyed,
            })
            .collect(),
    }
}

fn kind_to_pb(k: ChangeKind) -> pb::watch_event::Kind {
    use pb::watch_event::Kind;
    match k {
        ChangeKind::Created => Kind::Created,
        ChangeKind::Deleted => Kind::Deleted,
        ChangeKind::Undeleted => Kind::Undeleted,
        ChangeKind::Destroyed => Kind::Destroyed,
        ChangeKind::Pruned => Kind::Pruned,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsApi {
    async fn get(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Read, &req.path)?;
            let v = self.state.store.get(&req.path, req.version).await?;
            let version_metadata = v
                .meta
                .versions
                .get(&v.version)
                .map(|vm| pb::VersionMetadata {
                    version: v.version,
                    created_at: Some(to_timestamp(vm.created_at)),
                    deleted_at: vm.deleted_at.map(to_timestamp),
                    destroyed: vm.destroyed,
                });
            let metadata = Some(meta_to_pb(&v.path, &v.meta));
            Ok(pb::GetSecretResponse {
                fields: v
                    .fields
                    .into_entries()
                    .into_iter()
                    .map(|(k, val)| (k, val.expose().to_vec()))
                    .collect(),
                path: v.path,
                version: v.version,
                version_metadata,
                metadata,
            })
        }
        .await;
        self.state.finish("keygate.v1.Secrets/Get", started, result)
    }

    async fn list(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::List, &req.prefix)?;
            let rows = self.state.store.list(&req.prefix).await?;
            Ok(pb::ListSecretsResponse {
                secrets: rows.iter().map(|(p, m)| meta_to_pb(p, m)).collect(),
            })
        }
        .await;
        self.state
            .finish("keygate.v1.Secrets/List", started, result)
    }

    async fn put(
        &self,
        request: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::PutSecretResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Write, &req.path)?;
            let fields: SecretFields = req
                .fields
                .into_iter()
                .map(|(k, v)| (k, SecretBytes::new(v)))
                .collect();
            let opts = PutOptions {
                cas: req.cas,
                max_versions: req.max_versions,
                custom_metadata: req
                    .replace_custom_metadata
                    .then(|| req.custom_metadata.into_iter().collect()),
            };
            let (version, meta) = self.state.store.put(&req.path, &fields, &opts).await?;
            Ok(pb::PutSecretResponse {
                metadata: Some(meta_to_pb(&req.path, &meta)),
                path: req.path,
                version,
            })
        }
        .await;
        self.state.finish("keygate.v1.Secrets/Put", started, result)
    }

    async fn delete(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Delete, &req.path)?;
            let m = self.state.store.delete(&req.path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        self.state
            .finish("keygate.v1.Secrets/Delete", started, result)
    }

    async fn undelete(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Delete, &req.path)?;
            let m = self.state.store.undelete(&req.path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        self.state
            .finish("keygate.v1.Secrets/Undelete", started, result)
    }

    async fn destroy(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = async {
            self.state
                .authz
                .authorize(&caller, Action::Destroy, &req.path)?;
            let m = self.state.store.destroy(&req.path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        self.state
            .finish("keygate.v1.Secrets/Destroy", started, result)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = (|| {
            if req.paths.is_empty() && req.prefixes.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "name at least one path or prefix to watch".into(),
                ));
            }
            for p in &req.paths {
                path::validate(p).map_err(ApiError::InvalidArgument)?;
                self.state.authz.authorize(&caller, Action::Watch, p)?;
            }
            for p in &req.prefixes {
                path::validate_prefix(p).map_err(ApiError::InvalidArgument)?;
                self.state.authz.authorize(&caller, Action::Watch, p)?;
            }
            Ok(())
        })();
        let rx = self.state.store.subscribe();
        let paths = req.paths;
        let prefixes = req.prefixes;
        let wanted = move |ev: &ChangeEvent| {
            paths.contains(&ev.path) || prefixes.iter().any(|p| ev.path.starts_with(p))
        };
        let shutdown = self.state.shutdown.clone();
        let stream = futures::stream::unfold(
            (rx, std::collections::VecDeque::<ChangeEvent>::new(), false),
            move |(mut rx, mut pending, done)| {
                let wanted = wanted.clone();
                let mut shutdown = shutdown.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        if let Some(ev) = pending.pop_front() {
                            let item = pb::WatchEvent {
                                path: ev.path,
                                version: ev.version,
                                kind: kind_to_pb(ev.kind) as i32,
                                at: Some(to_timestamp(ev.at)),
                            };
                            return Some((Ok(item), (rx, pending, false)));
                        }
                        let next = tokio::select! {
                            r = rx.recv() => r,
                            _ = shutdown.wait_for(|v| *v) => {
                                let st = Status::unavailable("keygate is shutting down; reconnect");
                                return Some((Err(st), (rx, pending, true)));
                            }
                        };
                        match next {
                            Ok(payload) => {
                                let evs: Vec<ChangeEvent> =
                                    serde_json::from_slice(&payload).unwrap_or_default();
                                pending.extend(evs.into_iter().filter(|e| wanted(e)));
                            }
                            Err(RecvError::Lagged(n)) => {
                                let st = Status::data_loss(format!(
                                    "watch fell {n} events behind; re-read the secrets and watch again"
                                ));
                                return Some((Err(st), (rx, pending, true)));
                            }
                            Err(RecvError::Closed) => return None,
                        }
                    }
                }
            },
        );
        let result = result.map(|()| Box::pin(stream) as WatchStream);
        self.state
            .finish("keygate.v1.Secrets/Watch", started, result)
    }
}
