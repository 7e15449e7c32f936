//! Adaptive batching towards the instances (parm_serve::upstream::dispatch) on the coded path, over real
//! gRPC workers serving an exact linear model and its exact parity model: queries that queue
//! behind a busy instance go together in one batched request, and every query still gets its
//! own exact answer.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::InferenceBackend;
use parm_serve::instance::fault::FaultConfig;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::upstream::dispatch::DispatchBatching;
use support::{IN, expected, linear_config, models};

fn config(workers: &[WorkerHandle], dispatch: DispatchBatching) -> FrontendConfig {
    FrontendConfig {
        group_timeout: Duration::from_millis(20),
        instance_timeout: Duration::from_secs(10),
        dispatch,
        // These tests want exact answers: with the default 1 ms straggler threshold a fast query
        // on a loaded CI machine is sometimes reconstructed (approximate) instead.
        straggler: parm_serve::coded::policy::StragglerPolicy::default().with_min(Duration::from_millis(200)),
        ..linear_config(workers)
    }
}

fn query(i: usize) -> Vec<f32> {
    (0..IN).map(|j| ((i * IN + j) % 13) as f32 * 0.25 - 1.5).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_queries_share_requests_and_get_their_own_exact_answers() {
    let (f, fp) = models();
    // 10 ms per request: while one request is outstanding, the others queue at the frontend.
    let slow = WorkerOptions { faults: FaultConfig { delay_ms: 10.0, ..Default::default() }, ..Default::default() };
    let workers = vec![
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, slow.clone()).await.unwrap(),
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, slow).await.unwrap(),
        spawn_worker("127.0.0.1:0", fp.clone() as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap(),
    ];
    let frontend = Frontend::start(config(&workers, DispatchBatching { max_batch: 8, max_in_flight: 1 })).unwrap();
    frontend.warm_up().await;
    let before = f.calls();
    let n = 48;
    let calls = (0..n).map(|i| {
        let frontend = frontend.clone();
        tokio::spawn(async move { (i, frontend.predict(query(i)).await) })
    });
    for r in futures::future::join_all(calls).await {
        let (i, p) = r.unwrap();
        let p = p.unwrap_or_else(|e| panic!("query {i}: {e}"));
        assert!(close(&p.output, &expected(&query(i))), "query {i}: {:?} (reconstructed {})", p.output, p.reconstructed);
    }
    let requests = f.calls() - before;
    assert!(requests < n / 2, "{requests} deployed requests for {n} queries: queued queries were not batched");
    assert_eq!(frontend.stats().answered.load(Ordering::Relaxed), n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_query_goes_at_once_and_bad_settings_are_refused() {
    let (f, fp) = models();
    let workers = vec![
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap(),
        spawn_worker("127.0.0.1:0", f.clone() as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap(),
        spawn_worker("127.0.0.1:0", fp as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap(),
    ];
    let frontend = Frontend::start(config(&workers, DispatchBatching { max_batch: 16, max_in_flight: 2 })).unwrap();
    frontend.warm_up().await;
    for i in 0..5 {
        let p = frontend.predict(query(i)).await.unwrap();
        assert!(close(&p.output, &expected(&query(i))) && !p.reconstructed, "query {i}");
    }
    for bad in [DispatchBatching { max_batch: 0, max_in_flight: 1 }, DispatchBatching { max_batch: 4, max_in_flight: 0 }] {
        let e = Frontend::start(config(&workers, bad)).err().expect("refused");
        assert!(e.to_string().contains("max_batch"), "{e}");
    }
}
