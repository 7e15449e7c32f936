//! The frontend's own cost, measured apart from the models (issue 4, item 6).
//!
//! `cargo bench -p parm-bench --bench frontend` (`cargo test` runs it too, with a hundredth
//! of the work, so that it keeps compiling and working; its figures then mean little).
//!
//! Instances are in-process gRPC workers running a linear 784 -> 10 model (a few us of
//! compute), so what is measured is parm's path: HTTP-free `Frontend::predict`, coding-group
//! formation, encoding, dispatch over gRPC, decoding. Reported:
//! - encode (addition, k = 2, 784 values) and decode (subtraction, 10 values) per call;
//! - p50 latency of one query through the frontend vs. the same RPC sent directly to an
//!   instance (one query outstanding at a time): the difference is the frontend's added
//!   latency per query;
//! - throughput of the frontend with 64 queries outstanding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parm_codes::{AdditionEncoder, Decoder, Encoder, SubtractionDecoder};
use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::LinearBackend;
use parm_serve::instance::worker::{WorkerHandle, WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::client::InstanceClient;

const DIM: usize = 784;
const CLASSES: usize = 10;

fn backend(name: &str) -> Arc<LinearBackend> {
    let spec = ModelSpec::fp32(name, vec![DIM as i64], vec![CLASSES as i64]);
    let w: Vec<f32> = (0..DIM * CLASSES).map(|i| ((i % 17) as f32 - 8.0) / 100.0).collect();
    Arc::new(LinearBackend::new(spec, w, vec![0.0; CLASSES]).expect("valid linear model"))
}

async fn worker(name: &str) -> WorkerHandle {
    spawn_worker("127.0.0.1:0", backend(name), WorkerOptions::default()).await.expect("worker starts")
}

fn p50_us(h: &Histogram<u64>) -> f64 {
    h.value_at_quantile(0.5) as f64
}

/// Measuring (`cargo bench` passes `--bench`), or a short smoke run (`cargo test`).
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `n`, or a hundredth of it in a smoke run.
fn work(n: usize) -> usize {
    if measuring() { n } else { n / 100 }
}

fn codes() {
    let enc = AdditionEncoder::new(2).unwrap();
    let (a, b) = (vec![0.5f32; DIM], vec![0.25f32; DIM]);
    let n = work(200_000);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(enc.encode(&[&a, &b]).unwrap());
    }
    let enc_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let (fp, other) = (vec![1.0f32; CLASSES], vec![0.5f32; CLASSES]);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(SubtractionDecoder.decode(&fp, &[None, Some(&other)]).unwrap());
    }
    let dec_ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("encode (addition, k=2, {DIM} values): {enc_ns:.0} ns; decode (subtraction, {CLASSES} values): {dec_ns:.0} ns");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    codes();
    rt.block_on(async {
        let deployed = [worker("deployed").await, worker("deployed").await];
        let parity = worker("parity").await;
        let spec = ModelSpec::fp32("m", vec![DIM as i64], vec![CLASSES as i64]);
        let cfg = FrontendConfig {
            parity: vec![parity.addr.to_string()],
            parity_model: "parity".into(),
            ..FrontendConfig::new(spec, deployed.iter().map(|w| w.addr.to_string()).collect())
        };
        let frontend = Frontend::start(cfg).unwrap();
        frontend.warm_up().await;
        let client = InstanceClient::connect_lazy(&deployed[0].addr.to_string()).unwrap();
        let input = vec![0.5f32; DIM];
        // Interleaved, so that both see the same background noise on a shared machine.
        let n = work(5000);
        let (mut direct, mut coded) = (Histogram::<u64>::new(3).unwrap(), Histogram::<u64>::new(3).unwrap());
        let warm = work(200);
        for i in 0..n + warm {
            let t = Instant::now();
            client.infer("deployed", &input, &[1, DIM as i64], Duration::from_secs(5)).await.unwrap();
            let d = t.elapsed();
            let t = Instant::now();
            frontend.predict(input.clone()).await.unwrap();
            let c = t.elapsed();
            if i >= warm {
                direct.record(d.as_micros() as u64).unwrap();
                coded.record(c.as_micros() as u64).unwrap();
            }
        }
        println!(
            "one query outstanding, p50: direct RPC {:.0} us, through the frontend {:.0} us -> frontend adds {:.0} us",
            p50_us(&direct),
            p50_us(&coded),
            p50_us(&coded) - p50_us(&direct)
        );
        let secs = if measuring() { 3.0 } else { 0.1 };
        let start = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (f, x) = (frontend.clone(), input.clone());
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        f.predict(x.clone()).await.unwrap();
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let parity_sent = frontend.stats().parity_queries.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "throughput with instant instances, 64 outstanding: {:.0} queries/s ({} parity queries sent in all)",
            total as f64 / start.elapsed().as_secs_f64(),
            parity_sent
        );
    });
}
