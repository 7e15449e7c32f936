//! `oip-load`: one load generator for any Open Inference Protocol gRPC server (a parm
//! frontend, a parm worker, MLServer, Triton), for the efficiency comparison in BENCHMARKS.md.
//!
//! Two modes, both sending `inference.GRPCInferenceService/ModelInfer` with `--batch B` (1)
//! FP32 queries of `--dim` values (`raw_input_contents`, shape `[B, dim]`) per request:
//! - closed loop (`--concurrency C`): C requests always outstanding; throughput at saturation.
//! - open loop (`--rate R`): Poisson arrivals at R requests/s, each sent at its intended time
//!   by a dispatcher thread regardless of earlier answers, latency from the intended send time
//!   (no coordinated omission, docs/PROTOCOL.md "Load generation norms").
//!
//! The first `--warmup S` seconds are not counted. Prints one JSON line:
//! `{"target","mode","concurrency"|"rate","batch","seconds","requests","errors","shed",
//! "throughput" (requests/s),"rows_per_s","latency_us": {"p50","p90","p99","p99_9","max"},
//! "shed_latency_us": {"p50","p99"}, "send_lag_us": {"p50","p99","max"} (open loop),
//! "cpu_stolen"}`. `requests` and `latency_us` count answered requests; `shed` counts those
//! refused by admission control (UNAVAILABLE with `retry-after` metadata, parm's fast 503),
//! `errors` every other failure. The generator reports its own cost: `send_lag_us`, how late
//! each measured request started against its intended time (a lag is latency no server
//! caused, and it is inside `latency_us`), and `cpu_stolen`, the fraction of the machine's CPU
//! time its hypervisor took during the measured window (`/proc/stat`; null where unknown).
//!
//! Usage: oip-load --target 127.0.0.1:8001 --model fashion-mnist [--input input] [--dim 784]
//!        (--concurrency C | --rate R) [--batch 1] [--duration 10] [--warmup 2] [--connections 2]
//! (`oip-load --help` for every flag).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgGroup, CommandFactory, Parser};
use hdrhistogram::Histogram;
use parm_bench::grpc_call::{GrpcCaller, Outcome};
use parm_serve::oip::grpc::model_infer_request::InferInputTensor;
use parm_serve::oip::grpc::{ModelInferRequest, encode_f32_le};
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

/// One load generator for any Open Inference Protocol gRPC server (parm frontend or worker,
/// MLServer, Triton): ModelInfer with FP32 queries in raw_input_contents; prints one JSON line.
#[derive(Parser)]
#[command(name = "oip-load")]
#[command(group(ArgGroup::new("mode").required(true).args(["concurrency", "rate"])))]
struct Args {
    /// Server to load: HOST:PORT, or a URI (http://HOST:PORT).
    #[arg(long)]
    target: String,
    /// Model name sent in each ModelInfer request.
    #[arg(long)]
    model: String,
    /// Name of the model's input tensor.
    #[arg(long, default_value = "input")]
    input: String,
    /// Values per query (the model's input width).
    #[arg(long, default_value_t = 784)]
    dim: usize,
    /// Queries per request (input shape [BATCH, DIM]).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Per-query input shape when the model takes more than one axis, e.g. 1,28,28 (its product
    /// replaces --dim; sent as [BATCH, ...SHAPE]).
    #[arg(long, value_delimiter = ',')]
    shape: Option<Vec<usize>>,
    /// Closed loop: this many requests always outstanding (throughput at saturation).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: Poisson arrivals at this many requests/s, latency from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load not counted, first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: microseconds before each send that the dispatcher stops sleeping and
    /// yields until the send is due (0: sleep only). Against one parm worker at 1,000-3,000
    /// req/s, 200 cut the send lag's p50 from 115 to 20 us (and latency p50 by 100 us); its
    /// p99 (0.6-1.5 ms, more under steal) is the host's, whatever the setting.
    #[arg(long, default_value_t = 200)]
    spin_us: u64,
    /// HTTP/2 connections, requests spread over them in turn.
    #[arg(long, default_value_t = 2)]
    connections: usize,
}

/// Returns at `t`: sleeps until `spin` before it, then yields the CPU until it is due (a
/// sleep alone may wake late by the timer slack and the scheduler's latency, and that lateness
/// is counted in the latency; yielding rather than spinning leaves the CPU to the runtime
/// thread that sends, which may share it).
fn wait_until(t: Instant, spin: Duration) {
    let now = Instant::now();
    if t > now + spin {
        std::thread::sleep(t - now - spin);
    }
    while Instant::now() < t {
        std::thread::yield_now();
    }
}

/// The flags, checked (clap's usage error and exit 2 otherwise).
fn parse_args() -> Args {
    let a = Args::parse();
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let bad =
        if a.connections == 0 || a.dim == 0 || a.batch == 0 || a.concurrency == Some(0) || a.shape.as_ref().is_some_and(|s| s.contains(&0))
        {
            Some("--connections, --dim, --shape, --batch and --concurrency must be positive")
        } else if !(positive(a.duration) && a.warmup.is_finite() && a.warmup >= 0.0) {
            Some("--duration must be positive, --warmup non-negative")
        } else if a.rate.is_some_and(|r| !positive(r)) {
            Some("--rate must be positive")
        } else {
            None
        };
    if let Some(msg) = bad {
        Args::command().error(clap::error::ErrorKind::ValueValidation, msg).exit();
    }
    a
}

/// Latencies (us) and counts of the measured window.
#[derive(Default)]
struct Record {
    hist: Option<Histogram<u64>>,
    /// Requests shed by admission control (UNAVAILABLE with `retry-after`): how fast the
    /// refusals came.
    shed: Option<Histogram<u64>>,
    /// Open loop: how late each request started against its intended send time (us).
    lag: Option<Histogram<u64>>,
    errors: u64,
    first_error: Option<String>,
}

fn add(h: &mut Option<Histogram<u64>>, us: u64) {
    let h = h.get_or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
    h.saturating_record(us.max(1));
}

fn request(a: &Args) -> ModelInferRequest {
    // A fixed image-like query: values in [0, 1); the model's cost does not depend on them.
    let query: Vec<i64> = a.shape.as_ref().map_or_else(|| vec![a.dim as i64], |s| s.iter().map(|&d| d as i64).collect());
    let dim = query.iter().product::<i64>() as usize;
    let input: Vec<f32> = (0..dim * a.batch).map(|i| ((i * 7919) % 256) as f32 / 256.0).collect();
    ModelInferRequest {
        model_name: a.model.clone(),
        inputs: vec![InferInputTensor {
            name: a.input.clone(),
            datatype: "FP32".into(),
            shape: [vec![a.batch as i64], query].concat(),
            ..Default::default()
        }],
        raw_input_contents: vec![encode_f32_le(&input)],
        ..Default::default()
    }
}

async fn connections(a: &Args, req: &ModelInferRequest) -> anyhow::Result<Vec<GrpcCaller>> {
    let mut out = Vec::new();
    for _ in 0..a.connections {
        out.push(GrpcCaller::connect(&a.target, req).await?);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let clients = rt.block_on(connections(&a, &request(&a)))?;
    // One request first: fail early on a wrong model or input name.
    if let Outcome::Failed(e) = rt.block_on(clients[0].call()) {
        anyhow::bail!("first request: {e}");
    }
    let record = Arc::new(Mutex::new(Record::default()));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.duration);
    let inflight = Arc::new(AtomicU64::new(0));
    // Started at the end of the warm-up by a task of its own, read when the last request ends.
    let steal = Arc::new(Mutex::new(None));
    rt.spawn({
        let steal = steal.clone();
        async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *steal.lock().unwrap() = Some(parm_bench::steal::StealMeter::start());
        }
    });

    let one = {
        let record = record.clone();
        move |client: GrpcCaller, intended: Instant| {
            let record = record.clone();
            async move {
                let lag = Instant::now().saturating_duration_since(intended);
                let out = client.call().await;
                let now = Instant::now();
                if intended >= measure_from && intended < end {
                    let mut r = record.lock().unwrap();
                    let us = now.duration_since(intended).as_micros() as u64;
                    add(&mut r.lag, lag.as_micros() as u64);
                    match out {
                        Outcome::Answered => add(&mut r.hist, us),
                        Outcome::Shed => add(&mut r.shed, us),
                        Outcome::Failed(e) => {
                            r.errors += 1;
                            r.first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
    };

    let mode = if let Some(c) = a.concurrency {
        rt.block_on(async {
            let tasks: Vec<_> = (0..c)
                .map(|i| {
                    let (client, one) = (clients[i % clients.len()].clone(), one.clone());
                    tokio::spawn(async move {
                        loop {
                            let t = Instant::now();
                            if t >= end {
                                break;
                            }
                            one(client.clone(), t).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        serde_json::json!({"mode": "closed", "concurrency": c})
    } else {
        let rate = a.rate.expect("checked");
        let gaps = Exp::new(rate).context("--rate must be positive")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let handle = rt.handle().clone();
        // Dispatcher on its own thread: std sleeps are finer-grained than tokio's 1 ms timer.
        let mut next = Instant::now();
        let mut i = 0usize;
        while next < end {
            wait_until(next, Duration::from_micros(a.spin_us));
            let (client, one, inflight) = (clients[i % clients.len()].clone(), one.clone(), inflight.clone());
            inflight.fetch_add(1, Ordering::Relaxed);
            let intended = next;
            handle.spawn(async move {
                one(client, intended).await;
                inflight.fetch_sub(1, Ordering::Relaxed);
            });
            i += 1;
            next += Duration::from_secs_f64(gaps.sample(&mut rng));
        }
        let drain = Instant::now() + Duration::from_secs(30);
        while inflight.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
            std::thread::sleep(Duration::from_millis(10));
        }
        serde_json::json!({"mode": "open", "rate": rate})
    };
    let cpu_stolen = steal.lock().unwrap().as_ref().and_then(|m| m.fraction());
    let r = record.lock().unwrap();
    let hist = r.hist.clone().unwrap_or_else(|| Histogram::new(3).expect("hist"));
    let q = |p: f64| hist.value_at_quantile(p);
    let shed = r.shed.clone().unwrap_or_else(|| Histogram::new(3).expect("hist"));
    let mut out = serde_json::json!({
        "target": a.target,
        "model": a.model,
        "seconds": a.duration,
        "requests": hist.len(),
        "errors": r.errors,
        "shed": shed.len(),
        "shed_latency_us": {"p50": shed.value_at_quantile(0.5), "p99": shed.value_at_quantile(0.99)},
        "batch": a.batch,
        "throughput": hist.len() as f64 / a.duration,
        "rows_per_s": (hist.len() * a.batch as u64) as f64 / a.duration,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": hist.max()},
        "cpu_stolen": cpu_stolen,
    });
    if let (Some(o), Some(m)) = (out.as_object_mut(), mode.as_object()) {
        o.extend(m.clone());
        if let (Some(lag), Some(_)) = (&r.lag, a.rate) {
            let q = |p: f64| lag.value_at_quantile(p);
            o.insert("send_lag_us".into(), serde_json::json!({"p50": q(0.5), "p99": q(0.99), "max": lag.max()}));
        }
        if let Some(e) = &r.first_error {
            o.insert("first_error".into(), e.clone().into());
        }
    }
    println!("{out}");
    Ok(())
}
