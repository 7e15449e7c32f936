//! The coded path under each of parm's codes, in process against scripted instances (the
//! [`Instance`] seam, as in `coded_inprocess.rs`): r = 2 parities (the r-parity linear code)
//! and the systematic Berrut code, with one and two stalled members of a group.
//!
//! The deployed model is F(x) = 2x, and every parity model Fp_l = F. The linear code is then
//! exact (Fp_l(sum_j c_lj X_j) = sum_j c_lj F(X_j)); Berrut interpolation is not, and its error
//! on this linear F is measured. The last tests run the same over real gRPC workers (an
//! affine F, the slow instances delayed by the worker's own fault injection).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parm_serve::coded::policy::StragglerPolicy;
use parm_serve::coded::{Code, Frontend, FrontendConfig, ParityInstances, Prediction};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::{Instance, InstanceError};

const D: usize = 4;

/// A scripted instance running F(x) = 2x after `ms` (a stall: far longer than any test).
struct Scripted {
    name: String,
    ms: u64,
}

fn instance(name: &str, ms: u64) -> Arc<dyn Instance> {
    Arc::new(Scripted { name: name.into(), ms })
}

const STALLED: u64 = 60_000;
const FAST: u64 = 1;

impl Instance for Scripted {
    fn addr(&self) -> &str {
        &self.name
    }

    fn infer<'a>(
        &'a self,
        _model: &'a str,
        input: &'a [f32],
        _shape: &'a [i64],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
        Box::pin(async move {
            if tokio::time::timeout(timeout, tokio::time::sleep(Duration::from_millis(self.ms))).await.is_err() {
                return Err(InstanceError::Timeout { addr: self.name.clone(), timeout });
            }
            Ok(input.iter().map(|x| 2.0 * x).collect())
        })
    }
}

fn config(k: usize, code: Code) -> FrontendConfig {
    FrontendConfig {
        parity_model: "parity-p0".into(),
        encoder: Arc::from(parm_codes::encoder_by_name("addition", k).unwrap()),
        code,
        group_timeout: Duration::from_millis(200),
        straggler: StragglerPolicy::default().with_min(Duration::from_millis(200)),
        instance_timeout: Duration::from_secs(30),
        ..FrontendConfig::new(ModelSpec::fp32("m", vec![D as i64], vec![D as i64]), vec![])
    }
}

fn two_parities() -> Code {
    Code::Parities { further: vec![ParityInstances { instances: vec![], model: "parity-p1".into() }] }
}

/// Query i: a smooth ramp, so that group-mates differ (Berrut's error is measurable) but not
/// wildly.
fn query(i: usize) -> Vec<f32> {
    (0..D).map(|t| 1.0 + 0.1 * i as f32 + 0.05 * t as f32).collect()
}

fn doubled(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| 2.0 * v).collect()
}

/// Sends queries 0..n at once (round-robin: query i goes to deployed instance i) and waits,
/// at most 5 s, for all their answers.
async fn predict_all(f: &Frontend, n: usize) -> Vec<Prediction> {
    let start = Instant::now();
    let answers = futures::future::join_all((0..n).map(|i| f.predict(query(i)))).await;
    assert!(start.elapsed() < Duration::from_secs(5), "answered while the stall lasts");
    answers.into_iter().map(|a| a.expect("every query answered")).collect()
}

fn assert_one_answer_each(f: &Frontend, n: u64, reconstructed: u64) {
    let s = f.stats();
    assert_eq!(s.queries.load(Ordering::Relaxed), n);
    assert_eq!(s.answered.load(Ordering::Relaxed), n, "exactly one answer per query");
    assert_eq!(s.unavailable.load(Ordering::Relaxed), 0);
    assert_eq!(s.reconstructed.load(Ordering::Relaxed), reconstructed);
}

#[tokio::test]
async fn two_parities_reconstruct_two_stalled_members_of_a_group() {
    let deployed = vec![instance("slow0", STALLED), instance("slow1", STALLED), instance("fast", FAST)];
    let parity = vec![vec![instance("p0", FAST)], vec![instance("p1", FAST)]];
    let f = Frontend::with_parity_instances(config(3, two_parities()), deployed, parity).unwrap();
    let answers = predict_all(&f, 3).await;
    assert!(answers.iter().all(|a| a.group == answers[0].group), "one coding group");
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.reconstructed, i < 2, "query {i}");
        let want = doubled(&query(i));
        assert!(a.output.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4), "query {i}: {:?} vs {want:?}", a.output);
    }
    assert_one_answer_each(&f, 3, 2);
    assert_eq!(f.stats().parity_queries.load(Ordering::Relaxed), 2, "one query per parity");
}

#[tokio::test]
async fn two_parities_decode_one_straggler_with_a_parity_stalled_too() {
    // Any subset: member 0 and parity 0 stall; parity 1 and the other members decode it.
    let deployed = vec![instance("slow", STALLED), instance("fast1", FAST), instance("fast2", FAST)];
    let parity = vec![vec![instance("p0", STALLED)], vec![instance("p1", FAST)]];
    let f = Frontend::with_parity_instances(config(3, two_parities()), deployed, parity).unwrap();
    let answers = predict_all(&f, 3).await;
    assert!(answers[0].reconstructed && !answers[1].reconstructed && !answers[2].reconstructed);
    assert!(answers[0].output.iter().zip(doubled(&query(0))).all(|(x, y)| (x - y).abs() < 1e-4));
    assert_one_answer_each(&f, 3, 1);
}

#[tokio::test]
async fn one_parity_still_tolerates_one_straggler_only() {
    // r = 1 as before: two stalled members of a group cannot be decoded, and wait for their
    // instances; the third is answered at once.
    let deployed = vec![instance("slow0", STALLED), instance("slow1", STALLED), instance("fast", FAST)];
    let f = Frontend::with_instances(config(3, Code::Parity), deployed, vec![instance("p0", FAST)]).unwrap();
    let (stalled, fast) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(500), futures::future::join(f.predict(query(0)), f.predict(query(1)))),
        f.predict(query(2)),
    );
    assert!(stalled.is_err(), "neither stalled query could be reconstructed");
    assert_eq!(fast.unwrap().output, doubled(&query(2)));
    assert_eq!(f.stats().reconstructed.load(Ordering::Relaxed), 0);
}

/// Largest error of `a` against F(query i), relative to each output's size.
fn berrut_error(a: &Prediction, i: usize) -> f32 {
    let want = doubled(&query(i));
    a.output.iter().zip(&want).map(|(x, y)| (x - y).abs() / y.abs()).fold(0.0, f32::max)
}

#[tokio::test]
async fn berrut_interpolates_a_stalled_member() {
    // k = 3 (with k = 2, Berrut's interpolant through two points is linear, and exact for
    // this linear F).
    let deployed = vec![instance("slow", STALLED), instance("fast1", FAST), instance("fast2", FAST)];
    let f = Frontend::with_instances(config(3, Code::Berrut { s: 1 }), deployed, vec![instance("extra", FAST)]).unwrap();
    let answers = predict_all(&f, 3).await;
    assert!(answers[0].reconstructed && !answers[1].reconstructed && !answers[2].reconstructed);
    for (i, a) in answers.iter().enumerate().skip(1) {
        assert_eq!(a.output, doubled(&query(i)), "available predictions are exact");
    }
    let err = berrut_error(&answers[0], 0);
    eprintln!("berrut k=3 S=1, one stalled: relative error {err:.4}");
    assert!(err > 1e-4 && err < 0.15, "an approximate reconstruction: {err}");
    assert_one_answer_each(&f, 3, 1);
    assert_eq!(f.stats().parity_queries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn berrut_with_two_extra_queries_interpolates_two_stalled_members() {
    let deployed = vec![instance("slow0", STALLED), instance("slow1", STALLED), instance("fast", FAST)];
    let extra = vec![instance("extra0", FAST), instance("extra1", FAST)];
    let f = Frontend::with_instances(config(3, Code::Berrut { s: 2 }), deployed, extra).unwrap();
    let answers = predict_all(&f, 3).await;
    for (i, a) in answers.iter().enumerate().take(2) {
        assert!(a.reconstructed);
        let err = berrut_error(a, i);
        eprintln!("berrut k=3 S=2, two stalled: query {i} relative error {err:.4}");
        assert!(err < 0.25, "query {i}: {err}");
    }
    assert_eq!(answers[2].output, doubled(&query(2)));
    assert_one_answer_each(&f, 3, 2);
    assert_eq!(f.stats().parity_queries.load(Ordering::Relaxed), 2);
}

#[test]
fn codes_that_cannot_work_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let d = || vec![instance("d", FAST)];
    let p = || vec![instance("p", FAST)];
    // Two parities need two lists of instances, and the addition encoder.
    assert!(Frontend::with_parity_instances(config(2, two_parities()), d(), vec![p()]).is_err());
    let concat =
        FrontendConfig { encoder: Arc::from(parm_codes::encoder_by_name("concatenation", 2).unwrap()), ..config(2, two_parities()) };
    let e = Frontend::with_parity_instances(concat, d(), vec![p(), p()]).err().unwrap().to_string();
    assert!(e.contains("addition"), "{e}");
    // Berrut needs S >= 1 and its extra instances.
    assert!(Frontend::with_instances(config(2, Code::Berrut { s: 0 }), d(), p()).is_err());
    assert!(Frontend::with_instances(config(2, Code::Berrut { s: 1 }), d(), vec![]).is_err());
}

/// F(x) = W x + b over loopback gRPC, `[IN] -> [OUT]`; `bias_scale` scales b (a parity model of
/// the linear code: Fp_l(P_l) = W P_l + (sum_j c_lj) b).
fn affine(name: &str, bias_scale: f32) -> Arc<dyn InferenceBackend> {
    let (n_in, n_out) = (support::IN, support::OUT);
    let w = (0..n_in * n_out).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.25).collect();
    let b = (0..n_out).map(|o| bias_scale * (o as f32 - 1.0)).collect();
    let spec = ModelSpec::fp32(name, vec![n_in as i64], vec![n_out as i64]);
    Arc::new(LinearBackend::new(spec, w, b).unwrap())
}

/// Workers serving `backend`, the first `slow` of them 600 ms slower per request.
async fn workers(backend: &Arc<dyn InferenceBackend>, n: usize, slow: usize) -> Vec<WorkerHandle> {
    let mut out = Vec::new();
    for i in 0..n {
        let delay_ms = if i < slow { 600.0 } else { 0.0 };
        let opts = WorkerOptions { faults: FaultConfig { delay_ms, ..Default::default() }, ..Default::default() };
        out.push(spawn_worker("127.0.0.1:0", backend.clone(), opts).await.unwrap());
    }
    out
}

fn addrs(w: &[WorkerHandle]) -> Vec<String> {
    w.iter().map(|w| w.addr.to_string()).collect()
}

/// Sends 3 queries at once to a loopback frontend over 3 deployed workers (the first two slow)
/// and returns each answer with its largest error against F, all within 400 ms.
async fn three_over_loopback(cfg: FrontendConfig) -> (Frontend, Vec<(Prediction, f32)>) {
    let f = Frontend::start(cfg).unwrap();
    f.warm_up().await;
    let q = |i: usize| -> Vec<f32> { (0..support::IN).map(|t| 0.5 + 0.1 * i as f32 - 0.2 * t as f32).collect() };
    let start = Instant::now();
    let answers = futures::future::join_all((0..3).map(|i| f.predict(q(i)))).await;
    assert!(start.elapsed() < Duration::from_millis(400), "not waiting for the slow instances: {:?}", start.elapsed());
    let model = affine("deployed", 1.0);
    let checked = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let a = a.expect("answered");
            let want = model.infer(&q(i), 1).unwrap();
            let err = a.output.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            (a, err)
        })
        .collect();
    (f, checked)
}

fn loopback_config(k: usize, code: Code, deployed: Vec<String>, parity: Vec<String>) -> FrontendConfig {
    let spec = ModelSpec::fp32("lin", vec![support::IN as i64], vec![support::OUT as i64]);
    FrontendConfig { spec, parity, deployed, instance_timeout: Duration::from_secs(10), ..config(k, code) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parities_over_grpc_workers_reconstruct_two_slow_members_exactly() {
    let code = parm_codes::LinearCode::vandermonde(3, 2).unwrap();
    let bias = |l: usize| (0..3).map(|j| code.coeff(l, j) as f32).sum::<f32>();
    let deployed = workers(&affine("deployed", 1.0), 3, 2).await;
    let (p0, p1) = (workers(&affine("parity-p0", bias(0)), 1, 0).await, workers(&affine("parity-p1", bias(1)), 1, 0).await);
    let further = vec![ParityInstances { instances: addrs(&p1), model: "parity-p1".into() }];
    let cfg = loopback_config(3, Code::Parities { further }, addrs(&deployed), addrs(&p0));
    let (f, answers) = three_over_loopback(cfg).await;
    for (i, (a, err)) in answers.iter().enumerate() {
        assert_eq!(a.reconstructed, i < 2, "query {i}");
        assert!(*err < 1e-3, "query {i}: error {err}");
    }
    assert_one_answer_each(&f, 3, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berrut_over_grpc_workers_interpolates_two_slow_members() {
    let deployed = workers(&affine("deployed", 1.0), 3, 2).await;
    let extra = workers(&affine("deployed", 1.0), 2, 0).await;
    let cfg = loopback_config(3, Code::Berrut { s: 2 }, addrs(&deployed), addrs(&extra));
    let (f, answers) = three_over_loopback(cfg).await;
    for (i, (a, err)) in answers.iter().enumerate() {
        assert_eq!(a.reconstructed, i < 2, "query {i}");
        eprintln!("berrut over gRPC, k=3 S=2: query {i} largest error {err:.4}");
        assert!(*err < if i < 2 { 0.5 } else { 1e-5 }, "query {i}: error {err}");
    }
    assert_one_answer_each(&f, 3, 2);
}
