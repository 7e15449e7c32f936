//! Coding over batches (`batch_coding`: a request's rows coded as one block by the coded path,
//! `Frontend::predict_block`) over 127.0.0.1: a batch goes to a deployed instance as one
//! batched request, k batches share one batched parity request, and the rows of a batch whose
//! instance is stalled are answered with reconstructions. Instances are parm
//! workers serving exact linear models (F(x) = W x + b, parity Fp(p) = W p + 2 b for k = 2),
//! so every reconstruction equals the original exactly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parm_serve::coded::{Frontend, FrontendConfig, FrontendError, Prediction};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::redundancy::Redundancy;

const IN: usize = 4;
const OUT: usize = 3;
const BIAS: [f32; OUT] = [1.0, -1.0, 0.25];
/// How long the stalled instance holds each request: far longer than any test waits.
const STALL_MS: f64 = 20_000.0;

fn linear(name: &str, bias_scale: f32) -> Arc<LinearBackend> {
    let w = (0..IN * OUT).map(|i| i as f32 * 0.5 - 2.0).collect();
    let b = BIAS.iter().map(|b| b * bias_scale).collect();
    Arc::new(LinearBackend::new(ModelSpec::fp32(name, vec![IN as i64], vec![OUT as i64]), w, b).unwrap())
}

fn expected(row: &[f32]) -> Vec<f32> {
    linear("deployed", 1.0).forward(row, 1).unwrap()
}

fn rows(n: usize, seed: f32) -> Vec<Vec<f32>> {
    (0..n).map(|i| (0..IN).map(|j| seed + i as f32 * 0.75 - j as f32 * 0.5).collect()).collect()
}

struct Cluster {
    _workers: Vec<WorkerHandle>,
    /// Deployed instance 0 (stalled), deployed instance 1, parity instance.
    f0: Arc<LinearBackend>,
    f1: Arc<LinearBackend>,
    fp: Arc<LinearBackend>,
    frontend: Frontend,
}

/// Deployed instance 0 stalled, deployed instance 1 and the parity instance healthy; k = 2.
async fn cluster() -> Cluster {
    let (f0, f1, fp) = (linear("deployed", 1.0), linear("deployed", 1.0), linear("parity", 2.0));
    let opts = |delay_ms| WorkerOptions { faults: FaultConfig { delay_ms, ..Default::default() }, ..Default::default() };
    let mut workers = Vec::new();
    for (b, d) in [(&f0, STALL_MS), (&f1, 0.0), (&fp, 0.0)] {
        workers.push(spawn_worker("127.0.0.1:0", b.clone() as Arc<dyn InferenceBackend>, opts(d)).await.unwrap());
    }
    let addr = |w: &WorkerHandle| w.addr.to_string();
    let cfg = FrontendConfig {
        deployed_model: "deployed".into(),
        parity: vec![addr(&workers[2])],
        parity_model: "parity".into(),
        // Long enough that two batches sent together always land in one group (the group is
        // sealed at the straggler threshold if that is shorter).
        group_timeout: Duration::from_millis(500),
        straggler: parm_serve::coded::policy::StragglerPolicy::default().with_min(Duration::from_millis(500)),
        instance_timeout: Duration::from_secs(60),
        decode_grace: Some(Duration::from_millis(2)),
        redundancy: Redundancy::None,
        batch_coding: true,
        ..FrontendConfig::new(ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]), workers[..2].iter().map(addr).collect())
    };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await; // F(0) from the healthy instance (all are asked at once)
    Cluster { _workers: workers, f0, f1, fp, frontend }
}

/// A batch as one block, answered row by row.
async fn predict(f: &Frontend, rows: Vec<Vec<f32>>) -> Rows {
    let n = rows.len();
    match f.predict_block(rows.concat(), n).await {
        Ok(p) => p.output.chunks_exact(OUT).map(|r| Ok(Prediction { output: r.to_vec(), ..p.clone() })).collect(),
        Err(e) => vec![Err(e); n.max(1)],
    }
}

fn assert_rows(got: &[Result<Prediction, FrontendError>], input: &[Vec<f32>], reconstructed: bool) {
    assert_eq!(got.len(), input.len());
    for (i, (p, x)) in got.iter().zip(input).enumerate() {
        let p = p.as_ref().unwrap_or_else(|e| panic!("row {i}: {e}"));
        assert_eq!(p.reconstructed, reconstructed, "row {i}");
        let want = expected(x);
        assert!(p.output.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "row {i}: {:?} vs {want:?}", p.output);
    }
}

type Rows = Vec<Result<Prediction, FrontendError>>;

/// Batch `a`, then 20 ms later batch `b` (so that `a` normally goes to instance 0); both
/// answers.
async fn two_batches(f: &Frontend, a: &[Vec<f32>], b: &[Vec<f32>]) -> (Rows, Rows) {
    let (fa, a) = (f.clone(), a.to_vec());
    let first = tokio::spawn(async move { predict(&fa, a).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let got_b = predict(f, b.to_vec()).await;
    (first.await.unwrap(), got_b)
}

/// Two batches sent together: the one that reached the stalled instance (normally the first
/// sent; checked either way, since a loaded machine may reorder them) is answered with
/// reconstructions, the other with originals; every row equals F(row).
fn assert_one_reconstructed(x: (&Rows, &[Vec<f32>]), y: (&Rows, &[Vec<f32>])) {
    let recon = |r: &Rows| r[0].as_ref().map(|p| p.reconstructed).unwrap_or(false);
    assert!(recon(x.0) != recon(y.0), "exactly one batch reconstructed");
    assert_rows(x.0, x.1, recon(x.0));
    assert_rows(y.0, y.1, recon(y.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_instance_batch_is_reconstructed_row_by_row() {
    let c = cluster().await;
    let (a, b) = (rows(4, 0.5), rows(4, -1.0));
    let start = Instant::now();
    // Batch a (normally) joins the group first and goes to instance 0 (stalled), b to instance 1.
    let (got_a, got_b) = two_batches(&c.frontend, &a, &b).await;
    assert!(start.elapsed() < Duration::from_secs(10), "answered while the stall lasts ({:?})", start.elapsed());
    assert_one_reconstructed((&got_a, &a), (&got_b, &b));
    let (ga, gb) = (got_a[0].as_ref().unwrap(), got_b[0].as_ref().unwrap());
    assert_eq!(ga.group, gb.group, "one group");
    assert_eq!(ga.position + gb.position, 1, "positions 0 and 1");

    // One batched request per batch and one batched parity request of 4 rows for both.
    let s = c.frontend.stats();
    assert_eq!(c.f1.calls(), 2, "F(0) at warm-up + batch b as one request"); // F(0) + b
    assert_eq!(c.f0.calls(), 0, "the stalled instance never computed");
    assert_eq!(c.fp.calls(), 1, "one parity request");
    assert_eq!((s.queries.load(Ordering::Relaxed), s.rows.load(Ordering::Relaxed)), (2, 8));
    assert_eq!(s.parity_queries.load(Ordering::Relaxed), 1);
    assert_eq!(s.parity_rows.load(Ordering::Relaxed), 4);
    assert_eq!(s.reconstructed.load(Ordering::Relaxed), 1, "one block reconstructed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_different_sizes_are_padded_per_row() {
    let c = cluster().await;
    // a (2 rows, normally instance 0, stalled) and b (5 rows, instance 1): parity rows 0-1
    // are a_i + b_i, rows 2-4 are 0 + b_i; a's rows are Fp(a_i + b_i) - F(b_i) (or, the other
    // way round, b's rows 0-1 Fp(a_i + b_i) - F(a_i) and rows 2-4 Fp(b_i) - F(0)).
    let (a, b) = (rows(2, 2.0), rows(5, -0.25));
    let (got_a, got_b) = two_batches(&c.frontend, &a, &b).await;
    assert_one_reconstructed((&got_a, &a), (&got_b, &b));
    assert_eq!(c.frontend.stats().parity_rows.load(Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_batch_on_stalled_instance_is_reconstructed_from_padding() {
    let c = cluster().await;
    // One batch in the group (closed by the group timeout), padded with a zero batch:
    // row i = Fp(a_i) - F(0).
    let a = rows(3, 1.5);
    let got = predict(&c.frontend, a.clone()).await;
    assert_rows(&got, &a, true);
    // Then a lone batch on the healthy instance: answered, no parity request needed.
    let b = rows(3, 0.0);
    let got = predict(&c.frontend, b.clone()).await;
    assert_rows(&got, &b, false);
    let s = c.frontend.stats();
    assert_eq!(s.parity_queries.load(Ordering::Relaxed), 1, "none for b's group");
    // b's group, answered in full, is closed without a parity query by the next arrival
    // after its seal time (nobody waits on its timer); c goes to the stalled instance again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c3 = rows(2, 3.0);
    let got = predict(&c.frontend, c3.clone()).await;
    assert_rows(&got, &c3, true);
    assert_eq!(s.parity_skipped.load(Ordering::Relaxed), 1);
    assert_eq!(s.parity_queries.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_rejected() {
    let c = cluster().await;
    let got = predict(&c.frontend, vec![vec![0.0; IN], vec![0.0; IN + 1]]).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| matches!(r, Err(FrontendError::InvalidArgument(_)))));
    assert!(predict(&c.frontend, Vec::new()).await.iter().all(Result::is_err));
}

/// Through `parm serve`'s HTTP interface with batch coding on: two batch requests in one
/// group, the one on the stalled instance answered with reconstructions, flagged per row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batch_requests_are_coded_as_batches() {
    let c = cluster().await;
    let serving = parm_serve::server::api::Serving::start(c.frontend.clone(), Default::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/models/lin/infer", listener.local_addr().unwrap());
    tokio::spawn(parm_serve::server::http::serve_shared(listener, serving.clone(), std::future::pending()));
    let post = |x: Vec<Vec<f32>>, url: String| async move {
        let body = serde_json::json!({"inputs": [{"name": "input", "shape": [x.len(), IN], "datatype": "FP32", "data": x.concat()}]});
        let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let (a, b) = (rows(3, 0.5), rows(3, -2.0));
    let first = tokio::spawn(post(a.clone(), url.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rb = post(b.clone(), url).await;
    let ra = first.await.unwrap();
    let recon_a = ra["parameters"]["parm_reconstructed_rows"][0].as_bool().unwrap();
    for (r, x, recon) in [(&ra, &a, recon_a), (&rb, &b, !recon_a)] {
        assert_eq!(r["parameters"]["parm_reconstructed_rows"], serde_json::json!(vec![recon; 3]), "{r}");
        let data: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        let want: Vec<f32> = x.iter().flat_map(|row| expected(row)).collect();
        assert!(data.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-4), "{data:?} vs {want:?}");
    }
    assert_eq!(c.fp.calls(), 1, "one parity request for both batches");
    let metrics = serving.render_metrics();
    for line in [
        "parm_queries_total{model=\"lin\",version=\"1\"} 2",
        "parm_query_rows_total{model=\"lin\",version=\"1\"} 6",
        "parm_parity_queries_total{model=\"lin\",version=\"1\"} 1",
        "parm_reconstructions_total{model=\"lin\",version=\"1\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}
