//! Rotation RPCs of `keygate.v1.Admin`: rotate now, status, set and delete policies.
use super::{ApiError, AppState, RpcScope};
use crate::authz::Action;
use crate::clock::to_timestamp;
use crate::pb;
use crate::rotation::config::{RawField, RawPostgres, RawRotation};
use crate::rotation::schedule::Schedule;
use crate::rotation::Status;
use crate::secrets::path::SecretPath;
use tonic::{Request, Response, Status as GrpcStatus};

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// API message → the config's shape (one set of checks for both).
pub fn from_pb(p: pb::RotationPolicy) -> RawRotation {
    RawRotation {
        path: p.path,
        every: opt(&p.every),
        cron: opt(&p.cron),
        window: opt(&p.window),
        overlap: opt(&p.overlap),
        fields: p
            .fields
            .into_iter()
            .map(|(k, f)| {
                (
                    k,
                    RawField {
                        generator: f.generator,
                        length: (f.length != 0).then_some(f.length),
                        require: f.require,
                        alphabet: opt(&f.alphabet),
                        encoding: opt(&f.encoding),
                    },
                )
            })
            .collect(),
        postgres: p.postgres.map(|g| RawPostgres {
            database: g.database,
            roles: g.roles,
            password_length: (g.password_length != 0).then_some(g.password_length),
        }),
    }
}

/// The config's shape → API message.
pub fn to_pb_policy(r: &RawRotation) -> pb::RotationPolicy {
    pb::RotationPolicy {
        path: r.path.clone(),
        every: r.every.clone().unwrap_or_default(),
        cron: r.cron.clone().unwrap_or_default(),
        window: r.window.clone().unwrap_or_default(),
        overlap: r.overlap.clone().unwrap_or_default(),
        fields: r
            .fields
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    pb::FieldGenerator {
                        generator: f.generator.clone(),
                        length: f.length.unwrap_or(0),
                        require: f.require.clone(),
                        alphabet: f.alphabet.clone().unwrap_or_default(),
                        encoding: f.encoding.clone().unwrap_or_default(),
                    },
                )
            })
            .collect(),
        postgres: r.postgres.as_ref().map(|g| pb::PostgresRotator {
            database: g.database.clone(),
            roles: g.roles.clone(),
            password_length: g.password_length.unwrap_or(0),
        }),
    }
}

/// Status → API message.
pub fn status_to_pb(s: &Status) -> pb::RotationStatus {
    let p = &s.policy;
    let mut schedule = match &p.schedule {
        Schedule::Every(_) => format!("every {}", p.raw.every.clone().unwrap_or_default()),
        Schedule::Cron(_) => format!("cron {} (UTC)", p.raw.cron.clone().unwrap_or_default()),
    };
    if p.window_secs > 0 {
        schedule.push_str(&format!(", window {}s", p.window_secs));
    }
    schedule.push_str(&format!(", overlap {}s", p.overlap_secs));
    pb::RotationStatus {
        path: p.path.to_string(),
        source: p.source.to_string(),
        schedule,
        state: s.state.step.name().to_string(),
        current_version: s.current_version,
        pending_version: s.pending_version.unwrap_or(0),
        previous_version: s.previous_version.unwrap_or(0),
        previous_until: s.previous_until.map(to_timestamp),
        last_rotated_at: s.state.last_rotated_at.map(to_timestamp),
        next_run_at: s.state.next_run_at.map(to_timestamp),
        attempts: s.state.attempts,
        last_error: s.state.last_error.clone().unwrap_or_default(),
        rotations: s.state.rotations,
        trigger: s.state.trigger.map(|t| t.to_string()).unwrap_or_default(),
        policy: Some(to_pb_policy(&p.raw)),
    }
}

async fn one(state: &AppState, path: &str) -> Result<pb::RotationStatus, ApiError> {
    state
        .rotator
        .status(path)
        .await?
        .iter()
        .find(|s| s.policy.path == path)
        .map(status_to_pb)
        .ok_or_else(|| ApiError::NotFound(format!("no rotation policy for {path:?}")))
}

/// `Admin.RotateSecret`.
pub async fn rotate(
    state: &AppState,
    request: Request<pb::RotateSecretRequest>,
) -> Result<Response<pb::RotationStatus>, GrpcStatus> {
    let scope = RpcScope::of(&request)?;
    let req = request.into_inner();
    scope.resource(format!("rotation:{}", req.path));
    let result = async {
        state.limits.check(&req)?;
        scope.principal()?.require(Action::Rotate, &req.path)?;
        scope.intent().await?;
        state
            .rotator
            .rotate(
                &SecretPath::parse(&req.path)?,
                crate::rotation::state::Trigger::Manual,
            )
            .await?;
        one(state, &req.path).await
    }
    .await;
    scope.finish(result)
}

/// `Admin.GetRotationStatus`.
pub async fn status(
    state: &AppState,
    request: Request<pb::RotationStatusRequest>,
) -> Result<Response<pb::RotationStatusResponse>, GrpcStatus> {
    let scope = RpcScope::of(&request)?;
    let req = request.into_inner();
    scope.resource(format!("rotation-prefix:{}", req.prefix));
    let result = async {
        state.limits.check(&req)?;
        let who = scope.principal()?;
        let all = state.rotator.status(&req.prefix).await?;
        Ok(pb::RotationStatusResponse {
            rotations: all
                .iter()
                .filter(|s| who.is_admin() || who.allows(Action::List, &s.policy.path))
                .map(status_to_pb)
                .collect(),
        })
    }
    .await;
    scope.finish(result)
}

/// `Admin.SetRotationPolicy`.
pub async fn set(
    state: &AppState,
    request: Request<pb::RotationPolicy>,
) -> Result<Response<pb::RotationStatus>, GrpcStatus> {
    let scope = RpcScope::of(&request)?;
    let req = request.into_inner();
    scope.resource(format!("rotation:{}", req.path));
    let result = async {
        state.limits.check(&req)?;
        let who = scope.principal()?;
        who.require(Action::Admin, &req.path)?;
        // a policy that changes a database role's password hands that role to whoever reads
        // the secret: it needs a scope naming the role too
        if let Some(pg) = &req.postgres {
            for role in &pg.roles {
                who.require(Action::DbRotate, &format!("{}/{role}", pg.database))?;
            }
        }
        scope.intent().await?;
        let p = state.rotator.set_policy(from_pb(req)).await?;
        tracing::info!(path = %p.path, "rotation policy set");
        one(state, &p.path).await
    }
    .await;
    scope.finish(result)
}

/// `Admin.DeleteRotationPolicy`.
pub async fn delete(
    state: &AppState,
    request: Request<pb::DeleteRotationPolicyRequest>,
) -> Result<Response<pb::DeleteRotationPolicyResponse>, GrpcStatus> {
    let scope = RpcScope::of(&request)?;
    let req = request.into_inner();
    scope.resource(format!("rotation:{}", req.path));
    let result = async {
        state.limits.check(&req)?;
        scope.principal()?.require(Action::Admin, &req.path)?;
        scope.intent().await?;
        Ok(pb::DeleteRotationPolicyResponse {
            deleted: state
                .rotator
                .delete_policy(&SecretPath::parse(&req.path)?)
                .await?,
        })
    }
    .await;
    scope.finish(result)
}
