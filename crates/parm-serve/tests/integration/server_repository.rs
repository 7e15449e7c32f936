//! Several models behind one server (a model repository): two coded models of different
//! shapes, each over its own parm workers serving exact linear models, and a third whose only
//! instance is down. Every model path routes to its own frontend and statistics; unknown
//! models get 404 / NOT_FOUND; the repository index and readiness cover every model; a
//! repository folder is read with its bad configs named.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use parm_serve::oip::grpc::{self as pb, model_infer_request::InferInputTensor};
use parm_serve::server::api::{Model, Serving, Shared};
use parm_serve::server::config::load_repository;
use serde_json::{Value, json};
use tonic::Code;

/// One served linear model: `name` maps `input` values to `output` values.
struct Linear {
    name: &'static str,
    input: usize,
    output: usize,
}

const SMALL: Linear = Linear { name: "small", input: 4, output: 3 };
const WIDE: Linear = Linear { name: "wide", input: 2, output: 5 };

impl Linear {
    fn weights(&self, scale: f32) -> Vec<f32> {
        (0..self.input * self.output).map(|i| scale * (i as f32 * 0.5 - 2.0)).collect()
    }

    fn bias(&self) -> Vec<f32> {
        (0..self.output).map(|i| i as f32 - 1.0).collect()
    }

    /// F(x) = W x + b on the deployed instances, W p + 2 b (exact for k = 2) on the parity one.
    fn backends(&self) -> (Arc<LinearBackend>, Arc<LinearBackend>) {
        let spec = |name: &str| ModelSpec::fp32(name, vec![self.input as i64], vec![self.output as i64]);
        let f = LinearBackend::new(spec(&format!("{}-deployed", self.name)), self.weights(1.0), self.bias()).unwrap();
        let two_b = self.bias().iter().map(|b| 2.0 * b).collect();
        let fp = LinearBackend::new(spec(&format!("{}-parity", self.name)), self.weights(1.0), two_b).unwrap();
        (Arc::new(f), Arc::new(fp))
    }

    fn expected(&self, x: &[f32]) -> Vec<f32> {
        self.backends().0.forward(x, x.len() / self.input).unwrap()
    }

    fn input(&self, batch: usize) -> Vec<f32> {
        (0..batch * self.input).map(|i| (i % 5) as f32 - 1.5).collect()
    }

    /// Two deployed workers and one parity worker, and the model's frontend over them (k = 2).
    async fn start(&self) -> (Vec<WorkerHandle>, Frontend) {
        let (f, fp) = self.backends();
        let mut workers = Vec::new();
        for b in [f.clone() as Arc<dyn InferenceBackend>, f as Arc<dyn InferenceBackend>, fp as Arc<dyn InferenceBackend>] {
            workers.push(spawn_worker("127.0.0.1:0", b, WorkerOptions::default()).await.unwrap());
        }
        let addr = |w: &WorkerHandle| w.addr.to_string();
        let spec = ModelSpec::fp32(self.name, vec![self.input as i64], vec![self.output as i64]);
        let cfg = FrontendConfig {
            deployed_model: format!("{}-deployed", self.name),
            parity: vec![addr(&workers[2])],
            parity_model: format!("{}-parity", self.name),
            // Exact answers wanted: a generous straggler threshold keeps reconstructions out.
            straggler: parm_serve::coded::policy::StragglerPolicy::default().with_min(Duration::from_millis(200)),
            ..FrontendConfig::new(spec, workers[..2].iter().map(addr).collect())
        };
        let frontend = Frontend::start(cfg).unwrap();
        frontend.warm_up().await;
        (workers, frontend)
    }
}

struct Cluster {
    _workers: Vec<WorkerHandle>,
    url: String,
    grpc: String,
    serving: Shared,
}

/// `small` (with a `[preprocess]` table) and `wide` behind one server; with `ghost`, also a
/// model whose only deployed instance is down.
async fn cluster(ghost: bool) -> Cluster {
    let (mut workers, small) = SMALL.start().await;
    let (more, wide) = WIDE.start().await;
    workers.extend(more);
    let preprocess: toml::Table = toml::from_str("resize = [28, 28]\nscale = 0.5\n").unwrap();
    let mut models = vec![Model { frontend: small, preprocess: Some(preprocess), transform: None }, wide.into()];
    if ghost {
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let cfg = FrontendConfig::new(ModelSpec::fp32("ghost", vec![1], vec![1]), vec![down]);
        models.push(Frontend::start(cfg).unwrap().into());
    }
    let serving = Serving::start_models(models, Default::default()).await.unwrap();
    let (http_addr, grpc) = crate::support::listen(&serving).await;
    let url = format!("http://{http_addr}");
    Cluster { _workers: workers, url, grpc, serving }
}

fn body(m: &Linear, batch: usize) -> Value {
    json!({"inputs": [{"name": "input", "shape": [batch, m.input], "datatype": "FP32", "data": m.input(batch)}]})
}

fn output_of(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

async fn get(url: String) -> (u16, Value) {
    let r = reqwest::get(&url).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post(url: String, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(&url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_of_different_shapes_are_each_answered_with_their_own_statistics() {
    let c = cluster(false).await;
    for (m, requests, batch) in [(&SMALL, 3, 2), (&WIDE, 5, 1)] {
        for _ in 0..requests {
            let (status, v) = post(format!("{}/v2/models/{}/infer", c.url, m.name), &body(m, batch)).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["model_name"], m.name);
            assert_eq!(v["outputs"][0]["shape"], json!([batch, m.output]));
            assert_eq!(output_of(&v), m.expected(&m.input(batch)));
        }
        // The versioned path routes to the same model.
        let (status, v) = post(format!("{}/v2/models/{}/versions/1/infer", c.url, m.name), &body(m, 1)).await;
        assert_eq!((status, output_of(&v)), (200, m.expected(&m.input(1))));
        let (status, meta) = get(format!("{}/v2/models/{}", c.url, m.name)).await;
        assert_eq!(status, 200);
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, m.input]));
        assert_eq!(meta["outputs"][0]["shape"], json!([-1, m.output]));
        let (status, ready) = get(format!("{}/v2/models/{}/ready", c.url, m.name)).await;
        assert_eq!((status, &ready["ready"]), (200, &json!(true)));
    }
    // A query that fits neither is that model's bad request, counted there.
    let odd = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]});
    let (status, v) = post(format!("{}/v2/models/wide/infer", c.url), &odd).await;
    assert_eq!(status, 400, "{v}");

    // Per-model statistics, each counting only its own requests and queries.
    let stats = |name: &str| {
        let url = format!("{}/v2/models/{name}/stats", c.url);
        async move { get(url).await.1["model_stats"][0].clone() }
    };
    let (small, wide) = (stats("small").await, stats("wide").await);
    assert_eq!((small["name"].clone(), wide["name"].clone()), (json!("small"), json!("wide")));
    assert_eq!(small["inference_count"], 3 * 2 + 1);
    assert_eq!(wide["inference_count"], 5 + 1);
    assert_eq!(small["inference_stats"]["success"]["count"], 4);
    assert_eq!(wide["inference_stats"]["success"]["count"], 6);
    assert_eq!((small["inference_stats"]["fail"]["count"].clone(), wide["inference_stats"]["fail"]["count"].clone()), (json!(0), json!(1)));
    // Their frontends are separate: own coding groups and coded-path counters.
    let rows = |name: &str| {
        let m = c.serving.models().find(|m| m.frontend.spec().name == name).unwrap();
        m.frontend.stats().rows.load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!((rows("small"), rows("wide")), (7, 6));
    let (_, all) = get(format!("{}/v2/models/stats", c.url)).await;
    let names: Vec<&str> = all["model_stats"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["small", "wide"]);

    // Prometheus: one text, each metric family once, a `model` label per model.
    let metrics = reqwest::get(format!("{}/metrics", c.url)).await.unwrap().text().await.unwrap();
    assert_eq!(metrics.matches("# TYPE nv_inference_count ").count(), 1, "{metrics}");
    for (name, count) in [("small", 7), ("wide", 6)] {
        let line = format!("nv_inference_count{{model=\"{name}\",version=\"1\"}} {count}\n");
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
        assert!(metrics.contains(&format!("parm_instance_up{{model=\"{name}\"")), "{metrics}");
    }

    // gRPC dispatches by model_name too.
    let mut grpc = GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap();
    for m in [&SMALL, &WIDE] {
        let x = m.input(1);
        let req = pb::ModelInferRequest {
            model_name: m.name.into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, m.input as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![parm_serve::oip::grpc::encode_f32_le(&x)],
            ..Default::default()
        };
        let r = grpc.model_infer(req).await.unwrap().into_inner();
        assert_eq!(r.model_name, m.name);
        assert_eq!(parm_serve::oip::grpc::decode_f32_le(&r.raw_output_contents[0]).unwrap(), m.expected(&x));
        let meta =
            grpc.model_metadata(pb::ModelMetadataRequest { name: m.name.into(), version: String::new() }).await.unwrap().into_inner();
        assert_eq!(meta.inputs[0].shape, vec![-1, m.input as i64]);
        assert!(grpc.model_ready(pb::ModelReadyRequest { name: m.name.into(), version: String::new() }).await.unwrap().into_inner().ready);
    }
    let all = grpc.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.model_stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["small", "wide"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_with_a_json_error_and_grpc_not_found() {
    let c = cluster(false).await;
    for path in
        ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/config", "/v2/models/nope/stats", "/v2/models/small/versions/2"]
    {
        let (status, v) = get(format!("{}{path}", c.url)).await;
        assert_eq!(status, 404, "{path}");
        assert!(v["error"].as_str().unwrap().contains("unknown model"), "{path}: {v}");
    }
    for path in ["/v2/models/nope/infer", "/v2/models/nope/versions/1/infer", "/v2/models/wide/versions/2/infer"] {
        let (status, v) = post(format!("{}{path}", c.url), &body(&WIDE, 1)).await;
        assert_eq!(status, 404, "{path}");
        assert!(v["error"].as_str().unwrap().contains("unknown model"), "{path}: {v}");
    }
    let mut grpc = GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap();
    let infer = pb::ModelInferRequest { model_name: "nope".into(), ..Default::default() };
    assert_eq!(grpc.model_infer(infer).await.unwrap_err().code(), Code::NotFound);
    let meta = pb::ModelMetadataRequest { name: "nope".into(), version: String::new() };
    assert_eq!(grpc.model_metadata(meta).await.unwrap_err().code(), Code::NotFound);
    let ready = pb::ModelReadyRequest { name: "nope".into(), version: String::new() };
    assert_eq!(grpc.model_ready(ready).await.unwrap_err().code(), Code::NotFound);
    // Nothing was counted for the known models.
    let stats = c.serving.stats_json();
    for s in stats["model_stats"].as_array().unwrap() {
        assert_eq!(s["inference_stats"]["fail"]["count"], 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_and_readiness_cover_every_model() {
    let c = cluster(true).await;
    let client = reqwest::Client::new();
    let index = |body: Option<Value>| {
        let mut req = client.post(format!("{}/v2/repository/index", c.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let all = index(None).await;
    assert_eq!(all[0], json!({"name": "ghost", "version": "1", "state": "UNAVAILABLE", "reason": "no deployed instance is healthy"}));
    assert_eq!(all[1], json!({"name": "small", "version": "1", "state": "READY", "reason": ""}));
    assert_eq!(all[2], json!({"name": "wide", "version": "1", "state": "READY", "reason": ""}));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let ready = index(Some(json!({"ready": true}))).await;
    assert_eq!(ready.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect::<Vec<_>>(), ["small", "wide"]);
    assert_eq!(index(Some(json!({}))).await, all);
    let r = client.post(format!("{}/v2/repository/index", c.url)).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // gRPC's RepositoryIndex says the same.
    let mut grpc = GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap();
    let got = grpc.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    let got: Vec<Value> = got.iter().map(|m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason})).collect();
    assert_eq!(Value::Array(got), all);
    let ready = pb::RepositoryIndexRequest { ready: true, ..Default::default() };
    let got = grpc.repository_index(ready).await.unwrap().into_inner().models;
    assert_eq!(got.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["small", "wide"]);

    // The server is ready only when every model is; each model answers for itself.
    let (status, v) = get(format!("{}/v2/health/ready", c.url)).await;
    assert_eq!((status, v), (503, json!({"ready": false})));
    assert_eq!(get(format!("{}/v2/models/ghost/ready", c.url)).await, (503, json!({"name": "ghost", "ready": false})));
    assert_eq!(get(format!("{}/v2/models/small/ready", c.url)).await, (200, json!({"name": "small", "ready": true})));
    let (status, v) = post(format!("{}/v2/models/small/infer", c.url), &body(&SMALL, 1)).await;
    assert_eq!((status, output_of(&v)), (200, SMALL.expected(&SMALL.input(1))));

    // The `[preprocess]` table is shown, uninterpreted, in metadata and configuration.
    let (_, meta) = get(format!("{}/v2/models/small", c.url)).await;
    assert_eq!(meta["parameters"]["preprocess"], json!({"resize": [28, 28], "scale": 0.5}));
    let (_, config) = get(format!("{}/v2/models/small/config", c.url)).await;
    let shown: Value = serde_json::from_str(config["parameters"]["parm_preprocess"]["string_value"].as_str().unwrap()).unwrap();
    assert_eq!(shown, json!({"resize": [28, 28], "scale": 0.5}));
    let (_, meta) = get(format!("{}/v2/models/wide", c.url)).await;
    assert!(meta.get("parameters").is_none(), "{meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_with_one_name_are_refused() {
    let (_w, a) = SMALL.start().await;
    let err = Serving::start_models(vec![a.clone().into(), a.into()], Default::default()).await.err().unwrap();
    assert!(err.to_string().contains("two models are named 'small'"), "{err}");
    assert!(Serving::start_models(Vec::new(), Default::default()).await.is_err());
}

/// A fresh directory under the system's temporary directory.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parm-repository-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, model: &str, text: &str) {
    std::fs::create_dir_all(dir.join(model)).unwrap();
    std::fs::write(dir.join(model).join("config.toml"), text).unwrap();
}

#[test]
fn a_repository_folder_reads_its_models_and_names_a_bad_config() {
    let dir = scratch("load");
    write(
        &dir,
        "mnist",
        "[model]\ndeployed = [\"127.0.0.1:9001\"]\nparity = [\"127.0.0.1:9003\"]\nk = 2\nencoder = \"addition\"\n[preprocess]\nnormalize = true\n",
    );
    write(
        &dir,
        "fashion",
        "[model]\ndeployed_model = \"deployed\"\ndeployed = [\"127.0.0.1:9101\", \"127.0.0.1:9102\"]\nk = 3\n[deadlines]\ngroup_timeout_ms = 9\n",
    );
    std::fs::create_dir_all(dir.join("notes")).unwrap(); // no config.toml: skipped
    std::fs::write(dir.join("README"), "a file, not a model").unwrap();
    let models = load_repository(&dir).unwrap();
    assert_eq!(models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["fashion", "mnist"]);
    assert_eq!(models[0].file.model.k, Some(3));
    assert_eq!(models[0].file.deadlines.group_timeout_ms, Some(9));
    assert_eq!(models[1].file.model.parity, Some(vec![vec!["127.0.0.1:9003".to_string()]]));
    assert_eq!(models[1].file.preprocess.as_ref().unwrap()["normalize"], toml::Value::Boolean(true));

    // Each bad config is an error naming its file and what is wrong.
    let cases = [
        ("[model]\ndeployed = [\"127.0.0.1:9001\"]\nkk = 2\n", "unknown field"),
        ("[model]\nk = 2\n", "model.deployed is missing"),
        ("[model]\nname = \"other\"\ndeployed = [\"127.0.0.1:9001\"]\n", "must be the folder's name 'broken'"),
        ("[server]\nhttp = \"0.0.0.0:8000\"\n[model]\ndeployed = [\"127.0.0.1:9001\"]\n", "[server] belongs in --config"),
        ("[model]\ndeployed = []\n", "model.deployed is empty"),
        ("not toml =", "TOML"),
    ];
    for (text, why) in cases {
        write(&dir, "broken", text);
        let err = format!("{:#}", load_repository(&dir).unwrap_err());
        assert!(err.contains(&dir.join("broken").join("config.toml").display().to_string()), "{err}");
        assert!(err.to_lowercase().contains(&why.to_lowercase()), "{why}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let empty = scratch("empty");
    std::fs::create_dir_all(empty.join("no-config")).unwrap();
    assert!(format!("{:#}", load_repository(&empty).unwrap_err()).contains("no model in the repository"));
    std::fs::remove_dir_all(&empty).unwrap();
    assert!(load_repository(Path::new("/nonexistent/parm-repository")).is_err());
}

#[test]
fn the_example_repository_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/model-repository");
    let models = load_repository(&dir).unwrap();
    assert_eq!(models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["fashion-mnist", "mnist"]);
    assert!(models.iter().all(|m| m.file.model.deployed.as_ref().is_some_and(|d| !d.is_empty())));
    assert!(models.iter().any(|m| m.file.preprocess.is_some()));
}
