//! A model instance: serves one [`InferenceBackend`] over the Open Inference Protocol gRPC API
//! (KServe v2 `inference.GRPCInferenceService`), so the frontend can treat parm workers, Triton
//! and MLServer alike.
//!
//! # Execution model
//! One compute lane per instance and its bounded, cancellable queue: a request whose client
//! resets its stream (RST_STREAM, or its `grpc-timeout` expires) leaves the queue without
//! running, one that holds the lane runs to completion ([`crate::instance::executor`], shared
//! with the in-process instance of [`crate::instance::local`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::instance::backend::InferenceBackend;
use crate::instance::executor::Executor;
use crate::instance::fault::FaultConfig;
use crate::oip::ModelSpec;
use crate::oip::grpc::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::oip::grpc::model_infer_request::InferInputTensor;
use crate::oip::grpc::model_infer_response::InferOutputTensor;
use crate::oip::grpc::{self as pb, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_MESSAGE_BYTES, decode_f32_le, encode_f32_le};
use crate::oip::security::AuthToken;

/// Server name reported by `ServerMetadata`.
pub const SERVER_NAME: &str = "parm-worker";

/// How a worker runs.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerOptions {
    /// Injected slowdown (default: none).
    pub faults: FaultConfig,
    /// Most requests waiting for the compute lane (not counting the running one); a request
    /// arriving when the queue is full gets `RESOURCE_EXHAUSTED`. Default 1024.
    pub max_queue: usize,
    /// Dynamic batching of queued requests (default: none, one request per execution).
    pub batching: Option<crate::instance::batcher::BatchConfig>,
    /// TLS on the listener, optionally demanding client certificates (default: plain text).
    pub tls: Option<crate::oip::tls::TlsFiles>,
    /// Most connections and idle timeout of the listener ([`crate::server::conn`]).
    pub conn: crate::server::conn::ConnLimits,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { faults: FaultConfig::default(), max_queue: 1024, batching: None, tls: None, conn: Default::default() }
    }
}

/// Serves `backend` on `listener` (TCP_NODELAY on accepted sockets) until `shutdown` resolves.
/// Messages up to [`MAX_MESSAGE_BYTES`] are accepted.
///
/// # Errors
/// An invalid [`ModelSpec`] (see [`ModelSpec::validate`]), or a transport failure of the server.
pub async fn serve_worker(
    listener: TcpListener,
    backend: Arc<dyn InferenceBackend>,
    opts: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_worker_with_auth(listener, backend, opts, None, shutdown).await
}

/// [`serve_worker`] requiring `auth` (when set) on every call: gRPC metadata
/// `authorization: Bearer TOKEN`, else `UNAUTHENTICATED` (see [`crate::oip::security`]).
///
/// # Errors
/// As [`serve_worker`].
pub async fn serve_worker_with_auth(
    listener: TcpListener,
    backend: Arc<dyn InferenceBackend>,
    opts: WorkerOptions,
    auth: Option<AuthToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    backend.spec().validate()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &opts.tls {
        server = server.tls_config(tls.tonic_server()?)?;
    }
    let addr = listener.local_addr()?;
    tracing::info!(%addr, model = %backend.spec().name, faults = %opts.faults, "worker serving");
    let incoming = crate::server::conn::incoming(listener, crate::server::conn::Gate::new("worker", opts.conn));
    let service = GrpcInferenceServiceServer::new(WorkerService::new(backend, opts))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(service, crate::oip::security::grpc_auth(auth));
    // grpc.health.v1 (no token needed), for Kubernetes' gRPC probes: the model is loaded
    // before the worker listens, so it serves from the start.
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in ["", "inference.GRPCInferenceService"] {
        reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    server
        // Bigger HTTP/2 windows than h2's 64 KiB default: a batched image tensor should not
        // wait for flow-control round trips.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // The frontend cancels queued requests by design (a reconstructed query's original, a
        // parity query nobody needs): h2's rapid-reset guard (20 by default) would answer a
        // burst of those with GOAWAY and fail every request on the connection.
        .http2_max_pending_accept_reset_streams(Some(crate::oip::grpc::MAX_PENDING_ACCEPT_RESETS))
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// A worker running in a background task (handy for tests and single-process demos).
/// Dropping the handle also stops the worker.
pub struct WorkerHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Stops accepting, lets in-flight calls finish, and returns the server's result.
    ///
    /// # Errors
    /// The server's error, or a panic of its task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        (&mut self.task).await?
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// Binds `addr` (e.g. `"127.0.0.1:0"` for a free port) and runs [`serve_worker`] in a task.
///
/// # Errors
/// The bind failure or an invalid spec (checked before returning).
pub async fn spawn_worker(addr: &str, backend: Arc<dyn InferenceBackend>, opts: WorkerOptions) -> anyhow::Result<WorkerHandle> {
    spawn_worker_with_auth(addr, backend, opts, None).await
}

/// [`spawn_worker`] with [`serve_worker_with_auth`]'s token check.
///
/// # Errors
/// As [`spawn_worker`].
pub async fn spawn_worker_with_auth(
    addr: &str,
    backend: Arc<dyn InferenceBackend>,
    opts: WorkerOptions,
    auth: Option<AuthToken>,
) -> anyhow::Result<WorkerHandle> {
    backend.spec().validate()?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(serve_worker_with_auth(listener, backend, opts, auth, shutdown));
    Ok(WorkerHandle { addr, stop: Some(stop), task })
}

struct WorkerService {
    exec: Executor,
}

impl WorkerService {
    /// Must run inside a tokio runtime when batching is on (it starts the batching task).
    fn new(backend: Arc<dyn InferenceBackend>, opts: WorkerOptions) -> Self {
        WorkerService { exec: Executor::new(backend, opts.faults, opts.max_queue, opts.batching) }
    }

    fn spec(&self) -> &ModelSpec {
        self.exec.spec()
    }

    /// NOT_FOUND unless `name` is the served model and `version` is empty, the served version,
    /// or "1" (the default version OIP clients send).
    fn check_model(&self, name: &str, version: &str) -> Result<(), Status> {
        check_model(self.spec(), name, version)
    }
}

/// NOT_FOUND unless `name` is `spec`'s model and `version` is empty, its version, or "1" (the
/// default version OIP clients send).
pub(crate) fn check_model(spec: &ModelSpec, name: &str, version: &str) -> Result<(), Status> {
    if name != spec.name {
        return Err(Status::not_found(format!("model {name:?} not served here (this instance serves {:?})", spec.name)));
    }
    if !(version.is_empty() || version == spec.version || version == "1") {
        return Err(Status::not_found(format!("model {name:?} has no version {version:?} (served: {:?})", spec.version)));
    }
    Ok(())
}

/// A validated ModelInfer input: `batch` queries of `spec.input_len()` values each.
struct ParsedInput {
    data: Vec<f32>,
    batch: usize,
}

/// Checks one FP32 tensor of shape `[B, ...]` with `spec.input_len()` values per query, data in
/// `raw_input_contents` or `contents.fp32_contents`. Every failure is INVALID_ARGUMENT.
fn parse_input(spec: &ModelSpec, req: &mut pb::ModelInferRequest) -> Result<ParsedInput, Status> {
    let bad = |msg: String| Err(Status::invalid_argument(msg));
    let [tensor] = req.inputs.as_slice() else {
        return bad(format!("expected exactly 1 input tensor, got {}", req.inputs.len()));
    };
    if tensor.datatype != "FP32" {
        return bad(format!("input {:?}: datatype {:?}, expected FP32", tensor.name, tensor.datatype));
    }
    let batch = batch_of(spec, &tensor.shape).map_err(|m| Status::invalid_argument(format!("input {:?}: {m}", tensor.name)))?;
    let want = batch.checked_mul(spec.input_len()).ok_or_else(|| Status::invalid_argument("input too large"))?;
    let data = tensor_data(tensor, &mut req.raw_input_contents, want)
        .map_err(|m| Status::invalid_argument(format!("input {:?}: {m}", tensor.name)))?;
    Ok(ParsedInput { data, batch })
}

/// The batch size of `shape` = `[B, d1, d2, ...]` where `d1*d2*... == spec.input_len()`
/// (so `[B, 28, 28]` and `[B, 1, 28, 28]` are fine for an input shape of `[784]`).
pub(crate) fn batch_of(spec: &ModelSpec, shape: &[i64]) -> Result<usize, String> {
    let Some((&b, per_query)) = shape.split_first() else {
        return Err("shape is empty; expected [batch, ...]".into());
    };
    if b < 1 || per_query.iter().any(|&d| d < 0) {
        return Err(format!("shape {shape:?}: batch must be >= 1 and dims >= 0"));
    }
    let n = per_query.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d));
    if n != i64::try_from(spec.input_len()).ok() {
        return Err(format!(
            "shape {shape:?} does not hold queries of shape {:?} ({} values each) after the batch dim",
            spec.input_shape,
            spec.input_len()
        ));
    }
    usize::try_from(b).map_err(|_| format!("batch {b} too large"))
}

/// Takes the tensor's f32 values: raw bytes (little-endian) if present, else `fp32_contents`.
fn tensor_data(tensor: &InferInputTensor, raw: &mut [Vec<u8>], want: usize) -> Result<Vec<f32>, String> {
    let typed = tensor.contents.as_ref().map_or(0, |c| c.fp32_contents.len());
    match (raw.len(), typed) {
        (0, n) if n == want => Ok(tensor.contents.as_ref().map(|c| c.fp32_contents.clone()).unwrap_or_default()),
        (0, n) => Err(format!("fp32_contents has {n} values, shape needs {want}")),
        (1, 0) => {
            let bytes = std::mem::take(&mut raw[0]);
            if bytes.len() != want.saturating_mul(4) {
                return Err(format!("raw_input_contents has {} bytes, shape needs {} (FP32)", bytes.len(), want.saturating_mul(4)));
            }
            decode_f32_le(&bytes).ok_or_else(|| "raw bytes not a multiple of 4".into())
        }
        (1, _) => Err("both raw_input_contents and contents given; use one".into()),
        (n, _) => Err(format!("raw_input_contents has {n} entries for 1 input tensor")),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for WorkerService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(&self, req: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let req = req.into_inner();
        self.check_model(&req.name, &req.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(&self, req: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        self.check_model(&req.name, &req.version)?;
        Ok(Response::new(self.spec().grpc_metadata()))
    }

    async fn model_infer(&self, req: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let mut req = req.into_inner();
        self.check_model(&req.model_name, &req.model_version)?;
        let input = parse_input(self.spec(), &mut req)?; // validated before it can take a queue slot
        let out = self.exec.infer(input.data, input.batch).await?;
        let s = self.spec();
        let shape = std::iter::once(input.batch as i64).chain(s.output_shape.iter().copied()).collect();
        let output = InferOutputTensor { name: s.output_name.clone(), datatype: "FP32".to_owned(), shape, ..Default::default() };
        Ok(Response::new(pb::ModelInferResponse {
            model_name: s.name.clone(),
            model_version: s.version.clone(),
            id: req.id,
            outputs: vec![output],
            raw_output_contents: vec![encode_f32_le(&out)],
            ..Default::default()
        }))
    }

    /// Triton's extension; a worker has no model configuration to report (the frontend does).
    async fn model_config(&self, _: Request<pb::ModelConfigRequest>) -> Result<Response<pb::ModelConfigResponse>, Status> {
        Err(Status::unimplemented("ModelConfig is served by the parm frontend, not by workers"))
    }

    /// Triton's extension; workers keep no statistics (the frontend does).
    async fn model_statistics(&self, _: Request<pb::ModelStatisticsRequest>) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        Err(Status::unimplemented("ModelStatistics is served by the parm frontend, not by workers"))
    }

    /// Triton's extension; a worker serves one model (see ModelMetadata), the frontend a repository.
    async fn repository_index(&self, _: Request<pb::RepositoryIndexRequest>) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        Err(Status::unimplemented("RepositoryIndex is served by the parm frontend, not by workers"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_of_accepts_reshaped_queries() {
        let spec = ModelSpec::fp32("m", vec![784], vec![10]);
        assert_eq!(batch_of(&spec, &[3, 784]), Ok(3));
        assert_eq!(batch_of(&spec, &[2, 28, 28]), Ok(2));
        assert_eq!(batch_of(&spec, &[1, 1, 28, 28]), Ok(1));
        for bad in [&[][..], &[784], &[0, 784], &[-1, 784], &[1, 783], &[1, -28, -28], &[1, i64::MAX, 4]] {
            assert!(batch_of(&spec, bad).is_err(), "{bad:?}");
        }
    }
}
