//! `parm simulate`: the discrete-event simulator (`parm_bench::sim`), calibrated by a short
//! real run without faults, validated against `parm bench`'s results, and projected to
//! ParM's published setup and to 100 and 1000 instances.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_bench::Percentiles;
use parm_bench::harness::{Probe, ProbeData, RunSpec, run_probed};
use parm_bench::network::NetworkSpec;
use parm_bench::scenario::{EmulatedCompute, Fault, Mode, Scenario, worker_fault};
use parm_bench::sim::{Base, Busy, CALIBRATION_INSTANCES, Empirical, Replicated, SimSpec, simulate};
use serde::{Deserialize, Serialize};

use super::bench::{TailRow, test_queries};
use super::{Paths, write_new};
use crate::models::{Budget, ensure_models};

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
    /// Every real run (trial) behind `--tail`, for the trials' spread.
    #[arg(long, default_value = "bench/results/tail-runs.json")]
    pub runs: PathBuf,
    /// Calibrations to reuse, one per set of host faults (CPU burner, shuffles); those missing
    /// are measured and added to the file. Without it every calibration is measured.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Probe pairs per second during the calibration run (two direct instance RPCs each, to
    /// measure RPC latency and timer lateness; added to the calibration's load).
    #[arg(long, default_value_t = PROBE_RATE)]
    pub probe_rate: f64,
    /// Instances of a second calibration run after each (0: none), which measures what each
    /// further instance process costs every query on the host
    /// (`parm_bench::sim::Base::on_instances`).
    #[arg(long, default_value_t = BUSY_INSTANCES)]
    pub busy_instances: usize,
    /// Follow each calibration run by one in replication mode (2N instances, two copies of
    /// every query, no instance faults), which the simulator's replication setup runs on
    /// (`parm_bench::sim::Replicated`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub replication_calibration: bool,
    /// Queries of the calibration run (no instance faults, `none` mode, 12 instances; the
    /// first 300 not timed, as in the scenarios).
    #[arg(long, default_value_t = 4000)]
    pub calibrate_queries: usize,
    /// Calibration runs per set of host faults, pooled (the host's background load changes
    /// the base latency by several % from minute to minute on this shared machine).
    #[arg(long, default_value_t = 3)]
    pub calibrate_runs: usize,
    /// Offered load of the calibration run, queries/s.
    #[arg(long, default_value_t = CALIBRATE_RATE)]
    pub calibrate_rate: f64,
    /// Compute time per request on an instance, ms (the MLP: about 0.1 ms).
    #[arg(long, default_value_t = 0.1)]
    pub compute_ms: f64,
    /// Where `simulate.json` and `simulate.md` go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    // Checked before any calibration runs (minutes) rather than after them.
    anyhow::ensure!(
        a.busy_instances == 0 || a.busy_instances > CALIBRATION_INSTANCES,
        "--busy-instances must exceed the calibration's {CALIBRATION_INSTANCES} (or be 0)"
    );
    let rows: Vec<TailRow> =
        serde_json::from_str(&std::fs::read_to_string(&a.tail).with_context(|| format!("reading {}", a.tail.display()))?)?;
    let trials: Vec<TrialRun> =
        serde_json::from_str(&std::fs::read_to_string(&a.runs).with_context(|| format!("reading {}", a.runs.display()))?)?;
    let files = if a.scenarios.is_empty() { super::bench::default_scenarios()? } else { a.scenarios.clone() };
    let scenarios = files.iter().map(|f| Scenario::load(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let scenarios: Vec<Scenario> = scenarios.into_iter().filter(simulated).collect();
    let mut bases = load_calibrations(&a)?;
    for setup in std::iter::once(Setup::default()).chain(scenarios.iter().map(Setup::of)) {
        if !bases.iter().any(|(h, _)| *h == setup) {
            let base = calibrate(&a, &setup)?;
            if let Some(path) = &a.calibration {
                store_calibration(path, &setup, base.clone())?;
            }
            bases.push((setup, base));
        }
    }
    bases.sort_by_key(|(h, _)| (h.network.is_some(), h.compute.is_some(), h.host_faults.len()));
    let mut json: Vec<serde_json::Value> = bases.iter().map(|(h, b)| calibration_json(h, b)).collect();
    let mut checks = Vec::new();
    for s in &scenarios {
        let base = &bases.iter().find(|(h, _)| *h == Setup::of(s)).expect("calibrated").1;
        for m in &s.modes {
            let mode = Mode::parse(m)?;
            if matches!(mode, Mode::Parm { r: 2.., .. } | Mode::Parm { checked: true, .. } | Mode::CheapBackup { .. }) {
                eprintln!("{}: {m} left out: the simulator models ParM's one parity per coding group, unchecked", s.name);
                continue;
            }
            for row in rows
                .iter()
                .filter(|r| r.scenario == s.name && r.mode == mode.family() && r.k == mode.k() && r.r == 1 && r.code == mode.code())
                // The simulator models one frontend.
                .filter(|r| r.frontends <= 1)
            {
                let (p50s, p99s) = trial_values(&trials, row);
                let sim = simulate_trials(s, &sim_spec(s, mode, row.rate_qps, s.queries, &a), base, p50s.len());
                checks.push(Check { row: row.clone(), sim, p50s, p99s });
            }
        }
    }
    json.extend(checks.iter().map(Check::json));
    let mut md = calibration_md(&bases);
    md += &validation_md(&checks);
    md += PROJECTIONS_MD;
    // Projections from each network's fault-free calibration with real compute; they are of
    // separate machines: no charge for the calibrating host's shared CPU.
    for (setup, base) in bases.iter().filter(|(h, _)| h.host_faults.is_empty() && h.compute.is_none()) {
        md += &projections(&a, setup, &Base { busy: None, ..base.clone() }, &mut json);
    }
    println!("{md}");
    write_new(&a.out.join("simulate.md"), &md)?;
    write_new(&a.out.join("simulate.json"), &serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Whether the simulator models scenario `s`: not with network faults (a partition or a
/// slowed link between hosts), which it does not simulate.
fn simulated(s: &Scenario) -> bool {
    let network_fault = s.faults.iter().any(|f| matches!(f, Fault::Partition { .. } | Fault::SlowLink { .. }));
    if network_fault {
        eprintln!("{}: left out: the simulator does not model network faults (partition, slow-link)", s.name);
    }
    !network_fault
}

/// What a calibration is measured on, besides the instances: the host faults (CPU burner,
/// shuffles), the emulated network (hosts and link; `None`: loopback) and the instances'
/// emulated compute (`None`: the real model). One calibration per setup in use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub host_faults: Vec<Fault>,
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub compute: Option<EmulatedCompute>,
    /// CPU pinning of the calibration runs (as the scenario's `pin`).
    #[serde(default)]
    pub pin: bool,
    /// The load generator as a process of its own (as the scenario's `client_process`).
    #[serde(default)]
    pub client_process: bool,
}

impl Setup {
    /// The setup scenario `s` runs on (with one frontend).
    pub fn of(s: &Scenario) -> Self {
        Self {
            host_faults: host_faults(&s.faults),
            network: s.network(1),
            compute: s.compute,
            pin: s.pin,
            client_process: s.client_process,
        }
    }

    /// Its name in reports: "none" for loopback, real compute, no host faults.
    fn name(&self) -> String {
        let mut parts: Vec<String> = self.host_faults.iter().map(fault_name).collect();
        if let Some(n) = &self.network {
            let l = n.link;
            parts.push(format!("{} hosts, links {} ms +- {} ms", n.hosts, l.delay_ms, l.jitter_ms));
        }
        if let Some(c) = &self.compute {
            parts.push(format!("emulated compute {} ms (cv {})", c.service_ms, c.service_cv));
        }
        if self.pin {
            parts.push("pinned".into());
        }
        if self.client_process {
            parts.push("load generator process".into());
        }
        if parts.is_empty() { "none".into() } else { parts.join(" + ") }
    }
}

/// The calibrations in `--calibration`, if given and present: (setup, base) pairs.
fn load_calibrations(a: &SimulateArgs) -> anyhow::Result<Vec<(Setup, Base)>> {
    match &a.calibration {
        Some(f) => Ok(read_calibrations(f)?.into_iter().map(|c| (c.setup, c.base)).collect()),
        None => Ok(Vec::new()),
    }
}

/// The calibrations stored in `path`; none if it does not exist.
fn read_calibrations(path: &std::path::Path) -> anyhow::Result<Vec<Calibration>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// One saved calibration: the setup it ran on and what it measured.
#[derive(Serialize, Deserialize)]
struct Calibration {
    #[serde(flatten)]
    setup: Setup,
    base: Base,
}

/// One run of `tail-runs.json` (the fields the validation reads).
#[derive(Deserialize)]
struct TrialRun {
    scenario: String,
    run: TrialResult,
}

#[derive(Deserialize)]
struct TrialResult {
    mode: String,
    k: usize,
    /// Parities per group (runs written before it existed: 1).
    #[serde(default = "one")]
    r: usize,
    rate_qps: f64,
    report: TrialReport,
}

#[derive(Deserialize)]
struct TrialReport {
    latency_ms: TrialLatency,
}

#[derive(Deserialize)]
struct TrialLatency {
    p50: f64,
    p99: f64,
}

fn one() -> usize {
    1
}

/// The per-trial p50s and p99s (ms) behind one averaged row of `tail.json`.
fn trial_values(trials: &[TrialRun], row: &TailRow) -> (Vec<f64>, Vec<f64>) {
    let same = |t: &&TrialRun| {
        t.scenario == row.scenario && t.run.mode == row.mode && t.run.k == row.k && t.run.r == row.r && t.run.rate_qps == row.rate_qps
    };
    trials.iter().filter(same).map(|t| (t.run.report.latency_ms.p50, t.run.report.latency_ms.p99)).unzip()
}

/// Faults on the whole host (CPU burner, loopback shuffles): in the calibration run, not in
/// the simulator.
pub fn host_faults(faults: &[Fault]) -> Vec<Fault> {
    faults.iter().filter(|f| matches!(f, Fault::CpuBurn { .. } | Fault::Network { .. })).cloned().collect()
}

/// The validation target: within 10% of the real value.
const TOLERANCE: f64 = 0.10;

/// One validated row: the real averaged row, its trials, and the simulation.
struct Check {
    row: TailRow,
    sim: Percentiles,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
}

impl Check {
    /// Relative error of `sim` against `real`.
    fn err(sim: f64, real: f64) -> f64 {
        (sim - real) / real
    }

    /// Spread of the real trials, (max - min) / mean (0 for one trial).
    fn spread(v: &[f64]) -> f64 {
        let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        if v.len() < 2 { 0.0 } else { (hi - lo) / (v.iter().sum::<f64>() / v.len() as f64) }
    }

    /// The real trials disagree by more than the tolerance themselves (p50 or p99).
    fn noisy(&self) -> bool {
        Self::spread(&self.p50s) > TOLERANCE || Self::spread(&self.p99s) > TOLERANCE
    }

    fn p50_ok(&self) -> bool {
        Self::err(self.sim.p50, self.row.p50_ms).abs() <= TOLERANCE
    }

    fn p99_ok(&self) -> bool {
        Self::err(self.sim.p99, self.row.p99_ms).abs() <= TOLERANCE
    }

    fn trials(v: &[f64]) -> String {
        v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" / ")
    }

    fn md(&self) -> String {
        let (r, p) = (&self.row, &self.sim);
        format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:+.0}% | {:.2} ({}) | {:.2} | {:+.0}% | {} |\n",
            r.scenario,
            r.mode,
            r.k,
            r.rate_qps,
            r.p50_ms,
            p.p50,
            100.0 * Self::err(p.p50, r.p50_ms),
            r.p99_ms,
            Self::trials(&self.p99s),
            p.p99,
            100.0 * Self::err(p.p99, r.p99_ms),
            if self.noisy() {
                format!("yes ({:.0}%)", 100.0 * Self::spread(&self.p50s).max(Self::spread(&self.p99s)))
            } else {
                "no".into()
            }
        )
    }

    fn json(&self) -> serde_json::Value {
        let r = &self.row;
        serde_json::json!({"kind": "validation", "scenario": r.scenario, "mode": r.mode, "k": r.k, "rate_qps": r.rate_qps,
            "real": {"p50": r.p50_ms, "p99": r.p99_ms, "p99_9": r.p99_9_ms, "trial_p50": self.p50s, "trial_p99": self.p99s},
            "noisy": self.noisy(), "sim": self.sim})
    }
}

fn validation_md(checks: &[Check]) -> String {
    let mut md = String::from(
        "\n### Validation against the loopback cluster\n\n| scenario | mode | k | qps | real p50 | sim p50 | err | real p99 (trials) | sim p99 | err | trials differ > 10% |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    md.extend(checks.iter().map(Check::md));
    let count = |f: &dyn Fn(&Check) -> bool, quiet: bool| checks.iter().filter(|c| !quiet || !c.noisy()).filter(|c| f(c)).count();
    let quiet = checks.iter().filter(|c| !c.noisy()).count();
    md += &format!(
        "\nWithin 10%: p50 {} of {}, p99 {} of {}, both {} of {}. Rows whose two real trials agree within 10% (p50 and p99): p50 {} of {q}, p99 {} of {q}, both {} of {q}.\n",
        count(&Check::p50_ok, false),
        checks.len(),
        count(&Check::p99_ok, false),
        checks.len(),
        count(&|c| c.p50_ok() && c.p99_ok(), false),
        checks.len(),
        count(&Check::p50_ok, true),
        count(&Check::p99_ok, true),
        count(&|c| c.p50_ok() && c.p99_ok(), true),
        q = quiet
    );
    md
}

fn calibration_md(bases: &[(Setup, Base)]) -> String {
    let mut md = String::from(
        "### Calibration (measured, no instance faults)\n\n| setup | instances | end-to-end p50 | p99 | instance RPC p50 | p99 | timer lateness p50 | p99 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (setup, b) in bases {
        let name = setup.name();
        let (e, r, t) = (&b.end_to_end, &b.rpc, &b.timer_late);
        md += &format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            b.instances,
            e.at(0.5),
            e.at(0.99),
            r.at(0.5),
            r.at(0.99),
            t.at(0.5),
            t.at(0.99)
        );
        if let Some(busy) = &b.busy {
            let (e, r) = (&busy.end_to_end, &busy.rpc);
            md += &format!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | | |\n",
                busy.instances,
                e.at(0.5),
                e.at(0.99),
                r.at(0.5),
                r.at(0.99)
            );
        }
        if let Some(rep) = &b.replicated {
            let e = &rep.end_to_end;
            md += &format!("| {name} (replication) | {} | {:.2} | {:.2} | | | | |\n", rep.instances, e.at(0.5), e.at(0.99));
        }
    }
    md
}

fn fault_name(f: &Fault) -> String {
    match f {
        Fault::CpuBurn { threads } => format!("cpu-burn x{threads}"),
        Fault::Network { megabytes, concurrent, gap_ms } => format!("shuffles {concurrent} x {megabytes} MB / {gap_ms} ms"),
        other => format!("{other:?}"),
    }
}

fn calibration_json(setup: &Setup, b: &Base) -> serde_json::Value {
    serde_json::json!({"kind": "calibration", "host_faults": setup.host_faults.iter().map(fault_name).collect::<Vec<_>>(),
        "hosts": setup.network.map_or(1, |n| n.hosts), "link": setup.network.map(|n| n.link), "compute": setup.compute,
        "end_to_end_ms": {"p50": b.end_to_end.at(0.5), "p90": b.end_to_end.at(0.9), "p99": b.end_to_end.at(0.99)},
        "rpc_ms": {"p50": b.rpc.at(0.5), "p90": b.rpc.at(0.9), "p99": b.rpc.at(0.99)},
        "timer_late_ms": {"p50": b.timer_late.at(0.5), "p90": b.timer_late.at(0.9), "p99": b.timer_late.at(0.99)},
        "instances": b.instances,
        "busy": b.busy.as_ref().map(|busy| serde_json::json!({"instances": busy.instances,
            "end_to_end_ms": {"p50": busy.end_to_end.at(0.5), "p90": busy.end_to_end.at(0.9), "p99": busy.end_to_end.at(0.99)},
            "rpc_ms": {"p50": busy.rpc.at(0.5), "p90": busy.rpc.at(0.9), "p99": busy.rpc.at(0.99)}})),
        "replication": b.replicated.as_ref().map(|rep| serde_json::json!({"instances": rep.instances,
            "end_to_end_ms": {"p50": rep.end_to_end.at(0.5), "p90": rep.end_to_end.at(0.9), "p99": rep.end_to_end.at(0.99)}}))})
}

fn sim_spec(s: &Scenario, mode: Mode, rate: f64, queries: usize, a: &SimulateArgs) -> SimSpec {
    SimSpec {
        mode,
        instances: s.instances,
        rate_qps: rate,
        queries,
        warmup: s.warmup,
        faults: s.faults.clone(),
        compute_ms: s.compute.map_or(a.compute_ms, |c| c.service_ms),
        group_timeout_ms: s.group_timeout_ms as f64,
        decode_grace_ms: s.decode_grace_ms.map(|ms| ms as f64),
        straggler: s.straggler(),
        hedge_percentile: s.hedge_percentile,
        seed: s.seed,
        draw: 0,
    }
}

fn summary(b: &Base) -> String {
    let (e, r, t) = (&b.end_to_end, &b.rpc, &b.timer_late);
    format!(
        "end-to-end p50 {:.2} p99 {:.2} ms, RPC p50 {:.2} p99 {:.2} ms, timer late p50 {:.2} p99 {:.2} ms",
        e.at(0.5),
        e.at(0.99),
        r.at(0.5),
        r.at(0.99),
        t.at(0.5),
        t.at(0.99)
    )
}

/// Independent sets of random draws simulated per real trial (same arrival schedule), averaged:
/// the model's expectation rather than one noisy sample of it (a p99 of 3,700 queries rests
/// on 37 of them).
const DRAWS: u64 = 10;

/// The simulation of every trial of a row (seeds `seed, seed+1, ...` as `parm bench` runs
/// them, [`DRAWS`] draws each), percentiles averaged as `tail.json` averages the trials.
fn simulate_trials(s: &Scenario, spec: &SimSpec, base: &Base, trials: usize) -> Percentiles {
    let each =
        |t: u64| (0..DRAWS).map(move |draw| SimSpec { seed: spec.seed + t, draw, faults: s.trial_faults(spec.mode, t), ..spec.clone() });
    let runs: Vec<Percentiles> = (0..trials.max(1) as u64).flat_map(each).map(|s| simulate(&s, base)).collect();
    let mean = |f: fn(&Percentiles) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    Percentiles {
        p50: mean(|p| p.p50),
        p90: mean(|p| p.p90),
        p99: mean(|p| p.p99),
        p99_9: mean(|p| p.p99_9),
        max: mean(|p| p.max),
        mean: mean(|p| p.mean),
    }
}

/// `--calibrate-runs` rounds of [`Calibrator`] one after the other, on `setup`.
fn calibrate(a: &SimulateArgs, setup: &Setup) -> anyhow::Result<Base> {
    let budget = Budget { deployed_epochs: 20, parity_epochs: 30, seed: 1 };
    let models = ensure_models(&a.paths, &[], &budget)?;
    let queries = test_queries(&a.paths, a.calibrate_queries)?;
    let exe = std::env::current_exe()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut c = Calibrator::new(a.settings(), setup);
    for _ in 0..a.calibrate_runs.max(1) {
        rt.block_on(c.round(&exe, &models, &queries))?;
    }
    c.base()
}

/// Default probe pairs per second of a calibration run.
pub const PROBE_RATE: f64 = 25.0;
/// Default instances of the busy calibration run.
pub const BUSY_INSTANCES: usize = 24;
/// Default offered load of a calibration run, queries/s (the committed scenarios' rate).
pub const CALIBRATE_RATE: f64 = 200.0;

/// How calibration runs are made (`parm simulate`'s flags of the same names).
#[derive(Clone)]
pub struct CalibrationSettings {
    pub probe_rate: f64,
    pub busy_instances: usize,
    pub replication: bool,
    pub rate_qps: f64,
    pub model_name: String,
}

impl CalibrationSettings {
    /// `parm simulate`'s defaults, for the model `model_name`.
    pub fn defaults(model_name: &str) -> Self {
        Self {
            probe_rate: PROBE_RATE,
            busy_instances: BUSY_INSTANCES,
            replication: true,
            rate_qps: CALIBRATE_RATE,
            model_name: model_name.to_string(),
        }
    }
}

impl SimulateArgs {
    fn settings(&self) -> CalibrationSettings {
        CalibrationSettings {
            probe_rate: self.probe_rate,
            busy_instances: self.busy_instances,
            replication: self.replication_calibration,
            rate_qps: self.calibrate_rate,
            model_name: self.paths.dataset.clone(),
        }
    }
}

/// The simulator's calibration for one [`Setup`] (host faults, network, compute), run by run. A round is a short
/// real run without instance faults (but with the host faults): `none` on 12 instances while
/// a probe in the same process sends pairs of direct RPCs; with `busy_instances`, the same on
/// that many instances (the [`Busy`] calibration that charges each instance its cost on the
/// host); with `replication`, one in replication mode ([`Replicated`]). The rounds' end-to-end
/// distributions are averaged quantile by quantile and their probes pooled; with host faults
/// their timelines are kept. `parm simulate` runs its rounds back to back; `parm bench
/// --calibration` runs one before each round of trials of a scenario with host faults.
pub struct Calibrator {
    settings: CalibrationSettings,
    setup: Setup,
    quiet: Runs,
    busy: Runs,
    replicated: Runs,
    rounds: u64,
}

impl Calibrator {
    pub fn new(settings: CalibrationSettings, setup: &Setup) -> Self {
        Self { settings, setup: setup.clone(), quiet: Runs::default(), busy: Runs::default(), replicated: Runs::default(), rounds: 0 }
    }

    /// One round on `queries` (the first 300, at most half, not timed).
    pub async fn round(
        &mut self,
        exe: &std::path::Path,
        models: &parm_bench::harness::Models,
        queries: &[parm_bench::Query],
    ) -> anyhow::Result<()> {
        let (run, c) = (self.rounds, &self.settings);
        let replication = if c.replication { CALIBRATION_INSTANCES } else { 0 };
        let each = [
            (&mut self.quiet, Mode::None, CALIBRATION_INSTANCES),
            (&mut self.busy, Mode::None, c.busy_instances),
            (&mut self.replicated, Mode::Replication, replication),
        ];
        for (runs, mode, instances) in each {
            if instances == 0 {
                continue;
            }
            let probe = Probe { rate_qps: c.probe_rate, seed: 98 + 2 * run };
            let spec = calibration_spec(c, &self.setup, (mode, instances), queries.len(), 99 + 2 * run);
            let instances = mode.instances(instances).0;
            let (r, p) = run_probed(exe, models, &spec, queries, Some(probe)).await?;
            anyhow::ensure!(r.report.latency_quantiles_ms.len() > 1, "calibration run answered nothing");
            println!(
                "calibration run {run} ({}, {} on {instances} instances): end-to-end p50 {:.2} p99 {:.2} ms",
                self.setup.name(),
                mode.family(),
                r.report.latency_ms.p50,
                r.report.latency_ms.p99
            );
            runs.e2e.push(r.report.latency_quantiles_ms);
            runs.traces.push(r.report.latency_trace_ms);
            runs.probed.pairs.extend(p.pairs);
            runs.probed.timer_late.extend(p.timer_late);
        }
        self.rounds += 1;
        Ok(())
    }

    /// The model's base from the rounds so far. Errors: no round, or too few probes answered.
    pub fn base(&self) -> anyhow::Result<Base> {
        let (host, quiet) = (&self.setup.host_faults, &self.quiet);
        anyhow::ensure!(!quiet.e2e.is_empty(), "no calibration run");
        let mut base = Base::measured(quiet.end_to_end(), &quiet.probed.pairs, &quiet.probed.timer_late)
            .context("calibration: too few probes answered")?;
        if !self.busy.e2e.is_empty() {
            let b = Base::measured(self.busy.end_to_end(), &self.busy.probed.pairs, &self.busy.probed.timer_late)
                .context("busy calibration: too few probes answered")?;
            println!("busy calibration ({} host faults): {}", host.len(), summary(&b));
            base.busy = Some(Busy { instances: self.settings.busy_instances, end_to_end: b.end_to_end, rpc: b.rpc });
        }
        if !self.replicated.e2e.is_empty() {
            let r = Replicated::measured(
                Mode::Replication.instances(CALIBRATION_INSTANCES).0,
                self.replicated.end_to_end(),
                &self.replicated.probed.pairs,
            )
            .context("replication calibration: no probe pairs answered")?;
            println!(
                "replication calibration ({} host faults): end-to-end p50 {:.2} p99 {:.2} ms",
                host.len(),
                r.end_to_end.at(0.5),
                r.end_to_end.at(0.99)
            );
            base.replicated = Some(r);
        }
        if !host.is_empty() {
            // Host faults come in bursts over the whole host: keep when they struck (sim.rs).
            quiet.traces.iter().for_each(|t| base.push_timeline(t));
        }
        println!("calibration ({} host faults): {} probe pairs; {}", host.len(), quiet.probed.pairs.len(), summary(&base));
        Ok(base)
    }
}

/// Stores `base` as the calibration for `setup` in `path` (created if missing), replacing the
/// one measured before on the same setup and keeping the others.
pub fn store_calibration(path: &std::path::Path, setup: &Setup, base: Base) -> anyhow::Result<()> {
    let mut saved = read_calibrations(path)?;
    saved.retain(|c| c.setup != *setup);
    saved.push(Calibration { setup: setup.clone(), base });
    write_new(path, &serde_json::to_string(&saved)?)
}

/// What a set of calibration runs measured.
#[derive(Default)]
struct Runs {
    e2e: Vec<Vec<f64>>,
    traces: Vec<Vec<(f64, f64)>>,
    probed: ProbeData,
}

impl Runs {
    /// The runs' end-to-end latency distributions, averaged quantile by quantile.
    fn end_to_end(&self) -> Empirical {
        Empirical {
            quantiles: (0..self.e2e[0].len()).map(|i| self.e2e.iter().map(|q| q[i]).sum::<f64>() / self.e2e.len() as f64).collect(),
        }
    }
}

/// One calibration run: `mode` on N = `instances`, `queries` queries, no instance faults, on
/// `setup`'s hosts with its emulated compute.
fn calibration_spec(c: &CalibrationSettings, setup: &Setup, (mode, instances): (Mode, usize), queries: usize, seed: u64) -> RunSpec {
    let machines = mode.instances(instances);
    RunSpec {
        mode,
        instances,
        rate_qps: c.rate_qps,
        seed,
        warmup: 300.min(queries / 2),
        faults: setup.host_faults.clone(),
        worker_faults: (0..machines.0 + machines.1).map(|i| worker_fault(&[], i, seed, setup.compute.as_ref())).collect(),
        group_timeout: Duration::from_millis(5),
        decode_grace: None,
        straggler: Default::default(),
        hedge_percentile: 95.0,
        model_name: c.model_name.clone(),
        progress: false,
        network: setup.network,
        frontends: 1,
        pin: setup.pin,
        client_process: setup.client_process,
    }
}

/// The projections' heading: what every table below it assumes.
const PROJECTIONS_MD: &str = "\n### Projections\n\nEach table projects from one fault-free calibration, so it assumes that calibration's network: its measured instance RPC latency, stated as the latency of one hop (frontend to instance, one way, both ends' network stacks included: (RPC p50 - compute) / 2).\n";

/// ParM's published setup (12 instances + 12/k parity, 150-390 queries/s) and larger
/// clusters at the same load per instance, under background contention modelled as random
/// slowdown episodes on every machine, parity and extra instances included (each +20 ms for 1
/// s, every 20 s on average), from the calibration `base` of `setup`.
fn projections(a: &SimulateArgs, setup: &Setup, base: &Base, json: &mut Vec<serde_json::Value>) -> String {
    let hop_ms = ((base.rpc.at(0.5) - a.compute_ms) / 2.0).max(0.0);
    let mut md = format!(
        "\nFrom the calibration on {}: per hop {hop_ms:.2} ms (instance RPC p50 {:.2} ms, end-to-end p50 {:.2} ms).\n\n| instances N | qps | mode | k | p50 | p99 | p99.9 | (p99.9-p50) |\n|---|---|---|---|---|---|---|---|\n",
        setup.name(),
        base.rpc.at(0.5),
        base.end_to_end.at(0.5)
    );
    let modes = [
        Mode::EqualResources { k: 2 },
        Mode::Hedged { k: 2 },
        Mode::Parm { k: 2, r: 1, checked: false },
        Mode::Parm { k: 3, r: 1, checked: false },
        Mode::Parm { k: 4, r: 1, checked: false },
    ];
    for (n, rates) in [(12usize, vec![150.0, 270.0, 390.0]), (100, vec![1250.0]), (1000, vec![12_500.0])] {
        for &rate in &rates {
            for mode in modes {
                // Every machine of the setup, parity and extra instances included.
                let (d, p) = mode.instances(n);
                let faults: Vec<Fault> =
                    (0..d + p).map(|i| Fault::Episodes { instance: i, every_s: 20.0, len_s: 1.0, delay_ms: 20.0 }).collect();
                let spec = SimSpec {
                    mode,
                    instances: n,
                    rate_qps: rate,
                    queries: (rate * 60.0) as usize,
                    warmup: (rate * 2.0) as usize,
                    faults,
                    compute_ms: a.compute_ms,
                    group_timeout_ms: 5.0,
                    decode_grace_ms: None,
                    straggler: Default::default(),
                    hedge_percentile: 95.0,
                    seed: 11,
                    draw: 0,
                };
                let p = simulate(&spec, base);
                md += &format!(
                    "| {n} | {rate} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    mode.family(),
                    mode.k(),
                    p.p50,
                    p.p99,
                    p.p99_9,
                    p.p99_9 - p.p50
                );
                json.push(serde_json::json!({"kind": "projection", "calibration": setup.name(), "hop_ms": hop_ms,
                    "hosts": setup.network.map_or(1, |n| n.hosts), "instances": n, "rate_qps": rate, "mode": mode.family(), "k": mode.k(), "sim": p}));
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(p50: f64) -> Base {
        let e2e = Empirical { quantiles: vec![p50, p50 + 1.0] };
        Base::measured(e2e, &[(0.4, 0.5), (0.5, 0.4)], &[0.1, 0.2]).unwrap()
    }

    #[test]
    fn calibrations_stored_before_setups_read_as_loopback() {
        let old = r#"[{"host_faults": [], "base": BASE}]"#.replace("BASE", &serde_json::to_string(&base(0.8)).unwrap());
        let saved: Vec<Calibration> = serde_json::from_str(&old).unwrap();
        assert_eq!(saved[0].setup, Setup::default());
    }

    #[test]
    fn a_stored_calibration_replaces_only_its_own_setup() {
        let dir = std::env::temp_dir().join(format!("parm-calibration-{}", std::process::id()));
        let path = dir.join("calibration.json");
        let burner = vec![Fault::CpuBurn { threads: 1 }];
        let (quiet, burned) = (Setup::default(), Setup { host_faults: burner.clone(), ..Setup::default() });
        let hosts = Setup { network: Some(NetworkSpec { hosts: 20, frontends: 1, link: Default::default() }), ..Setup::default() };
        store_calibration(&path, &quiet, base(0.8)).unwrap();
        store_calibration(&path, &burned, base(0.6)).unwrap();
        store_calibration(&path, &burned, base(0.7)).unwrap();
        store_calibration(&path, &hosts, base(1.1)).unwrap();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: SimulateArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["simulate", "--calibration", path.to_str().unwrap()]).unwrap();
        let saved = load_calibrations(&cli.a).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(saved.len(), 3, "one calibration per setup");
        let p50 = |setup: &Setup| saved.iter().find(|(h, _)| h == setup).unwrap().1.end_to_end.at(0.0);
        assert_eq!(p50(&quiet), 0.8, "the quiet calibration is kept");
        assert_eq!(p50(&burned), 0.7, "the burner's is replaced by the newer one");
        assert_eq!(p50(&hosts), 1.1, "across hosts: a calibration of its own");
    }
}
