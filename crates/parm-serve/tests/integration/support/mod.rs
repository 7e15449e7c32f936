//! A small loopback cluster for the hardening tests (bad_input.rs, security.rs): two deployed
//! parm workers and one parity worker serving exact linear models, and the frontend's HTTP and
//! gRPC interfaces with chosen [`ServeOptions`].

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker_with_auth};
use parm_serve::oip::ModelSpec;
use parm_serve::oip::security::{AuthToken, ServeOptions};
use parm_serve::server::api::{Serving, ServingOptions, Shared};
use serde_json::{Value, json};

pub const IN: usize = 4;
pub const OUT: usize = 3;
const BIAS: [f32; OUT] = [1.0, -1.0, 0.25];

fn weights() -> Vec<f32> {
    (0..IN * OUT).map(|i| i as f32 * 0.5 - 2.0).collect()
}

/// The deployed model F(x) = W x + b and its exact parity model for k = 2: W p + 2 b.
pub fn models() -> (Arc<LinearBackend>, Arc<LinearBackend>) {
    let f = LinearBackend::new(ModelSpec::fp32("deployed", vec![IN as i64], vec![OUT as i64]), weights(), BIAS.to_vec()).unwrap();
    let two_b = BIAS.iter().map(|b| 2.0 * b).collect();
    let fp = LinearBackend::new(ModelSpec::fp32("parity", vec![IN as i64], vec![OUT as i64]), weights(), two_b).unwrap();
    (Arc::new(f), Arc::new(fp))
}

/// F on `x` (any number of queries).
pub fn expected(x: &[f32]) -> Vec<f32> {
    models().0.forward(x, x.len() / IN).unwrap()
}

/// `batch` queries of test input.
pub fn input(batch: usize) -> Vec<f32> {
    (0..batch * IN).map(|i| (i % 7) as f32 - 2.5).collect()
}

pub struct Cluster {
    pub workers: Vec<WorkerHandle>,
    /// `http://127.0.0.1:PORT` of the HTTP interface.
    pub url: String,
    /// `127.0.0.1:PORT` of the HTTP interface.
    pub http_addr: String,
    /// `http://127.0.0.1:PORT` of the gRPC interface.
    pub grpc: String,
    pub serving: Shared,
}

/// The frontend over `workers` (two deployed, then one parity, serving [`models`]): k = 2,
/// addition, group timeout 5 ms, decode grace 2 ms, instance timeout 5 s, no redundancy, no
/// dispatch batching. Tests change what they need with struct update syntax.
pub fn linear_config(workers: &[WorkerHandle]) -> FrontendConfig {
    let addr = |w: &WorkerHandle| w.addr.to_string();
    FrontendConfig {
        parity: vec![addr(&workers[2])],
        parity_model: "parity".into(),
        ..FrontendConfig::new(ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]), workers[..2].iter().map(addr).collect())
    }
}

/// Starts the cluster; the workers require `worker_token`, and the frontend's instance
/// clients carry it (`FrontendConfig::upstream`).
pub async fn cluster(options: ServeOptions, worker_token: Option<AuthToken>) -> Cluster {
    let (f, fp) = models();
    let mut workers = Vec::new();
    for b in [f.clone() as Arc<dyn InferenceBackend>, f as Arc<dyn InferenceBackend>, fp as Arc<dyn InferenceBackend>] {
        workers.push(spawn_worker_with_auth("127.0.0.1:0", b, WorkerOptions::default(), worker_token.clone()).await.unwrap());
    }
    let upstream = parm_serve::upstream::client::ClientOptions { token: worker_token, tls: None };
    let frontend = Frontend::start(FrontendConfig { upstream, ..linear_config(&workers) }).unwrap();
    frontend.warm_up().await;
    let serving = Serving::start(frontend, ServingOptions { limits: options, ..Default::default() }).await.unwrap();
    let (http_addr, grpc) = listen(&serving).await;
    Cluster { workers, url: format!("http://{http_addr}"), http_addr, grpc, serving }
}

/// Serves `serving` on two ephemeral loopback ports, OIP HTTP and gRPC, until the test ends:
/// (HTTP address `127.0.0.1:PORT`, gRPC URL `http://127.0.0.1:PORT`).
pub async fn listen(serving: &Shared) -> (String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(parm_serve::server::http::serve_shared(listener, serving.clone(), std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(parm_serve::server::grpc::serve_grpc(listener, serving.clone(), std::future::pending()));
    (http_addr, grpc)
}

/// A good JSON inference body for `batch` queries.
pub fn good_body(batch: usize) -> Value {
    json!({"id": "good", "inputs": [{"name": "input", "shape": [batch, IN], "datatype": "FP32", "data": input(batch)}]})
}

/// The output values of a JSON inference response.
pub fn output_of(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Good requests sent back to back over HTTP in the background while a test misbehaves; each
/// answer is checked exactly.
pub struct GoodTraffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodTraffic {
    pub fn start(url: &str, token: Option<&str>) -> Self {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let url = format!("{url}/v2/models/lin/infer");
        let auth = token.map(|t| format!("Bearer {t}"));
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                let batch = 1 + i % 3;
                i += 1;
                let mut req = client.post(&url).json(&good_body(batch)).timeout(Duration::from_secs(30));
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                let result = match req.send().await {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(v) if output_of(&v) == expected(&input(batch)) => Ok(()),
                        Ok(v) => Err(format!("wrong answer {v}")),
                        Err(e) => Err(format!("bad body: {e}")),
                    },
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("request failed: {e}")),
                };
                match result {
                    Ok(()) => o.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        f.lock().unwrap().push(e);
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self { stop, ok, failures, task }
    }

    /// Waits until at least `min` good requests were answered (30 s at most), stops; asserts
    /// every good request was answered correctly and at least `min` were sent.
    pub async fn finish(self, min: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::SeqCst) < min && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "good requests failed alongside bad ones: {failures:?}");
        let ok = self.ok.load(Ordering::SeqCst);
        assert!(ok >= min, "only {ok} good requests went through (want >= {min})");
    }
}
