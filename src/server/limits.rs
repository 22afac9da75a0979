//! Limits that keep hostile or broken clients from starving the server (I/O edge): a cap on
//! concurrent connections (in all, and per client address), an idle timeout on every connection, a header-read timeout (hyper's),
//! and a body that must arrive whole, within its size limit and its time limit.
//!
//! A request whose `Content-Length` is over the limit is answered `413` before its body is read,
//! so a client sending `Expect: 100-continue` never gets a `100 Continue` for it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::{ApiError, AppState};
use crate::metrics::Metrics;

/// Connection limits for `serve`.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: no such limit), so that one
    /// client cannot take every connection and lock out Alertmanager and the kubelet.
    pub max_per_client: usize,
    /// A connection that sends and receives nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A client must send a request's headers within this long.
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 512,
            max_per_client: 256,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads the whole body within the size and time limits before the handler sees it.
pub async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.settings.body_limit;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::TooLarge(limit).into_response();
    }
    if declared == Some(0) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(
        state.settings.body_timeout,
        axum::body::to_bytes(body, limit.saturating_add(1)),
    )
    .await
    {
        Err(_) => {
            return ApiError::Timeout(format!(
                "the request body did not arrive within {}",
                crate::duration::format(state.settings.body_timeout)
            ))
            .into_response()
        }
        // Over the limit (the only error a length limit gives) or a broken stream.
        Ok(Err(_)) => return ApiError::TooLarge(limit).into_response(),
        Ok(Ok(b)) if b.len() > limit => return ApiError::TooLarge(limit).into_response(),
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// An acceptor (for `axum_server`) that caps concurrent connections, in all and per client
/// address, and closes idle ones.
#[derive(Clone)]
pub struct Guard {
    permits: Arc<Semaphore>,
    per_client: usize,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    idle: Duration,
    open: IntGauge,
    refused: IntCounterVec,
}

impl Guard {
    /// Counts open and refused connections in `metrics`.
    pub fn new(limits: ConnLimits, metrics: &Metrics) -> Self {
        Guard {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: limits.max_per_client,
            clients: Arc::default(),
            idle: limits.idle_timeout,
            open: metrics.http_connections_open.clone(),
            refused: metrics.http_connections_refused.clone(),
        }
    }

    /// A slot for one more connection from `ip`, unless it has its share already.
    fn client_slot(&self, ip: Option<IpAddr>) -> Option<Option<ClientSlot>> {
        let Some(ip) = ip.filter(|_| self.per_client > 0) else {
            return Some(None);
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let open = clients.entry(ip).or_default();
        if *open >= self.per_client {
            return None;
        }
        *open += 1;
        Some(Some(ClientSlot {
            ip,
            clients: self.clients.clone(),
        }))
    }
}

/// One open connection of a client address, given back when the connection closes.
struct ClientSlot {
    ip: IpAddr,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = clients.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

/// A connection whose client address the acceptor can read.
pub trait PeerAddr {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerAddr for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for Guard
where
    I: AsyncRead + AsyncWrite + PeerAddr + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = Guarded<I>;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, S)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let client = self.client_slot(stream.peer_ip());
        let permit = self.permits.clone().try_acquire_owned();
        let idle = self.idle;
        let (open, refused) = (self.open.clone(), self.refused.clone());
        Box::pin(async move {
            // Dropping the stream closes it: better than letting the descriptor table fill.
            let Some(client) = client else {
                tracing::debug!("connection refused: too many open connections from one client");
                refused.with_label_values(&["max-connections-per-client"]).inc();
                return Err(io::Error::other("too many open connections from one client"));
            };
            let Ok(permit) = permit else {
                tracing::debug!("connection refused: too many open connections");
                refused.with_label_values(&["max-connections"]).inc();
                return Err(io::Error::other("too many open connections"));
            };
            let slots = Slots::new(permit, client, open);
            Ok((Guarded::new(stream, slots, idle), service))
        })
    }
}

/// What one open connection holds until it closes: its place under both caps, and its count in
/// `recoverd_http_connections_open`.
struct Slots {
    _permit: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
    open: IntGauge,
}

impl Slots {
    fn new(permit: OwnedSemaphorePermit, client: Option<ClientSlot>, open: IntGauge) -> Self {
        open.inc();
        Slots {
            _permit: permit,
            _client: client,
            open,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection that holds its slots until closed and fails once idle for too long.
pub struct Guarded<I> {
    io: I,
    _slots: Slots,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<I> Guarded<I> {
    fn new(io: I, slots: Slots, idle: Duration) -> Self {
        Guarded {
            io,
            _slots: slots,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progress(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Applies the header-read timeout (and the timer hyper needs for it) to a server.
pub fn configure<A: axum_server::Address, Acc>(server: &mut axum_server::Server<A, Acc>, limits: ConnLimits) {
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
}
