//! The load generator's gRPC call: one `ModelInfer` message, encoded once, sent over HTTP/2
//! with the `h2` crate directly; the answer judged by its `grpc-status` alone.
//!
//! Why not tonic's client: a load generator must stay cheap next to the server it loads, and
//! on a 2-core machine it gets one core. Through tonic (a `Channel` buffer task, hyper's
//! dispatch task, a protobuf encode and decode per call) `oip-load` spent about as much CPU per
//! request as an in-process `parm serve` spent serving it, so it fell behind its Poisson
//! schedule before the server was overloaded (BENCHMARKS.md, "Reliability: overload").
//! With `h2` a request is queued on the connection from the calling task itself.
//!
//! Framing (gRPC over HTTP/2, `PROTOCOL-HTTP2.md` in grpc/grpc): a POST to
//! `/inference.GRPCInferenceService/ModelInfer` with `content-type: application/grpc` and
//! `te: trailers`, body one length-prefixed message (a 0 byte: not compressed, the length as
//! a big-endian u32, the message); the status comes in the trailers, or in the headers of a
//! trailers-only answer (how servers send errors, parm's fast 503 included).

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Uri};
use parm_serve::oip::grpc::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};

/// The OIP inference call's path.
pub const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `grpc-status: 0`.
    Answered,
    /// Refused by admission control: `UNAVAILABLE` (14) with `retry-after` (parm's fast 503).
    Shed,
    /// Anything else: another status, a transport error, a non-gRPC answer.
    Failed(String),
}

/// One HTTP/2 connection to a gRPC server and the message every call sends; cheap to clone
/// (clones share the connection).
#[derive(Clone)]
pub struct GrpcCaller {
    send: h2::client::SendRequest<Bytes>,
    uri: Uri,
    body: Bytes,
}

impl GrpcCaller {
    /// Connects to `target` (`HOST:PORT` or `http://HOST:PORT`; TCP_NODELAY) and drives the
    /// connection on a task of the current Tokio runtime. Every call sends `message`.
    ///
    /// # Errors
    /// A target that is not an address, a message of 4 GiB or more (gRPC's length prefix is
    /// a u32), a failed TCP connect or HTTP/2 handshake.
    pub async fn connect(target: &str, message: &impl prost::Message) -> anyhow::Result<Self> {
        let body = frame(message)?;
        let base = if target.contains("://") { target.to_owned() } else { format!("http://{target}") };
        let base: Uri = base.parse().with_context(|| format!("bad target {target:?}"))?;
        let authority = base.authority().with_context(|| format!("target {target:?} has no HOST:PORT"))?.clone();
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await.with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .handshake(tcp)
            .await
            .with_context(|| format!("HTTP/2 handshake with {authority}"))?;
        tokio::spawn(connection);
        let uri = Uri::builder().scheme("http").authority(authority).path_and_query(MODEL_INFER_PATH).build()?;
        Ok(Self { send, uri, body })
    }

    /// One ModelInfer call; waits for a free stream when the server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` are all in use.
    pub async fn call(&self) -> Outcome {
        self.try_call().await.unwrap_or_else(|e| Outcome::Failed(e.to_string()))
    }

    async fn try_call(&self) -> Result<Outcome, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request head");
        let (answer, mut stream) = send.send_request(request, false)?;
        stream.send_data(self.body.clone(), true)?;
        let (head, mut body) = answer.await?.into_parts();
        if let Some(outcome) = judge(&head.headers) {
            return Ok(outcome);
        }
        if head.status != http::StatusCode::OK {
            return Ok(Outcome::Failed(format!("HTTP status {}", head.status)));
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            // Hand the bytes back to the flow-control window, or the connection stalls.
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        Ok(judge(&trailers).unwrap_or_else(|| Outcome::Failed("answer without grpc-status".into())))
    }
}

/// `message` as one gRPC length-prefixed message (not compressed).
///
/// # Errors
/// A message of 4 GiB or more.
pub fn frame(message: &impl prost::Message) -> anyhow::Result<Bytes> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| anyhow::anyhow!("a {len}-byte message is over gRPC's 4 GiB limit"))?;
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(prefix);
    message.encode(&mut out).expect("capacity reserved");
    Ok(out.freeze())
}

/// The outcome that `headers` (trailers, or a trailers-only answer's headers) state, if they
/// hold a `grpc-status`.
pub fn judge(headers: &HeaderMap) -> Option<Outcome> {
    let status = headers.get("grpc-status")?.to_str().unwrap_or("?");
    Some(match status {
        "0" => Outcome::Answered,
        "14" if headers.contains_key("retry-after") => Outcome::Shed,
        _ => {
            // gRPC percent-encodes the message.
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
            Outcome::Failed(format!("grpc-status {status}: {}", percent_encoding::percent_decode_str(message).decode_utf8_lossy()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn a_frame_is_flag_length_message() {
        let message = parm_serve::oip::grpc::ModelInferRequest { model_name: "m".into(), ..Default::default() };
        let framed = frame(&message).unwrap();
        let encoded = prost::Message::encode_to_vec(&message);
        assert_eq!(framed[0], 0);
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, encoded.len());
        assert_eq!(&framed[5..], &encoded[..]);
    }

    #[test]
    fn statuses_are_judged_by_code_and_retry_after() {
        assert_eq!(judge(&headers(&[("grpc-status", "0")])), Some(Outcome::Answered));
        assert_eq!(judge(&headers(&[("grpc-status", "14"), ("retry-after", "1")])), Some(Outcome::Shed));
        assert_eq!(
            judge(&headers(&[("grpc-status", "5"), ("grpc-message", "unknown%20model")])),
            Some(Outcome::Failed("grpc-status 5: unknown model".into()))
        );
        assert_eq!(judge(&headers(&[("grpc-status", "14")])), Some(Outcome::Failed("grpc-status 14: ".into())));
        assert_eq!(judge(&headers(&[("content-type", "application/grpc")])), None);
    }
}
