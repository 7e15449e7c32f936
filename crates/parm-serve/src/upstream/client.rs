//! gRPC client for one model instance speaking the Open Inference Protocol (KServe v2): a parm
//! worker, or any Triton / MLServer / OpenVINO Model Server instance.
//!
//! A call that times out is dropped, which resets its HTTP/2 stream; a parm worker then removes
//! it from its queue if it has not started yet (see [`crate::instance::worker`]). No `grpc-timeout` header
//! is sent, so the timeout is enforced here only and always reported as [`InstanceError::Timeout`].

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::oip::ModelSpec;
use crate::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::oip::grpc::model_infer_request::InferInputTensor;
use crate::oip::grpc::model_metadata_response::TensorMetadata;
use crate::oip::grpc::{self as pb, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_MESSAGE_BYTES, decode_f32_le, encode_f32_le};
use crate::oip::security::AuthToken;

/// How long a (re)connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Polling period of [`InstanceClient::wait_ready`].
pub const READY_POLL: Duration = Duration::from_millis(50);

/// How a frontend's clients reach their instances: the bearer token they send and whether
/// they use TLS. Per frontend ([`crate::coded::FrontendConfig::upstream`]), so that two
/// models served by one process may reach fleets with different tokens and CAs. The default:
/// plain text, no token.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Sent with every call as gRPC metadata `authorization: Bearer TOKEN` (see
    /// [`crate::oip::security`]).
    pub token: Option<AuthToken>,
    /// TLS settings (`https`); `None`: plain text.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientOptions {
    /// Options sending `token` and reaching instances over `tls` (plain text with `None`).
    ///
    /// Errors: TLS files that cannot be used (see [`crate::oip::tls::ClientTls::tonic_client`]).
    pub fn new(token: Option<AuthToken>, tls: Option<&crate::oip::tls::ClientTls>) -> Result<Self, crate::oip::tls::TlsError> {
        Ok(Self { token, tls: tls.map(|t| t.tonic_client()).transpose()? })
    }
}

/// Why a call to an instance failed. Every variant names the instance address.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstanceError {
    /// Connection refused/reset, instance shutting down, or gRPC `UNAVAILABLE` / `CANCELLED`.
    #[error("instance {addr} unavailable: {message}")]
    Unavailable { addr: String, message: String },
    /// No answer within the caller's timeout (or gRPC `DEADLINE_EXCEEDED`).
    #[error("instance {addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The request was malformed (gRPC `INVALID_ARGUMENT`, or caught before sending).
    #[error("instance {addr} rejected the request: {message}")]
    InvalidArgument { addr: String, message: String },
    /// Unknown model or version (gRPC `NOT_FOUND`).
    #[error("instance {addr}: not found: {message}")]
    NotFound { addr: String, message: String },
    /// The instance's queue is full (gRPC `RESOURCE_EXHAUSTED`).
    #[error("instance {addr} overloaded: {message}")]
    Overloaded { addr: String, message: String },
    /// The instance answered, but not with something parm can use (e.g. wrong output length).
    #[error("instance {addr} sent an unusable answer: {message}")]
    BadResponse { addr: String, message: String },
    /// Any other gRPC status (e.g. `INTERNAL` when the model itself failed).
    #[error("instance {addr}: {code:?}: {message}")]
    Other { addr: String, code: Code, message: String },
}

impl InstanceError {
    /// True when another instance (or a later try) may succeed: Unavailable, Timeout, Overloaded.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. } | Self::Overloaded { .. })
    }

    /// The instance address the error came from.
    pub fn addr(&self) -> &str {
        match self {
            Self::Unavailable { addr, .. }
            | Self::Timeout { addr, .. }
            | Self::InvalidArgument { addr, .. }
            | Self::NotFound { addr, .. }
            | Self::Overloaded { addr, .. }
            | Self::BadResponse { addr, .. }
            | Self::Other { addr, .. } => addr,
        }
    }

    pub(crate) fn from_status(addr: &str, status: &Status) -> Self {
        let (addr, message) = (addr.to_owned(), status.message().to_owned());
        match status.code() {
            Code::Unavailable | Code::Cancelled => Self::Unavailable { addr, message },
            // tonic reports a connection that broke mid-call (the instance died) as UNKNOWN
            // with the transport error as source; inference is idempotent, so it is retryable.
            Code::Unknown if status.source().is_some() || message.contains("transport error") => Self::Unavailable { addr, message },
            Code::DeadlineExceeded => Self::Timeout { addr, timeout: Duration::ZERO },
            Code::InvalidArgument => Self::InvalidArgument { addr, message },
            Code::NotFound => Self::NotFound { addr, message },
            Code::ResourceExhausted => Self::Overloaded { addr, message },
            code => Self::Other { addr, code, message },
        }
    }
}

/// A cheap-to-clone handle on one instance; clones share one HTTP/2 connection, which is
/// opened lazily and re-opened after failures.
#[derive(Clone)]
pub struct InstanceClient {
    addr: Arc<str>,
    grpc: GrpcInferenceServiceClient<Channel>,
    /// Model name -> input tensor name, learned from ModelMetadata (Triton checks input names).
    input_names: Arc<Mutex<HashMap<String, String>>>,
    /// Outcomes of `infer` calls: whether the instance is in rotation.
    breaker: Arc<crate::upstream::health::Breaker>,
    /// Token and TLS settings, kept to make a fresh connection ([`Self::reconnected`]).
    options: ClientOptions,
    /// The host label of an `ADDR@HOST` entry (see [`crate::upstream::Instance::host`]).
    host: Option<Arc<str>>,
}

impl std::fmt::Debug for InstanceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceClient").field("addr", &self.addr).finish()
    }
}

/// Splits an instance entry `ADDR@HOST` into the address and the host label; an entry
/// without one (or whose part after the last `@` holds `:` or `/`, as an address's user
/// information would) is all address.
pub fn split_host(entry: &str) -> (&str, Option<&str>) {
    match entry.rsplit_once('@') {
        Some((addr, host)) if !addr.is_empty() && !host.is_empty() && !host.contains([':', '/']) => (addr, Some(host)),
        _ => (entry, None),
    }
}

impl InstanceClient {
    /// A client for `entry` in plain text without a token: [`Self::connect`] with the default
    /// [`ClientOptions`].
    ///
    /// # Errors
    /// Those of [`Self::connect`].
    pub fn connect_lazy(entry: &str) -> anyhow::Result<Self> {
        Self::connect(entry, &ClientOptions::default())
    }

    /// A client for `entry`: an address ("127.0.0.1:9001" or "http://host:port"; `https` when
    /// `options` has TLS), optionally followed by `@HOST`, the label of the host it runs on
    /// (see [`split_host`]); nothing is sent until the first call. TCP_NODELAY, connect timeout
    /// [`CONNECT_TIMEOUT`], messages up to [`MAX_MESSAGE_BYTES`], `options`' token on every call.
    ///
    /// # Errors
    /// An address that is not a valid URI, or no Tokio runtime on this thread (tonic spawns the
    /// connection's task here).
    pub fn connect(entry: &str, options: &ClientOptions) -> anyhow::Result<Self> {
        let (addr, host) = split_host(entry);
        tokio::runtime::Handle::try_current().map_err(|_| anyhow::anyhow!("InstanceClient::connect({addr}) needs a Tokio runtime"))?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") { addr.to_owned() } else { format!("{scheme}://{addr}") };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| anyhow::anyhow!("bad instance address {addr:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            // The frontend cancels calls by design (originals of reconstructed queries, parity
            // queries nobody needs). h2 remembers only 10 cancelled streams by default; the
            // answer to a forgotten one draws a library reset, and after 1024 of those h2
            // closes the connection (GOAWAY), failing every call on it.
            .http2_max_concurrent_reset_streams(crate::oip::grpc::MAX_PENDING_ACCEPT_RESETS);
        if let Some(tls) = options.tls.clone() {
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("TLS to instance {addr}: {e}"))?;
        }
        let grpc = GrpcInferenceServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(InstanceClient {
            addr: addr.into(),
            grpc,
            input_names: Arc::default(),
            breaker: Arc::default(),
            options: options.clone(),
            host: host.map(Arc::from),
        })
    }

    /// The host label of the entry this client was made from (`ADDR@HOST`), if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// A client for the same instance over a new connection (with the same options and host
    /// label), not one stuck in TCP's retransmission backoff; its breaker starts afresh.
    ///
    /// # Errors
    /// Those of [`Self::connect`].
    pub fn reconnected(&self) -> anyhow::Result<Self> {
        let entry = match &self.host {
            Some(h) => format!("{}@{h}", self.addr),
            None => self.addr.to_string(),
        };
        Self::connect(&entry, &self.options)
    }

    /// `message` as a request carrying the bearer token, if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        crate::oip::security::authorize(&mut req, self.options.token.as_ref());
        req
    }

    /// The address this client was made with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `model` on `input` (row-major f32, `shape` = `[batch, ...]`, product = input.len())
    /// as FP32 `raw_input_contents`, and returns the first output tensor's values, flat
    /// (`batch * output_len`). The first call per model also fetches its metadata (input name),
    /// within the same `timeout`.
    ///
    /// # Errors
    /// [`InstanceError::InvalidArgument`] for a shape that does not match `input` (not sent);
    /// the instance's status mapped to a variant; [`InstanceError::Timeout`] after `timeout`;
    /// [`InstanceError::BadResponse`] when the output is missing, not FP32, or its length is
    /// not a positive multiple of batch.
    pub async fn infer(&self, model: &str, input: &[f32], shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let result = self.infer_once(model, input, shape, timeout).await;
        match &result {
            Ok(_) => self.breaker.success(),
            Err(InstanceError::Unavailable { .. } | InstanceError::Timeout { .. }) => self.breaker.failure(),
            Err(_) => {}
        }
        result
    }

    /// False while the instance is out of rotation after repeated connection failures or
    /// timeouts of [`Self::infer`] (see [`crate::upstream::health::Breaker`]); clones share the state.
    pub fn usable(&self) -> bool {
        self.breaker.usable()
    }

    async fn infer_once(&self, model: &str, input: &[f32], shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let batch = self.check_shape(input, shape)?;
        let deadline = Instant::now() + timeout;
        let input_name = self.input_name(model, deadline, timeout).await?;
        let request = pb::ModelInferRequest {
            model_name: model.to_owned(),
            inputs: vec![InferInputTensor { name: input_name, datatype: "FP32".into(), shape: shape.to_vec(), ..Default::default() }],
            raw_input_contents: vec![encode_f32_le(input)],
            ..Default::default()
        };
        let mut grpc = self.grpc.clone();
        let response = self.within(deadline, timeout, grpc.model_infer(self.request(request))).await?;
        let values = output_values(response).map_err(|m| self.bad_response(m))?;
        if values.is_empty() || values.len() % batch != 0 {
            return Err(self.bad_response(format!("{} output values for batch {batch}", values.len())));
        }
        Ok(values)
    }

    /// Whether the instance says `model` is ready; false on any error or after `timeout`.
    pub async fn model_ready(&self, model: &str, timeout: Duration) -> bool {
        let request = pb::ModelReadyRequest { name: model.to_owned(), version: String::new() };
        let mut grpc = self.grpc.clone();
        let call = self.within(Instant::now() + timeout, timeout, grpc.model_ready(self.request(request)));
        call.await.is_ok_and(|r| r.ready)
    }

    /// The instance's description of `model`, with the batch dim (first dim) dropped from the
    /// shapes; also remembers the input tensor name for [`Self::infer`].
    ///
    /// # Errors
    /// The instance's status mapped to a variant, [`InstanceError::Timeout`], or
    /// [`InstanceError::BadResponse`] unless the model has exactly one input and one output,
    /// each with a batch dim.
    pub async fn model_metadata(&self, model: &str, timeout: Duration) -> Result<ModelSpec, InstanceError> {
        self.fetch_metadata(model, Instant::now() + timeout, timeout).await
    }

    /// Polls [`Self::model_ready`] every [`READY_POLL`] until it is true or `total` has passed.
    ///
    /// # Errors
    /// [`InstanceError::Timeout`] (with `timeout = total`) if the model never became ready.
    pub async fn wait_ready(&self, model: &str, total: Duration) -> Result<(), InstanceError> {
        let deadline = Instant::now() + total;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.model_ready(model, left.min(Duration::from_secs(1))).await {
                return Ok(());
            }
            if Instant::now() + READY_POLL >= deadline {
                return Err(InstanceError::Timeout { addr: self.addr.to_string(), timeout: total });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn fetch_metadata(&self, model: &str, deadline: Instant, timeout: Duration) -> Result<ModelSpec, InstanceError> {
        let request = pb::ModelMetadataRequest { name: model.to_owned(), version: String::new() };
        let mut grpc = self.grpc.clone();
        let response = self.within(deadline, timeout, grpc.model_metadata(self.request(request))).await?;
        let spec = spec_from_metadata(response).map_err(|m| self.bad_response(m))?;
        let mut names = self.input_names.lock().unwrap_or_else(|p| p.into_inner());
        names.insert(model.to_owned(), spec.input_name.clone());
        Ok(spec)
    }

    async fn input_name(&self, model: &str, deadline: Instant, timeout: Duration) -> Result<String, InstanceError> {
        let cached = self.input_names.lock().unwrap_or_else(|p| p.into_inner()).get(model).cloned();
        match cached {
            Some(name) => Ok(name),
            None => Ok(self.fetch_metadata(model, deadline, timeout).await?.input_name),
        }
    }

    /// Awaits a gRPC call until `deadline`; past it the call is dropped (stream reset).
    async fn within<T>(
        &self,
        deadline: Instant,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, InstanceError> {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(match InstanceError::from_status(&self.addr, &status) {
                InstanceError::Timeout { addr, .. } => InstanceError::Timeout { addr, timeout },
                other => other,
            }),
            Err(_) => Err(InstanceError::Timeout { addr: self.addr.to_string(), timeout }),
        }
    }

    fn check_shape(&self, input: &[f32], shape: &[i64]) -> Result<usize, InstanceError> {
        let dims: Option<Vec<usize>> = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
        let n = dims.as_deref().and_then(|d| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x)));
        match (dims.as_deref(), n) {
            (Some([batch, ..]), Some(n)) if *batch > 0 && n == input.len() => Ok(*batch),
            _ => Err(InstanceError::InvalidArgument {
                addr: self.addr.to_string(),
                message: format!("shape {shape:?} does not match {} input values (need [batch >= 1, ...])", input.len()),
            }),
        }
    }

    fn bad_response(&self, message: String) -> InstanceError {
        InstanceError::BadResponse { addr: self.addr.to_string(), message }
    }
}

/// The first output's f32 values, from `raw_output_contents[0]` or `contents.fp32_contents`.
fn output_values(response: pb::ModelInferResponse) -> Result<Vec<f32>, String> {
    let output = response.outputs.first().ok_or("no output tensor")?;
    if output.datatype != "FP32" {
        return Err(format!("output {:?} has datatype {:?}, expected FP32", output.name, output.datatype));
    }
    match response.raw_output_contents.first() {
        Some(raw) => decode_f32_le(raw).ok_or_else(|| format!("raw output of {} bytes is not FP32", raw.len())),
        None => Ok(output.contents.as_ref().map(|c| c.fp32_contents.clone()).unwrap_or_default()),
    }
}

fn spec_from_metadata(m: pb::ModelMetadataResponse) -> Result<ModelSpec, String> {
    let one = |what: &str, tensors: &[TensorMetadata]| -> Result<(String, Vec<i64>, String), String> {
        let [t] = tensors else {
            return Err(format!("model {:?} has {} {what}s; parm serves exactly 1", m.name, tensors.len()));
        };
        let (batch, per_query) = t.shape.split_first().ok_or(format!("{what} {:?} has no batch dim", t.name))?;
        // A Triton model with max_batch_size 0 reports its dims without a batch dim ([784]);
        // taking 784 for the batch dim would fail every request ("Expected [784], got [1,1]").
        // parm sends [rows, ...]: the first dim must be variable (-1), or 1 for single rows.
        if *batch != -1 && *batch != 1 {
            return Err(format!(
                "{what} {:?} of model {:?} has shape {:?}: its first dim is not a batch dim (-1); \
                 a Triton model needs max_batch_size > 0",
                t.name, m.name, t.shape
            ));
        }
        Ok((t.name.clone(), per_query.to_vec(), t.datatype.clone()))
    };
    let (input_name, input_shape, datatype) = one("input", &m.inputs)?;
    let (output_name, output_shape, _) = one("output", &m.outputs)?;
    Ok(ModelSpec {
        name: m.name.clone(),
        version: m.versions.first().cloned().unwrap_or_default(),
        platform: m.platform.clone(),
        input_name,
        input_shape,
        output_name,
        output_shape,
        datatype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_may_name_its_host() {
        assert_eq!(split_host("10.0.0.1:9001@node-a"), ("10.0.0.1:9001", Some("node-a")));
        assert_eq!(split_host("[::1]:9001@b"), ("[::1]:9001", Some("b")));
        assert_eq!(split_host("10.0.0.1:9001"), ("10.0.0.1:9001", None));
        assert_eq!(split_host("http://user@host:9001"), ("http://user@host:9001", None), "user information, not a host label");
        assert_eq!(split_host("a:1@"), ("a:1@", None));
    }

    fn metadata(input: &[i64], output: &[i64]) -> pb::ModelMetadataResponse {
        let t = |name: &str, shape: &[i64]| TensorMetadata { name: name.into(), datatype: "FP32".into(), shape: shape.to_vec() };
        pb::ModelMetadataResponse {
            name: "mlp".into(),
            versions: vec!["1".into()],
            platform: "python".into(),
            inputs: vec![t("input", input)],
            outputs: vec![t("output", output)],
        }
    }

    #[test]
    fn metadata_with_a_batch_dim_gives_the_per_query_shapes() {
        let spec = spec_from_metadata(metadata(&[-1, 784], &[-1, 10])).unwrap();
        assert_eq!((spec.input_name.as_str(), &spec.input_shape[..], &spec.output_shape[..]), ("input", &[784][..], &[10][..]));
        // Triton, max_batch_size 0 with dims [1, 784]: single rows still fit.
        assert_eq!(spec_from_metadata(metadata(&[1, 784], &[1, 10])).unwrap().input_shape, vec![784]);
    }

    #[test]
    fn metadata_without_a_batch_dim_is_refused() {
        // Triton, max_batch_size 0 with dims [784]: no batch dim to put rows in.
        let e = spec_from_metadata(metadata(&[784], &[10])).unwrap_err();
        assert!(e.contains("not a batch dim") && e.contains("max_batch_size"), "{e}");
        assert!(spec_from_metadata(metadata(&[-1, 784], &[10])).is_err());
    }
}
