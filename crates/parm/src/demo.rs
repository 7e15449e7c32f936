//! `parm demo`: the whole coded path end to end on real data.
//!
//! 1. Prepares Fashion-MNIST if missing.
//! 2. Trains the deployed MLP and a k = 2 addition parity model on a short budget, or reuses
//!    the ones already in the model directory.
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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_bench::cluster::{start_instances, Instance, InstanceSpec};
use parm_bench::{format_table, run_open_loop, LoadSpec, Query, RunReport};
use parm_codes::encoder_by_name;
use parm_serve::frontend::{Frontend, FrontendConfig};
use serde_json::json;

use crate::commands::{accuracy_report, parity_name, parity_training, write_new};
use crate::Paths;

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
    #[arg(long, default_value_t = crate::commands::DEFAULT_GROUP_TIMEOUT_MS)]
    pub group_timeout_ms: u64,
    /// A reconstruction is released no earlier than this many ms after its query was sent.
    #[arg(long, default_value_t = crate::commands::DEFAULT_DECODE_GRACE_MS)]
    pub decode_grace_ms: u64,
}

/// One of the three setups.
struct Setup {
    mode: &'static str,
    deployed: usize,
    parity: usize,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.k >= 2 && a.instances >= a.k && a.instances % a.k == 0, "--instances must be a multiple of --k >= 2");
    anyhow::ensure!(a.rate > 0.0 && a.rate.is_finite(), "--rate must be positive");
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let dir = a.paths.model_dir();
    let deployed = ensure_deployed(&a, &dir)?;
    let name = parity_name(a.k, "addition");
    let parity = dir.join(format!("{name}.bpk"));
    if !parity.exists() || has_unfinished_checkpoint(&dir, &name) {
        eprintln!("training the k={} parity model ({} epochs; ParM trains 500)...", a.k, a.parity_epochs);
        parity_training(&a.paths, &deployed, a.k, "addition", a.parity_epochs, a.seed, &name)?;
    }
    let acc = accuracy_report(&ds, &deployed, &parity, "addition", a.k, a.seed)?;
    println!("\n{}", acc.table());

    let n = a.queries.min(ds.test.n);
    anyhow::ensure!(n > a.warmup, "--queries must exceed --warmup");
    let queries: Vec<Query> = (0..n)
        .map(|i| Query { input: ds.test.image(i).to_vec(), shape: vec![1, ds.test.dim() as i64], label: Some(ds.test.labels[i] as usize) })
        .collect();
    let extra = a.instances / a.k;
    let setups = [
        Setup { mode: "none", deployed: a.instances, parity: 0 },
        Setup { mode: "equal-resources", deployed: a.instances + extra, parity: 0 },
        Setup { mode: "parm", deployed: a.instances, parity: extra },
    ];
    println!(
        "cluster: {} deployed instances (+{extra} deployed for equal-resources, +{extra} parity for parm), \
         instance 0 slowed by {} ms per request; {} queries at {} qps, first {} not timed",
        a.instances, a.slow_ms, n, a.rate, a.warmup
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows = Vec::new();
    for s in &setups {
        eprintln!("running setup '{}'...", s.mode);
        let report = rt.block_on(run_setup(&a, s, &deployed, &parity, &queries))?;
        rows.push((s.mode.to_string(), report));
    }
    println!("\n{}", format_table(&rows));
    print_verdict(&rows);
    if let Some(path) = &a.json {
        write_new(path, &serde_json::to_string_pretty(&demo_json(&a, &acc, &rows))?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn ensure_deployed(a: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("deployed.bpk");
    if path.exists() {
        eprintln!("reusing the deployed model {}", path.display());
        return Ok(path);
    }
    eprintln!("training the deployed model ({} epochs)...", a.deployed_epochs);
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let cfg = parm_nn::train::TrainConfig { epochs: a.deployed_epochs, seed: a.seed, ..Default::default() };
    let (model, meta) = parm_nn::train::train_deployed(&ds, &cfg)?;
    parm_nn::train::save_model(&model, &meta, dir, "deployed")?;
    Ok(path)
}

fn has_unfinished_checkpoint(dir: &std::path::Path, name: &str) -> bool {
    // A checkpoint directory without the best model means an interrupted first run.
    dir.join(format!("{name}.ckpt")).exists() && !dir.join(format!("{name}.json")).exists()
}

async fn run_setup(
    a: &DemoArgs,
    s: &Setup,
    deployed: &std::path::Path,
    parity: &std::path::Path,
    queries: &[Query],
) -> anyhow::Result<RunReport> {
    let exe = std::env::current_exe().context("locating the parm binary")?;
    let mut specs: Vec<InstanceSpec> = (0..s.deployed)
        .map(|i| InstanceSpec {
            model: deployed.to_path_buf(),
            name: "deployed".into(),
            fault: if i == 0 { format!("delay_ms={},prob=1,seed={}", a.slow_ms, a.seed) } else { String::new() },
        })
        .collect();
    let parity_name = parity_name(a.k, "addition");
    specs.extend((0..s.parity).map(|_| InstanceSpec { model: parity.to_path_buf(), name: parity_name.clone(), fault: String::new() }));
    let mut instances = start_instances(&exe, specs).await?;
    let result = drive(a, s, &instances, &parity_name, queries).await;
    for i in &mut instances {
        i.kill().await;
    }
    result
}

async fn drive(a: &DemoArgs, s: &Setup, instances: &[Instance], parity_name: &str, queries: &[Query]) -> anyhow::Result<RunReport> {
    let addrs = |want: &str| instances.iter().filter(|i| i.spec.name == want).map(|i| i.addr.clone()).collect::<Vec<_>>();
    let client = parm_serve::client::InstanceClient::connect_lazy(&instances[0].addr)?;
    let spec = client.model_metadata("deployed", Duration::from_secs(10)).await?;
    let spec = parm_serve::backend::ModelSpec { name: a.paths.dataset.clone(), ..spec };
    let cfg = FrontendConfig {
        spec: spec.clone(),
        deployed: addrs("deployed"),
        deployed_model: "deployed".into(),
        parity: if s.parity > 0 { addrs(parity_name) } else { Vec::new() },
        parity_model: parity_name.to_string(),
        encoder: Arc::from(encoder_by_name("addition", a.k)?),
        group_timeout: Duration::from_millis(a.group_timeout_ms),
        instance_timeout: Duration::from_secs(5),
        decode_grace: Duration::from_millis(a.decode_grace_ms),
        redundancy: parm_serve::redundancy::Redundancy::None,
    };
    for addr in cfg.deployed.iter().chain(&cfg.parity) {
        let model = if cfg.parity.contains(addr) { parity_name } else { "deployed" };
        parm_serve::client::InstanceClient::connect_lazy(addr)?.wait_ready(model, Duration::from_secs(30)).await?;
    }
    let frontend = Frontend::start(cfg)?;
    frontend.warm_up().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(parm_serve::http::serve(listener, frontend, async { let _ = stopped.await; }));
    let load = LoadSpec {
        base_url,
        model: spec.name.clone(),
        input_name: spec.input_name.clone(),
        rate_qps: a.rate,
        seed: a.seed,
        warmup: a.warmup,
        request_timeout: Duration::from_secs(30),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = run_open_loop(&load, queries).await;
    let _ = stop.send(());
    let _ = server.await;
    report
}

fn print_verdict(rows: &[(String, RunReport)]) {
    let get = |m: &str| rows.iter().find(|(n, _)| n == m).map(|(_, r)| r);
    if let (Some(er), Some(p)) = (get("equal-resources"), get("parm")) {
        let gap = |r: &RunReport| r.latency_ms.p99_9 - r.latency_ms.p50;
        println!(
            "parm vs equal-resources: p99.9 {:.1} ms vs {:.1} ms; (p99.9 - p50) gap {:.1}x smaller; median {:+.1}%",
            p.latency_ms.p99_9, er.latency_ms.p99_9, gap(er) / gap(p).max(1e-9),
            100.0 * (p.latency_ms.p50 / er.latency_ms.p50.max(1e-9) - 1.0)
        );
    }
}

fn demo_json(a: &DemoArgs, acc: &parm_nn::eval::AccuracyReport, rows: &[(String, RunReport)]) -> serde_json::Value {
    json!({
        "dataset": acc.dataset,
        "model": acc.model,
        "k": a.k,
        "accuracy": {"available": acc.available, "degraded": acc.degraded, "default": acc.default},
        "runs": rows.iter().map(|(mode, r)| json!({
            "mode": mode, "requests": r.requests, "answered": r.answered, "reconstructed": r.reconstructed,
            "errors": r.errors, "accuracy": r.accuracy,
            "latency_ms": {"p50": r.latency_ms.p50, "p99": r.latency_ms.p99, "p99_9": r.latency_ms.p99_9},
        })).collect::<Vec<_>>(),
    })
}
