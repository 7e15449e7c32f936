//! Overload measurement: a burst at 10x the frontend's capacity against a `parm serve`
//! process; reports what was served and shed and the frontend's peak RSS (VmHWM).
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p parm-bench --example overload -- \
//!     --parm target/release/parm --model models/fashion-mnist/deployed.bpk \
//!     [--max-inflight 1024] [--delay-ms 5] [--burst-s 5] [--factor 10]
//! ```
//!
//! Cluster: 2 deployed-model instances and 1 parity-model instance (`parm worker`, each
//! request held `--delay-ms` longer, which sets the capacity), k = 2. The parity instance serves
//! the same weights (the parity model's cost, not its accuracy, matters here). Steps:
//! 1. capacity: 64 closed-loop clients for 4 s; capacity = answered per second;
//! 2. the frontend's peak-RSS counter is reset (`/proc/PID/clear_refs` 5), then open-loop
//!    requests at `--factor` x capacity for `--burst-s` seconds, each with its own task;
//!    VmRSS sampled every 20 ms, VmHWM read at the end;
//! 3. after the burst, 500 requests from 16 closed-loop clients: all must be answered (200).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parm_bench::cluster::{InstanceSpec, start_instances};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Args {
    parm: PathBuf,
    model: PathBuf,
    max_inflight: usize,
    delay_ms: f64,
    burst_s: f64,
    factor: f64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        parm: "target/release/parm".into(),
        model: "models/fashion-mnist/deployed.bpk".into(),
        max_inflight: 1024,
        delay_ms: 5.0,
        burst_s: 5.0,
        factor: 10.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--parm" => a.parm = v.into(),
            "--model" => a.model = v.into(),
            "--max-inflight" => a.max_inflight = v.parse()?,
            "--delay-ms" => a.delay_ms = v.parse()?,
            "--burst-s" => a.burst_s = v.parse()?,
            "--factor" => a.factor = v.parse()?,
            _ => bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| s.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok();
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
}

async fn one(client: &reqwest::Client, url: &str, body: reqwest::Body, t: &Tally) -> Option<Duration> {
    let start = Instant::now();
    match client.post(url).header("content-type", "application/json").body(body).send().await {
        Ok(r) if r.status() == 200 => {
            let _ = r.bytes().await;
            t.ok.fetch_add(1, Ordering::Relaxed);
            Some(start.elapsed())
        }
        Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
            let _ = r.bytes().await;
            t.shed.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => {
            t.other.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn body(i: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..784).map(|j| ((i * 7919 + j * 31) % 256) as f32 / 255.0).collect();
    serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": data}]})).unwrap()
}

async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    bodies: &[Vec<u8>],
    clients: usize,
    until: Instant,
    max: u64,
) -> (Tally, Vec<Duration>) {
    let t = Arc::new(Tally::default());
    let sent = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url, t, sent) = (client.clone(), url.to_string(), t.clone(), sent.clone());
            let bodies: Vec<Vec<u8>> = bodies.to_vec();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while Instant::now() < until && sent.fetch_add(1, Ordering::Relaxed) < max {
                    if let Some(l) = one(&client, &url, reqwest::Body::from(bodies[i % bodies.len()].clone()), &t).await {
                        lat.push(l);
                    }
                    i += clients;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    (Arc::try_unwrap(t).ok().unwrap(), lat)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let fault = format!("delay_ms={},prob=1,seed=1", a.delay_ms);
    let spec = |name: &str| InstanceSpec {
        model: a.model.clone(),
        name: name.into(),
        fault: fault.clone(),
        listen: None,
        netns: None,
        cpus: None,
    };
    let workers = start_instances(&a.parm, vec![spec("deployed"), spec("deployed"), spec("parity")]).await?;
    let mut serve = tokio::process::Command::new(&a.parm)
        .arg("serve")
        .args(["--deployed", &format!("{},{}", workers[0].addr, workers[1].addr), "--parity", &workers[2].addr])
        .args(["--parity-model", "parity", "--k", "2", "--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .args(["--max-inflight", &a.max_inflight.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = serve.id().context("parm serve pid")?;
    let mut lines = BufReader::new(serve.stdout.take().context("stdout")?).lines();
    let addr =
        lines.next_line().await?.context("parm serve exited")?.strip_prefix("listening on ").context("first line")?.trim().to_string();
    let url = format!("http://{addr}/v2/models/deployed/infer");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(usize::MAX).build()?;
    let bodies: Vec<Vec<u8>> = (0..64).map(body).collect();
    let (rss0, _) = rss_kib(pid).context("reading /proc")?;

    // 1. Capacity.
    let cap_s = 4.0;
    let (t, _) = closed_loop(&client, &url, &bodies, 64, Instant::now() + Duration::from_secs_f64(cap_s), u64::MAX).await;
    let capacity = t.ok.load(Ordering::Relaxed) as f64 / cap_s;
    let (_, hwm_cap) = rss_kib(pid).unwrap();
    println!(
        "frontend RSS idle {} KiB; capacity {:.0} queries/s (64 closed-loop clients, {} shed); VmHWM after {} KiB",
        rss0,
        capacity,
        t.shed.load(Ordering::Relaxed),
        hwm_cap
    );

    // 2. The burst.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5"); // resets VmHWM
    let rate = capacity * a.factor;
    let n = (rate * a.burst_s) as usize;
    let tally = Arc::new(Tally::default());
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Some((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, t, b) = (client.clone(), url.clone(), tally.clone(), reqwest::Body::from(bodies[i % 64].clone()));
        tasks.push(tokio::spawn(async move { one(&client, &url, b, &t).await }));
    }
    let send_s = start.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let burst_s = start.elapsed().as_secs_f64();
    sampler.abort();
    let (_, hwm) = rss_kib(pid).unwrap();
    let (ok, shed, other) = (tally.ok.load(Ordering::Relaxed), tally.shed.load(Ordering::Relaxed), tally.other.load(Ordering::Relaxed));
    println!(
        "burst: {n} requests offered at {rate:.0}/s ({:.0}x capacity; sent in {send_s:.1} s, all answered in {burst_s:.1} s): served {ok}, shed 503+Retry-After {shed}, other {other}; served p50 {:.0} ms p99 {:.0} ms",
        a.factor,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    println!(
        "frontend peak RSS during the burst: VmHWM {} KiB ({:.1} MiB), sampled VmRSS max {} KiB",
        hwm,
        hwm as f64 / 1024.0,
        peak_rss.load(Ordering::Relaxed)
    );

    // 3. After the burst.
    let (t, mut lat) = closed_loop(&client, &url, &bodies, 16, Instant::now() + Duration::from_secs(60), 500).await;
    let (ok, shed, other) = (t.ok.load(Ordering::Relaxed), t.shed.load(Ordering::Relaxed), t.other.load(Ordering::Relaxed));
    println!(
        "after the burst: 500 requests (16 closed-loop clients): served {ok}, shed {shed}, other {other}; p50 {:.1} ms p99 {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    let _ = serve.kill().await;
    if ok != 500 {
        bail!("service did not return to normal after the burst");
    }
    Ok(())
}
