//! End-to-end tests of a worker over real gRPC on 127.0.0.1: Open Inference Protocol behaviour,
//! error codes, the fault delay, and the queue / cancellation semantics ParM's frontend relies on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use parm_serve::oip::grpc::model_infer_request::InferInputTensor;
use parm_serve::oip::grpc::{self as pb, InferTensorContents, decode_f32_le, encode_f32_le};
use parm_serve::upstream::client::{InstanceClient, InstanceError};
use tonic::Code;
use tonic::transport::Channel;

const MODEL: &str = "lin";
const LONG: Duration = Duration::from_secs(10);

/// y = W x + b with 4 inputs and 3 outputs, distinct weights so mistakes show.
fn linear() -> Arc<LinearBackend> {
    let spec = ModelSpec::fp32(MODEL, vec![4], vec![3]);
    let weights = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    Arc::new(LinearBackend::new(spec, weights, vec![1.0, -1.0, 0.25]).unwrap())
}

async fn start(backend: &Arc<LinearBackend>, opts: WorkerOptions) -> (WorkerHandle, InstanceClient) {
    let dyn_backend: Arc<dyn InferenceBackend> = backend.clone();
    let worker = spawn_worker("127.0.0.1:0", dyn_backend, opts).await.unwrap();
    let client = InstanceClient::connect_lazy(&worker.addr.to_string()).unwrap();
    client.wait_ready(MODEL, LONG).await.unwrap();
    (worker, client)
}

fn slow(delay_ms: f64) -> WorkerOptions {
    WorkerOptions { faults: FaultConfig { delay_ms, delay_prob: 1.0, seed: 1, ..FaultConfig::default() }, ..Default::default() }
}

async fn raw_client(worker: &WorkerHandle) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", worker.addr)).await.unwrap()
}

fn request(datatype: &str, shape: Vec<i64>, raw: Vec<Vec<u8>>) -> pb::ModelInferRequest {
    let tensor = InferInputTensor { name: "input".into(), datatype: datatype.into(), shape, ..Default::default() };
    pb::ModelInferRequest {
        model_name: MODEL.into(),
        id: "req-7".into(),
        inputs: vec![tensor],
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn input(batch: usize) -> Vec<f32> {
    (0..batch * 4).map(|i| (i as f32).sin()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_round_trips() {
    let backend = linear();
    let (worker, client) = start(&backend, WorkerOptions::default()).await;
    assert_eq!(&client.model_metadata(MODEL, LONG).await.unwrap(), backend.spec());

    let mut grpc = raw_client(&worker).await;
    assert!(grpc.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(grpc.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let server = grpc.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!((server.name.as_str(), server.version.as_str()), ("parm-worker", env!("CARGO_PKG_VERSION")));
    let meta = grpc.model_metadata(pb::ModelMetadataRequest { name: MODEL.into(), version: String::new() }).await.unwrap().into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 4]);
    assert_eq!(meta.outputs[0].shape, vec![-1, 3]);
    assert_eq!(meta.inputs[0].datatype, "FP32");

    assert!(client.model_ready(MODEL, LONG).await);
    assert!(!client.model_ready("other", LONG).await);
    let ready_v = |version: &str| pb::ModelReadyRequest { name: MODEL.into(), version: version.into() };
    assert!(grpc.model_ready(ready_v("1")).await.unwrap().into_inner().ready);
    assert_eq!(grpc.model_ready(ready_v("9")).await.unwrap_err().code(), Code::NotFound);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_gives_exact_outputs_for_batches_1_and_3() {
    let backend = linear();
    let (_worker, client) = start(&backend, WorkerOptions::default()).await;
    for batch in [1usize, 3] {
        let x = input(batch);
        let y = client.infer(MODEL, &x, &[batch as i64, 4], LONG).await.unwrap();
        assert_eq!(y, backend.forward(&x, batch).unwrap(), "batch {batch}");
        assert_eq!(y.len(), batch * 3);
    }
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_response_fields_reshaped_and_typed_inputs() {
    let backend = linear();
    let (worker, _client) = start(&backend, WorkerOptions::default()).await;
    let mut grpc = raw_client(&worker).await;
    let x = input(2);
    let want = backend.forward(&x, 2).unwrap();

    // [B, 2, 2] holds the same 4 values per query as [B, 4].
    let resp = grpc.model_infer(request("FP32", vec![2, 2, 2], vec![encode_f32_le(&x)])).await.unwrap().into_inner();
    assert_eq!((resp.id.as_str(), resp.model_name.as_str(), resp.model_version.as_str()), ("req-7", MODEL, "1"));
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!((resp.outputs[0].name.as_str(), resp.outputs[0].datatype.as_str()), ("output", "FP32"));
    assert_eq!(resp.outputs[0].shape, vec![2, 3]);
    assert_eq!(decode_f32_le(&resp.raw_output_contents[0]).unwrap(), want);

    // Typed contents instead of raw bytes.
    let mut typed = request("FP32", vec![2, 4], vec![]);
    typed.inputs[0].contents = Some(InferTensorContents { fp32_contents: x.clone(), ..Default::default() });
    let resp = grpc.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(decode_f32_le(&resp.raw_output_contents[0]).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_codes() {
    let backend = linear();
    let (worker, client) = start(&backend, WorkerOptions::default()).await;
    let mut grpc = raw_client(&worker).await;
    let raw = |n: usize| vec![encode_f32_le(&input(1))[..n].to_vec()];
    let mut cases = vec![
        ("wrong datatype", request("FP64", vec![1, 4], raw(16)), Code::InvalidArgument),
        ("short raw data", request("FP32", vec![1, 4], raw(12)), Code::InvalidArgument),
        ("long raw data", request("FP32", vec![1, 4], vec![vec![0; 20]]), Code::InvalidArgument),
        ("shape per query", request("FP32", vec![1, 5], raw(16)), Code::InvalidArgument),
        ("zero batch", request("FP32", vec![0, 4], vec![vec![]]), Code::InvalidArgument),
        ("no data", request("FP32", vec![1, 4], vec![]), Code::InvalidArgument),
        ("two raw entries", request("FP32", vec![1, 4], vec![raw(16)[0].clone(), vec![]]), Code::InvalidArgument),
    ];
    let mut zero_inputs = request("FP32", vec![1, 4], raw(16));
    zero_inputs.inputs.clear();
    cases.push(("zero inputs", zero_inputs, Code::InvalidArgument));
    let mut wrong_model = request("FP32", vec![1, 4], raw(16));
    wrong_model.model_name = "nope".into();
    cases.push(("wrong model", wrong_model, Code::NotFound));

    for (what, req, code) in cases {
        let status = grpc.model_infer(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(!status.message().is_empty(), "{what}");
    }
    assert_eq!(backend.calls(), 0, "no bad request may reach the model");

    // The same errors through InstanceClient, with the address in the message.
    let err = client.infer("nope", &input(1), &[1, 4], LONG).await.unwrap_err();
    assert!(matches!(err, InstanceError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&worker.addr.to_string()), "{err}");
    let err = client.infer(MODEL, &input(1), &[1, 5], LONG).await.unwrap_err();
    assert!(matches!(err, InstanceError::InvalidArgument { .. }) && !err.is_retryable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_slows_each_request() {
    let backend = linear();
    let (_worker, client) = start(&backend, slow(150.0)).await;
    let t0 = Instant::now();
    let y = client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(150), "took {:?}", t0.elapsed());
    assert_eq!(y, backend.forward(&input(1), 1).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_dropped_by_client_never_runs() {
    let backend = linear();
    let (_worker, client) = start(&backend, slow(400.0)).await;
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.infer(MODEL, &input(1), &[1, 4], LONG).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // `first` now holds the lane
    let second = client.infer(MODEL, &input(1), &[1, 4], Duration::from_millis(100)).await;
    assert!(matches!(second, Err(InstanceError::Timeout { .. })), "{second:?}");
    first.await.unwrap().unwrap();
    // Had the second request stayed queued it would run now, ending ~400 ms after the first.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(backend.calls(), 1, "the cancelled queued request must not execute");

    client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap();
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_request_completes_even_if_client_leaves() {
    let backend = linear();
    let (_worker, client) = start(&backend, slow(300.0)).await;
    let gone = client.infer(MODEL, &input(1), &[1, 4], Duration::from_millis(100)).await;
    assert!(matches!(gone, Err(InstanceError::Timeout { .. })), "{gone:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(backend.calls(), 1, "work that held the lane runs to completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_rejected() {
    let backend = linear();
    let opts = WorkerOptions { max_queue: 1, ..slow(400.0) };
    let (_worker, client) = start(&backend, opts).await;
    let spawn_infer = || {
        let client = client.clone();
        tokio::spawn(async move { client.infer(MODEL, &input(1), &[1, 4], LONG).await })
    };
    let running = spawn_infer();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = spawn_infer();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejected = client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap_err();
    assert!(matches!(rejected, InstanceError::Overloaded { .. }) && rejected.is_retryable(), "{rejected}");
    running.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_instance_is_unavailable_and_retryable() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed again
    let client = InstanceClient::connect_lazy(&addr.to_string()).unwrap();
    let err = client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap_err();
    assert!(matches!(err, InstanceError::Unavailable { .. }) && err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(!client.model_ready(MODEL, Duration::from_millis(200)).await);
    let err = client.wait_ready(MODEL, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, InstanceError::Timeout { .. }), "{err}");
}

/// One client outlives its instance's restart: calls while it is down fail as retryable
/// `Unavailable`, and the first call after it is back opens a new connection
/// (tonic's `Channel` reconnects lazily).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_after_its_instance_restarts() {
    let backend = linear();
    let (worker, client) = start(&backend, WorkerOptions::default()).await;
    let addr = worker.addr.to_string();
    client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap();
    worker.shutdown().await.unwrap();
    let err = client.infer(MODEL, &input(1), &[1, 4], LONG).await.unwrap_err();
    assert!(matches!(err, InstanceError::Unavailable { .. }) && err.is_retryable(), "{err}");
    let dyn_backend: Arc<dyn InferenceBackend> = backend.clone();
    let _back = spawn_worker(&addr, dyn_backend, WorkerOptions::default()).await.unwrap();
    let y = client.infer(MODEL, &input(2), &[2, 4], LONG).await.unwrap();
    assert_eq!(y, backend.forward(&input(2), 2).unwrap());
}

/// A worker answers `grpc.health.v1` (Kubernetes' gRPC probes) with SERVING, for the server
/// and for the inference service.
#[tokio::test]
async fn worker_answers_grpc_health_checks() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let (worker, _client) = start(&linear(), WorkerOptions::default()).await;
    let channel = Channel::from_shared(format!("http://{}", worker.addr)).unwrap().connect().await.unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service '{service}'");
    }
}
