//! `parm demo`: the whole coded path end to end on real data.
//!
//! 1. Prepares Fashion-MNIST if missing.
//! 2. Trains the deployed MLP and a k = 2 addition parity model (`--code collage`: a collage
//!    model) on a short budget, or reuses the ones already in the model directory.
//! 3. Reports available / degraded-mode / default accuracy on the test set.
//! 4. Runs three setups on a local loopback cluster (each instance its own `parm worker`
//!    process), at the same offered load, with one deployed instance slowed down:
//!    - `none`: N deployed instances, no redundancy;
//!    - `equal-resources`: N + N/k deployed instances, load-balanced round-robin;
//!    - `parm`: N deployed + N/k parity instances, coding groups of k.
//!
//!    The slowdown: every request on instance 0 holds its compute lane `--slow-ms` longer
//!    (`parm worker --fault delay_ms=...`), so it also builds a queue, as a straggler does.
//! 5. Sends the test set as open-loop Poisson traffic and prints, per setup, requests,
//!    answered, reconstructed, errors, accuracy of the answers and p50 / p99 / p99.9 latency.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_bench::harness::{ParityCode, RunSpec, run_once};
use parm_bench::scenario::Mode;
use parm_bench::{Query, RunReport, format_table};
use serde_json::json;

use super::eval::accuracy_report;
use super::{Paths, write_new};
use crate::models::{Budget, ensure_models_for};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// The redundancy of the `parm` setup: `parity` (ParM's learned parity model, the
    /// addition code) or `collage` (the k queries tiled into one input for a model that
    /// classifies every cell; Narra et al., arXiv 1904.12222).
    #[arg(long, default_value = "parity")]
    pub code: String,
    /// Deployed-model instances N (parm adds N/k parity instances, Equal-Resources N/k more deployed).
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
    /// Offered load, queries per second (open-loop Poisson).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    /// Test queries sent per setup (at most the test set).
    #[arg(long, default_value_t = 10_000)]
    pub queries: usize,
    /// Queries at the start of each run whose latency is not recorded.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Extra ms each request takes on the slowed instance.
    #[arg(long, default_value_t = 20.0)]
    pub slow_ms: f64,
    /// Epochs for the deployed model if it must be trained.
    #[arg(long, default_value_t = 20)]
    pub deployed_epochs: usize,
    /// Epochs for the parity model if it must be trained (ParM: 500).
    #[arg(long, default_value_t = 30)]
    pub parity_epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A partly filled coding group gets its (zero-padded) parity query after this many ms.
    #[arg(long, default_value_t = super::DEFAULT_GROUP_TIMEOUT_MS)]
    pub group_timeout_ms: u64,
    /// A reconstruction is released no earlier than this many ms after its query was sent
    /// (at most the straggler threshold; default: the threshold).
    #[arg(long)]
    pub decode_grace_ms: Option<u64>,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.k >= 2 && a.instances >= a.k && a.instances.is_multiple_of(a.k), "--instances must be a multiple of --k >= 2");
    anyhow::ensure!(a.rate > 0.0 && a.rate.is_finite(), "--rate must be positive");
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let budget = Budget { deployed_epochs: a.deployed_epochs, parity_epochs: a.parity_epochs, seed: a.seed };
    let code = match a.code.as_str() {
        "parity" => ParityCode::Addition,
        "collage" => ParityCode::Collage,
        other => anyhow::bail!("--code {other}: expected parity or collage"),
    };
    let models = ensure_models_for(&a.paths, &[a.k], code, &budget)?;
    let (deployed, parity) = (models.deployed.clone(), models.parity[&a.k].clone());
    let f = crate::deployed::Deployed::open(&crate::deployed::Source::Parm(deployed.clone()))?;
    let acc = accuracy_report(&ds, &f, &parity, code.encoder(), a.k, a.seed, None, &burn::tensor::Device::flex())?;
    println!("\n{}", acc.table());

    let n = a.queries.min(ds.test.n);
    anyhow::ensure!(n > a.warmup, "--queries must exceed --warmup");
    let queries: Vec<Query> = (0..n)
        .map(|i| Query { input: ds.test.image(i).to_vec(), shape: vec![1, ds.test.dim() as i64], label: Some(ds.test.labels[i] as usize) })
        .collect();
    let extra = a.instances / a.k;
    let modes =
        [("none", Mode::None), ("equal-resources", Mode::EqualResources { k: a.k }), ("parm", Mode::Parm { k: a.k, r: 1, checked: false })];
    println!(
        "cluster: {} deployed instances (+{extra} deployed for equal-resources, +{extra} parity for parm), \
         instance 0 slowed by {} ms per request; {} queries at {} qps, first {} not timed",
        a.instances, a.slow_ms, n, a.rate, a.warmup
    );
    let exe = std::env::current_exe().context("locating the parm binary")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows = Vec::new();
    for (name, mode) in modes {
        eprintln!("running setup '{name}'...");
        let spec = RunSpec {
            mode,
            instances: a.instances,
            rate_qps: a.rate,
            seed: a.seed,
            warmup: a.warmup,
            faults: Vec::new(),
            worker_faults: vec![format!("delay_ms={},prob=1,seed={}", a.slow_ms, a.seed)],
            group_timeout: Duration::from_millis(a.group_timeout_ms),
            decode_grace: a.decode_grace_ms.map(Duration::from_millis),
            straggler: Default::default(),
            hedge_percentile: 95.0,
            model_name: a.paths.dataset.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            network: None,
            frontends: 1,
            pin: false,
            client_process: false,
        };
        let result = rt.block_on(run_once(&exe, &models, &spec, &queries))?;
        rows.push((name.to_string(), result.report));
    }
    println!("\n{}", format_table(&rows));
    print_verdict(&rows);
    if let Some(path) = &a.json {
        write_new(path, &serde_json::to_string_pretty(&demo_json(&a, &acc, &rows))?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_verdict(rows: &[(String, RunReport)]) {
    let get = |m: &str| rows.iter().find(|(n, _)| n == m).map(|(_, r)| r);
    if let (Some(er), Some(p)) = (get("equal-resources"), get("parm")) {
        let gap = |r: &RunReport| r.latency_ms.p99_9 - r.latency_ms.p50;
        println!(
            "parm vs equal-resources: p99.9 {:.1} ms vs {:.1} ms; (p99.9 - p50) gap {:.1}x smaller; median {:+.1}%",
            p.latency_ms.p99_9,
            er.latency_ms.p99_9,
            gap(er) / gap(p).max(1e-9),
            100.0 * (p.latency_ms.p50 / er.latency_ms.p50.max(1e-9) - 1.0)
        );
    }
}

fn demo_json(a: &DemoArgs, acc: &parm_nn::eval::AccuracyReport, rows: &[(String, RunReport)]) -> serde_json::Value {
    json!({
        "dataset": acc.dataset,
        "model": acc.model,
        "k": a.k,
        "code": a.code,
        "accuracy": {"available": acc.available, "degraded": acc.degraded, "default": acc.default},
        "runs": rows.iter().map(|(mode, r)| json!({
            "mode": mode, "requests": r.requests, "answered": r.answered, "reconstructed": r.reconstructed,
            "errors": r.errors, "accuracy": r.accuracy,
            "latency_ms": {"p50": r.latency_ms.p50, "p99": r.latency_ms.p99, "p99_9": r.latency_ms.p99_9},
        })).collect::<Vec<_>>(),
    })
}
