//! The frontend's HTTP and gRPC interfaces end to end over 127.0.0.1: the binary tensor
//! extension, datatype conversion, Triton's error mapping, compressed bodies, config /
//! statistics endpoints, Prometheus metrics, deadlines, gRPC inference and health. Instances are parm workers serving exact
//! linear models, so every answer can be checked exactly.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::server::api::{Serving, Shared};
use serde_json::{Value, json};

const IN: usize = 4;
const OUT: usize = 3;

fn weights() -> Vec<f32> {
    (0..IN * OUT).map(|i| i as f32 * 0.5 - 2.0).collect()
}
const BIAS: [f32; OUT] = [1.0, -1.0, 0.25];

/// The deployed model F(x) = W x + b and its exact parity model for k = 2: W p + 2 b.
fn models() -> (Arc<LinearBackend>, Arc<LinearBackend>) {
    let f = LinearBackend::new(ModelSpec::fp32("deployed", vec![IN as i64], vec![OUT as i64]), weights(), BIAS.to_vec()).unwrap();
    let two_b = BIAS.iter().map(|b| 2.0 * b).collect();
    let fp = LinearBackend::new(ModelSpec::fp32("parity", vec![IN as i64], vec![OUT as i64]), weights(), two_b).unwrap();
    (Arc::new(f), Arc::new(fp))
}

fn expected(x: &[f32]) -> Vec<f32> {
    models().0.forward(x, x.len() / IN).unwrap()
}

struct Cluster {
    workers: Vec<WorkerHandle>,
    url: String,
    grpc: String,
    serving: Shared,
    /// The deployed model, shared by both deployed workers (its call counter counts both).
    deployed: Arc<LinearBackend>,
}

/// Two deployed instances (the first slowed by `delay_ms` per request) and one parity instance.
async fn cluster(delay_ms: f64) -> Cluster {
    cluster_delays([delay_ms, 0.0, 0.0]).await
}

/// As [`cluster`], with each instance's delay (deployed 0, deployed 1, parity), ms.
async fn cluster_delays(delays: [f64; 3]) -> Cluster {
    let (f, fp) = models();
    let f2 = f.clone();
    let opts = |delay_ms| WorkerOptions { faults: FaultConfig { delay_ms, ..Default::default() }, ..Default::default() };
    let mut workers = Vec::new();
    for d in &delays[..2] {
        workers.push(spawn_worker("127.0.0.1:0", f2.clone() as Arc<dyn InferenceBackend>, opts(*d)).await.unwrap());
    }
    workers.push(spawn_worker("127.0.0.1:0", fp as Arc<dyn InferenceBackend>, opts(delays[2])).await.unwrap());
    let addr = |w: &WorkerHandle| w.addr.to_string();
    let cfg = FrontendConfig {
        parity: vec![addr(&workers[2])],
        parity_model: "parity".into(),
        // Several tests want exact answers: with the default 1 ms straggler threshold (which
        // caps the decode grace) a fast query on a loaded CI machine can be reconstructed
        // (approximate) instead, as happened once in upstream_dispatch.rs.
        straggler: parm_serve::coded::policy::StragglerPolicy::default().with_min(Duration::from_millis(200)),
        ..FrontendConfig::new(ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]), workers[..2].iter().map(addr).collect())
    };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await;
    let serving = Serving::start(frontend, Default::default()).await.unwrap();
    let (http_addr, grpc) = crate::support::listen(&serving).await;
    let url = format!("http://{http_addr}");
    Cluster { workers, url, grpc, serving, deployed: f }
}

fn input(batch: usize) -> Vec<f32> {
    (0..batch * IN).map(|i| (i % 7) as f32 - 2.5).collect()
}

/// A binary-extension body: JSON header then `raw`.
fn binary_body(header: &Value, raw: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let n = body.len();
    body.extend_from_slice(raw);
    (body, n)
}

async fn post_binary(c: &Cluster, header: &Value, raw: &[u8]) -> reqwest::Response {
    let (body, n) = binary_body(header, raw);
    reqwest::Client::new()
        .post(format!("{}/v2/models/lin/infer", c.url))
        .header("Inference-Header-Content-Length", n.to_string())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// (JSON header, binary tail) of a binary-extension response.
async fn split_response(r: reqwest::Response) -> (Value, Vec<u8>) {
    let n: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    (serde_json::from_slice(&body[..n]).unwrap(), body[n..].to_vec())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    parm_serve::oip::grpc::decode_f32_le(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_inputs_and_outputs_round_trip_exactly() {
    let c = cluster(0.0).await;
    let x = input(3);
    let raw = parm_serve::oip::grpc::encode_f32_le(&x);
    let header = json!({"id": "b1", "inputs": [{"name": "input", "shape": [3, IN], "datatype": "FP32",
        "parameters": {"binary_data_size": raw.len()}}], "outputs": [{"name": "output", "parameters": {"binary_data": true}}]});
    let r = post_binary(&c, &header, &raw).await;
    assert_eq!(r.status(), 200);
    let (head, tail) = split_response(r).await;
    assert_eq!(head["id"], "b1");
    assert_eq!(head["outputs"][0]["shape"], json!([3, OUT]));
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], json!(3 * OUT * 4));
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(f32s(&tail), expected(&x));
    // Request-level binary_data_output with a JSON input.
    let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}],
        "parameters": {"binary_data_output": true}});
    let r = reqwest::Client::new().post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap();
    let (_, tail) = split_response(r).await;
    assert_eq!(f32s(&tail), expected(&input(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_datatypes_are_converted_to_fp32() {
    let c = cluster(0.0).await;
    let x: Vec<f32> = vec![1.0, -2.0, 3.0, 0.0];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("INT8", x.iter().map(|v| *v as i8 as u8).collect()),
        ("INT32", x.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect()),
        ("INT64", x.iter().flat_map(|v| (*v as i64).to_le_bytes()).collect()),
        ("FP64", x.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect()),
        ("FP16", [0x3c00u16, 0xc000, 0x4200, 0].iter().flat_map(|h| h.to_le_bytes()).collect()),
        ("BF16", x.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()),
    ];
    for (dt, raw) in cases {
        let header = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": dt,
            "parameters": {"binary_data_size": raw.len()}}]});
        let r = post_binary(&c, &header, &raw).await;
        assert_eq!(r.status(), 200, "{dt}");
        let v: Value = r.json().await.unwrap();
        let got: Vec<f32> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got, expected(&x), "{dt}");
    }
    // JSON data with an integer datatype.
    let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "UINT8", "data": [1, 2, 3, 4]}]});
    let r = reqwest::Client::new().post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_follow_tritons_mapping() {
    let c = cluster(0.0).await;
    let client = reqwest::Client::new();
    let infer = format!("{}/v2/models/lin/infer", c.url);
    let ok_input = json!({"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)});
    let cases: Vec<(String, Vec<u8>, Option<usize>, u16)> = vec![
        (infer.clone(), b"{not json".to_vec(), None, 400),
        (infer.clone(), b"[1, 2]".to_vec(), None, 400),
        (format!("{}/v2/models/nope/infer", c.url), serde_json::to_vec(&json!({"inputs": [ok_input]})).unwrap(), None, 404),
        (format!("{}/v2/models/lin/versions/7/infer", c.url), serde_json::to_vec(&json!({"inputs": [ok_input]})).unwrap(), None, 404),
        (
            infer.clone(),
            serde_json::to_vec(
                &json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "BOOL", "data": [true, false, true, true]}]}),
            )
            .unwrap(),
            None,
            400,
        ),
        (
            infer.clone(),
            serde_json::to_vec(
                &json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}),
            )
            .unwrap(),
            None,
            400,
        ),
        (
            infer.clone(),
            serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP99", "data": input(1)}]})).unwrap(),
            None,
            400,
        ),
        (
            infer.clone(),
            serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})).unwrap(),
            None,
            400,
        ),
        (infer.clone(), serde_json::to_vec(&json!({"inputs": [ok_input], "outputs": [{"name": "nope"}]})).unwrap(), None, 400),
        (infer.clone(), serde_json::to_vec(&json!({"inputs": [ok_input], "parameters": {"timeout": "soon"}})).unwrap(), None, 400),
        (
            infer.clone(),
            serde_json::to_vec(
                &json!({"inputs": [{"name": "input", "shape": [2000, IN], "datatype": "FP32", "data": vec![0.0; 2000 * IN]}]}),
            )
            .unwrap(),
            None,
            400,
        ),
    ];
    for (url, body, _, want) in cases {
        let r = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{}", String::from_utf8_lossy(&body[..body.len().min(120)]));
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // Binary size mismatches and a header length past the body.
    let header = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]});
    assert_eq!(post_binary(&c, &header, &[0; 12]).await.status(), 400);
    assert_eq!(post_binary(&c, &header, &[0; 16]).await.status(), 400);
    let r = client.post(&infer).header("Inference-Header-Content-Length", "99999").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client.get(format!("{}/v2/models/nope/config", c.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_bodies_are_accepted() {
    let c = cluster(0.0).await;
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}]})).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(&body).unwrap();
    for (enc, data) in [("gzip", gz.finish().unwrap()), ("deflate", zl.finish().unwrap())] {
        let r = reqwest::Client::new()
            .post(format!("{}/v2/models/lin/infer", c.url))
            .header("Content-Encoding", enc)
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{enc}");
        let v: Value = r.json().await.unwrap();
        let got: Vec<f32> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got, expected(&input(1)), "{enc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_stats_and_metrics_move_with_traffic() {
    let c = cluster(0.0).await;
    let client = reqwest::Client::new();
    let meta: Value = client.get(format!("{}/v2", c.url)).send().await.unwrap().json().await.unwrap();
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    let cfg: Value = client.get(format!("{}/v2/models/lin/config", c.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["input"][0]["dims"], json!([IN]));
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(cfg["parameters"]["parm_k"]["string_value"], "2");
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && (l.len() == name.len() || matches!(l.as_bytes()[name.len()], b'{' | b' ')))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = client.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&before, "nv_inference_request_success"), 0.0);
    for _ in 0..5 {
        let body = json!({"inputs": [{"name": "input", "shape": [2, IN], "datatype": "FP32", "data": input(2)}]});
        assert_eq!(client.post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap().status(), 200);
    }
    let bad = json!({"inputs": []});
    assert_eq!(client.post(format!("{}/v2/models/lin/infer", c.url)).json(&bad).send().await.unwrap().status(), 400);
    let after = client.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&after, "nv_inference_request_success"), 5.0, "{after}");
    assert_eq!(metric(&after, "nv_inference_count"), 10.0);
    assert_eq!(metric(&after, "nv_inference_request_failure"), 1.0);
    assert!(after.contains("nv_inference_request_failure{model=\"lin\",version=\"1\",reason=\"REJECTED\"} 1"), "{after}");
    assert!(metric(&after, "nv_inference_request_duration_us") > 0.0);
    assert!(metric(&after, "nv_inference_compute_infer_duration_us") > 0.0);
    assert!(metric(&after, "nv_inference_exec_count") >= 10.0);
    assert_eq!(metric(&after, "nv_inference_pending_request_count"), 0.0);
    assert!(metric(&after, "parm_parity_queries_total") >= 5.0);
    assert_eq!(metric(&after, "parm_instance_up"), 3.0);
    assert_eq!(metric(&after, "parm_answer_latency_seconds_count"), 10.0);
    for name in ["nv_inference_request_success", "nv_inference_pending_request_count", "parm_instance_up", "parm_answer_latency_seconds"] {
        assert!(after.contains(&format!("# HELP {name} ")), "no HELP for {name}");
    }
    let stats: Value = client.get(format!("{}/v2/models/lin/stats", c.url)).send().await.unwrap().json().await.unwrap();
    let m = &stats["model_stats"][0];
    assert_eq!(m["inference_count"], 10);
    assert_eq!(m["inference_stats"]["success"]["count"], 5);
    assert_eq!(m["inference_stats"]["fail"]["count"], 1);
    assert!(m["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    assert!(m["last_inference"].as_u64().unwrap() > 0);
    assert!(c.serving.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_parameter_gives_504_in_time() {
    // Instance 0 takes 400 ms per request; a 1 us deadline expires before any instance can
    // answer, so the client must get 504 at once, never the late answer.
    let c = cluster(400.0).await;
    let client = reqwest::Client::new();
    let mut saw_504 = false;
    for _ in 0..4 {
        let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}],
            "parameters": {"timeout": 1}});
        let t = Instant::now();
        let r = client.post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap();
        let took = t.elapsed();
        if r.status() == 504 {
            saw_504 = true;
            assert!(took < Duration::from_millis(300), "504 came after {took:?}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("deadline"));
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(saw_504, "a 1 us deadline never expired");
    let metrics = client.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"CANCELED\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_queries_are_cancelled_on_the_instances() {
    // Every instance takes 200 ms per request. Four single-row requests with a 50 ms deadline:
    // each deployed instance runs its first query (a running computation cannot be recalled)
    // and holds the second in its queue; at the deadline the queued ones must be dropped
    // there, never computed.
    let c = cluster_delays([200.0; 3]).await;
    let before = c.deployed.calls();
    let client = reqwest::Client::new();
    let calls = (0..4).map(|i| {
        let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}],
            "parameters": {"timeout": 50_000}, "id": i.to_string()});
        client.post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send()
    });
    let t = Instant::now();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().status(), 504);
    }
    assert!(t.elapsed() < Duration::from_millis(150), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.deployed.calls() - before, 2, "queued queries past their deadline still ran");
    let st = c.serving.stats_json();
    assert_eq!(st["model_stats"][0]["inference_stats"]["fail"]["count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_deployed_instances() {
    let mut c = cluster(0.0).await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, url: String| async move {
        client.get(format!("{url}/v2/health/ready")).send().await.unwrap().status().as_u16()
    };
    assert_eq!(ready(client.clone(), c.url.clone()).await, 200);
    // One deployed instance dies: still ready, and every request is still answered.
    c.workers.remove(1).shutdown().await.unwrap();
    for _ in 0..10 {
        let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}]});
        let r = client.post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(ready(client.clone(), c.url.clone()).await, 200);
    // Both gone: readiness turns false within a few probe periods.
    c.workers.remove(0).shutdown().await.unwrap();
    let t = Instant::now();
    while ready(client.clone(), c.url.clone()).await != 503 {
        assert!(t.elapsed() < Duration::from_secs(5), "still ready with no deployed instance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let model = client.get(format!("{}/v2/models/lin/ready", c.url)).send().await.unwrap();
    assert_eq!(model.status(), 503);
    let metrics = client.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("parm_instance_up{") && l.contains("role=\"parity\"") && l.ends_with(" 1")), "{metrics}");
    assert_eq!(metrics.lines().filter(|l| l.starts_with("parm_instance_up{") && l.ends_with(" 0")).count(), 2, "{metrics}");
    let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": input(1)}]});
    let r = client.post(format!("{}/v2/models/lin/infer", c.url)).json(&body).send().await.unwrap();
    // Not ready, yet still answering: the parity instance and the cached F(0) reconstruct the
    // query of a padded group (exactly, for this linear model).
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["parameters"]["parm_reconstructed"], true);
    let got: Vec<f32> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    for (g, w) in got.iter().zip(expected(&input(1))) {
        assert!((g - w).abs() < 1e-4, "{got:?}");
    }
    let channel = tonic::transport::Channel::from_shared(c.grpc.clone()).unwrap().connect().await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let t = Instant::now();
    loop {
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        if r.status == 2 {
            break; // NOT_SERVING
        }
        assert!(t.elapsed() < Duration::from_secs(2), "gRPC health still SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod grpc {
    use super::*;
    use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
    use parm_serve::oip::grpc::model_infer_request::InferInputTensor;
    use parm_serve::oip::grpc::{self as pb, InferTensorContents};
    use tonic::Code;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn client(c: &Cluster) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
        GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap()
    }

    fn request(datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "lin".into(),
            id: "g1".into(),
            inputs: vec![InferInputTensor { name: "input".into(), datatype: datatype.into(), shape, ..Default::default() }],
            raw_input_contents: vec![raw],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_metadata_config_and_stats() {
        let c = cluster(0.0).await;
        let mut g = client(&c).await;
        assert!(g.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
        assert!(g.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
        let ready = g.model_ready(pb::ModelReadyRequest { name: "lin".into(), version: String::new() }).await.unwrap();
        assert!(ready.into_inner().ready);
        let err = g.model_ready(pb::ModelReadyRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let meta = g.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
        assert!(meta.extensions.contains(&"binary_tensor_data".to_string()));
        let m = g.model_metadata(pb::ModelMetadataRequest { name: "lin".into(), version: "1".into() }).await.unwrap().into_inner();
        assert_eq!(m.inputs[0].shape, vec![-1, IN as i64]);
        let cfg = g.model_config(pb::ModelConfigRequest { name: "lin".into(), version: String::new() }).await.unwrap().into_inner();
        let cfg = cfg.config.unwrap();
        assert_eq!(cfg.input[0].dims, vec![IN as i64]);
        assert_eq!(cfg.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(cfg.parameters["parm_k"].string_value, "2");
        let raw = parm_serve::oip::grpc::encode_f32_le(&input(2));
        g.model_infer(request("FP32", vec![2, IN as i64], raw)).await.unwrap();
        let st = g.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner();
        assert_eq!(st.model_stats[0].inference_count, 2);
        assert_eq!(st.model_stats[0].inference_stats.as_ref().unwrap().success.as_ref().unwrap().count, 1);
        let channel = tonic::transport::Channel::from_shared(c.grpc.clone()).unwrap().connect().await.unwrap();
        let mut h = HealthClient::new(channel);
        for service in ["", "inference.GRPCInferenceService"] {
            let r = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
            assert_eq!(r.status, 1, "SERVING for {service:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn infer_raw_and_typed_contents_exactly() {
        let c = cluster(0.0).await;
        let mut g = client(&c).await;
        let x = input(3);
        let r = g.model_infer(request("FP32", vec![3, IN as i64], parm_serve::oip::grpc::encode_f32_le(&x))).await.unwrap().into_inner();
        assert_eq!(r.id, "g1");
        assert_eq!(r.outputs[0].shape, vec![3, OUT as i64]);
        assert_eq!(f32s(&r.raw_output_contents[0]), expected(&x));
        let ints: Vec<u8> = [1i16, -2, 3, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let r = g.model_infer(request("INT16", vec![1, IN as i64], ints)).await.unwrap().into_inner();
        assert_eq!(f32s(&r.raw_output_contents[0]), expected(&[1.0, -2.0, 3.0, 0.0]));
        let mut typed = request("FP64", vec![1, IN as i64], vec![]);
        typed.raw_input_contents.clear();
        typed.inputs[0].contents = Some(InferTensorContents { fp64_contents: vec![1.0, -2.0, 3.0, 0.0], ..Default::default() });
        let r = g.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(f32s(&r.raw_output_contents[0]), expected(&[1.0, -2.0, 3.0, 0.0]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_tritons_codes() {
        let c = cluster(0.0).await;
        let mut g = client(&c).await;
        let ok = || request("FP32", vec![1, IN as i64], parm_serve::oip::grpc::encode_f32_le(&input(1)));
        let mut unknown = ok();
        unknown.model_name = "nope".into();
        let mut short = ok();
        short.raw_input_contents[0].truncate(8);
        let mut out = ok();
        out.outputs.push(pb::model_infer_request::InferRequestedOutputTensor { name: "nope".into(), ..Default::default() });
        let cases = [
            (unknown, Code::NotFound),
            (request("BOOL", vec![1, IN as i64], vec![1; IN]), Code::InvalidArgument),
            (request("BYTES", vec![1, IN as i64], vec![0; 8]), Code::InvalidArgument),
            (request("FP32", vec![1, 3], vec![0; 12]), Code::InvalidArgument),
            (request("FP32", vec![-1, IN as i64], vec![0; 16]), Code::InvalidArgument),
            (short, Code::InvalidArgument),
            (out, Code::InvalidArgument),
        ];
        for (req, code) in cases {
            let what = format!("{:?}", req.inputs[0].datatype);
            let err = g.model_infer(req).await.unwrap_err();
            assert_eq!(err.code(), code, "{what}: {}", err.message());
            assert!(!err.message().is_empty());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_give_deadline_exceeded_in_time() {
        // Every instance takes 300 ms per request, so neither prediction nor reconstruction can
        // make a 1 us `timeout` parameter or a 40 ms grpc-timeout.
        let c = cluster_delays([300.0; 3]).await;
        let mut g = client(&c).await;
        let raw = parm_serve::oip::grpc::encode_f32_le(&input(1));
        let mut req = request("FP32", vec![1, IN as i64], raw.clone());
        req.parameters
            .insert("timeout".into(), pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(1)) });
        let err = g.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
        // The header alone (set by hand, so that only the server enforces it).
        let mut req = tonic::Request::new(request("FP32", vec![1, IN as i64], raw));
        req.metadata_mut().insert("grpc-timeout", "40m".parse().unwrap());
        let t = Instant::now();
        let err = g.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(20) && took < Duration::from_millis(200), "{took:?}");
        let st = c.serving.stats_json();
        assert_eq!(st["model_stats"][0]["inference_stats"]["fail"]["count"], 2);
    }
}
