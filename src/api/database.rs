//! `keygate.v1.DatabaseCredentials`: short-lived database users (scope `db:<role>`).
use super::{ApiError, AppState, RpcScope};
use crate::authz::{Action, Principal};
use crate::clock::to_timestamp;
use crate::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The DatabaseCredentials service.
pub struct DatabaseApi {
    state: Arc<AppState>,
}

impl DatabaseApi {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Who owns a generated user: the asking credential's lease, or the admin's subject.
pub fn owner_of(who: &Principal) -> (String, String, serde_json::Value) {
    match who {
        Principal::Admin(subject) => (
            format!("admin:{subject}"),
            subject.clone(),
            serde_json::Value::Null,
        ),
        Principal::Credential(c) => (
            c.claims.lease_id.clone(),
            c.claims.sub.clone(),
            c.claims.src.clone(),
        ),
    }
}

#[tonic::async_trait]
impl pb::database_credentials_server::DatabaseCredentials for DatabaseApi {
    async fn generate(
        &self,
        request: Request<pb::GenerateDatabaseCredentialsRequest>,
    ) -> Result<Response<pb::DatabaseCredential>, Status> {
        let scope = RpcScope::of(&request)?;
        let req = request.into_inner();
        scope.resource(format!("db:{}", req.role));
        let result = async {
            self.state.limits.check(&req)?;
            let who = scope.principal()?;
            if req.role.is_empty() {
                return Err(ApiError::InvalidArgument("role is required".into()));
            }
            who.require(Action::Db, &req.role)?;
            let (owner, sub, src) = owner_of(who);
            scope.intent().await?;
            let g = self
                .state
                .databases
                .generate(&req.role, req.ttl_seconds, &owner, &sub, src)
                .await?;
            scope.resource(format!("lease:{}", g.lease.lease_id));
            scope.resource(format!("db-user:{}", g.username));
            Ok(pb::DatabaseCredential {
                username: g.username,
                password: String::from_utf8_lossy(g.password.expose()).into_owned(),
                lease_id: g.lease.lease_id.clone(),
                expires_at: Some(to_timestamp(g.lease.expires_at * 1000)),
            })
        }
        .await;
        scope.finish(result)
    }
}
