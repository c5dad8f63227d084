//! `keygate admin rotate` and `keygate admin rotation status|set|delete`.
use super::Conn;
use crate::client::{connect_authed as connect, status_error};
use crate::pb;
use anyhow::Context;
use std::path::Path;

fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| crate::audit::writer::rfc3339(t.seconds.max(0) as u64 * 1000))
        .unwrap_or_else(|| "-".into())
}

fn print(s: &pb::RotationStatus) {
    println!("{}  ({}; {})", s.path, s.schedule, s.source);
    println!(
        "  state {}  current v{}{}{}",
        s.state,
        s.current_version,
        if s.pending_version != 0 {
            format!("  pending v{}", s.pending_version)
        } else {
            String::new()
        },
        if s.previous_version != 0 {
            format!(
                "  previous v{} until {}",
                s.previous_version,
                when(&s.previous_until)
            )
        } else {
            String::new()
        }
    );
    println!(
        "  rotations {}  last {}  next {}{}",
        s.rotations,
        when(&s.last_rotated_at),
        when(&s.next_run_at),
        if s.trigger.is_empty() {
            String::new()
        } else {
            format!("  (last trigger: {})", s.trigger)
        }
    );
    if !s.last_error.is_empty() {
        println!("  error (attempt {}): {}", s.attempts, s.last_error);
    }
}

fn json(s: &pb::RotationStatus) -> serde_json::Value {
    serde_json::json!({
        "path": s.path, "source": s.source, "schedule": s.schedule, "state": s.state,
        "current_version": s.current_version, "pending_version": s.pending_version,
        "previous_version": s.previous_version, "previous_until": when(&s.previous_until),
        "last_rotated_at": when(&s.last_rotated_at), "next_run_at": when(&s.next_run_at),
        "attempts": s.attempts, "last_error": s.last_error, "rotations": s.rotations,
        "trigger": s.trigger,
    })
}

/// `keygate admin rotate PATH`.
pub async fn rotate(conn: &Conn, path: &str, as_json: bool) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let s = c
        .rotate_secret(pb::RotateSecretRequest {
            path: path.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if as_json {
        println!("{}", json(&s));
    } else {
        print(&s);
    }
    Ok(())
}

/// `keygate admin rotation status [PREFIX]`.
pub async fn status(conn: &Conn, prefix: &str, as_json: bool) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .get_rotation_status(pb::RotationStatusRequest {
            prefix: prefix.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if as_json {
        let all: Vec<_> = r.rotations.iter().map(json).collect();
        println!("{}", serde_json::Value::Array(all));
    } else if r.rotations.is_empty() {
        println!("no rotation policies under {prefix:?}");
    } else {
        r.rotations.iter().for_each(print);
    }
    Ok(())
}

/// `keygate admin rotation set --file F`: F holds one policy with the keys of a
/// `[[rotations]]` table.
pub async fn set(conn: &Conn, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let raw: crate::rotation::config::RawRotation =
        toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let s = c
        .set_rotation_policy(crate::api::rotation::to_pb_policy(&raw))
        .await
        .map_err(status_error)?
        .into_inner();
    print(&s);
    Ok(())
}

/// `keygate admin rotation delete PATH`.
pub async fn delete(conn: &Conn, path: &str) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .delete_rotation_policy(pb::DeleteRotationPolicyRequest {
            path: path.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{}",
        if r.deleted {
            "policy deleted"
        } else {
            "no API policy for that path"
        }
    );
    Ok(())
}
