//! `keygate.v1.Secrets`.
use super::{ApiError, AppState, RpcScope};
use crate::authz::Action;
use crate::clock::to_timestamp;
use crate::pb;
use crate::secrets::model::{ChangeEvent, ChangeKind, SecretMeta};
use crate::secrets::path::{PathPrefix, SecretPath};
use crate::secrets::PutOptions;
use crate::sensitive::{SecretBytes, SecretFields};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
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
        pending_version: m.pending_version.unwrap_or(0),
        previous_version: m.previous_version.unwrap_or(0),
        previous_until: m.previous_until.map(to_timestamp),
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
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(if req.previous {
            format!("secret:{}@previous", req.path)
        } else {
            format!("secret:{}@{}", req.path, req.version)
        });
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Read, &req.path)?;
            let path = SecretPath::parse(&req.path)?;
            let v = match (req.previous, req.version) {
                (false, version) => self.state.store.get(&path, version).await?,
                (true, 0) => self.state.store.get_previous(&path).await?,
                (true, _) => {
                    return Err(ApiError::InvalidArgument(
                        "ask for a version or for previous, not both".into(),
                    ))
                }
            };
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
        scope.finish(result)
    }

    async fn list(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("prefix:{}", req.prefix));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            let rows = self
                .state
                .store
                .list(&PathPrefix::parse(&req.prefix)?)
                .await?;
            // names the caller may not list are not there, as far as it can tell
            Ok(pb::ListSecretsResponse {
                secrets: rows
                    .iter()
                    .filter(|(p, _)| who.allows(Action::List, p))
                    .map(|(p, m)| meta_to_pb(p, m))
                    .collect(),
            })
        }
        .await;
        scope.finish(result)
    }

    async fn put(
        &self,
        request: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::PutSecretResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("secret:{} fields:{}", req.path, {
            let mut f: Vec<&str> = req.fields.keys().map(String::as_str).collect();
            f.sort();
            f.join(",")
        }));
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Write, &req.path)?;
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
            let path = SecretPath::parse(&req.path)?;
            scope.intent().await?;
            let (version, meta) = self.state.store.put(&path, &fields, &opts).await?;
            Ok(pb::PutSecretResponse {
                metadata: Some(meta_to_pb(&req.path, &meta)),
                path: req.path,
                version,
            })
        }
        .await;
        scope.finish(result)
    }

    async fn delete(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("secret:{} versions:{:?}", req.path, req.versions));
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Delete, &req.path)?;
            let path = SecretPath::parse(&req.path)?;
            scope.intent().await?;
            let m = self.state.store.delete(&path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        scope.finish(result)
    }

    async fn undelete(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("secret:{} versions:{:?}", req.path, req.versions));
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Delete, &req.path)?;
            let path = SecretPath::parse(&req.path)?;
            scope.intent().await?;
            let m = self.state.store.undelete(&path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        scope.finish(result)
    }

    async fn destroy(
        &self,
        request: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::SecretMetadata>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("secret:{} versions:{:?}", req.path, req.versions));
        let result = async {
            self.state.limits.check(&req)?;
            scope.principal()?.require(Action::Delete, &req.path)?;
            let path = SecretPath::parse(&req.path)?;
            scope.intent().await?;
            let m = self.state.store.destroy(&path, &req.versions).await?;
            Ok(meta_to_pb(&req.path, &m))
        }
        .await;
        scope.finish(result)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        for r in req
            .paths
            .iter()
            .map(|p| format!("watch:{p}"))
            .chain(req.prefixes.iter().map(|p| format!("watch-prefix:{p}")))
        {
            scope.resource(r);
        }
        let rx = self.state.store.subscribe();
        let result = async {
            self.state.limits.check(&req)?;
            if req.paths.is_empty() && req.prefixes.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "name at least one path or prefix to watch".into(),
                ));
            }
            let who = scope.principal()?;
            for p in &req.paths {
                SecretPath::parse(p)?;
                who.require(Action::Read, p)?;
            }
            for p in &req.prefixes {
                PathPrefix::parse(p)?;
                if !who.is_admin()
                    && !who
                        .scopes()
                        .iter()
                        .any(|s| s.capability == crate::policy::scope::Capability::Read)
                {
                    return Err(crate::authz::AuthzError::PermissionDenied.into());
                }
            }
            Ok(who.clone())
        }
        .await;
        let result = result.map(|who| {
            let (tx, out) = tokio::sync::mpsc::channel(64);
            tokio::spawn(forward_events(
                rx,
                tx,
                who,
                req.paths,
                req.prefixes,
                self.state.shutdown.clone(),
                self.state.now(),
            ));
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)) as WatchStream
        });
        scope.finish(result)
    }
}

/// Pushes matching version events to one `Watch` stream until the client leaves, the daemon
/// shuts down, or (for credentials) the credential expires or its lease is revoked.
async fn forward_events(
    mut rx: tokio::sync::broadcast::Receiver<Vec<u8>>,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>,
    who: crate::authz::Principal,
    paths: Vec<String>,
    prefixes: Vec<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    now: u64,
) {
    let expiry = who.expires_at().map(|exp| exp.saturating_sub(now));
    let expired = async {
        match expiry {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(expired);
    let wanted = |ev: &ChangeEvent| {
        (paths.contains(&ev.path) || prefixes.iter().any(|p| ev.path.starts_with(p)))
            && who.allows(Action::Read, &ev.path)
    };
    loop {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = async { let _ = shutdown.wait_for(|v| *v).await; } => {
                let _ = tx.send(Err(Status::unavailable("keygate is shutting down; reconnect"))).await;
                return;
            }
            _ = &mut expired => {
                let _ = tx.send(Err(Status::unauthenticated("credential expired"))).await;
                return;
            }
            _ = tx.closed() => return,
        };
        match next {
            Ok(payload) if payload == crate::storage::RESYNC => {
                let st = Status::data_loss(
                    "this replica missed changes while cut off from the database; re-read the secrets and watch again",
                );
                let _ = tx.send(Err(st)).await;
                return;
            }
            Ok(payload) => {
                if let Ok(r) = serde_json::from_slice::<crate::credential::lease::Revoked>(&payload)
                {
                    if who
                        .lease_id()
                        .is_some_and(|id| r.revoked.iter().any(|x| x == id))
                    {
                        let _ = tx
                            .send(Err(Status::unauthenticated("credential refused: revoked")))
                            .await;
                        return;
                    }
                    continue;
                }
                let evs: Vec<ChangeEvent> = serde_json::from_slice(&payload).unwrap_or_default();
                for ev in evs.into_iter().filter(|e| wanted(e)) {
                    let item = pb::WatchEvent {
                        path: ev.path,
                        version: ev.version,
                        kind: kind_to_pb(ev.kind) as i32,
                        at: Some(to_timestamp(ev.at)),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                let st = Status::data_loss(format!(
                    "watch fell {n} events behind; re-read the secrets and watch again"
                ));
                let _ = tx.send(Err(st)).await;
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}
