//! The gRPC accept loop, bounded against hostile peers: at most `max_connections` at once (past
//! that a new socket is closed at once), a TLS handshake must finish within
//! `handshake_timeout`, a connection with no bytes either way for `idle_timeout` is closed, and
//! when the process is out of file descriptors (EMFILE/ENFILE) the loop backs off instead of
//! spinning. HTTP/2 keepalive, stream and frame limits are set on the tonic server.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

pub use crate::config::ConnLimits;

/// One accepted, handshaken connection; its slot is released when it is dropped.
pub struct Conn {
    io: TlsStream<TcpStream>,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    last_reset: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn touch(&mut self) {
        // resetting the timer on every read would cost a timer-wheel update per frame
        let now = Instant::now();
        if now.duration_since(self.last_reset) >= Duration::from_secs(1) {
            self.last_reset = now;
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.idle);
        }
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// A write that went through resets the idle timer; one stuck past it fails.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.idle_expired(cx) {
                    Poll::Ready(Err(idle_error()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Out of descriptors or memory: accepting again at once would only fail again.
fn resource_exhausted(e: &io::Error) -> bool {
    // ENOMEM 12, ENFILE 23, EMFILE 24, ENOBUFS 105 (Linux)
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}

/// Counters the accept loop keeps (exported as metrics).
#[derive(Default)]
pub struct ConnStats {
    /// Sockets closed because `max_connections` were open.
    pub refused: std::sync::atomic::AtomicU64,
    /// Handshakes that did not finish in time or failed.
    pub handshake_failed: std::sync::atomic::AtomicU64,
    /// Accept errors for lack of descriptors or memory.
    pub accept_exhausted: std::sync::atomic::AtomicU64,
}

/// Accepts on `listener` until `shutdown`, yielding handshaken connections.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|v| *v) => return,
                a = listener.accept() => a,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => {
                    backoff = Duration::from_millis(5);
                    tcp
                }
                Err(e) if resource_exhausted(&e) => {
                    stats
                        .accept_exhausted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed for lack of resources; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
                Err(e) => {
                    // a peer that reset before accept, and the like: not the listener's fault
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                stats
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, stats) = (acceptor.clone(), tx.clone(), stats.clone());
            let limits = limits.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let conn = Conn {
                            io,
                            idle: limits.idle_timeout,
                            deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                            last_reset: Instant::now(),
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        stats
                            .handshake_failed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        stats
                            .handshake_failed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!("TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
