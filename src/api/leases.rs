//! `keygate.v1.Leases`: a credential renews, revokes and lists its own lease; the admin (mTLS
//! or `admin:*` scope) acts on any.
use super::{ApiError, AppState, RpcScope};
use crate::authz::{Action, Principal};
use crate::clock::to_timestamp;
use crate::credential::lease::Lease;
use crate::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Leases service.
pub struct LeasesApi {
    state: Arc<AppState>,
}

impl LeasesApi {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id.clone(),
        issued_at: Some(to_timestamp(l.issued_at * 1000)),
        expires_at: Some(to_timestamp(l.expires_at * 1000)),
        renewable: l.revoked_at.is_none() && l.expires_at < l.max_expires_at,
        role: l.role.clone(),
        subject: l.sub.clone(),
        scopes: l.scopes.clone(),
        max_expires_at: Some(to_timestamp(l.max_expires_at * 1000)),
        revoked_at: l.revoked_at.map(|t| to_timestamp(t * 1000)),
    }
}

/// The lease a principal may act on: its own, or any for an admin.
fn target(who: &Principal, asked: &str) -> Result<String, ApiError> {
    let admin = who.allows(Action::Admin, "leases");
    match who.lease_id() {
        Some(own) if asked.is_empty() || asked == own => Ok(own.to_string()),
        _ if admin && !asked.is_empty() => Ok(asked.to_string()),
        _ if asked.is_empty() => Err(ApiError::InvalidArgument("lease_id is required".into())),
        _ => Err(crate::authz::AuthzError::PermissionDenied.into()),
    }
}

/// A database-user lease the principal may act on: one it generated, or any for an admin.
/// `None` when `asked` is not a database lease id.
async fn db_target(
    state: &AppState,
    who: &Principal,
    asked: &str,
) -> Result<Option<Lease>, ApiError> {
    if !asked.starts_with(crate::database::LEASE_PREFIX) {
        return Ok(None);
    }
    let lease = state.credentials.leases.get(asked).await?;
    let owned = |l: &Lease| {
        who.allows(Action::Admin, "leases")
            || l.db
                .as_ref()
                .is_some_and(|d| who.lease_id() == Some(d.owner.as_str()))
    };
    match lease {
        Some(l) if l.db.is_some() && owned(&l) => Ok(Some(l)),
        Some(_) if who.allows(Action::Admin, "leases") => Ok(None),
        // the same answer whether or not it exists: ids are not to be probed
        _ => Err(crate::authz::AuthzError::PermissionDenied.into()),
    }
}

/// Drops the database users of revoked leases now (the sweeper retries any failure), including
/// the users that revoked credentials generated.
async fn drop_users(state: &AppState, ids: &[String]) {
    let mut ids = ids.to_vec();
    let owners: Vec<&String> = ids
        .iter()
        .filter(|i| !i.starts_with(crate::database::LEASE_PREFIX))
        .collect();
    if !owners.is_empty() {
        let children: Vec<String> = match state
            .credentials
            .leases
            .list(crate::database::LEASE_PREFIX)
            .await
        {
            Ok(all) => all
                .into_iter()
                .filter(|l| {
                    l.revoked_at.is_none()
                        && l.db.as_ref().is_some_and(|d| owners.contains(&&d.owner))
                })
                .map(|l| l.lease_id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "lease list failed; the sweeper drops expired users");
                Vec::new()
            }
        };
        for c in children {
            if let Ok(done) = state.credentials.leases.revoke_prefix(&c, true).await {
                ids.extend(done);
            }
        }
    }
    for id in ids
        .iter()
        .filter(|i| i.starts_with(crate::database::LEASE_PREFIX))
    {
        match state.credentials.leases.get(id).await {
            Ok(Some(l)) => {
                if let Err(e) = state.databases.drop_user(&l).await {
                    tracing::warn!(lease_id = %id, error = %e, "database user not dropped yet; the sweeper retries");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(lease_id = %id, error = %e, "lease read failed"),
        }
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeasesApi {
    async fn renew(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("lease:{}", req.lease_id));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            if let Some(l) = db_target(&self.state, who, &req.lease_id).await? {
                scope.intent().await?;
                let lease = self
                    .state
                    .databases
                    .renew(&l.lease_id, req.increment_seconds)
                    .await?;
                return Ok(pb::RenewLeaseResponse {
                    expires_in: lease.expires_at.saturating_sub(self.state.now()),
                    lease: Some(to_pb(&lease)),
                    access_token: String::new(),
                });
            }
            let id = target(who, &req.lease_id)?;
            let lease = self
                .state
                .credentials
                .leases
                .get(&id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("lease {id:?} not found")))?;
            let trust = self.state.trust();
            let default = trust.role(&lease.role).map(|r| r.ttl_secs).unwrap_or(900);
            let inc = if req.increment_seconds == 0 {
                default
            } else {
                req.increment_seconds
            };
            scope.intent().await?;
            let lease = self
                .state
                .credentials
                .leases
                .renew(&id, inc)
                .await?
                .ok_or_else(|| {
                    ApiError::FailedPrecondition("lease is revoked or expired".into())
                })?;
            let token = self
                .state
                .credentials
                .mint(&lease, lease.expires_at)
                .await
                .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
            Ok(pb::RenewLeaseResponse {
                expires_in: lease.expires_at.saturating_sub(self.state.now()),
                lease: Some(to_pb(&lease)),
                access_token: token,
            })
        }
        .await;
        scope.finish(result)
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("lease:{}", req.lease_id));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            let id = match db_target(&self.state, who, &req.lease_id).await? {
                Some(l) => l.lease_id,
                None => target(who, &req.lease_id)?,
            };
            scope.intent().await?;
            let done = self
                .state
                .credentials
                .leases
                .revoke_prefix(&id, true)
                .await?;
            drop_users(&self.state, &done).await;
            tracing::info!(lease_id = %id, revoked = done.len(), "lease revoked");
            Ok(pb::RevokeLeaseResponse {
                revoked: done.len() as u64,
            })
        }
        .await;
        scope.finish(result)
    }

    async fn revoke_prefix(
        &self,
        request: Request<pb::RevokePrefixRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("lease-prefix:{}", req.prefix));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            who.require(Action::Admin, "leases")?;
            if req.prefix.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "a prefix is required (use the role name, e.g. \"deploy/\")".into(),
                ));
            }
            scope.intent().await?;
            let done = self
                .state
                .credentials
                .leases
                .revoke_prefix(&req.prefix, false)
                .await?;
            drop_users(&self.state, &done).await;
            tracing::warn!(prefix = %req.prefix, revoked = done.len(), "leases revoked by prefix");
            Ok(pb::RevokeLeaseResponse {
                revoked: done.len() as u64,
            })
        }
        .await;
        scope.finish(result)
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("lease:{}", req.lease_id));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            if let Some(l) = db_target(&self.state, who, &req.lease_id).await? {
                return Ok(to_pb(&l));
            }
            let id = target(who, &req.lease_id)?;
            let lease = self
                .state
                .credentials
                .leases
                .get(&id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("lease {id:?} not found")))?;
            Ok(to_pb(&lease))
        }
        .await;
        scope.finish(result)
    }

    async fn list(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("lease-prefix:{}", req.prefix));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            let leases = if who.allows(Action::Admin, "leases") {
                self.state.credentials.leases.list(&req.prefix).await?
            } else {
                let own = who.lease_id().unwrap_or("").to_string();
                let mut v: Vec<Lease> = self
                    .state
                    .credentials
                    .leases
                    .get(&own)
                    .await?
                    .into_iter()
                    .collect();
                // and the database users it generated
                v.extend(
                    self.state
                        .credentials
                        .leases
                        .list(crate::database::LEASE_PREFIX)
                        .await?
                        .into_iter()
                        .filter(|l| l.db.as_ref().is_some_and(|d| d.owner == own)),
                );
                v
            };
            Ok(pb::ListLeasesResponse {
                leases: leases.iter().map(to_pb).collect(),
            })
        }
        .await;
        scope.finish(result)
    }
}
