//! The coded path, hedging and replication in process, against scripted instances (the
//! [`Instance`] seam): no sockets, no worker processes, so each mechanism is tested alone and
//! fast. The deployed model is F(x) = 2x and the parity model Fp(p) = 2p, both exact, so a
//! reconstruction equals the original exactly for the addition code.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parm_serve::coded::policy::StragglerPolicy;
use parm_serve::coded::{Frontend, FrontendConfig, FrontendError};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::redundancy::Redundancy;
use parm_serve::upstream::{Instance, InstanceError};

const D: usize = 3;

/// What a scripted instance does with each call.
#[derive(Clone, Copy)]
enum Script {
    /// Answers 2x after `ms`.
    Healthy { ms: u64 },
    /// Fails at once with `Unavailable`.
    Down,
    /// Answers with wrong numbers (2x + 100).
    Wrong,
}

struct Scripted {
    name: String,
    script: Script,
    calls: AtomicUsize,
    host: Option<String>,
}

fn instance(name: &str, script: Script) -> Arc<Scripted> {
    Arc::new(Scripted { name: name.into(), script, calls: AtomicUsize::new(0), host: None })
}

/// A healthy instance labelled as running on `host`.
fn on_host(name: &str, host: &str) -> Arc<Scripted> {
    Arc::new(Scripted { name: name.into(), script: FAST, calls: AtomicUsize::new(0), host: Some(host.into()) })
}

impl Instance for Scripted {
    fn addr(&self) -> &str {
        &self.name
    }

    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    fn infer<'a>(
        &'a self,
        _model: &'a str,
        input: &'a [f32],
        _shape: &'a [i64],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            match self.script {
                Script::Down => Err(InstanceError::Unavailable { addr: self.name.clone(), message: "scripted: down".into() }),
                Script::Wrong => Ok(input.iter().map(|x| 2.0 * x + 100.0).collect()),
                Script::Healthy { ms } => {
                    if tokio::time::timeout(timeout, tokio::time::sleep(Duration::from_millis(ms))).await.is_err() {
                        return Err(InstanceError::Timeout { addr: self.name.clone(), timeout });
                    }
                    Ok(input.iter().map(|x| 2.0 * x).collect())
                }
            }
        })
    }
}

fn dyns(v: &[&Arc<Scripted>]) -> Vec<Arc<dyn Instance>> {
    v.iter().map(|i| (*i).clone() as Arc<dyn Instance>).collect()
}

fn config() -> FrontendConfig {
    FrontendConfig {
        parity_model: "parity".into(),
        group_timeout: Duration::from_millis(200),
        // Exact answers expected from healthy instances: the straggler threshold is far above
        // their latency, and far below a stalled instance's.
        straggler: StragglerPolicy::default().with_min(Duration::from_millis(200)),
        instance_timeout: Duration::from_secs(30),
        ..FrontendConfig::new(ModelSpec::fp32("m", vec![D as i64], vec![D as i64]), vec![])
    }
}

fn query(i: usize) -> Vec<f32> {
    (0..D).map(|j| (i * D + j) as f32 * 0.5 - 1.0).collect()
}

fn doubled(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| 2.0 * v).collect()
}

const STALLED: Script = Script::Healthy { ms: 60_000 };
const FAST: Script = Script::Healthy { ms: 1 };

#[tokio::test]
async fn a_stalled_member_is_reconstructed_exactly() {
    let (slow, fast, parity) = (instance("slow", STALLED), instance("fast", FAST), instance("parity", FAST));
    let f = Frontend::with_instances(config(), dyns(&[&slow, &fast]), dyns(&[&parity])).unwrap();
    let start = Instant::now();
    let (a, b) = tokio::join!(f.predict(query(0)), f.predict(query(1)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(start.elapsed() < Duration::from_secs(5), "answered while the stall lasts");
    assert_eq!(a.group, b.group, "one coding group");
    let (recon, orig) = if a.reconstructed { (&a, &b) } else { (&b, &a) };
    assert!(recon.reconstructed && !orig.reconstructed, "exactly one reconstructed");
    assert_eq!(recon.output, doubled(&query(recon.position)));
    assert_eq!(orig.output, doubled(&query(orig.position)));
    assert_eq!(f.stats().parity_queries.load(Ordering::Relaxed), 1);
}

/// Placement (issue 17): deployed instances listed host by host are spread over their hosts,
/// so that a coding group's members land on distinct hosts, and each group's parity query
/// goes to a parity instance on neither member's host.
#[tokio::test]
async fn a_group_and_its_parity_query_go_to_distinct_hosts() {
    let deployed = [on_host("a1", "a"), on_host("a2", "a"), on_host("b1", "b"), on_host("b2", "b")];
    let parity = [on_host("pa", "a"), on_host("pb", "b"), on_host("pc", "c")];
    let f =
        Frontend::with_instances(config(), dyns(&deployed.iter().collect::<Vec<_>>()), dyns(&parity.iter().collect::<Vec<_>>())).unwrap();
    const GROUPS: usize = 8;
    for g in 0..GROUPS {
        let (a, b) = tokio::join!(f.predict(query(2 * g)), f.predict(query(2 * g + 1)));
        assert_eq!(a.unwrap().group, b.unwrap().group);
    }
    let calls = |v: &[Arc<Scripted>]| v.iter().map(|i| i.calls.load(Ordering::Relaxed)).collect::<Vec<_>>();
    assert_eq!(calls(&deployed), [GROUPS / 2; 4], "spread evenly");
    assert_eq!(f.stats().parity_queries.load(Ordering::Relaxed), GROUPS as u64);
    assert_eq!(calls(&parity), [0, 0, GROUPS], "every parity query on the host no member used");
}

#[tokio::test]
async fn a_block_on_a_stalled_instance_is_reconstructed_row_by_row() {
    let (slow, fast, parity) = (instance("slow", STALLED), instance("fast", FAST), instance("parity", FAST));
    let cfg = FrontendConfig { batch_coding: true, ..config() };
    let f = Frontend::with_instances(cfg, dyns(&[&slow, &fast]), dyns(&[&parity])).unwrap();
    // A 3-row block (to the stalled instance) and a 1-row block: the parity query has 3 rows,
    // rows 1-2 padded with zero rows (F(0) = 0 here).
    let block: Vec<f32> = (0..3).flat_map(query).collect();
    let (a, b) = tokio::join!(f.predict_block(block.clone(), 3), f.predict_block(query(7), 1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.reconstructed && !b.reconstructed);
    assert_eq!(a.output, doubled(&block));
    assert_eq!(b.output, doubled(&query(7)));
    assert_eq!(f.stats().parity_rows.load(Ordering::Relaxed), 3);
    assert_eq!(f.stats().rows.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn the_decode_grace_lets_an_original_beat_a_wrong_parity_output() {
    // The parity instance answers at once with wrong numbers; the originals take 5 ms. Held
    // back for the 100 ms decode grace, no reconstruction beats its original.
    let healthy = Script::Healthy { ms: 5 };
    let (d0, d1, parity) = (instance("d0", healthy), instance("d1", healthy), instance("parity", Script::Wrong));
    let cfg = FrontendConfig { decode_grace: Some(Duration::from_millis(100)), ..config() };
    let f = Frontend::with_instances(cfg, dyns(&[&d0, &d1]), dyns(&[&parity])).unwrap();
    for i in 0..6 {
        let p = f.predict(query(i)).await.unwrap();
        assert!(!p.reconstructed);
        assert_eq!(p.output, doubled(&query(i)));
    }
}

#[tokio::test]
async fn an_unrecoverable_failure_names_the_instance_and_why() {
    // Both deployed instances down (the retry goes to the other one), no parity instance.
    let (d0, d1) = (instance("10.0.0.1:9000", Script::Down), instance("10.0.0.2:9000", Script::Down));
    let f = Frontend::with_instances(config(), dyns(&[&d0, &d1]), vec![]).unwrap();
    let e = f.predict(query(0)).await.unwrap_err();
    assert!(matches!(e, FrontendError::Instance(InstanceError::Unavailable { .. })), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("10.0.0.") && text.contains("scripted: down"), "{text}");
    assert_eq!(d0.calls.load(Ordering::Relaxed) + d1.calls.load(Ordering::Relaxed), 2, "one retry");
    // Coded: the member's own failure is the cause when its group cannot reconstruct it.
    let parity = instance("parity", Script::Down);
    let f = Frontend::with_instances(config(), dyns(&[&d0, &d1]), dyns(&[&parity])).unwrap();
    let e = f.predict(query(0)).await.unwrap_err();
    assert!(matches!(e, FrontendError::NotReconstructed(_)), "{e:?}");
    assert!(e.to_string().contains("scripted: down"), "{e}");
}

#[tokio::test]
async fn a_failed_instance_is_retried_on_the_next() {
    let (down, up) = (instance("down", Script::Down), instance("up", FAST));
    let f = Frontend::with_instances(config(), dyns(&[&down, &up]), vec![]).unwrap();
    for i in 0..4 {
        assert_eq!(f.predict(query(i)).await.unwrap().output, doubled(&query(i)));
    }
    assert_eq!(up.calls.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn hedging_sends_a_backup_after_its_delay_and_the_first_answer_wins() {
    let (slow, fast) = (instance("slow", STALLED), instance("fast", Script::Healthy { ms: 5 }));
    let redundancy = Redundancy::Hedged { percentile: 95.0, min_delay: Duration::from_millis(20), max_delay: Duration::from_millis(20) };
    let f = Frontend::with_instances(FrontendConfig { redundancy, ..config() }, dyns(&[&slow, &fast]), vec![]).unwrap();
    // Round-robin: the first query's primary is the stalled instance.
    let start = Instant::now();
    let p = f.predict(query(0)).await.unwrap();
    let took = start.elapsed();
    assert_eq!(p.output, doubled(&query(0)));
    assert!(took >= Duration::from_millis(20) && took < Duration::from_secs(5), "backup after the delay: {took:?}");
    assert_eq!(f.stats().backups.load(Ordering::Relaxed), 1);
    // The second query's primary is the fast instance: answered before the delay, no backup.
    let start = Instant::now();
    f.predict(query(1)).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(20));
    assert_eq!(f.stats().backups.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn hedging_backs_up_a_failed_primary_at_once() {
    let (down, fast) = (instance("down", Script::Down), instance("fast", FAST));
    let redundancy = Redundancy::Hedged { percentile: 95.0, min_delay: Duration::from_secs(10), max_delay: Duration::from_secs(10) };
    let f = Frontend::with_instances(FrontendConfig { redundancy, ..config() }, dyns(&[&down, &fast]), vec![]).unwrap();
    let start = Instant::now();
    assert_eq!(f.predict(query(0)).await.unwrap().output, doubled(&query(0)));
    assert!(start.elapsed() < Duration::from_secs(5), "no wait for the hedging delay");
}

#[tokio::test]
async fn replication_sends_every_query_twice_and_takes_the_first_answer() {
    let (slow, fast) = (instance("slow", STALLED), instance("fast", FAST));
    let redundancy = Redundancy::Replication { copies: 2 };
    let f = Frontend::with_instances(FrontendConfig { redundancy, ..config() }, dyns(&[&slow, &fast]), vec![]).unwrap();
    let start = Instant::now();
    for i in 0..4 {
        assert_eq!(f.predict(query(i)).await.unwrap().output, doubled(&query(i)));
    }
    assert!(start.elapsed() < Duration::from_secs(5), "never waits for the stalled copy");
    assert_eq!((slow.calls.load(Ordering::Relaxed), fast.calls.load(Ordering::Relaxed)), (4, 4));
    assert_eq!(f.stats().backups.load(Ordering::Relaxed), 4);
    // One copy failing is no failure.
    let down = instance("down", Script::Down);
    let f = Frontend::with_instances(
        FrontendConfig { redundancy: Redundancy::Replication { copies: 2 }, ..config() },
        dyns(&[&down, &fast]),
        vec![],
    )
    .unwrap();
    assert!(f.predict(query(0)).await.is_ok());
}
