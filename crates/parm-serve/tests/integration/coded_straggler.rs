//! The straggler policy of the coded path (parm_serve::coded::policy) over real gRPC workers that
//! serve an exact linear model and its exact parity model, so every answer can be checked:
//! the adaptive group timeout seals a lone query's group at the straggler threshold instead of
//! the group timeout, and lazy parity sends parity queries only for groups with a straggler.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parm_serve::coded::policy::StragglerPolicy;
use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use support::{IN, linear_config, models};

/// The slow instance's extra time per request; every answer must come well before it.
const SLOW_MS: f64 = 600.0;
/// A fixed straggler threshold (min = max), long enough that a loaded machine's fast
/// requests stay under it.
const THRESHOLD: Duration = Duration::from_millis(80);

/// Two deployed instances (the first `slow_ms` slower per request) and one parity instance.
async fn start_frontend(slow_ms: f64, lazy_parity: bool) -> (Frontend, Vec<WorkerHandle>, Arc<LinearBackend>) {
    start_frontend_with_grace(slow_ms, lazy_parity, Duration::ZERO).await
}

async fn start_frontend_with_grace(slow_ms: f64, lazy_parity: bool, grace: Duration) -> (Frontend, Vec<WorkerHandle>, Arc<LinearBackend>) {
    start_frontend_with(slow_ms, lazy_parity, grace, 1.0).await
}

/// `factor`: the straggler policy's (the threshold is fixed; the factor only scales the median
/// that a lagging instance must exceed, `policy::lagging`).
async fn start_frontend_with(
    slow_ms: f64,
    lazy_parity: bool,
    grace: Duration,
    factor: f64,
) -> (Frontend, Vec<WorkerHandle>, Arc<LinearBackend>) {
    let (f, fp) = models();
    let opts = |delay_ms| WorkerOptions { faults: FaultConfig { delay_ms, ..Default::default() }, ..Default::default() };
    let workers = vec![
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, opts(slow_ms)).await.unwrap(),
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, opts(0.0)).await.unwrap(),
        spawn_worker("127.0.0.1:0", fp as Arc<dyn InferenceBackend>, opts(0.0)).await.unwrap(),
    ];
    let cfg = FrontendConfig {
        // Far longer than any test: a group sealed early was sealed by the threshold.
        group_timeout: Duration::from_secs(30),
        straggler: StragglerPolicy { lazy_parity, factor, min: THRESHOLD, max: THRESHOLD },
        instance_timeout: Duration::from_secs(10),
        decode_grace: Some(grace),
        ..linear_config(&workers)
    };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await;
    (frontend, workers, f)
}

fn query(i: usize) -> Vec<f32> {
    (0..IN).map(|j| ((i * IN + j) % 11) as f32 * 0.5 - 2.0).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

/// Sends `n` queries one after another, each alone in its coding group (the next is sent
/// after the previous group was sealed), and checks every answer against F; returns the
/// longest latency.
async fn one_by_one(frontend: &Frontend, f: &LinearBackend, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        tokio::time::sleep(2 * THRESHOLD).await;
        let t = Instant::now();
        let p = frontend.predict(query(i)).await.unwrap();
        worst = worst.max(t.elapsed());
        let want = f.forward(&query(i), 1).unwrap();
        assert!(close(&p.output, &want), "query {i}: {:?} vs {want:?} (reconstructed {})", p.output, p.reconstructed);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_straggler_is_reconstructed_after_the_threshold_not_the_group_timeout() {
    let (frontend, _w, f) = start_frontend(SLOW_MS, false).await;
    let worst = one_by_one(&frontend, &f, 6).await;
    let s = frontend.stats();
    // Round robin puts about half of the queries on the slow instance; each is answered from
    // its padded parity query once its group is sealed at the threshold.
    assert!(s.reconstructed.load(Ordering::Relaxed) >= 2, "reconstructed {}", s.reconstructed.load(Ordering::Relaxed));
    assert!(s.padded_groups.load(Ordering::Relaxed) >= 2);
    assert!(worst < Duration::from_millis(400), "worst latency {worst:?}: the group waited for the slow instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_parity_sends_parity_queries_only_for_stragglers() {
    // Healthy instances: every prediction beats the threshold, so no parity query is sent,
    // even for full groups.
    let (frontend, _w, f) = start_frontend(0.0, true).await;
    let queries = (0..20).map(|i| {
        let (frontend, f) = (frontend.clone(), f.clone());
        tokio::spawn(async move {
            let p = frontend.predict(query(i)).await.unwrap();
            assert!(close(&p.output, &f.forward(&query(i), 1).unwrap()) && !p.reconstructed, "query {i}");
        })
    });
    for q in futures::future::join_all(queries).await {
        q.unwrap();
    }
    let s = frontend.stats();
    assert_eq!(s.parity_queries.load(Ordering::Relaxed), 0, "no straggler, no parity query");
    assert_eq!(s.answered.load(Ordering::Relaxed), 20);

    // One slow instance: its queries are reconstructed after the threshold, and parity
    // queries go only to their groups.
    let (frontend, _w, f) = start_frontend(SLOW_MS, true).await;
    let worst = one_by_one(&frontend, &f, 6).await;
    let s = frontend.stats();
    let (parity, reconstructed) = (s.parity_queries.load(Ordering::Relaxed), s.reconstructed.load(Ordering::Relaxed));
    assert!(reconstructed >= 2, "reconstructed {reconstructed}");
    assert_eq!(parity, reconstructed, "one parity query per straggler's group, none for the others");
    assert!(worst < Duration::from_millis(400), "worst latency {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decode_grace_is_capped_at_the_threshold() {
    // A decode grace far longer than the slow instance: without the cap each straggler's
    // reconstruction would wait for its original (600 ms); with it, it goes at once. Eager
    // and lazy parity alike.
    for lazy in [true, false] {
        let (frontend, _w, f) = start_frontend_with_grace(SLOW_MS, lazy, Duration::from_secs(10)).await;
        let worst = one_by_one(&frontend, &f, 6).await;
        let reconstructed = frontend.stats().reconstructed.load(Ordering::Relaxed);
        assert!(reconstructed >= 2, "lazy {lazy}: reconstructed {reconstructed}");
        assert!(worst < Duration::from_millis(400), "lazy {lazy}: worst latency {worst:?}: the reconstruction waited for the grace");
    }
}

/// Sends queries `2i` and `2i + 1` at once (one coding group, one query on each deployed
/// instance); returns each one's (latency, reconstructed), checked against F.
async fn pair(frontend: &Frontend, f: &LinearBackend, i: usize) -> Vec<(Duration, bool)> {
    let one = |q: usize| async move {
        let t = Instant::now();
        let p = frontend.predict(query(q)).await.unwrap();
        assert!(close(&p.output, &f.forward(&query(q), 1).unwrap()), "query {q}");
        (t.elapsed(), p.reconstructed)
    };
    let (a, b) = tokio::join!(one(2 * i), one(2 * i + 1));
    vec![a, b]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_straggler_s_queries_take_their_reconstruction_without_the_grace() {
    // Decode grace = the threshold (80 ms). The first queries on the slow instance wait it: no
    // latency of that instance is on record yet. Their calls finish in the background (the
    // slow worker serves one request at a time, 600 ms each) and, two of them in, make the
    // instance a known straggler: from then on its queries are answered as soon as their
    // reconstruction is in, well before the grace, and stay so while it stays slow. (Factor
    // 0.1: the median is recomputed every 50 calls, and this test makes fewer; its first
    // value may be the slow instance's own warm-up call.)
    let (frontend, _w, f) = start_frontend_with(SLOW_MS, false, THRESHOLD, 0.1).await;
    let mut fast = 0;
    for i in 0..30 {
        let got = pair(&frontend, &f, i).await;
        let slow = got.iter().find(|(_, r)| *r).unwrap_or_else(|| panic!("pair {i}: {got:?}"));
        if slow.0 < THRESHOLD {
            assert!(i > 0, "{got:?}: the first straggler's reconstruction went before the grace");
            fast += 1;
            if fast == 3 {
                return;
            }
        } else {
            assert_eq!(fast, 0, "pair {i}: {got:?}: a known straggler's query waited the grace again");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the slow instance never became a known straggler ({fast} fast reconstructions)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_straggler_s_lone_query_does_not_wait_for_group_mates() {
    // Queries one at a time, each alone in its group. The first ones on the slow instance wait
    // for the seal at the threshold (80 ms): no latency of that instance is on record yet. Once
    // two of its calls have finished slow (in the background), a query sent to it seals its
    // group at once, so its padded parity query goes with it and the reconstruction answers
    // well before the threshold. (Factor 0.1: see the test above.)
    let (frontend, _w, f) = start_frontend_with(SLOW_MS, false, THRESHOLD, 0.1).await;
    let mut fast = 0;
    for i in 0..40 {
        let t = Instant::now();
        let p = frontend.predict(query(i)).await.unwrap();
        let took = t.elapsed();
        assert!(close(&p.output, &f.forward(&query(i), 1).unwrap()), "query {i}");
        if p.reconstructed && took < THRESHOLD {
            fast += 1;
            if fast == 3 {
                assert!(frontend.stats().sealed_for_straggler.load(Ordering::Relaxed) >= 3);
                return;
            }
        } else if p.reconstructed {
            assert_eq!(fast, 0, "query {i} ({took:?}): a known straggler's group waited for its seal time again");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no lone query on the slow instance was reconstructed before the threshold ({fast} fast)");
}
