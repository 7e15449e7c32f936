//! The coded path under each of parm's codes, in process against scripted instances (the
//! [`Instance`] seam, as in `coded_inprocess.rs`): r = 2 parities (the r-parity linear code)
//! and the systematic Berrut code, with one and two stalled members of a group.
//!
//! The deployed model is F(x) = 2x, and every parity model Fp_l = F. The linear code is then
//! exact (Fp_l(sum_j c_lj X_j) = sum_j c_lj F(X_j)); Berrut interpolation is not, and its error
//! on this linear F is measured.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parm_serve::coded::policy::StragglerPolicy;
use parm_serve::coded::{Code, Frontend, FrontendConfig, ParityInstances, Prediction};
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
