//! A gRPC transport over several daemon addresses (`KEYGATE_ADDR=https://a:8443,https://b:8443`),
//! tried in order: a call that cannot connect, or that a replica answers UNAVAILABLE (shutting
//! down, database unreachable, not the leader), is sent again to the next address. The request
//! is one protobuf message (every keygate RPC is unary or server-streaming), buffered so it can
//! be resent. The last address's answer is returned as it is.
//!
//! A replica can also die while its answer is on the wire (kill -9 after the headers): for the
//! calls that only read ([`READS`]), the answer is read whole before it is returned, and one cut
//! short is asked of the next address too. A call that changes something is not sent again once
//! a replica may have acted on it: its caller sees the error and decides.
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// gRPC status code 14.
const UNAVAILABLE: &str = "14";

/// Unary calls that change nothing, so asking another replica again is always safe.
pub const READS: &[&str] = &[
    "/keygate.v1.Secrets/Get",
    "/keygate.v1.Secrets/List",
    "/keygate.v1.Leases/List",
    "/keygate.v1.Admin/ServerInfo",
    "/keygate.v1.Admin/ListRoles",
    "/keygate.v1.Admin/GetRole",
    "/keygate.v1.Admin/GetRotationStatus",
    "/keygate.v1.Admin/AuditHead",
    "/grpc.health.v1.Health/Check",
];

/// Reads `resp` whole (body and trailers) into a response that replays it.
async fn buffered(
    resp: http::Response<Body>,
) -> Result<http::Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let mut frames = vec![Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
        collected.to_bytes(),
    ))];
    if let Some(t) = trailers {
        frames.push(Ok(hyper::body::Frame::trailers(t)));
    }
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    Ok(http::Response::from_parts(parts, Body::new(body)))
}

/// Several channels, tried in order for every call.
#[derive(Clone, Debug)]
pub struct Failover {
    channels: Arc<Vec<(String, Channel)>>,
}

impl Failover {
    /// Over `channels` (address, lazily connecting channel), in the order to try them.
    pub fn new(channels: Vec<(String, Channel)>) -> Self {
        Self {
            channels: Arc::new(channels),
        }
    }

    /// The addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.channels.iter().map(|(a, _)| a.clone()).collect()
    }
}

fn unavailable(resp: &http::Response<Body>) -> bool {
    // an error before any message is a trailers-only response: the status is in the headers
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == UNAVAILABLE.as_bytes())
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // each call waits for its own channel's readiness
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let [(_, ch)] = self.channels.as_slice() {
            // one address: nothing to resend, nothing to buffer
            let mut ch = ch.clone();
            return Box::pin(async move { Ok(ch.ready().await?.call(req).await?) });
        }
        let channels = self.channels.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes: Bytes = body.collect().await?.to_bytes();
            let mut last: Option<Result<Self::Response, Self::Error>> = None;
            for (i, (addr, ch)) in channels.iter().enumerate() {
                let more = i + 1 < channels.len();
                let mut r = http::Request::new(Body::new(Full::new(bytes.clone())));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                let mut ch = ch.clone();
                let outcome = match ch.ready().await {
                    Ok(ch) => ch.call(r).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(resp) if more && unavailable(&resp) => {
                        tracing::debug!(%addr, "UNAVAILABLE; trying the next address");
                        last = Some(Ok(resp));
                    }
                    Ok(resp) if more && READS.contains(&parts.uri.path()) => {
                        match buffered(resp).await {
                            Ok(resp) => return Ok(resp),
                            Err(e) => {
                                tracing::debug!(%addr, error = %e, "the answer was cut short; asking the next address");
                                last = Some(Err(e));
                            }
                        }
                    }
                    Ok(resp) => return Ok(resp),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "cannot reach; trying the next address");
                        last = Some(Err(e.into()));
                    }
                }
            }
            last.unwrap_or_else(|| Err("no daemon address".into()))
        })
    }
}
