//! The HTTP/2 transport under [`crate::upstream::client::InstanceClient`]'s tonic stub for
//! plain-text instances: tonic's codec and status handling over the `h2` crate directly.
//!
//! Why not tonic's `Channel`: a call through it passes a tower `Buffer` task, then hyper's
//! connection task, which spawns one more task per call to await the answer. Each is a
//! wake-up and a hand-off on the frontend's one runtime thread, per instance call. Here the
//! calling task queues its stream on the connection itself and the connection's task only
//! moves bytes. The same change in the load generator (`parm-bench/src/grpc_call.rs`) halved
//! its CPU per request; BENCHMARKS.md ("Where a query's CPU goes") has the frontend's figures.
//!
//! What `Channel` did and this keeps: clones share one connection, opened on the first call
//! and again after the connection ends (a failed connect is the call's error; the next call
//! tries again), within [`CONNECT_TIMEOUT`]; TCP_NODELAY; the HTTP/2 windows of
//! [`crate::oip::grpc`]; a call dropped before its answer resets its stream (h2 sends
//! RST_STREAM CANCEL once every handle on an open stream is gone), which takes it out of a
//! parm worker's queue. Every transport failure reaches tonic as a [`TransportError`], which
//! it reports as `UNKNOWN` with a source, and [`crate::upstream::InstanceError::from_status`]
//! as `Unavailable`: retryable, as with `Channel`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::oip::grpc::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_PENDING_ACCEPT_RESETS};
use crate::upstream::client::CONNECT_TIMEOUT;

/// A transport failure: connect, connection lost, stream reset. Holds only the message, so
/// that tonic does not map an h2 reason found in a source chain to a non-retryable status
/// (a GOAWAY after a worker's drain would read as INTERNAL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport error: {0}")]
pub struct TransportError(String);

impl TransportError {
    fn new(what: &str, e: impl std::fmt::Display) -> Self {
        Self(format!("{what}: {e}"))
    }
}

/// One lazily (re)opened HTTP/2 connection to `http://AUTHORITY`; cheap to clone, clones
/// share the connection. Needs a Tokio runtime when called (the connection's task is spawned
/// there).
#[derive(Clone)]
pub struct H2Channel {
    shared: Arc<Shared>,
}

struct Shared {
    authority: Authority,
    /// The open connection, if any, and its number (so that a finished connection's task
    /// does not clear its successor).
    open: Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    /// Held while connecting: concurrent first calls share one connection attempt.
    connecting: tokio::sync::Mutex<u64>,
}

impl H2Channel {
    /// A channel to `authority` (`HOST:PORT`); nothing is sent until the first call.
    pub fn new(authority: Authority) -> Self {
        let shared = Shared { authority, open: Mutex::new(None), connecting: tokio::sync::Mutex::new(0) };
        Self { shared: Arc::new(shared) }
    }

    fn open(&self) -> Option<h2::client::SendRequest<Bytes>> {
        self.shared.open.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, send)| send.clone())
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<h2::client::SendRequest<Bytes>, TransportError> {
        if let Some(send) = self.open() {
            return Ok(send);
        }
        let mut generation = self.shared.connecting.lock().await;
        if let Some(send) = self.open() {
            return Ok(send);
        }
        let (send, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake(&self.shared.authority))
            .await
            .map_err(|_| TransportError::new("connect", format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        *generation += 1;
        let id = *generation;
        *self.shared.open.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, send.clone()));
        // Weak: the task must not keep the channel (and with it the connection) alive.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let _ = connection.await;
            forget(&shared, id);
        });
        Ok(send)
    }

    /// Sends one unary gRPC request (the body is collected first: one encoded message).
    async fn send(self, request: Request<tonic::body::Body>) -> Result<Response<ResponseBody>, TransportError> {
        let (mut head, body) = request.into_parts();
        let data = body.collect().await.map_err(|e| TransportError::new("request body", e))?.to_bytes();
        let path = head.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.uri = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.shared.authority.clone());
            parts.path_and_query = Some(path);
            parts
        })
        .map_err(|e| TransportError::new("request URI", e))?;
        let send = self.connection().await?;
        let mut send = send.ready().await.map_err(|e| TransportError::new("connection", e))?;
        let (answer, mut stream) =
            send.send_request(Request::from_parts(head, ()), data.is_empty()).map_err(|e| TransportError::new("send", e))?;
        if !data.is_empty() {
            stream.send_data(data, true).map_err(|e| TransportError::new("send", e))?;
        }
        let answer = answer.await.map_err(|e| TransportError::new("answer", e))?;
        Ok(answer.map(|recv| ResponseBody { recv, data_done: false, done: false }))
    }
}

/// Clears the open connection `id` of `shared`, if it is still the open one.
fn forget(shared: &Weak<Shared>, id: u64) {
    if let Some(shared) = shared.upgrade() {
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().is_some_and(|(open_id, _)| *open_id == id) {
            *open = None;
        }
    }
}

async fn handshake(
    authority: &Authority,
) -> Result<(h2::client::SendRequest<Bytes>, h2::client::Connection<tokio::net::TcpStream, Bytes>), TransportError> {
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(|e| TransportError::new("connect", e))?;
    tcp.set_nodelay(true).map_err(|e| TransportError::new("connect", e))?;
    h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // The frontend cancels calls by design; see `MAX_PENDING_ACCEPT_RESETS`.
        .max_concurrent_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .handshake(tcp)
        .await
        .map_err(|e| TransportError::new("HTTP/2 handshake", e))
}

impl tower_service::Service<Request<tonic::body::Body>> for H2Channel {
    type Response = Response<ResponseBody>;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per call: `send` waits for a stream slot on the connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// An answer's body: its DATA frames (their bytes handed back to flow control as read), then
/// its trailers.
pub struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(TransportError::new("answer body", e)))),
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(TransportError::new("answer trailers", e))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
