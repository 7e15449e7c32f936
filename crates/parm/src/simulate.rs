//! `parm simulate`: the discrete-event simulator (`parm_bench::sim`), calibrated by a short
//! real run without faults, validated against `parm bench`'s results, and projected to
//! ParM's published setup and to 100 and 1000 instances.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_bench::harness::{run_once, RunSpec};
use parm_bench::scenario::{Fault, Mode, Scenario};
use parm_bench::sim::{simulate, Empirical, SimSpec};

use crate::bench::{test_queries, TailRow};
use crate::commands::write_new;
use crate::models::{ensure_models, Budget};
use crate::Paths;

#[derive(Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Scenario files to validate against (default: every bench/scenarios/*.toml).
    #[arg(long = "scenario")]
    pub scenarios: Vec<PathBuf>,
    /// Real results from `parm bench`.
    #[arg(long, default_value = "bench/results/tail.json")]
    pub tail: PathBuf,
    /// Queries of the calibration run (no faults, `none` mode, 12 instances).
    #[arg(long, default_value_t = 3000)]
    pub calibrate_queries: usize,
    /// Offered load of the calibration run, queries/s.
    #[arg(long, default_value_t = 200.0)]
    pub calibrate_rate: f64,
    /// Compute time per request on an instance, ms (the MLP: about 0.1 ms).
    #[arg(long, default_value_t = 0.1)]
    pub compute_ms: f64,
    /// Where `simulate.json` and `simulate.md` go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    let base = calibrate(&a)?;
    println!("calibration: base latency p50 {:.2} ms, p99 {:.2} ms", base.quantiles[500], base.quantiles[990]);
    let rows: Vec<TailRow> = serde_json::from_str(&std::fs::read_to_string(&a.tail).with_context(|| format!("reading {}", a.tail.display()))?)?;
    let files = if a.scenarios.is_empty() { crate::bench::default_scenarios()? } else { a.scenarios.clone() };
    let mut md = String::from("### Validation against the loopback cluster\n\n| scenario | mode | k | qps | real p50 | sim p50 | err | real p99 | sim p99 | err |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut json = Vec::new();
    for f in files {
        let s = Scenario::load(&f)?;
        for m in &s.modes {
            let mode = Mode::parse(m)?;
            for row in rows.iter().filter(|r| r.scenario == s.name && r.mode == mode.family() && r.k == mode.k()) {
                let p = simulate(&sim_spec(&s, mode, row.rate_qps, s.queries, &a), &base);
                let err = |sim: f64, real: f64| 100.0 * (sim - real) / real;
                md += &format!(
                    "| {} | {} | {} | {} | {:.2} | {:.2} | {:+.0}% | {:.2} | {:.2} | {:+.0}% |\n",
                    s.name, row.mode, row.k, row.rate_qps, row.p50_ms, p.p50, err(p.p50, row.p50_ms), row.p99_ms, p.p99, err(p.p99, row.p99_ms)
                );
                json.push(serde_json::json!({"kind": "validation", "scenario": s.name, "mode": row.mode, "k": row.k, "rate_qps": row.rate_qps,
                    "real": {"p50": row.p50_ms, "p99": row.p99_ms, "p99_9": row.p99_9_ms}, "sim": p}));
            }
        }
    }
    md += &projections(&a, &base, &mut json);
    println!("{md}");
    write_new(&a.out.join("simulate.md"), &md)?;
    write_new(&a.out.join("simulate.json"), &serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn sim_spec(s: &Scenario, mode: Mode, rate: f64, queries: usize, a: &SimulateArgs) -> SimSpec {
    SimSpec {
        mode,
        instances: s.instances,
        rate_qps: rate,
        queries,
        warmup: s.warmup,
        faults: s.faults.clone(),
        compute_ms: a.compute_ms,
        group_timeout_ms: s.group_timeout_ms as f64,
        decode_grace_ms: s.decode_grace_ms as f64,
        straggler: s.straggler(),
        hedge_percentile: s.hedge_percentile,
        seed: s.seed,
    }
}

/// A short real run without faults gives the base latency distribution.
fn calibrate(a: &SimulateArgs) -> anyhow::Result<Empirical> {
    let budget = Budget { deployed_epochs: 20, parity_epochs: 30, seed: 1 };
    let models = ensure_models(&a.paths, &[], &budget)?;
    let queries = test_queries(&a.paths, a.calibrate_queries)?;
    let spec = RunSpec {
        mode: Mode::None,
        instances: 12,
        rate_qps: a.calibrate_rate,
        seed: 99,
        warmup: 200.min(a.calibrate_queries / 2),
        faults: Vec::new(),
        worker_faults: Vec::new(),
        group_timeout: Duration::from_millis(5),
        decode_grace: Duration::from_millis(2),
        straggler: Default::default(),
        hedge_percentile: 95.0,
        model_name: a.paths.dataset.clone(),
        progress: false,
    };
    let exe = std::env::current_exe()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(run_once(&exe, &models, &spec, &queries))?;
    anyhow::ensure!(r.report.latency_quantiles_ms.len() > 1, "calibration run answered nothing");
    Ok(Empirical { quantiles: r.report.latency_quantiles_ms })
}

/// ParM's published setup (12 instances + 12/k parity, 150-390 queries/s) and larger
/// clusters at the same load per instance, under background contention modelled as random
/// slowdown episodes on every instance (each +20 ms for 1 s, every 20 s on average).
fn projections(a: &SimulateArgs, base: &Empirical, json: &mut Vec<serde_json::Value>) -> String {
    let mut md = String::from("\n### Projections\n\n| instances N | qps | mode | k | p50 | p99 | p99.9 | (p99.9-p50) |\n|---|---|---|---|---|---|---|---|\n");
    let modes = [Mode::EqualResources { k: 2 }, Mode::Hedged { k: 2 }, Mode::Parm { k: 2 }, Mode::Parm { k: 3 }, Mode::Parm { k: 4 }];
    for (n, rates) in [(12usize, vec![150.0, 270.0, 390.0]), (100, vec![1250.0]), (1000, vec![12_500.0])] {
        let faults: Vec<Fault> = (0..n).map(|i| Fault::Episodes { instance: i, every_s: 20.0, len_s: 1.0, delay_ms: 20.0 }).collect();
        for &rate in &rates {
            for mode in modes {
                let spec = SimSpec {
                    mode,
                    instances: n,
                    rate_qps: rate,
                    queries: (rate * 60.0) as usize,
                    warmup: (rate * 2.0) as usize,
                    faults: faults.clone(),
                    compute_ms: a.compute_ms,
                    group_timeout_ms: 5.0,
                    decode_grace_ms: 2.0,
                    straggler: Default::default(),
                    hedge_percentile: 95.0,
                    seed: 11,
                };
                let p = simulate(&spec, base);
                md += &format!(
                    "| {n} | {rate} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    mode.family(), mode.k(), p.p50, p.p99, p.p99_9, p.p99_9 - p.p50
                );
                json.push(serde_json::json!({"kind": "projection", "instances": n, "rate_qps": rate, "mode": mode.family(), "k": mode.k(), "sim": p}));
            }
        }
    }
    md
}
