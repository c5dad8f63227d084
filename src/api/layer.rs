//! The one RPC layer around every gRPC service. For each keygate method it owns: the caller
//! (mTLS subject or bearer credential) authenticated before the handler runs, the RPC name
//! taken from the request URI and checked against the method descriptors, the request id
//! (`x-request-id` on the answer and on every log line of the request), the per-request
//! [`RpcScope`] the handler fills in, the durable outcome record before the answer leaves, and
//! the metrics. Health and reflection pass through unaudited.
use super::scope::{bounded, Outcome, RpcScope};
use super::AppState;
use crate::authz::Caller;
use http::{HeaderValue, Request, Response};
use prost::Message;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tracing::Instrument;

/// Methods callable without a credential or client certificate (the token is in the body).
pub const ANONYMOUS: &[&str] = &["keygate.v1.TokenExchange/Exchange"];

/// The `op` and metric label of a request to a keygate service that names no known method.
pub const UNKNOWN_RPC: &str = "unknown";

/// Every method of every keygate service, `package.Service/Method`, from the compiled
/// descriptors (so a new RPC is covered without anyone listing it).
pub fn methods() -> &'static HashMap<String, Arc<str>> {
    static M: OnceLock<HashMap<String, Arc<str>>> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = HashMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET) {
            for f in &set.file {
                let pkg = f.package();
                for s in &f.service {
                    for meth in &s.method {
                        let name = format!("{pkg}.{}/{}", s.name(), meth.name());
                        m.insert(name.clone(), Arc::from(name.as_str()));
                    }
                }
            }
        }
        m
    })
}

/// Adds [`RpcService`] around a service.
#[derive(Clone)]
pub struct RpcLayer {
    state: Arc<AppState>,
}

impl RpcLayer {
    /// Over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    state: Arc<AppState>,
}

fn new_request_id() -> String {
    let mut id = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut id);
    hex::encode(id)
}

/// The connection of a call that another API translated into gRPC in process (the Vault HTTP
/// API): what its own TLS connection said about the caller, for this layer to authenticate and
/// audit the call as it does every gRPC call.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The API (`vault`), recorded in the audit record's `api`.
    pub api: &'static str,
    /// Subject of the verified client certificate of that connection.
    pub cert_subject: Option<String>,
    /// Its peer address.
    pub peer: Option<std::net::SocketAddr>,
}

/// What the connection and headers say about the caller.
fn caller_of<B>(req: &Request<B>) -> Caller {
    let translated = req.extensions().get::<Translated>();
    let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    let cert_subject = tls
        .and_then(|t| t.peer_certs())
        .and_then(|certs| certs.first().and_then(crate::tls::cert_subject))
        .or_else(|| translated.and_then(|t| t.cert_subject.clone()));
    let peer = tls
        .and_then(|t| t.get_ref().remote_addr())
        .or_else(|| {
            req.extensions()
                .get::<TcpConnectInfo>()
                .and_then(|t| t.remote_addr())
        })
        .or_else(|| translated.and_then(|t| t.peer));
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| crate::sensitive::SecretBytes::new(token.trim().as_bytes().to_vec()))
        });
    Caller {
        cert_subject,
        bearer,
        peer,
        api: translated.map(|t| t.api),
    }
}

/// The status of an answer the handler never saw (decoding failed, unknown method), in
/// gRPC's conventions: a malformed message is the caller's fault (INVALID_ARGUMENT, where
/// tonic says INTERNAL), an oversize one RESOURCE_EXHAUSTED (where tonic says OUT_OF_RANGE).
fn status_without_handler(headers: &http::HeaderMap, max: usize) -> Option<Status> {
    let st = Status::from_header_map(headers)?;
    Some(match st.code() {
        Code::Internal => Status::invalid_argument("malformed request message"),
        Code::OutOfRange if st.message().contains("too large") => Status::resource_exhausted(
            format!("request message larger than the limit of {max} bytes"),
        ),
        _ => st,
    })
}

impl<S, B, R> tower::Service<Request<B>> for RpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // the clone that was made ready is the one that serves this request
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let started = Instant::now();
            let path = req.uri().path().trim_start_matches('/');
            if !path.starts_with("keygate.") {
                return inner.call(req).await;
            }
            let known = methods().get(path).cloned();
            let rpc: Arc<str> = known.clone().unwrap_or_else(|| Arc::from(UNKNOWN_RPC));
            let unknown_path = known.is_none().then(|| bounded(&state, path));
            let request_id = new_request_id();
            let span = tracing::info_span!("rpc", rpc = %rpc, request_id = %request_id);
            let caller = caller_of(&req);
            let anonymous = ANONYMOUS.contains(&&*rpc) || known.is_none();
            let auth = if anonymous {
                Ok(None)
            } else {
                state
                    .authz
                    .authenticate(&caller)
                    .instrument(span.clone())
                    .await
                    .map(Some)
            };
            let (principal, refused) = match auth {
                Ok(p) => (p, None),
                Err(e) => (None, Some(super::ApiError::Authz(e))),
            };
            let scope = RpcScope::new(
                state.clone(),
                rpc.clone(),
                request_id.clone(),
                caller,
                principal,
            );
            if let Some(p) = unknown_path {
                scope.resource(format!("method:{p}"));
            }
            let mut response = match refused {
                Some(e) => {
                    // not authenticated: the handler never runs
                    let _enter = span.enter();
                    let st = match scope.finish::<()>(Err(e)) {
                        Err(st) => st,
                        Ok(_) => Status::unauthenticated("unauthenticated"),
                    };
                    st.into_http::<R>()
                }
                None => {
                    req.extensions_mut().insert(scope.clone());
                    let mut resp = inner.call(req).instrument(span.clone()).await?;
                    if scope.outcome().is_none() {
                        let st =
                            status_without_handler(resp.headers(), state.limits.max_message_bytes)
                                .unwrap_or_else(|| Status::ok(""));
                        scope.set_outcome(Outcome {
                            decision: if st.code() == Code::Ok {
                                "allow"
                            } else {
                                "error"
                            },
                            reason: (st.code() != Code::Ok).then(|| st.message().to_string()),
                            code: st.code(),
                        });
                        if st.code() != Code::Ok
                            && Status::from_header_map(resp.headers()).map(|s| s.code())
                                != Some(st.code())
                        {
                            resp = st.into_http::<R>();
                        }
                    }
                    resp
                }
            };
            let outcome = scope.outcome().unwrap_or(Outcome {
                decision: "error",
                reason: None,
                code: Code::Unknown,
            });
            let record = scope.record(outcome.decision, outcome.reason.clone(), Some(outcome.code));
            let code = match state.audit.append(record).await {
                Ok(_) => outcome.code,
                Err(e) if outcome.code == Code::Ok && scope.intent_written() => {
                    // the change was applied after its durable intent record: that record
                    // stands for it, and the caller is told the truth
                    let _enter = span.enter();
                    tracing::error!(error = %e, "outcome record not written; the intent record stands for the applied change");
                    outcome.code
                }
                Err(e) => {
                    let _enter = span.enter();
                    tracing::error!(error = %e, "audit record not written: refusing the request");
                    response =
                        Status::unavailable("audit log unavailable: the request was not served")
                            .into_http::<R>();
                    Code::Unavailable
                }
            };
            state.metrics.observe(&rpc, code, started);
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-request-id", v);
            }
            Ok(response)
        })
    }
}
