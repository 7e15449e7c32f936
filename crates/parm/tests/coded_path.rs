//! End-to-end test of the coded path with real `parm` processes.
//!
//! Cluster: two deployed-model instances (instance 0 slow: every request holds its compute
//! lane 150 ms longer, so coding groups with a member on it get reconstructed), one parity
//! instance (k = 2, addition encoder), and a `parm serve` frontend. About 120 queries are
//! sent over HTTP at a steady pace, each in its own task; a third of the way in, the slow
//! instance is SIGKILLed. Models are randomly initialised MLPs (no training, no dataset):
//! the parity model's outputs mean nothing, but the subtraction decoder's arithmetic is
//! exact, so every reconstructed answer must equal Fp(X1 + X2) - F(X_other) computed offline,
//! and every original answer must equal F(X).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parm_bench::cluster::{Instance, InstanceSpec, start_instance};
use parm_nn::{ModelKind, Predictor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{DEPLOYED, PARITY, Served, exe, start_serve, write_model};

const MODEL: &str = "mnist-mlp";
const QUERIES: usize = 120;
/// Deployed instance 0 is killed right after this many queries have been sent.
const KILL_AFTER: usize = QUERIES / 3;
const PACE: Duration = Duration::from_millis(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most 503 answers tolerated; see the reasoning where it is asserted.
const MAX_UNAVAILABLE: usize = 3;

/// `parm serve` over the two deployed instances and the parity instance (the gRPC port is not
/// used here); SIGKILLed when dropped (also when an assertion panics).
async fn start_frontend(deployed: &[&Instance], parity: &Instance) -> Served {
    let deployed: Vec<&str> = deployed.iter().map(|i| i.addr.as_str()).collect();
    let deployed = deployed.join(",");
    start_serve(&[
        "--deployed",
        &deployed,
        "--parity",
        &parity.addr,
        "--k",
        "2",
        "--encoder",
        "addition",
        "--model-name",
        MODEL,
        "--deployed-model",
        DEPLOYED,
        "--parity-model",
        PARITY,
        "--group-timeout-ms",
        "50",
        "--instance-timeout-ms",
        "2000",
    ])
    .await
}

/// One query's fate: HTTP status and JSON body, or the client error.
type Outcome = Result<(u16, Value), String>;

/// Starts the cluster, sends the load, kills instance 0 mid-stream, returns every outcome.
/// Every child process is killed when this returns or unwinds.
async fn run_cluster(deployed_path: &Path, parity_path: &Path, inputs: Arc<Vec<Vec<f32>>>) -> Vec<Outcome> {
    let exe = exe();
    let spec = |path: &Path, name: &str, fault: &str| InstanceSpec {
        model: path.to_path_buf(),
        name: name.into(),
        fault: fault.into(),
        listen: None,
        netns: None,
        cpus: None,
    };
    let mut slow = start_instance(exe, spec(deployed_path, DEPLOYED, "delay_ms=150,prob=1,seed=1")).await.unwrap();
    let fast = start_instance(exe, spec(deployed_path, DEPLOYED, "")).await.unwrap();
    let parity = start_instance(exe, spec(parity_path, PARITY, "")).await.unwrap();
    let frontend = start_frontend(&[&slow, &fast], &parity).await;
    let base = format!("http://{}", frontend.addr);

    let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().unwrap();
    // Do not assume the input's name: ask the model metadata.
    let meta: Value = client.get(format!("{base}/v2/models/{MODEL}")).send().await.unwrap().json().await.unwrap();
    let input_name = meta["inputs"][0]["name"].as_str().expect("metadata names the input").to_string();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 784]), "metadata: {meta}");

    let url = format!("{base}/v2/models/{MODEL}/infer");
    let mut tasks = Vec::with_capacity(QUERIES);
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..QUERIES {
        tick.tick().await;
        if i == KILL_AFTER {
            slow.kill().await; // SIGKILL, mid-stream: it still holds queued and running requests
        }
        let body = json!({
            "id": i.to_string(),
            "inputs": [{"name": input_name, "shape": [1, 784], "datatype": "FP32", "data": inputs[i]}],
        });
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.post(&url).json(&body).send().await.map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
            let value = serde_json::from_slice(&body)
                .map_err(|e| format!("status {status}, body not JSON ({e}): {}", String::from_utf8_lossy(&body)))?;
            Ok((status, value))
        }));
    }
    let mut outcomes = Vec::with_capacity(QUERIES);
    for t in tasks {
        outcomes.push(t.await.expect("request task panicked"));
    }
    drop((fast, parity, frontend)); // kill_on_drop
    outcomes
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array of numbers").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-3 * (1.0 + w.abs());
        assert!((g - w).abs() <= tol, "{what}: element {j} is {g}, expected {w}\n got  {got:?}\n want {want:?}");
    }
}

/// One 200 answer.
struct Answer {
    query: usize,
    group: u64,
    position: usize,
    reconstructed: bool,
    output: Vec<f32>,
}

#[test]
fn coded_path_end_to_end() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let deployed_path = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let parity_path = write_model(dir.path(), PARITY, ModelKind::Parity);

    let mut rng = StdRng::seed_from_u64(7);
    let inputs: Arc<Vec<Vec<f32>>> = Arc::new((0..QUERIES).map(|_| (0..784).map(|_| rng.random::<f32>()).collect()).collect());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes = rt.block_on(run_cluster(&deployed_path, &parity_path, inputs.clone()));
    drop(rt);

    // Exactly one HTTP answer per request, none timed out, 200 or 503 {"error": ...}.
    let mut answers = Vec::new();
    let mut unavailable = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let (status, body) = match outcome {
            Ok(x) => x,
            Err(e) => panic!("query {i} got no HTTP answer within {CLIENT_TIMEOUT:?}: {e}"),
        };
        match status {
            200 => {
                assert_eq!(body["id"], json!(i.to_string()), "query {i}: echoed id; body {body}");
                let p = &body["parameters"];
                let one = |key: &str| {
                    let a = p[key].as_array().unwrap_or_else(|| panic!("query {i}: parameters.{key} not an array: {body}"));
                    assert_eq!(a.len(), 1, "query {i}: one row, so one {key} entry");
                    a[0].clone()
                };
                let reconstructed = p["parm_reconstructed"].as_bool().expect("parm_reconstructed");
                assert_eq!(one("parm_reconstructed_rows"), json!(reconstructed), "query {i}: {body}");
                let out = &body["outputs"][0];
                assert_eq!(out["shape"], json!([1, 10]), "query {i}: output shape");
                answers.push(Answer {
                    query: i,
                    group: one("parm_coding_groups").as_u64().expect("group id"),
                    position: one("parm_group_positions").as_u64().expect("position") as usize,
                    reconstructed,
                    output: f32s(&out["data"]),
                });
            }
            503 => {
                assert!(body["error"].is_string(), "query {i}: 503 without an error message: {body}");
                unavailable.push(i);
            }
            s => panic!("query {i}: unexpected status {s}: {body}"),
        }
    }

    // Offline: F and Fp loaded back from the files the instances serve.
    let f = Predictor::load(&deployed_path).unwrap();
    let fp = Predictor::load(&parity_path).unwrap();
    let mut groups: HashMap<u64, Vec<&Answer>> = HashMap::new();
    for a in &answers {
        groups.entry(a.group).or_default().push(a);
    }
    for members in groups.values() {
        assert!(members.len() <= 2, "k = 2, but group {} has {} answers", members[0].group, members.len());
        if let [a, b] = members.as_slice() {
            assert_ne!(a.position, b.position, "queries {} and {} share a group slot", a.query, b.query);
        }
        assert!(members.iter().all(|a| a.position < 2), "position out of range in group {}", members[0].group);
    }
    let mut reconstructed = 0;
    let mut reconstructed_after_kill = 0;
    for a in &answers {
        if !a.reconstructed {
            let want = f.infer(&inputs[a.query], 1).unwrap();
            assert_close(&a.output, &want, &format!("original answer to query {}", a.query));
            continue;
        }
        reconstructed += 1;
        // Reconstructing one of k = 2 members needs the other's F output, which the frontend
        // then also answered (as an original): find it by the coding group id. A query alone
        // in its group (sealed at the straggler threshold) was padded with an all-zero query,
        // whose output F(0) the decoder subtracts instead.
        let other = groups[&a.group].iter().find(|o| o.query != a.query);
        let zeros = vec![0.0f32; inputs[a.query].len()];
        let (other_input, other_name) = match other {
            Some(o) => {
                assert!(!o.reconstructed, "both members of group {} reconstructed", a.group);
                (&inputs[o.query], format!("query {}", o.query))
            }
            None => (&zeros, "zero padding".to_string()),
        };
        let parity_query: Vec<f32> = inputs[a.query].iter().zip(other_input).map(|(x, y)| x + y).collect();
        let fp_p = fp.infer(&parity_query, 1).unwrap();
        let f_other = f.infer(other_input, 1).unwrap();
        let want: Vec<f32> = fp_p.iter().zip(&f_other).map(|(p, o)| p - o).collect();
        assert_close(&a.output, &want, &format!("reconstruction of query {} (group {}, other: {other_name})", a.query, a.group));
        // The models are untrained, so a reconstruction is far from F(X): this shows the check
        // above tells a reconstruction from an original mislabelled as one.
        let f_x = f.infer(&inputs[a.query], 1).unwrap();
        let gap = want.iter().zip(&f_x).map(|(w, x)| (w - x).abs()).fold(0.0f32, f32::max);
        assert!(gap > 1e-2, "query {}: Fp(P) - F(other) is indistinguishable from F(X) (gap {gap})", a.query);
        if a.query >= KILL_AFTER {
            reconstructed_after_kill += 1;
        }
    }

    let after_kill = answers.iter().filter(|a| a.query >= KILL_AFTER).count();
    println!(
        "coded_path: {} queries, answered {} (200), reconstructed {} ({} after the kill), errors {} (503: queries {:?}); \
         {} of {} sent after the kill answered; {:.1} s",
        QUERIES,
        answers.len(),
        reconstructed,
        reconstructed_after_kill,
        unavailable.len(),
        unavailable,
        after_kill,
        QUERIES - KILL_AFTER,
        started.elapsed().as_secs_f64()
    );
    assert!(reconstructed >= 1, "instance 0 is 150 ms slow on every query, yet nothing was reconstructed");
    // A 503 needs a query whose RPC failed for good in a coding group that cannot reconstruct
    // it (no parity query, or the other member failed too). After the kill, instance 0
    // refuses connections ("tcp connect error" = UNAVAILABLE, retryable), so new queries are
    // retried on instance 1 and answered. RPCs caught in flight on instance 0 at the moment of
    // the kill fail with gRPC UNKNOWN "transport error", which the frontend does NOT retry;
    // they are answered only by reconstruction. Since instance 0 is 150 ms slow, almost all of
    // its RPCs have already been reconstructed (and cancelled) by then, so 503s are normally
    // zero; a few are tolerated for a lone member of a partial group (closed without parity
    // on a stalled machine) that was in flight on instance 0.
    assert!(
        unavailable.len() <= MAX_UNAVAILABLE,
        "{} queries got 503 (at most {MAX_UNAVAILABLE} expected): {unavailable:?}",
        unavailable.len()
    );
    assert!(
        after_kill >= QUERIES - KILL_AFTER - MAX_UNAVAILABLE,
        "only {after_kill} of the {} queries sent after the kill were answered with 200",
        QUERIES - KILL_AFTER
    );
}
