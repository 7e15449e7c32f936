//! What every listener of the frontend allows its connections (issue 17): at most
//! [`ConnLimits::max_connections`] open at once, and none idle for longer than
//! [`ConnLimits::idle_timeout`].
//!
//! - **Connection limit**: a connection accepted past the limit is closed at once, before any
//!   byte is read (Envoy's `max_connections`, nginx's `worker_connections`): file descriptors,
//!   buffers and tasks stay bounded whatever clients open. The refusals are counted and
//!   logged (the first, then every 1,000th).
//! - **Idle timeout**: a connection that moves no byte either way for the timeout reads an end
//!   of file, so the HTTP/1.1 or HTTP/2 server closes it. Clients and load balancers that keep
//!   connections open and forget them (HTTP/1.1 keep-alive, pooled HTTP/2) do not pile up.
//!   Keep the timeout above the longest request a client may wait for (its deadline): a
//!   request in flight moves no byte while the instances compute.
//!
//! The gate wraps the accepted TCP stream ([`Gate::admit`]), under TLS where there is TLS, so
//! the HTTP, gRPC and metrics listeners share one mechanism.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Default [`ConnLimits::max_connections`] (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default [`ConnLimits::idle_timeout`] (`--idle-timeout-ms`): above the 30 s default request
/// deadlines.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Limits on one listener's connections (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self { max_connections: DEFAULT_MAX_CONNECTIONS, idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

/// One listener's gate: its connection permits and its count of refusals.
#[derive(Clone)]
pub struct Gate {
    name: &'static str,
    limits: ConnLimits,
    /// Permits in all: `max_connections` within what a semaphore holds.
    capacity: usize,
    permits: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
}

impl Gate {
    /// A gate for the listener called `name` (in log lines).
    pub fn new(name: &'static str, limits: ConnLimits) -> Self {
        let capacity = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Self { name, limits, capacity, permits: Arc::new(Semaphore::new(capacity)), refused: Arc::default() }
    }

    /// `stream` wrapped in the idle timeout, holding one connection permit until it is dropped;
    /// `None` (and `stream` dropped, which closes it) when the listener is at its limit.
    pub fn admit<S>(&self, stream: S) -> Option<Limited<S>> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(
                    listener = self.name,
                    refused = n,
                    "connection limit ({}) reached: closing new connections",
                    self.limits.max_connections
                );
            }
            return None;
        };
        let idle = self.limits.idle_timeout;
        Some(Limited { inner: stream, idle, deadline: Box::pin(tokio::time::sleep(idle)), _permit: permit })
    }

    /// Connections closed because the listener was at its limit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

/// An admitted connection (see [`Gate::admit`]).
pub struct Limited<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Limited<S> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            // Idle for the whole timeout: an end of file, which closes the connection.
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Limited<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted connections of `listener` that `gate` admits, TCP_NODELAY set: the incoming
/// stream of a tonic server. Accept errors are logged and skipped, as tonic's own listener does.
pub fn incoming(listener: tokio::net::TcpListener, gate: Gate) -> impl futures::Stream<Item = io::Result<Limited<tokio::net::TcpStream>>> {
    futures::stream::unfold((listener, gate), |(listener, gate)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(s) = gate.admit(stream) {
                        return Some((Ok(s), (listener, gate)));
                    }
                }
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    /// Past the limit a connection is refused; a closed one frees its permit.
    #[tokio::test]
    async fn the_limit_refuses_extra_connections_until_one_closes() {
        let gate = Gate::new("test", ConnLimits { max_connections: 2, idle_timeout: Duration::from_secs(60) });
        let a = gate.admit(pair().await.0).expect("first");
        let _b = gate.admit(pair().await.0).expect("second");
        assert!(gate.admit(pair().await.0).is_none());
        assert_eq!((gate.open(), gate.refused()), (2, 1));
        drop(a);
        assert!(gate.admit(pair().await.0).is_some(), "a permit came back");
    }

    /// A connection that moves bytes stays open past the timeout; one that goes quiet reads an
    /// end of file after it.
    #[tokio::test]
    async fn an_idle_connection_reads_end_of_file() {
        let gate = Gate::new("test", ConnLimits { max_connections: 10, idle_timeout: Duration::from_millis(200) });
        let (server, mut client) = pair().await;
        let mut server = gate.admit(server).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&buf).await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(400), "busy past the timeout");
        let quiet = std::time::Instant::now();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "an idle connection ends");
        let waited = quiet.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(2), "{waited:?}");
    }
}
