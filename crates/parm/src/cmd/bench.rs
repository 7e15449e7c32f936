//! `parm bench`: tail latency under injected slowdowns and failures, parm against the
//! baselines a user would pick instead (none, Equal-Resources, replication, hedged requests).
//!
//! Each scenario file (see `parm_bench::scenario`) names the load, the setups and the faults.
//! Every (scenario, mode, rate) runs `trials` times with seeds `seed, seed+1, ...`, in rounds
//! (trial t of every mode, then trial t+1); result rows average the trials' percentiles and
//! give p50, p99 and p99.9 a 95% confidence interval (a bootstrap over trials and their
//! queries, `parm_bench::bootstrap`).
//! Outputs in `--out` (in both JSON files, what belongs to scenarios not run this time is
//! kept): `tail-runs.json` (every run), `tail.json` (one row per scenario x mode x k x rate),
//! `tail.md` (the table of `tail.json`) and `tail-SCENARIO.svg` (percentile plots).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_bench::Query;
use parm_bench::bootstrap::{Bootstrap, percentile_ci};
use parm_bench::harness::{RunResult, RunSpec, run_once};
use parm_bench::plot::{Line, percentile_plot};
use parm_bench::scenario::{MIN_TIMED_QUERIES, Mode, Scenario, worker_fault};

use super::simulate::{CalibrationSettings, Calibrator, Setup, store_calibration};
use serde::{Deserialize, Serialize};

use super::{Paths, write_new};
use crate::models::{Budget, ensure_backup, ensure_models, ensure_parity};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Scenario files (default: every bench/scenarios/*.toml).
    #[arg(long = "scenario")]
    pub scenarios: Vec<PathBuf>,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Override the scenarios' queries per run.
    #[arg(long)]
    pub queries: Option<usize>,
    /// Override the scenarios' trials.
    #[arg(long)]
    pub trials: Option<usize>,
    /// Override the scenarios' rates (comma-separated queries/s).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Epochs for parity models that must be trained first.
    #[arg(long, default_value_t = 30)]
    pub parity_epochs: usize,
    /// Instead of the tail scenarios: one deployed instance returns wrong outputs, and the
    /// frontend's output checks catch them (`OUT/wrong-outputs.json`; `--queries`, default
    /// 10,000 test images per run).
    #[arg(long)]
    pub wrong_outputs: bool,
    /// Simulator calibrations (`parm simulate --calibration`): for each scenario with host
    /// faults (CPU burner, shuffles), one calibration round runs before each round of its
    /// trials under the same host faults, and the pooled calibration replaces the file's
    /// entry for those host faults (the others are kept).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

/// One row of `tail.json`: one (scenario, mode, k, rate), its trials pooled.
///
/// The `pN_ms` fields average the trials' own percentiles (ms). The `pN_ci` fields are 95%
/// confidence intervals `[lo, hi]` (ms) of the percentile of all trials' timed queries pooled,
/// from [`percentile_ci`] (Efron's bootstrap, 1,000 replicates, seed 0, drawing trials and
/// then queries within each trial with replacement); they are absent in rows written before
/// they existed, and when no timed query was answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailRow {
    pub scenario: String,
    pub mode: String,
    pub k: usize,
    /// Parity models per coding group (parm rows; 1 for ParM's one parity and the baselines).
    #[serde(default = "one")]
    pub r: usize,
    /// The code of parm rows: `parity` (learned parity models: ParM's, or r of the r-parity
    /// linear code), `parity-checked` (the same with output checks on); absent for the
    /// baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub rate_qps: f64,
    /// Emulated hosts the runs spread over; 1: all on this machine's loopback.
    #[serde(default = "one")]
    pub hosts: usize,
    /// What carried the traffic between hosts, with its delay: `loopback`, or how the link was
    /// emulated (`tc netem ...` or `user-space proxy, delay D ms +- J ms`).
    #[serde(default = "loopback")]
    pub link: String,
    /// Frontend replicas the load was spread over (round robin), each with its own coding
    /// groups.
    #[serde(default = "one")]
    pub frontends: usize,
    /// CPU pinning: `shared`, or which CPUs the benchmark process and the instances had
    /// (scenario key `pin`, `parm_bench::cpus`).
    #[serde(default = "shared")]
    pub cpus: String,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    /// 95% bootstrap interval of p50, `[lo, hi]` ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ci: Option<[f64; 2]>,
    /// 95% bootstrap interval of p99, `[lo, hi]` ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ci: Option<[f64; 2]>,
    /// 95% bootstrap interval of p99.9, `[lo, hi]` ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_9_ci: Option<[f64; 2]>,
    pub max_ms: f64,
    pub extra_resources: f64,
    pub extra_requests: f64,
    pub answered: usize,
    pub requests: usize,
    pub reconstructed: usize,
    pub errors: usize,
    pub accuracy: f64,
    pub trials: usize,
    /// The load generator's worst lag behind its schedule (ms, largest over the trials; see
    /// `RunReport::send_lag_ms`): the harness's share of the tail. Absent in rows written
    /// before it was recorded.
    #[serde(default)]
    pub send_lag_max_ms: Option<f64>,
    /// The largest fraction (0 to 1) of the machine's CPU time the hypervisor took during one
    /// of the trials (`parm_bench::steal`). Absent where it could not be read, and in rows
    /// written before it was recorded.
    #[serde(default)]
    pub cpu_stolen_max: Option<f64>,
}

impl TailRow {
    /// Whether `run` of `scenario` is one of this row's trials.
    fn holds(&self, scenario: &str, run: &RunResult) -> bool {
        (
            self.scenario.as_str(),
            self.mode.as_str(),
            self.k,
            self.r,
            &self.code,
            self.rate_qps,
            self.hosts,
            &self.link,
            self.frontends,
            &self.cpus,
        ) == (scenario, run.mode.as_str(), run.k, run.r, &run.code, run.rate_qps, run.hosts, &run.link, run.frontends, &run.cpus)
    }

    /// The mode as tables and plots name it: `parm (checked)` for parm with output checks,
    /// `parm x2 frontends` with frontend replicas.
    fn setup(&self) -> String {
        let mode = match self.code.as_deref() {
            Some("parity-checked") => format!("{} (checked)", self.mode),
            _ => self.mode.clone(),
        };
        if self.frontends > 1 { format!("{mode} x{} frontends", self.frontends) } else { mode }
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.wrong_outputs {
        return super::bench_wrong_outputs::run(&a.paths, &a.out, a.queries.unwrap_or(10_000), a.parity_epochs);
    }
    let files = if a.scenarios.is_empty() { default_scenarios()? } else { a.scenarios.clone() };
    let mut scenarios = files.iter().map(|f| Scenario::load(f)).collect::<anyhow::Result<Vec<_>>>()?;
    for s in &mut scenarios {
        s.queries = a.queries.unwrap_or(s.queries);
        s.trials = a.trials.unwrap_or(s.trials);
        if !a.rates.is_empty() {
            s.rates = a.rates.clone();
        }
        anyhow::ensure!(s.queries > s.warmup, "{}: queries must exceed warmup", s.name);
        let timed = s.queries - s.warmup;
        if timed < MIN_TIMED_QUERIES {
            eprintln!(
                "{}: {timed} timed queries per trial: p99.9 rests on {:.1} of them ({MIN_TIMED_QUERIES} give 10)",
                s.name,
                timed as f64 / 1000.0
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exe = std::env::current_exe().context("locating the parm binary")?;
    let mut runs: Vec<(String, RunResult)> = Vec::new();
    for s in &scenarios {
        let paths = Paths { dataset: s.dataset.clone(), ..a.paths.clone() };
        let modes = s.modes.iter().map(|m| Mode::parse(m)).collect::<anyhow::Result<Vec<_>>>()?;
        let ks: Vec<usize> = modes.iter().filter(|&m| matches!(m, Mode::Parm { r: 1, .. })).map(|m| m.k()).collect();
        let budget = Budget { deployed_epochs: 20, parity_epochs: a.parity_epochs, seed: 1 };
        let mut models = ensure_models(&paths, &ks, &budget)?;
        for m in &modes {
            if let Mode::Parm { k, r: r @ 2.., .. } = *m {
                let files = (0..r).map(|l| ensure_parity(&paths, &models.deployed, k, &format!("linear-r{r}-p{l}"), &budget));
                models.linear.insert((k, r), files.collect::<anyhow::Result<_>>()?);
            }
            if let Mode::CheapBackup { k } = *m {
                models.backup.insert(k, ensure_backup(&paths, k, &budget)?);
            }
        }
        let queries = test_queries(&paths, s.queries)?;
        // Host faults move this host's base latency most between runs minutes apart: their
        // simulator calibration is measured here, a round before each round of trials.
        let setup = Setup::of(s);
        let mut calibrator = a
            .calibration
            .as_ref()
            .filter(|_| !setup.host_faults.is_empty())
            .map(|_| Calibrator::new(CalibrationSettings::defaults(&s.dataset), &setup));
        // Rounds: trial t of every setup, then trial t+1, so that the host's drift over
        // minutes (5-20% in p50 on this machine) falls on every setup alike.
        for &rate in &s.rates {
            for trial in 0..s.trials {
                if let Some(c) = calibrator.as_mut() {
                    rt.block_on(c.round(&exe, &models, &queries)).with_context(|| format!("{}: calibration", s.name))?;
                }
                for (mode, name) in modes.iter().zip(&s.modes) {
                    for &frontends in &s.frontends {
                        let spec = run_spec(s, *mode, rate, trial as u64, frontends);
                        let r = rt
                            .block_on(run_once(&exe, &models, &spec, &queries))
                            .with_context(|| format!("{} / {name} / {rate} qps / {frontends} frontends", s.name))?;
                        let l = &r.report.latency_ms;
                        let name = if frontends > 1 { format!("{name} x{frontends}") } else { name.clone() };
                        eprintln!(
                            "{:<16} {:<20} {:>6.0} qps trial {}: p50 {:>7.2} p99 {:>7.2} p99.9 {:>7.2} ms, {} answered, {} errors, {} reconstructed",
                            s.name, name, rate, trial, l.p50, l.p99, l.p99_9, r.report.answered, r.report.errors, r.report.reconstructed
                        );
                        runs.push((s.name.clone(), r));
                    }
                }
            }
        }
        if let (Some(c), Some(path)) = (calibrator, &a.calibration) {
            store_calibration(path, &setup, c.base()?)?;
        }
    }
    write_outputs(&a.out, &scenarios, &runs)
}

pub fn default_scenarios() -> anyhow::Result<Vec<PathBuf>> {
    let dir = Path::new("bench/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("no --scenario given and {} cannot be read", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no scenario files in {}", dir.display());
    Ok(files)
}

fn run_spec(s: &Scenario, mode: Mode, rate: f64, trial: u64, frontends: usize) -> RunSpec {
    let faults = s.trial_faults(mode, trial);
    let (deployed, parity) = mode.instances(s.instances);
    RunSpec {
        mode,
        instances: s.instances,
        rate_qps: rate,
        seed: s.seed + trial,
        warmup: s.warmup,
        worker_faults: (0..deployed + parity).map(|i| worker_fault(&faults, i, s.seed + trial, s.compute.as_ref())).collect(),
        faults,
        group_timeout: Duration::from_millis(s.group_timeout_ms),
        decode_grace: s.decode_grace_ms.map(Duration::from_millis),
        straggler: s.straggler(),
        hedge_percentile: s.hedge_percentile,
        model_name: s.dataset.clone(),
        progress: false,
        network: s.network(frontends),
        frontends,
        pin: s.pin,
        client_process: s.client_process,
    }
}

pub fn test_queries(paths: &Paths, n: usize) -> anyhow::Result<Vec<Query>> {
    let ds = parm_data::load_dataset(&paths.dataset, &paths.data_dir)?;
    let dim = ds.test.dim();
    // Cycle through the test set if more queries than test images are asked for.
    Ok((0..n)
        .map(|i| {
            let j = i % ds.test.n;
            Query { input: ds.test.image(j).to_vec(), shape: vec![1, dim as i64], label: Some(ds.test.labels[j] as usize) }
        })
        .collect())
}

fn one() -> usize {
    1
}

fn shared() -> String {
    "shared".into()
}

fn loopback() -> String {
    "loopback".into()
}

/// Averages the trials of each (scenario, mode, k, r, rate).
fn aggregate(runs: &[(String, RunResult)]) -> Vec<TailRow> {
    let mut rows: Vec<TailRow> = Vec::new();
    for (scenario, r) in runs {
        let l = &r.report.latency_ms;
        let row = TailRow {
            scenario: scenario.clone(),
            mode: r.mode.clone(),
            k: r.k,
            r: r.r,
            code: r.code.clone(),
            rate_qps: r.rate_qps,
            hosts: r.hosts,
            link: r.link.clone(),
            frontends: r.frontends,
            cpus: r.cpus.clone(),
            p50_ms: l.p50,
            p90_ms: l.p90,
            p99_ms: l.p99,
            p99_9_ms: l.p99_9,
            p50_ci: None,
            p99_ci: None,
            p99_9_ci: None,
            max_ms: l.max,
            extra_resources: r.extra_resources,
            extra_requests: r.extra_requests,
            answered: r.report.answered,
            requests: r.report.requests,
            reconstructed: r.report.reconstructed,
            errors: r.report.errors,
            accuracy: r.report.accuracy,
            trials: 1,
            send_lag_max_ms: Some(r.report.send_lag_ms.max),
            cpu_stolen_max: r.cpu_stolen,
        };
        match rows.iter_mut().find(|x| x.holds(scenario, r)) {
            Some(x) => merge(x, &row),
            None => rows.push(row),
        }
    }
    for row in &mut rows {
        add_intervals(row, runs);
    }
    rows
}

/// The percentiles `tail.json` gives an interval: p50, p99, p99.9 (fractions).
const CI_QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// Sets `row`'s intervals from the per-query latencies of its trials in `runs`
/// (`RunReport::latency_trace_ms`, in memory only); leaves them unset, with a warning, when no
/// trial has a timed answered query.
fn add_intervals(row: &mut TailRow, runs: &[(String, RunResult)]) {
    let trials: Vec<Vec<f64>> =
        runs.iter().filter(|(s, r)| row.holds(s, r)).map(|(_, r)| r.report.latency_trace_ms.iter().map(|&(_, ms)| ms).collect()).collect();
    match percentile_ci(&trials, &CI_QUANTILES, &Bootstrap::default()) {
        Ok(ci) => [row.p50_ci, row.p99_ci, row.p99_9_ci] = [Some(ci[0]), Some(ci[1]), Some(ci[2])],
        Err(e) => eprintln!("{} / {} k={} / {} qps: no confidence intervals: {e:#}", row.scenario, row.mode, row.k, row.rate_qps),
    }
}

fn merge(acc: &mut TailRow, r: &TailRow) {
    let n = acc.trials as f64;
    let avg = |a: f64, b: f64| (a * n + b) / (n + 1.0);
    acc.p50_ms = avg(acc.p50_ms, r.p50_ms);
    acc.p90_ms = avg(acc.p90_ms, r.p90_ms);
    acc.p99_ms = avg(acc.p99_ms, r.p99_ms);
    acc.p99_9_ms = avg(acc.p99_9_ms, r.p99_9_ms);
    acc.max_ms = acc.max_ms.max(r.max_ms);
    acc.extra_requests = avg(acc.extra_requests, r.extra_requests);
    acc.accuracy = avg(acc.accuracy, r.accuracy);
    acc.answered += r.answered;
    acc.requests += r.requests;
    acc.reconstructed += r.reconstructed;
    acc.errors += r.errors;
    acc.trials += 1;
    acc.send_lag_max_ms = larger(acc.send_lag_max_ms, r.send_lag_max_ms);
    acc.cpu_stolen_max = larger(acc.cpu_stolen_max, r.cpu_stolen_max);
}

/// The larger of two measurements, either of which may be missing.
fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Writes `fresh` to the JSON list at `path` in place of the entries `replaced` picks (the
/// scenarios run this time), keeping the others; returns the whole list.
fn merge_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    fresh: Vec<T>,
    replaced: impl Fn(&T) -> bool,
) -> anyhow::Result<Vec<T>> {
    let mut all: Vec<T> = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    all.retain(|x| !replaced(x));
    all.extend(fresh);
    write_new(path, &serde_json::to_string_pretty(&all)?)?;
    Ok(all)
}

fn write_outputs(out: &Path, scenarios: &[Scenario], runs: &[(String, RunResult)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let ran = |scenario: &str| scenarios.iter().any(|s| s.name == scenario);
    let fresh_runs = runs.iter().map(|(s, r)| serde_json::json!({"scenario": s, "run": r})).collect();
    merge_json(&out.join("tail-runs.json"), fresh_runs, |r: &serde_json::Value| ran(r["scenario"].as_str().unwrap_or_default()))?;
    let fresh = aggregate(runs);
    let rows = merge_json(&out.join("tail.json"), fresh.clone(), |r: &TailRow| ran(&r.scenario))?;
    // Rows written before `code` existed: every parm row was ParM's learned parity.
    let rows: Vec<TailRow> = rows
        .into_iter()
        .map(|mut r| {
            if r.mode == "parm" && r.code.is_none() {
                r.code = Some("parity".into());
            }
            r
        })
        .collect();
    write_new(&out.join("tail.json"), &serde_json::to_string_pretty(&rows)?)?;
    write_new(&out.join("tail.md"), &markdown(&rows))?;
    for s in scenarios {
        let lines: Vec<Line> = fresh
            .iter()
            .filter(|r| r.scenario == s.name)
            .map(|r| Line {
                label: match r.r {
                    1 => format!("{} k={} @{} qps", r.setup(), r.k, r.rate_qps),
                    n => format!("{} k={} r={n} @{} qps", r.setup(), r.k, r.rate_qps),
                },
                ms: [r.p50_ms, r.p90_ms, r.p99_ms, r.p99_9_ms, r.max_ms],
            })
            .collect();
        percentile_plot(&out.join(format!("tail-{}.svg", s.name)), &format!("scenario {}", s.name), &lines)?;
    }
    println!("{}", markdown(&fresh));
    println!("wrote {}", out.display());
    Ok(())
}

/// A percentile (ms) and its 95% interval if known: `2.08 [1.90-2.40]`, or `2.08`.
fn with_ci(ms: f64, ci: Option<[f64; 2]>) -> String {
    match ci {
        Some([lo, hi]) => format!("{ms:.2} [{lo:.2}-{hi:.2}]"),
        None => format!("{ms:.2}"),
    }
}

/// The table of result rows, in markdown. Percentiles average the trials', followed by the
/// 95% bootstrap interval of the pooled percentile in brackets where the row has one. The last
/// columns are the load generator's worst lag behind its schedule and the largest share of CPU
/// time the hypervisor took in a trial (`-` where not recorded): where the lag is near the
/// p99.9, the harness made that tail.
pub fn markdown(rows: &[TailRow]) -> String {
    let mut s = String::from(
        "| scenario | mode | k | r | qps | hosts (link) | p50 ms [95% CI] | p99 ms [95% CI] | p99.9 ms [95% CI] | (p99.9-p50) ms | extra resources | extra requests | answered / requests | reconstructed | accuracy | send lag max ms | CPU stolen max |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0}% | {:.1}% | {} / {} | {} | {:.4} | {} | {} |\n",
            r.scenario,
            r.setup(),
            r.k,
            r.r,
            r.rate_qps,
            match (r.hosts, r.cpus.as_str()) {
                (1, "shared") => "1".to_string(),
                (1, cpus) => format!("1 ({cpus})"),
                (h, "shared") => format!("{h} ({})", r.link),
                (h, cpus) => format!("{h} ({}; {cpus})", r.link),
            },
            with_ci(r.p50_ms, r.p50_ci),
            with_ci(r.p99_ms, r.p99_ci),
            with_ci(r.p99_9_ms, r.p99_9_ci),
            r.p99_9_ms - r.p50_ms,
            100.0 * r.extra_resources,
            100.0 * r.extra_requests,
            r.answered,
            r.requests,
            r.reconstructed,
            r.accuracy,
            r.send_lag_max_ms.map_or("-".to_string(), |ms| format!("{ms:.2}")),
            r.cpu_stolen_max.map_or("-".to_string(), |f| format!("{:.1}%", 100.0 * f))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use parm_bench::{Percentiles, RunReport};

    /// A run of `mode` whose timed queries took `latencies` ms.
    fn run(mode: &str, latencies: &[f64]) -> RunResult {
        let mut sorted = latencies.to_vec();
        sorted.sort_by(f64::total_cmp);
        let p = |q| if sorted.is_empty() { 0.0 } else { parm_bench::bootstrap::percentile(&sorted, q) };
        RunResult {
            mode: mode.into(),
            k: 2,
            r: 1,
            code: (mode == "parm").then(|| "parity".into()),
            rate_qps: 200.0,
            seed: 1,
            extra_resources: 0.5,
            extra_requests: 0.0,
            hosts: 1,
            link: "loopback".into(),
            frontends: 1,
            cpus: "shared".into(),
            cpu_stolen: None,
            report: RunReport {
                requests: latencies.len(),
                answered: latencies.len(),
                reconstructed: 0,
                errors: 0,
                correct: 0,
                accuracy: f64::NAN,
                latency_ms: Percentiles { p50: p(0.5), p90: p(0.9), p99: p(0.99), p99_9: p(0.999), max: p(1.0), mean: 0.0 },
                send_lag_ms: Percentiles { p50: 0.0, p90: 0.0, p99: 0.0, p99_9: 0.0, max: 0.0, mean: 0.0 },
                throughput_qps: 200.0,
                wall_s: 1.0,
                error_samples: Vec::new(),
                latency_quantiles_ms: Vec::new(),
                latency_trace_ms: latencies.iter().enumerate().map(|(i, &l)| (i as f64 * 5.0, l)).collect(),
            },
        }
    }

    /// The same setup on loopback and across emulated hosts gives two rows, and the table
    /// names the hosts and what emulated their links.
    #[test]
    fn rows_keep_hosts_and_links_apart() {
        let across = RunResult { hosts: 20, link: "user-space proxy, delay 0.20 ms +- 0.05 ms".into(), ..run("parm", &[3.0; 10]) };
        let runs = vec![("s".to_string(), run("parm", &[1.0; 10])), ("s".to_string(), across)];
        let rows = aggregate(&runs);
        assert_eq!(rows.iter().map(|r| r.hosts).collect::<Vec<_>>(), vec![1, 20]);
        let table = markdown(&rows);
        assert!(table.contains("| 1 |") && table.contains("| 20 (user-space proxy, delay 0.20 ms +- 0.05 ms) |"), "{table}");
    }

    /// A row keeps its trials' worst send lag and CPU steal, and the table shows them.
    #[test]
    fn rows_keep_the_worst_send_lag() {
        let lagged = |ms: f64| {
            let mut r = run("parm", &[2.0; 10]);
            r.report.send_lag_ms.max = ms;
            r.cpu_stolen = Some(ms / 1000.0);
            r
        };
        let runs = vec![("s".to_string(), lagged(3.0)), ("s".to_string(), lagged(47.5)), ("s".to_string(), lagged(1.0))];
        let rows = aggregate(&runs);
        assert_eq!((rows.len(), rows[0].trials, rows[0].send_lag_max_ms), (1, 3, Some(47.5)));
        assert_eq!(rows[0].cpu_stolen_max, Some(0.0475));
        assert!(markdown(&rows).contains("| 47.50 | 4.8% |"), "{}", markdown(&rows));
        let old = TailRow { send_lag_max_ms: None, cpu_stolen_max: None, ..rows[0].clone() };
        assert!(markdown(&[old]).trim_end().ends_with("| - | - |"));
    }

    #[test]
    fn rows_get_intervals_from_their_own_trials() {
        // hedged: two trials, 1..=2000 us and 1001..=3000 us; parm: one trial of 5 ms.
        let a: Vec<f64> = (1..=2000).map(|i| i as f64 / 1000.0).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 1.0).collect();
        let runs =
            vec![("s".to_string(), run("hedged", &a)), ("s".to_string(), run("parm", &[5.0; 10])), ("s".to_string(), run("hedged", &b))];
        let rows = aggregate(&runs);
        assert_eq!(rows.len(), 2);
        let hedged = &rows[0];
        assert_eq!(hedged.trials, 2);
        let [lo, hi] = hedged.p50_ci.unwrap();
        // Trial medians 1.0 and 2.0 ms: drawing trials puts both in the interval.
        assert!(lo <= 1.05 && hi >= 1.95 && lo <= hedged.p50_ms && hedged.p50_ms <= hi, "[{lo}, {hi}] vs {}", hedged.p50_ms);
        let [lo, hi] = hedged.p99_9_ci.unwrap();
        assert!(lo <= hi && hi <= 3.0 && lo >= 1.9, "[{lo}, {hi}]");
        assert_eq!(rows[1].p99_ci, Some([5.0, 5.0]), "parm's interval from parm's run only");
        let md = markdown(&rows);
        assert!(md.contains("| p50 ms [95% CI] |"), "{md}");
        assert!(md.contains("| 5.00 [5.00-5.00] | 5.00 [5.00-5.00] | 5.00 [5.00-5.00] |"), "{md}");
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["p99_9_ci"], serde_json::json!([5.0, 5.0]));
        assert_eq!(json["p99_9_ms"], serde_json::json!(5.0), "old fields kept");
    }

    #[test]
    fn rows_without_intervals_still_read_and_print() {
        // A row of a tail.json written before the intervals.
        let old = r#"{"scenario":"crash","mode":"none","k":1,"rate_qps":200.0,"p50_ms":0.863,"p90_ms":0.994,
            "p99_ms":1.7575,"p99_9_ms":2.693,"max_ms":5.527,"extra_resources":0.0,"extra_requests":0.0,
            "answered":8000,"requests":8000,"reconstructed":0,"errors":0,"accuracy":0.88675,"trials":2}"#;
        let row: TailRow = serde_json::from_str(old).unwrap();
        assert_eq!((row.p50_ci, row.p99_ci, row.p99_9_ci), (None, None, None));
        assert!(serde_json::to_value(&row).unwrap().get("p99_ci").is_none(), "no null intervals written");
        assert!(markdown(&[row]).contains("| 0.86 | 1.76 | 2.69 | 1.83 |"));
        // A row whose trials answered nothing timed: no interval, no panic.
        let mut empty = run("none", &[]);
        empty.report.latency_trace_ms.clear();
        let rows = aggregate(&[("s".to_string(), empty)]);
        assert_eq!(rows[0].p99_9_ci, None);
    }
}
