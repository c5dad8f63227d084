//! The per-request audit scope: made by the RPC layer ([`super::layer`]) before a handler runs,
//! handed to it in the request's extensions. A handler adds the resources it touches and the
//! caller details it learns, asks for the authenticated principal, writes the intent record
//! before a state change ([`RpcScope::intent`]) and hands its result to [`RpcScope::finish`].
//! It never builds an audit record itself: the layer writes the outcome record.
use super::{ApiError, AppState};
use crate::audit::record::{CallerInfo, Kind, Record};
use crate::authz::{Caller, Principal};
use std::sync::{Arc, Mutex};
use tonic::{Code, Request, Response, Status};

/// At most this many resources are recorded per request (the rest are counted).
pub const MAX_RESOURCES: usize = 32;

/// A string a caller chose, as an audit record may hold it: itself when short, else a bounded
/// prefix with its length and an `hmac-sha256:` reference (so equal long values still match).
pub fn bounded(state: &AppState, s: &str) -> String {
    let max = state.limits.audit_string_bytes;
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max / 2;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}…[{} bytes, {}]",
        &s[..cut],
        s.len(),
        state.audit_ref(s.as_bytes())
    )
}

/// How the request ended, as the handler saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Why (bounded; never a value).
    pub reason: Option<String>,
    /// The status code answered.
    pub code: Code,
}

#[derive(Default)]
struct Data {
    caller: CallerInfo,
    resources: Vec<String>,
    dropped: usize,
    outcome: Option<Outcome>,
    intent_written: bool,
}

struct Inner {
    rpc: Arc<str>,
    request_id: String,
    caller: Caller,
    principal: Option<Principal>,
    state: Arc<AppState>,
    data: Mutex<Data>,
}

/// One request's audit scope (cheap to clone; all clones are the same scope).
#[derive(Clone)]
pub struct RpcScope(Arc<Inner>);

impl std::fmt::Debug for RpcScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcScope")
            .field("rpc", &self.0.rpc)
            .field("request_id", &self.0.request_id)
            .finish_non_exhaustive()
    }
}

impl RpcScope {
    /// Made by the layer.
    pub(crate) fn new(
        state: Arc<AppState>,
        rpc: Arc<str>,
        request_id: String,
        caller: Caller,
        principal: Option<Principal>,
    ) -> Self {
        let mut data = Data::default();
        if let Some(p) = &principal {
            describe(&mut data.caller, p);
        }
        Self(Arc::new(Inner {
            rpc,
            request_id,
            caller,
            principal,
            state,
            data: Mutex::new(data),
        }))
    }

    /// The scope the layer attached to this request. Missing only if a service was mounted
    /// without the layer: that request is refused rather than served unaudited.
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        req.extensions()
            .get::<RpcScope>()
            .cloned()
            .ok_or_else(|| Status::internal("request outside the audit layer"))
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        match self.0.data.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The RPC (`keygate.v1.Secrets/Get`).
    pub fn rpc(&self) -> &str {
        &self.0.rpc
    }

    /// The request id (also in the `x-request-id` response header).
    pub fn request_id(&self) -> &str {
        &self.0.request_id
    }

    /// Notes a resource touched; caller-chosen parts are bounded.
    pub fn resource(&self, r: impl AsRef<str>) {
        let r = bounded(&self.0.state, r.as_ref());
        let mut d = self.data();
        if d.resources.len() < MAX_RESOURCES {
            d.resources.push(r);
        } else {
            d.dropped += 1;
        }
    }

    /// Adds to what the record says about the caller (exchange: the platform identity).
    pub fn caller(&self, f: impl FnOnce(&mut CallerInfo)) {
        f(&mut self.data().caller)
    }

    /// The authenticated principal. Every RPC but the token exchange has one (the layer
    /// refuses the request before the handler otherwise).
    pub fn principal(&self) -> Result<&Principal, ApiError> {
        self.0
            .principal
            .as_ref()
            .ok_or(ApiError::Authz(crate::authz::AuthzError::Unauthenticated))
    }

    /// The outcome the handler reported, if it reached [`RpcScope::finish`].
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.data().outcome.clone()
    }

    /// Sets the outcome (the layer, for requests the handler never saw).
    pub(crate) fn set_outcome(&self, o: Outcome) {
        self.data().outcome = Some(o);
    }

    /// The record of this request as it stands, with `decision` and `status`.
    pub(crate) fn record(
        &self,
        decision: &str,
        reason: Option<String>,
        status: Option<Code>,
    ) -> Record {
        let d = self.data();
        let mut who = d.caller.clone();
        who.peer = self.0.caller.peer.map(|p| p.to_string());
        who.tls_client = self.0.caller.cert_subject.clone();
        if let Some(b) = &self.0.caller.bearer {
            who.token_hmac
                .get_or_insert_with(|| self.0.state.audit_ref(b.expose()));
        }
        let mut resources = d.resources.clone();
        if d.dropped > 0 {
            resources.push(format!("…{} more", d.dropped));
        }
        let mut r = Record::new(Kind::Request);
        r.request_id = Some(self.0.request_id.clone());
        r.op = Some(self.0.rpc.to_string());
        r.api = self.0.caller.api.map(str::to_string);
        r.caller = Some(who);
        r.resources = resources;
        r.decision = Some(decision.to_string());
        r.reason = reason.map(|r| bounded(&self.0.state, &r));
        r.status = status.map(|c| crate::metrics::code_name(c).to_string());
        r
    }

    /// Writes the intent record, durably, before a state change: if it cannot be written the
    /// change must not happen (the error says so). The outcome record follows from the layer;
    /// both carry this request's id.
    pub async fn intent(&self) -> Result<(), ApiError> {
        let rec = self.record("intent", None, None);
        self.0.state.audit.append(rec).await.map_err(|e| {
            tracing::error!(error = %e, "intent record not written: the change is not made");
            ApiError::AuditUnavailable
        })?;
        self.data().intent_written = true;
        Ok(())
    }

    /// Whether an intent record was written (the layer: a change applied after it is on
    /// record even if the outcome record then cannot be written).
    pub(crate) fn intent_written(&self) -> bool {
        self.data().intent_written
    }

    /// Records how the handler ended and turns its result into the answer. Server-side failures
    /// are logged here, once, with the request id of the span around the handler.
    pub fn finish<T>(&self, result: Result<T, ApiError>) -> Result<Response<T>, Status> {
        match result {
            Ok(v) => {
                self.set_outcome(Outcome {
                    decision: "allow",
                    reason: None,
                    code: Code::Ok,
                });
                Ok(Response::new(v))
            }
            Err(e) => {
                let status = e.to_status();
                let decision = match e {
                    ApiError::Authz(_) | ApiError::Exchange { .. } => "deny",
                    _ => "error",
                };
                let reason = bounded(&self.0.state, &e.to_string());
                if e.is_server_fault() {
                    tracing::error!(error = %reason, "request failed");
                } else {
                    tracing::info!(code = ?status.code(), error = %reason, "request refused");
                }
                self.set_outcome(Outcome {
                    decision,
                    reason: Some(reason),
                    code: status.code(),
                });
                Err(status)
            }
        }
    }
}

/// What the record says about an authenticated principal.
fn describe(info: &mut CallerInfo, p: &Principal) {
    match p {
        Principal::Admin(_) => info.principal = Some("admin".into()),
        Principal::Credential(c) => {
            let cl = &c.claims;
            info.principal = Some("credential".into());
            info.issuer = cl
                .src
                .get("iss")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            info.subject = Some(cl.sub.clone());
            info.role = Some(cl.role.clone());
            info.jti = Some(cl.jti.clone());
            info.lease_id = Some(cl.lease_id.clone());
            info.claims = Some(cl.src.clone());
        }
    }
}
