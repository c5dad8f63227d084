//! The failover transport when a replica dies with its answer on the wire: two real HTTP/2
//! servers on loopback, the first sends the answer's headers and part of its body, then resets
//! the stream; the second answers in full. A read is asked again of the second and returns its
//! whole answer; a write is not sent again (the first may have acted on it): its caller sees
//! the error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use keygate::failover::Failover;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::body::Body;
use tower::Service;

/// An h2c server; `cut`: answer headers and 3 bytes, then fail the body (the stream is reset).
async fn server(cut: bool, calls: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = if cut {
                                vec![
                                    Ok(Frame::data(Bytes::from_static(b"\0\0\0"))),
                                    Err(std::io::Error::other("replica died")),
                                ]
                            } else {
                                let mut t = http::HeaderMap::new();
                                t.insert("grpc-status", "0".parse().unwrap());
                                vec![
                                    // one empty message: flag 0, length 0
                                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                                    Ok(Frame::trailers(t)),
                                ]
                            };
                            let body = http_body_util::StreamBody::new(futures::StreamExt::then(
                                futures::stream::iter(frames),
                                // the headers and first bytes are out before the replica dies
                                |f| async move {
                                    if f.is_err() {
                                        tokio::time::sleep(std::time::Duration::from_millis(100))
                                            .await;
                                    }
                                    f
                                },
                            ));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    format!("http://{addr}")
}

fn request(path: &str) -> http::Request<Body> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://keygate{path}"))
        .header("content-type", "application/grpc")
        .body(Body::new(http_body_util::Full::new(Bytes::from_static(
            b"\0\0\0\0\0",
        ))))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_cut_short_is_asked_again_and_a_write_is_not() {
    let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = server(true, first.clone()).await;
    let b = server(false, second.clone()).await;
    let ch = |addr: &str| {
        tonic::transport::Channel::from_shared(addr.to_string())
            .unwrap()
            .connect_lazy()
    };
    let mut f = Failover::new(vec![(a.clone(), ch(&a)), (b.clone(), ch(&b))]);

    // a read: the first replica's answer breaks off; the second's is returned, whole
    let resp = f.call(request("/keygate.v1.Secrets/Get")).await.unwrap();
    let got = resp.into_body().collect().await.expect("a whole answer");
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(got.to_bytes().as_ref(), b"\0\0\0\0\0");
    assert_eq!(
        (first.load(Ordering::SeqCst), second.load(Ordering::SeqCst)),
        (1, 1)
    );

    // a write (on fresh connections, as the first call found them): not sent again; the broken
    // answer reaches the caller
    let mut f = Failover::new(vec![(a.clone(), ch(&a)), (b.clone(), ch(&b))]);
    let resp = f.call(request("/keygate.v1.Secrets/Put")).await.unwrap();
    let cut = resp.into_body().collect().await;
    // reset mid-answer: an error, or an answer without the gRPC status that ends every call
    assert!(
        cut.as_ref().map_or(true, |c| c
            .trailers()
            .is_none_or(|t| t.get("grpc-status").is_none())),
        "the cut is visible: {:?}",
        cut.map(|c| c.trailers().cloned())
    );
    assert_eq!(
        (first.load(Ordering::SeqCst), second.load(Ordering::SeqCst)),
        (2, 1)
    );
}
