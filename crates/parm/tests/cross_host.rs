//! The coded path across hosts (issue 17): every process on a host of its own, emulated with
//! Linux network namespaces joined by a bridge (`parm_bench::netns`): host 0 the client, host 1
//! `parm serve`, hosts 2 and 3 the deployed instances, host 4 the parity instance (k = 2).
//! Four phases of queries, sent one at a time: all healthy; the deployed instance on host 2
//! stopped (SIGSTOP); host 2 resumed and host 3 cut off the network (its link to the bridge
//! down: a partition); the link back up. Every query gets one 200 answer; originals equal F's;
//! reconstructions happen only while a host is out and stop once the partition heals.
//! Skipped, saying why, where namespaces cannot be made (not root).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use parm_bench::netns::Hosts;
use parm_nn::{ModelKind, Predictor};
use serde_json::{Value, json};
use support::{DEPLOYED, PARITY, close, exe, output, signal, write_model};

/// Queries per phase.
const PHASE: usize = 20;
const QUERIES: usize = 4 * PHASE;
const PORT: u16 = 9001;

/// The tests here run one at a time: each measures timing on the shared cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock that runs the tests here one at a time, or `None` (the test then skips, saying
/// why) where namespaces cannot be made.
fn hosts_here(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    match Hosts::available() {
        Ok(()) => Some(one),
        Err(why) => {
            eprintln!("{test} skipped: no network namespaces here ({why})");
            None
        }
    }
}

/// Processes started on the hosts; killed (after SIGCONT) when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            signal(c.id() as i32, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `parm ARGS` on host `i` and waits for its `listening on` line.
/// Starts `parm ARGS` on host `i` and waits for its `listening on` line; returns its index in
/// `procs`.
fn start(hosts: &Hosts, procs: &mut Procs, i: usize, args: &[&str]) -> usize {
    let mut child = hosts.command(i, exe()).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("ip netns exec parm");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    procs.0.push(child);
    let line = lines.next().expect("parm exited before listening").unwrap();
    assert!(line.starts_with("listening on "), "host {i}: {line}");
    std::thread::spawn(move || lines.for_each(drop));
    procs.0.len() - 1
}

/// Host 0 for the client, `parm serve` on host 1 (returned: its address), deployed instances
/// on hosts 2 and 3, the parity instance on host 4; models written to `dir`.
fn cluster(dir: &std::path::Path) -> (Hosts, Procs, String) {
    let deployed = write_model(dir, DEPLOYED, ModelKind::Deployed);
    let parity = write_model(dir, PARITY, ModelKind::Parity);
    let hosts = Hosts::create(5).unwrap();
    let at = |i: usize| format!("{}:{PORT}", hosts.host(i).ip);
    let mut procs = Procs(Vec::new());
    for (i, model, name) in [(2, &deployed, DEPLOYED), (3, &deployed, DEPLOYED), (4, &parity, PARITY)] {
        start(&hosts, &mut procs, i, &["worker", "--model", model.to_str().unwrap(), "--name", name, "--listen", &at(i)]);
    }
    let (deployed_addrs, frontend) = (format!("{},{}", at(2), at(3)), at(1));
    #[rustfmt::skip]
    start(&hosts, &mut procs, 1, &[
        "serve", "--listen", &frontend, "--grpc-listen", "off", "--deployed", &deployed_addrs, "--parity", &at(4),
        "--k", "2", "--model-name", "m", "--deployed-model", DEPLOYED, "--parity-model", PARITY, "--instance-timeout-ms", "2000",
    ]);
    (hosts, procs, frontend)
}

#[test]
fn coded_path_across_hosts() {
    let Some(_one) = hosts_here("cross-host test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let deployed = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let (hosts, procs, frontend) = cluster(dir.path());
    let stopped = procs.0[0].id() as i32;
    let inputs: Vec<Vec<f32>> = (0..QUERIES).map(|q| (0..784).map(|j| ((q * 31 + j * 7) % 97) as f32 / 97.0).collect()).collect();
    let url = format!("http://{frontend}/v2/models/m/infer");
    let answers = hosts
        .run_on(0, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut answers = Vec::new();
                for (q, x) in inputs.iter().enumerate() {
                    match q / PHASE {
                        1 if q % PHASE == 0 => signal(stopped, libc::SIGSTOP),
                        2 if q % PHASE == 0 => {
                            signal(stopped, libc::SIGCONT);
                            hosts.set_link(3, false).unwrap();
                        }
                        3 if q % PHASE == 0 => {
                            hosts.set_link(3, true).unwrap();
                            // TCP retransmits on its own backoff; give it a moment.
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        _ => {}
                    }
                    let body =
                        json!({"id": q.to_string(), "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x}]});
                    let resp = client.post(&url).json(&body).send().await.expect("an answer within 10 s");
                    assert_eq!(resp.status(), 200, "query {q}");
                    answers.push(resp.json::<Value>().await.unwrap());
                }
                answers
            })
        })
        .unwrap();
    let f = Predictor::load(&deployed).unwrap();
    let mut reconstructed = [0; 4];
    for (q, a) in answers.iter().enumerate() {
        if a["parameters"]["parm_reconstructed"] == json!(true) {
            reconstructed[q / PHASE] += 1;
        } else {
            assert!(close(&output(a), &f.infer(&inputs[q], 1).unwrap()), "query {q}: not F's answer: {a}");
        }
    }
    eprintln!("across 5 hosts: {QUERIES} answered; reconstructed per phase (healthy, stopped, partitioned, healed): {reconstructed:?}");
    // Round robin puts about half of a phase's queries on the host that is out.
    // With every host up a reconstruction only wins a race against a slow call (a cold first
    // one, a busy machine): 0-2 of 20 in runs here; a CI machine gets some slack.
    assert!(reconstructed[0] <= 4, "reconstructions with every host up: {reconstructed:?}");
    assert!(reconstructed[1] >= PHASE / 4 && reconstructed[2] >= PHASE / 4, "{reconstructed:?}");
    assert!(reconstructed[3] <= 4, "the partition healed, yet {reconstructed:?}");
}

/// Readiness across hosts (issue 17's partition target): `/v2/health/ready` stays 200 while one
/// deployed host is cut off, turns 503 once no deployed instance is reachable, and is 200 again
/// within about 1.5 s of the partition healing (asserted: 3 s); a query sent meanwhile gets an answer within its
/// deadline.
#[test]
fn readiness_follows_a_partition_of_the_deployed_hosts() {
    let Some(_one) = hosts_here("cross-host readiness test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hosts, _procs, frontend) = cluster(dir.path());
    let (ready_url, infer_url) = (format!("http://{frontend}/v2/health/ready"), format!("http://{frontend}/v2/models/m/infer"));
    let (went_down, came_back, during) = hosts
        .run_on(0, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let ready = || async { client.get(&ready_url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) };
                let until = |want: u16, limit: Duration| {
                    let ready = &ready;
                    async move {
                        let start = Instant::now();
                        while ready().await != want {
                            assert!(start.elapsed() < limit, "readiness not {want} within {limit:?}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        start.elapsed()
                    }
                };
                until(200, Duration::from_secs(10)).await;
                hosts.set_link(2, false).unwrap();
                for _ in 0..30 {
                    assert_eq!(ready().await, 200, "one deployed host is still reachable");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                hosts.set_link(3, false).unwrap();
                let went_down = until(503, Duration::from_secs(5)).await;
                let body = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": vec![0.5f32; 784]}]});
                let sent = Instant::now();
                let status = client.post(&infer_url).json(&body).send().await.expect("an answer, not a hang").status().as_u16();
                let during = (status, sent.elapsed());
                tokio::time::sleep(Duration::from_secs(5).saturating_sub(went_down + during.1)).await;
                hosts.set_link(2, true).unwrap();
                hosts.set_link(3, true).unwrap();
                let came_back = until(200, Duration::from_secs(15)).await;
                let resp = client.post(&infer_url).json(&body).send().await.expect("an answer after the heal");
                assert_eq!(resp.status(), 200);
                (went_down, came_back, during)
            })
        })
        .unwrap();
    eprintln!(
        "readiness: 503 {went_down:?} after the last deployed host was cut off; 200 {came_back:?} after the heal; a query during the partition: HTTP {} in {:?}",
        during.0, during.1
    );
    // With no deployed instance, a padded group's parity query still answers (a reconstruction),
    // else the 2 s instance timeout gives a clear error.
    assert!((during.0 == 200 || during.0 >= 500) && during.1 < Duration::from_secs(4), "{during:?}");
    assert!(came_back < Duration::from_secs(3), "ready again {came_back:?} after the heal");
}

/// Discovery across hosts (issue 17): `parm serve --deployed dns://parm-deployed:9001` follows
/// the name's answer while it changes every [`CHANGE_EVERY`] under open-loop load, as a
/// Kubernetes headless Service's answer does when pods come and go. The answer comes from the
/// frontend host's `/etc/hosts` through the system resolver (getaddrinfo, the lookup a DNS
/// answer also takes; no DNS server runs here). A new instance starts before it is listed; one
/// dropped from the answer is killed 2 s later (a pod's preStop wait). Every request gets a
/// 200, originals equal F's, and once the answer settles no query goes to a killed instance
/// (which would show as reconstructions).
#[test]
fn dns_discovery_follows_a_changing_answer_under_load() {
    const CHANGE_EVERY: Duration = Duration::from_secs(5);
    const RATE: f64 = 100.0;
    let Some(_one) = hosts_here("cross-host discovery test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let deployed = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let parity = write_model(dir.path(), PARITY, ModelKind::Parity);
    // Host 0 the client, 1 the frontend, 2-4 deployed instances, 5 the parity instance.
    let hosts = Hosts::create(6).unwrap();
    let at = |i: usize| format!("{}:{PORT}", hosts.host(i).ip);
    let answer = |listed: &[usize]| {
        let lines: String = listed.iter().map(|&i| format!("{} parm-deployed\n", hosts.host(i).ip)).collect();
        hosts.set_hosts_file(1, &format!("127.0.0.1 localhost\n{lines}")).unwrap();
    };
    let mut procs = Procs(Vec::new());
    let worker = |procs: &mut Procs, i: usize, model: &std::path::Path, name: &str| {
        start(&hosts, procs, i, &["worker", "--model", model.to_str().unwrap(), "--name", name, "--listen", &at(i)])
    };
    let mut running = [2, 3].map(|i| worker(&mut procs, i, &deployed, DEPLOYED)).to_vec();
    worker(&mut procs, 5, &parity, PARITY);
    answer(&[2, 3]);
    #[rustfmt::skip]
    start(&hosts, &mut procs, 1, &[
        "serve", "--listen", &at(1), "--grpc-listen", "off", "--deployed", &format!("dns://parm-deployed:{PORT}"),
        "--discovery-interval-ms", "500", "--parity", &at(5), "--k", "2", "--model-name", "m", "--deployed-model", DEPLOYED,
        "--parity-model", PARITY, "--instance-timeout-ms", "2000",
    ]);
    let url = format!("http://{}/v2/models/m/infer", at(1));
    let input = |q: usize| -> Vec<f32> { (0..784).map(|j| ((q * 31 + j * 7) % 97) as f32 / 97.0).collect() };
    // Answers: (query, phase, HTTP status, body).
    let answers = hosts
        .run_on(0, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let start_at = Instant::now();
                let mut sent = Vec::new();
                let mut changes = 0;
                for q in 0.. {
                    let phase = (start_at.elapsed().as_secs_f64() / CHANGE_EVERY.as_secs_f64()) as usize;
                    if phase == 4 {
                        break;
                    }
                    if phase > changes && changes < 2 {
                        changes += 1;
                        // Change 1: host 4 comes up and replaces host 2. Change 2: host 2
                        // comes back and replaces host 3.
                        let (new, listed) = if changes == 1 { (4, [3, 4]) } else { (2, [2, 4]) };
                        running.push(worker(&mut procs, new, &deployed, DEPLOYED));
                        answer(&listed);
                        // The longest-listed instance leaves.
                        let victim = running.remove(0);
                        let child = procs.0[victim].id() as i32;
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            signal(child, libc::SIGKILL);
                        });
                    }
                    let body = json!({"id": q.to_string(), "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": input(q)}]});
                    let (client, url) = (client.clone(), url.clone());
                    sent.push(tokio::spawn(async move {
                        let resp = client.post(&url).json(&body).send().await.expect("an answer within 10 s");
                        (q, phase, resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
                    }));
                    tokio::time::sleep(Duration::from_secs_f64(1.0 / RATE)).await;
                }
                futures::future::join_all(sent).await.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
            })
        })
        .unwrap();
    let f = Predictor::load(&deployed).unwrap();
    let (mut per_phase, mut reconstructed) = ([0usize; 4], [0usize; 4]);
    for (q, phase, status, body) in &answers {
        assert_eq!(*status, 200, "query {q} in phase {phase}: {body}");
        per_phase[*phase] += 1;
        if body["parameters"]["parm_reconstructed"] == json!(true) {
            reconstructed[*phase] += 1;
        } else {
            assert!(close(&output(body), &f.infer(&input(*q), 1).unwrap()), "query {q}: not F's answer: {body}");
        }
    }
    eprintln!(
        "dns:// discovery, answer changed at {CHANGE_EVERY:?} and {:?}: {} requests, 0 failed; per phase {per_phase:?}, reconstructed {reconstructed:?}",
        CHANGE_EVERY * 2,
        answers.len()
    );
    // Phase 3: the answer has been {2, 4} for 5 s and host 3's instance is dead; a query sent
    // there would have waited for the instance timeout and been reconstructed (about half the
    // phase's queries if it were still in rotation). On a busy machine load alone makes
    // stragglers (8-22% of a phase's queries reconstructed with a build running beside, and
    // more in phase 3 than in phase 0), so the yardstick is twice phase 0's share, before any
    // change, plus 5% of the phase.
    assert!(reconstructed[3] * 20 <= per_phase[3] + reconstructed[0] * 40, "{reconstructed:?} of {per_phase:?}");
}

/// The load generator as a process of its own (`parm loadgen`, `parm_bench::client`, scenario
/// key `client_process`): started on the client's host against `parm serve` on another, it
/// sends every query open loop and hands back the report a trial in process would give: every
/// query answered, F's class for every original, the latency trace and quantiles the simulator
/// reads, and its own send lag.
#[test]
fn a_load_generator_process_on_the_client_host_reports_its_trial() {
    const N: usize = 60;
    const WARMUP: usize = 10;
    let Some(_one) = hosts_here("load generator process test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let deployed = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let (hosts, _procs, frontend) = cluster(dir.path());
    let f = Predictor::load(&deployed).unwrap();
    let queries: Vec<parm_bench::Query> = (0..N)
        .map(|q| {
            let input: Vec<f32> = (0..784).map(|j| ((q * 31 + j * 7) % 97) as f32 / 97.0).collect();
            let out = f.infer(&input, 1).unwrap();
            let class = (0..out.len()).fold(0, |best, c| if out[c] > out[best] { c } else { best });
            parm_bench::Query { input, shape: vec![1, 784], label: Some(class) }
        })
        .collect();
    let spec = parm_bench::LoadSpec {
        base_url: format!("http://{frontend}"),
        replicas: Vec::new(),
        model: "m".into(),
        input_name: "input".into(),
        rate_qps: 100.0,
        seed: 3,
        warmup: WARMUP,
        request_timeout: Duration::from_secs(10),
        progress: false,
    };
    let place = parm_bench::client::Placement { netns: Some(hosts.host(0).netns.clone()), cpus: None };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = rt.block_on(parm_bench::client::run_open_loop_in_child(exe(), &place, &spec, &queries)).unwrap();
    eprintln!("load generator process: {report:?}");
    assert_eq!((report.requests, report.answered, report.errors), (N, N, 0), "{:?}", report.error_samples);
    assert!(report.correct + report.reconstructed >= N, "originals must be F's class: {report:?}");
    assert_eq!(report.latency_trace_ms.len(), N - WARMUP);
    assert_eq!(report.latency_quantiles_ms.len(), 1001);
    assert!(report.latency_ms.p50 > 0.0 && report.send_lag_ms.max >= 0.0);
    // Mixed shapes cannot go to a process (one input file, one shape).
    let mut mixed = queries.clone();
    mixed[1].shape = vec![1, 28, 28];
    let err = rt.block_on(parm_bench::client::run_open_loop_in_child(exe(), &place, &spec, &mixed)).unwrap_err();
    assert!(err.to_string().contains("one shape"), "{err}");
}
