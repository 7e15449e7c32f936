//! Chaos test (issue 6): under steady load through a `parm serve` process, model instances are
//! SIGKILLed (and restarted), SIGSTOPped for seconds (then SIGCONTed), and cut off by a TCP
//! proxy that blackholes or resets their traffic, on a seeded random schedule. Loopback only.
//!
//! Cluster: 3 deployed-model instances and 2 parity-model instances (k = 2, addition encoder),
//! each a `parm worker` process behind its own [`parm_bench::proxy::Proxy`]; the frontend
//! knows only the proxies' addresses. Models are randomly initialised MLPs (no training): the
//! decoder's arithmetic is exact, so every answer can be checked against the deployed model F
//! and the parity model Fp computed offline.
//!
//! Asserted:
//! * every request gets exactly one HTTP answer: 200 with a prediction or a reconstruction, or
//!   an explicit error (503 / 504 with `{"error": ...}`); nothing else, no transport error;
//! * none hangs: each answer arrives within its deadline (request parameter `timeout`) plus a
//!   margin for a loaded machine;
//! * no answer goes to the wrong request: the id is echoed, an original equals F(x) of that
//!   request's input, a reconstruction equals Fp(x + x_other) - F(x_other) for its coding group
//!   (or Fp(x + 0) - F(0) for a zero-padded group);
//! * after the schedule ends and the instances are back, the frontend serves fully: every
//!   request answered by its exact prediction, no errors, no reconstructions.
//!
//! Seed: `PARM_CHAOS_SEED` (default 6). Prints the counts.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parm_bench::chaos::{ChaosTarget, chaos_schedule, run_chaos};
use parm_bench::cluster::{InstanceSpec, start_instances};
use parm_bench::proxy::Proxy;
use parm_nn::{ModelKind, Predictor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::*;

const DEPLOYED_N: usize = 3;
const PARITY_N: usize = 2;
/// Offered load during the chaos phase (queries per second, open loop).
const RATE: f64 = 100.0;
/// Faults start within this window; load runs from 1 s before it to its end.
const WINDOW: Duration = Duration::from_secs(30);
/// Every request's deadline (its `timeout` parameter).
const DEADLINE: Duration = Duration::from_secs(3);
/// An answer later than deadline + this counts as hung (a loaded CI machine included).
const HANG_MARGIN: Duration = Duration::from_secs(3);
/// Requests of the recovery phase, and their rate.
const RECOVERY: usize = 200;
const RECOVERY_RATE: f64 = 50.0;

/// One request's fate.
struct Record {
    /// Index into the inputs.
    query: usize,
    latency: Duration,
    outcome: Result<(u16, Value), String>,
}

/// Sends queries `range` open-loop at `rate` per second, each its own task; returns every
/// record once all are answered (or timed out at deadline + margin).
async fn load(client: &reqwest::Client, url: &str, inputs: &Arc<Vec<Vec<f32>>>, range: std::ops::Range<usize>, rate: f64) -> Vec<Record> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(range.len());
    for q in range {
        tick.tick().await;
        let mut body = infer_body(&q.to_string(), &inputs[q]);
        body["parameters"] = json!({"timeout": DEADLINE.as_micros() as u64});
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = async {
                let resp = client.post(&url).json(&body).send().await.map_err(|e| format!("send: {e}"))?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("status {status}, body not JSON: {e}"))?;
                Ok((status, v))
            }
            .await;
            Record { query: q, latency: sent.elapsed(), outcome }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task panicked"));
    }
    out
}

#[derive(Debug, Default)]
struct Counts {
    requests: usize,
    exact: usize,
    reconstructed: usize,
    unavailable_503: usize,
    deadline_504: usize,
    hung: usize,
    wrong: usize,
    /// Any other outcome: unexpected status, transport error, unparsable body.
    lost: usize,
    max_latency: Duration,
}

/// One 200 answer, as the frontend labelled it.
struct Answer {
    query: usize,
    group: u64,
    reconstructed: bool,
    output: Vec<f32>,
}

/// Classifies every record and checks every answer against F and Fp; returns the counts
/// and a few example failures.
fn check(records: &[Record], inputs: &[Vec<f32>], f: &Predictor, fp: &Predictor) -> (Counts, Vec<String>) {
    let mut c = Counts { requests: records.len(), ..Default::default() };
    let mut problems = Vec::new();
    let mut answers = Vec::new();
    for r in records {
        c.max_latency = c.max_latency.max(r.latency);
        // The client gives up at deadline + margin: an error that late is a timeout.
        let hung = r.latency + Duration::from_millis(50) >= DEADLINE + HANG_MARGIN;
        match &r.outcome {
            Err(e) if hung => {
                c.hung += 1;
                problems.push(format!("query {} hung: {e} after {:?}", r.query, r.latency));
            }
            Err(e) => {
                c.lost += 1;
                problems.push(format!("query {}: {e}", r.query));
            }
            Ok(_) if hung => {
                c.hung += 1;
                problems.push(format!("query {} answered after {:?}, deadline {DEADLINE:?}", r.query, r.latency));
            }
            Ok((200, body)) => {
                let p = &body["parameters"];
                let group = p["parm_coding_groups"][0].as_u64();
                let reconstructed = p["parm_reconstructed_rows"][0].as_bool();
                let output: Option<Vec<f32>> =
                    body["outputs"][0]["data"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect());
                match (body["id"] == json!(r.query.to_string()), group, reconstructed, output) {
                    (true, Some(group), Some(reconstructed), Some(output)) => {
                        answers.push(Answer { query: r.query, group, reconstructed, output })
                    }
                    _ => {
                        c.wrong += 1;
                        problems.push(format!("query {}: malformed or misaddressed answer {body}", r.query));
                    }
                }
            }
            Ok((503, body)) if body["error"].is_string() => c.unavailable_503 += 1,
            Ok((504, body)) if body["error"].is_string() => c.deadline_504 += 1,
            Ok((status, body)) => {
                c.lost += 1;
                problems.push(format!("query {}: status {status}: {body}", r.query));
            }
        }
    }
    let mut groups: HashMap<u64, Vec<&Answer>> = HashMap::new();
    for a in &answers {
        groups.entry(a.group).or_default().push(a);
    }
    let zero = vec![0.0f32; 784];
    let f0 = f.infer(&zero, 1).unwrap();
    for a in &answers {
        let x = &inputs[a.query];
        let ok = if !a.reconstructed {
            close(&a.output, &f.infer(x, 1).unwrap())
        } else {
            // Fp(P) - F(other) for the group's other answered member, or for F(0) padding.
            let sub = |other: &[f32], f_other: &[f32]| {
                let p: Vec<f32> = x.iter().zip(other).map(|(a, b)| a + b).collect();
                fp.infer(&p, 1).unwrap().iter().zip(f_other).map(|(a, b)| a - b).collect::<Vec<f32>>()
            };
            let mut candidates = vec![sub(&zero, &f0)];
            for o in groups[&a.group].iter().filter(|o| o.query != a.query && !o.reconstructed) {
                candidates.push(sub(&inputs[o.query], &f.infer(&inputs[o.query], 1).unwrap()));
            }
            candidates.iter().any(|want| close(&a.output, want))
        };
        if ok {
            if a.reconstructed {
                c.reconstructed += 1;
            } else {
                c.exact += 1;
            }
        } else {
            c.wrong += 1;
            problems.push(format!("query {} (group {}, reconstructed {}): answer is not its own", a.query, a.group, a.reconstructed));
        }
    }
    for members in groups.values() {
        if members.len() > 2 {
            c.wrong += members.len();
            problems.push(format!("coding group {} answered {} queries with k = 2", members[0].group, members.len()));
        }
    }
    problems.truncate(10);
    (c, problems)
}

/// Waits until the frontend's probes see every instance up (`parm_instance_up` all 1).
async fn wait_all_up(client: &reqwest::Client, base: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(r) = client.get(format!("{base}/metrics")).send().await
            && let Ok(text) = r.text().await
        {
            let ups: Vec<&str> = text.lines().filter(|l| l.starts_with("parm_instance_up{")).collect();
            if ups.len() == DEPLOYED_N + PARITY_N && ups.iter().all(|l| l.trim_end().ends_with(" 1")) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[test]
fn chaos_every_request_answered_once_correctly_and_service_recovers() {
    let started = Instant::now();
    let seed: u64 = std::env::var("PARM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let deployed_path = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let parity_path = write_model(dir.path(), PARITY, ModelKind::Parity);
    let f = Predictor::load(&deployed_path).unwrap();
    let fp = Predictor::load(&parity_path).unwrap();

    let chaos_queries = ((WINDOW + Duration::from_secs(1)).as_secs_f64() * RATE) as usize;
    let n = chaos_queries + RECOVERY;
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Arc<Vec<Vec<f32>>> = Arc::new((0..n).map(|_| (0..784).map(|_| rng.random::<f32>()).collect()).collect());
    let schedule = chaos_schedule(
        seed,
        DEPLOYED_N + PARITY_N,
        WINDOW,
        Duration::from_millis(400)..Duration::from_millis(1600),
        Duration::from_millis(500)..Duration::from_millis(3000),
        2,
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (chaos_records, recovery_records, counts, all_up) = rt.block_on(async {
        let spec = |path: &std::path::Path, name: &str| InstanceSpec {
            model: path.to_path_buf(),
            name: name.into(),
            fault: String::new(),
            listen: None,
            netns: None,
            cpus: None,
        };
        let mut specs: Vec<_> = (0..DEPLOYED_N).map(|_| spec(&deployed_path, DEPLOYED)).collect();
        specs.extend((0..PARITY_N).map(|_| spec(&parity_path, PARITY)));
        let instances = start_instances(exe(), specs).await.expect("start workers");
        let mut targets = Vec::new();
        for i in instances {
            let proxy = Proxy::start(&i.addr).await.expect("start proxy");
            targets.push(tokio::sync::Mutex::new(ChaosTarget { instance: i, proxy }));
        }
        let addrs =
            |r: std::ops::Range<usize>| r.map(|i| targets[i].try_lock().unwrap().proxy.addr().to_string()).collect::<Vec<_>>().join(",");
        let (deployed, parity) = (addrs(0..DEPLOYED_N), addrs(DEPLOYED_N..DEPLOYED_N + PARITY_N));
        let frontend = start_serve(&[
            "--deployed",
            &deployed,
            "--parity",
            &parity,
            "--k",
            "2",
            "--encoder",
            "addition",
            "--deployed-model",
            DEPLOYED,
            "--parity-model",
            PARITY,
            "--instance-timeout-ms",
            "800",
            "--group-timeout-ms",
            "20",
            "--decode-grace-ms",
            "150",
            // The grace is capped at the straggler threshold: a 150 ms threshold keeps it 150 ms,
            // so a healthy original slowed by a loaded machine still wins after recovery.
            "--straggler-min-us",
            "150000",
        ])
        .await;
        let base = format!("http://{}", frontend.addr);
        let url = format!("{base}/v2/models/{DEPLOYED}/infer");
        let client = reqwest::Client::builder().timeout(DEADLINE + HANG_MARGIN).pool_max_idle_per_host(64).build().unwrap();
        assert!(wait_all_up(&client, &base, Duration::from_secs(30)).await, "instances not up before the run");

        // Chaos phase: load from 1 s before the first fault to the end of the window.
        let load_task = {
            let (client, url, inputs) = (client.clone(), url.clone(), inputs.clone());
            tokio::spawn(async move { load(&client, &url, &inputs, 0..chaos_queries, RATE).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counts = run_chaos(&schedule, &targets, exe()).await;
        let chaos_records = load_task.await.unwrap();

        // Recovery: every instance back (as the frontend's probes see it), then full service.
        let all_up = wait_all_up(&client, &base, Duration::from_secs(20)).await;
        let recovery_records = load(&client, &url, &inputs, chaos_queries..n, RECOVERY_RATE).await;
        drop(frontend);
        drop(targets);
        (chaos_records, recovery_records, counts, all_up)
    });
    drop(rt);

    let (c, problems) = check(&chaos_records, &inputs, &f, &fp);
    let (r, recovery_problems) = check(&recovery_records, &inputs, &f, &fp);
    let answered = c.exact + c.reconstructed;
    println!(
        "chaos (seed {seed}): {} faults over {} s: kills {}, stalls {}, blackholes {}, resets {} (failed restarts {})",
        schedule.len(),
        WINDOW.as_secs(),
        counts.kills,
        counts.stalls,
        counts.blackholes,
        counts.resets,
        counts.failed_restarts
    );
    println!(
        "chaos phase: requests {} answered {} (exact {}, reconstructed {}) errors {} (503 {}, 504 {}) hung {} wrong {} lost {}; max latency {:.0} ms",
        c.requests,
        answered,
        c.exact,
        c.reconstructed,
        c.unavailable_503 + c.deadline_504,
        c.unavailable_503,
        c.deadline_504,
        c.hung,
        c.wrong,
        c.lost,
        c.max_latency.as_secs_f64() * 1e3
    );
    println!(
        "recovery phase: requests {} exact {} reconstructed {} errors {} hung {} wrong {} lost {}; all instances up: {all_up}; test wall {:.1} s",
        r.requests,
        r.exact,
        r.reconstructed,
        r.unavailable_503 + r.deadline_504,
        r.hung,
        r.wrong,
        r.lost,
        started.elapsed().as_secs_f64()
    );
    for p in problems.iter().chain(&recovery_problems) {
        println!("  problem: {p}");
    }

    assert_eq!(counts.failed_restarts, 0, "a killed instance could not be restarted");
    assert!(counts.kills + counts.stalls + counts.blackholes + counts.resets >= 10, "too few faults: {counts:?}");
    // Exactly one answer per request, each of an allowed kind.
    assert_eq!(c.hung, 0, "requests hung past their deadline: {problems:?}");
    assert_eq!(c.lost, 0, "requests without a valid answer: {problems:?}");
    assert_eq!(c.wrong, 0, "answers that are not the request's own: {problems:?}");
    assert_eq!(answered + c.unavailable_503 + c.deadline_504, c.requests);
    // The code did its job: faults were survived mostly by predictions and reconstructions.
    assert!(c.reconstructed > 0, "no reconstructions under chaos");
    assert!(answered * 10 >= c.requests * 8, "only {answered} of {} answered under chaos", c.requests);
    // Full service after the instances came back.
    assert!(all_up, "the frontend does not see every instance up again within 20 s");
    assert_eq!((r.hung, r.lost, r.wrong), (0, 0, 0), "recovery: {recovery_problems:?}");
    assert_eq!(r.unavailable_503 + r.deadline_504, 0, "errors after recovery: {recovery_problems:?}");
    assert_eq!(r.reconstructed, 0, "reconstructions still needed after recovery");
    assert_eq!(r.exact, RECOVERY);
}
