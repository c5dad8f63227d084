//! `grpc.health.v1.Health`: SERVING for the daemon (`""`) and each keygate service while it
//! serves; NOT_SERVING from the moment shutdown starts, when open `Watch` streams get that
//! status and end, so a watching load balancer neither holds the shutdown nor keeps sending.
use futures::Stream;
use std::pin::Pin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The health service over the daemon's shutdown signal.
pub struct HealthApi {
    services: Vec<String>,
    shutdown: watch::Receiver<bool>,
}

impl HealthApi {
    /// Reports `services` (fully qualified names) and `""`.
    pub fn new(services: Vec<String>, shutdown: watch::Receiver<bool>) -> Self {
        Self { services, shutdown }
    }

    fn status(&self, service: &str) -> Option<ServingStatus> {
        if !service.is_empty() && !self.services.iter().any(|s| s == service) {
            return None;
        }
        Some(if *self.shutdown.borrow() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        })
    }
}

fn answer(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.status(&request.get_ref().service) {
            Some(s) => Ok(Response::new(answer(s))),
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = self.status(&request.get_ref().service).is_some();
        let mut shutdown = self.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            if !known {
                let _ = tx.send(Ok(answer(ServingStatus::ServiceUnknown))).await;
                // a watcher of an unknown service waits like any other, until shutdown
                let _ = shutdown.wait_for(|v| *v).await;
                return;
            }
            if !*shutdown.borrow() {
                if tx.send(Ok(answer(ServingStatus::Serving))).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => {}
                    _ = tx.closed() => return,
                }
            }
            let _ = tx.send(Ok(answer(ServingStatus::NotServing))).await;
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task (ends when the task returns).
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HealthCheckResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
