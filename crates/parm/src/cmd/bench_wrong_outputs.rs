//! `parm bench --wrong-outputs`: one deployed instance returns wrong outputs; how many does
//! the frontend's output check (`parm serve --check-outputs`, `parm_serve::coded::check`)
//! catch, how many clean ones does it blame, how soon is the instance ejected, and how many
//! wrong answers reach clients.
//!
//! Five `parm worker` processes run the deployed model, one of them with `--fault
//! wrong=P,wrong_kind=mixed,wrong_scale=-1` (random logits, a permuted class, or the logits
//! negated, per row); the parity models run on their own workers. The frontend runs in this
//! process over them, so every check's verdict ([`Frontend::subscribe_checks`]) can be
//! matched with the query it judged. The truth is F's own output on each test image, computed
//! here from the same model file: an answer delivered as an original that differs from it is
//! corrupted.
//!
//! Three setups: r = 2 parities at k = 4 and at k = 2 (the wrong member located), and ParM's
//! one parity at k = 2 (the group suspected). Each runs five times: *catch* never ejects (so
//! every corruption is judged), *eject* uses the default settings, *healthy* too but with no
//! faulty instance (any ejection is a false one); *catch* and *healthy* also at a check
//! threshold of 4 instead of the default 2.5.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use parm_bench::cluster::{InstanceSpec, start_instances};
use parm_serve::coded::{CheckVerdict, Code, Frontend, FrontendConfig, OutputChecks, ParityInstances, Prediction};
use parm_serve::oip::ModelSpec;
use serde::Serialize;

use super::Paths;
use crate::deployed::{Deployed, Source};
use crate::models::{Budget, ensure_models, ensure_parity};

/// The faulty instance's fault (`parm worker --fault`).
const FAULT: &str = "wrong=0.2,wrong_kind=mixed,wrong_scale=-1,seed=11";
/// Deployed instances; the faulty one is the third.
const DEPLOYED: usize = 5;
const FAULTY: usize = 2;
/// Queries in flight at once (closed loop), enough to fill coding groups.
const CLIENTS: usize = 16;
/// Each setup's runs and their check thresholds (`None`: the default, 2.5) and a higher one, to
/// show what fewer false alarms cost in answers not caught.
const RUNS: [(&str, Option<f32>); 5] = [("catch", None), ("catch", Some(4.0)), ("eject", None), ("healthy", None), ("healthy", Some(4.0))];

/// One run's counts (every field is over the answers delivered as originals and checked,
/// unless it says otherwise).
#[derive(Debug, Clone, Serialize)]
pub struct WrongOutputsRow {
    pub setup: String,
    pub k: usize,
    pub r: usize,
    /// `catch` (ejection off), `eject` (default settings) or `healthy` (default settings, no
    /// instance faulty: false ejections).
    pub run: String,
    /// The check threshold (`--check-threshold`, times the running median score).
    pub threshold: f32,
    pub queries: usize,
    /// Originals that differ from F's output (all from the faulty instance).
    pub corrupted: usize,
    /// Corrupted ones whose top-1 class differs from F's.
    pub corrupted_top1: usize,
    /// Corrupted ones whose group's verdict blamed them; of those that changed top-1.
    pub caught: usize,
    pub caught_top1: usize,
    /// Originals equal to F's output, and those of them blamed.
    pub clean: usize,
    pub false_alarms: usize,
    /// Answers whose top-1 class differs from F's because an instance's output was wrong
    /// (corrupted originals; reconstructions are not counted), over the whole run, and after
    /// the instance was ejected.
    pub wrong_answers_delivered: usize,
    pub wrong_answers_after_ejection: usize,
    /// Seconds from the first query to the faulty instance's ejection (`null`: never).
    pub instance_ejected_after_s: Option<f64>,
    /// Instances ejected in the run (more than 1, or any in a `healthy` run: false ejections).
    pub ejections: u64,
    /// Queries answered by reconstruction, and groups checked / flagged.
    pub reconstructed: usize,
    pub checks: u64,
    pub flagged: u64,
    /// Syndrome score over the running median, p50 / p99 / p99.9 of clean groups and p10 / p50
    /// of groups with a corrupted member: how far apart the two are (groups checked during the
    /// warm-up, with no median yet, left out).
    pub clean_ratio: [f64; 3],
    pub corrupted_ratio: [f64; 2],
}

/// Runs both setups and writes `OUT/wrong-outputs.json`: the r = 2 eject run's fields at the
/// top level, every run under `"runs"`.
///
/// Errors: models that cannot be trained or loaded, workers that do not start, a query that
/// gets no answer.
pub fn run(paths: &Paths, out: &Path, queries: usize, parity_epochs: usize) -> anyhow::Result<()> {
    let budget = Budget { deployed_epochs: 20, parity_epochs, seed: 1 };
    let models = ensure_models(paths, &[2], &budget)?;
    let linear: Vec<PathBuf> =
        (0..2).map(|l| ensure_parity(paths, &models.deployed, 4, &format!("linear-r2-p{l}"), &budget)).collect::<anyhow::Result<_>>()?;
    let linear2: Vec<PathBuf> =
        (0..2).map(|l| ensure_parity(paths, &models.deployed, 2, &format!("linear-r2-p{l}"), &budget)).collect::<anyhow::Result<_>>()?;
    let images = super::bench::test_queries(paths, queries)?;
    let deployed = Deployed::open(&Source::Parm(models.deployed.clone()))?;
    let dim = deployed.input_shape.iter().product::<usize>();
    let inputs: Vec<f32> = images.iter().flat_map(|q| q.input.iter().copied()).collect();
    let truth = deployed.model.outputs(&inputs, images.len()).context("computing F on the test images")?;
    let truth: Vec<Vec<f32>> = truth.chunks(deployed.outputs).map(<[f32]>::to_vec).collect();
    let spec = ModelSpec::fp32(&paths.dataset, vec![dim as i64], vec![deployed.outputs as i64]);
    let inputs: Vec<Vec<f32>> = images.into_iter().map(|q| q.input).collect();
    let setups = [
        ("parm r=2, k=4", 4, vec![linear[0].clone(), linear[1].clone()]),
        ("parm r=2, k=2", 2, vec![linear2[0].clone(), linear2[1].clone()]),
        ("parm r=1, k=2", 2, vec![models.parity[&2].clone()]),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exe = std::env::current_exe().context("locating the parm binary")?;
    let mut rows = Vec::new();
    for (setup, k, parity) in &setups {
        for (run, threshold) in RUNS {
            let threshold = threshold.unwrap_or(OutputChecks::default().threshold);
            let checks = OutputChecks { threshold, ..Default::default() };
            let checks = if run == "catch" { OutputChecks { eject_rate: 1.0, ..checks } } else { checks };
            let fault = if run == "healthy" { "" } else { FAULT };
            let s = Setup { exe: &exe, deployed: &models.deployed, parity, k: *k, spec: spec.clone(), checks, fault };
            let row = rt.block_on(s.run(setup, run, &inputs, &truth))?;
            eprintln!(
                "{setup} {run} (threshold {threshold}): corrupted {} (top-1 changed {}), caught {} ({} of top-1), false alarms {} of {}, wrong answers delivered {} ({} after ejection), ejected after {:?} s ({} ejections); {} checks, {} flagged; score/median clean p50/p99/p99.9 {:?}, corrupted p10/p50 {:?}",
                row.corrupted,
                row.corrupted_top1,
                row.caught,
                row.caught_top1,
                row.false_alarms,
                row.clean,
                row.wrong_answers_delivered,
                row.wrong_answers_after_ejection,
                row.instance_ejected_after_s,
                row.ejections,
                row.checks,
                row.flagged,
                row.clean_ratio,
                row.corrupted_ratio
            );
            rows.push(row);
        }
    }
    write(out, &rows)
}

fn write(out: &Path, rows: &[WrongOutputsRow]) -> anyhow::Result<()> {
    let default = OutputChecks::default().threshold;
    let main = rows.iter().find(|r| r.r == 2 && r.k == 4 && r.run == "eject").context("no r = 2 run")?;
    let healthy = rows.iter().filter(|r| r.run == "healthy" && r.threshold == default).map(|r| r.ejections).sum::<u64>();
    let catch = rows.iter().find(|r| r.r == 2 && r.k == 4 && r.run == "catch" && r.threshold == default).context("no r = 2 catch run")?;
    let doc = serde_json::json!({
        "corrupted": catch.corrupted,
        "caught": catch.caught,
        "corrupted_top1": catch.corrupted_top1,
        "caught_top1": catch.caught_top1,
        "clean": catch.clean,
        "false_alarms": catch.false_alarms,
        "wrong_answers_delivered": main.wrong_answers_delivered,
        "wrong_answers_after_ejection": main.wrong_answers_after_ejection,
        "instance_ejected_after_s": main.instance_ejected_after_s,
        "false_ejections_in_healthy_runs": healthy,
        "fault": FAULT,
        "note": "top level: the r = 2 (k = 4) setup; counts from its catch run (ejection off, default threshold), delivery and ejection from its eject run (default settings); runs at threshold 4 show the trade-off (fewer false alarms, fewer caught)",
        "runs": rows,
    });
    std::fs::create_dir_all(out)?;
    let path = out.join("wrong-outputs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One cluster and frontend.
struct Setup<'a> {
    exe: &'a Path,
    deployed: &'a Path,
    parity: &'a [PathBuf],
    k: usize,
    spec: ModelSpec,
    checks: OutputChecks,
    /// The third instance's `--fault` (empty: every instance healthy).
    fault: &'a str,
}

/// What each query got, by index.
struct Answer {
    prediction: Prediction,
    at: Instant,
}

impl Setup<'_> {
    async fn run(&self, setup: &str, run: &str, inputs: &[Vec<f32>], truth: &[Vec<f32>]) -> anyhow::Result<WrongOutputsRow> {
        let r = self.parity.len();
        let worker = |model: &Path, name: String, fault: &str| InstanceSpec {
            model: model.to_path_buf(),
            name,
            fault: fault.into(),
            listen: None,
            netns: None,
            cpus: None,
        };
        let mut specs: Vec<InstanceSpec> =
            (0..DEPLOYED).map(|i| worker(self.deployed, "deployed".into(), if i == FAULTY { self.fault } else { "" })).collect();
        let names: Vec<String> = (0..r)
            .map(|l| if r == 1 { super::parity_name(self.k, "addition") } else { super::parity_name(self.k, &format!("linear-r2-p{l}")) })
            .collect();
        specs.extend(self.parity.iter().zip(&names).map(|(p, n)| worker(p, n.clone(), "")));
        let workers = start_instances(self.exe, specs).await?;
        let addr = |i: usize| workers[i].addr.clone();
        let faulty = addr(FAULTY);
        let code = if r == 1 {
            Code::Parity
        } else {
            Code::Parities { further: vec![ParityInstances { instances: vec![addr(DEPLOYED + 1)], model: names[1].clone() }] }
        };
        let cfg = FrontendConfig {
            parity: vec![addr(DEPLOYED)],
            parity_model: names[0].clone(),
            encoder: Arc::from(parm_codes::encoder_by_name("addition", self.k)?),
            code,
            checks: Some(self.checks.clone()),
            ..FrontendConfig::new(self.spec.clone(), (0..DEPLOYED).map(addr).collect())
        };
        let f = Frontend::start(cfg)?;
        f.warm_up().await;
        let verdicts = collect(f.subscribe_checks().context("checks are on")?);
        let start = Instant::now();
        let (ejected_at, watcher) = watch_ejection(&f);
        let answers = ask_all(&f, inputs).await?;
        tokio::time::sleep(Duration::from_millis(200)).await; // the last parity outputs
        watcher.abort();
        let ejected_at = *ejected_at.lock().unwrap_or_else(|p| p.into_inner());
        let (verdicts, lost) = std::mem::take(&mut *verdicts.lock().unwrap_or_else(|p| p.into_inner()));
        anyhow::ensure!(lost == 0, "{lost} check verdicts were not read in time");
        let mut row = WrongOutputsRow {
            setup: setup.into(),
            k: self.k,
            r,
            run: run.into(),
            threshold: self.checks.threshold,
            queries: inputs.len(),
            corrupted: 0,
            corrupted_top1: 0,
            caught: 0,
            caught_top1: 0,
            clean: 0,
            false_alarms: 0,
            wrong_answers_delivered: 0,
            wrong_answers_after_ejection: 0,
            instance_ejected_after_s: ejected_at.map(|t| t.duration_since(start).as_secs_f64()),
            reconstructed: answers.iter().filter(|a| a.prediction.reconstructed).count(),
            ejections: f.stats().ejections.load(std::sync::atomic::Ordering::Relaxed),
            checks: f.stats().checks.load(std::sync::atomic::Ordering::Relaxed),
            flagged: f.stats().flagged.load(std::sync::atomic::Ordering::Relaxed),
            clean_ratio: [0.0; 3],
            corrupted_ratio: [0.0; 2],
        };
        let by_slot: HashMap<(u64, usize), usize> =
            answers.iter().enumerate().map(|(i, a)| ((a.prediction.group, a.prediction.position), i)).collect();
        let mut judged = HashMap::new();
        let mut ratios = Vec::new();
        for v in verdicts {
            let mut members = Vec::new();
            for (position, instance) in v.instances.iter().enumerate() {
                if let Some(&i) = by_slot.get(&(v.group, position)) {
                    judged.insert(i, (v.blamed.contains(&position), instance.as_deref() == Some(faulty.as_str())));
                    members.push(i);
                }
            }
            // A warm-up verdict (median 0: never flagged) has no ratio to report.
            if v.median > 0.0 {
                ratios.push(((v.check.score / v.median) as f64, members));
            }
        }
        for (i, a) in answers.iter().enumerate().filter(|(_, a)| !a.prediction.reconstructed) {
            let out = &a.prediction.output;
            let corrupted = out.iter().zip(&truth[i]).any(|(x, y)| (x - y).abs() > 1e-3 * (1.0 + y.abs()));
            let top1_changed = top1(out) != top1(&truth[i]);
            if corrupted && top1_changed {
                row.wrong_answers_delivered += 1;
                row.wrong_answers_after_ejection += ejected_at.is_some_and(|t| a.at > t) as usize;
            }
            let Some(&(blamed, _)) = judged.get(&i) else { continue };
            if corrupted {
                row.corrupted += 1;
                row.corrupted_top1 += top1_changed as usize;
                row.caught += blamed as usize;
                row.caught_top1 += (blamed && top1_changed) as usize;
            } else {
                row.clean += 1;
                row.false_alarms += blamed as usize;
            }
        }
        let is_corrupted = |i: usize| {
            let a = &answers[i].prediction;
            !a.reconstructed && a.output.iter().zip(&truth[i]).any(|(x, y)| (x - y).abs() > 1e-3 * (1.0 + y.abs()))
        };
        let (mut bad, mut good): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        for (ratio, members) in ratios {
            if members.iter().any(|&i| is_corrupted(i)) { bad.push(ratio) } else { good.push(ratio) }
        }
        row.clean_ratio = [quantile(&mut good, 0.5), quantile(&mut good, 0.99), quantile(&mut good, 0.999)];
        row.corrupted_ratio = [quantile(&mut bad, 0.1), quantile(&mut bad, 0.5)];
        drop(f);
        drop(workers);
        Ok(row)
    }
}

/// Every verdict as it comes, and how many were lost (the receiver fell behind).
fn collect(mut rx: tokio::sync::broadcast::Receiver<CheckVerdict>) -> Arc<Mutex<(Vec<CheckVerdict>, u64)>> {
    let got = Arc::new(Mutex::new((Vec::new(), 0)));
    let into = got.clone();
    tokio::spawn(async move {
        loop {
            let v = rx.recv().await;
            let mut got = into.lock().unwrap_or_else(|p| p.into_inner());
            match v {
                Ok(v) => got.0.push(v),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => got.1 += n,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    got
}

/// When the first deployed instance was ejected, polled every 5 ms until the task is aborted.
fn watch_ejection(f: &Frontend) -> (Arc<Mutex<Option<Instant>>>, tokio::task::JoinHandle<()>) {
    let at = Arc::new(Mutex::new(None));
    let (f, seen) = (f.clone(), at.clone());
    let task = tokio::spawn(async move {
        while seen.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            if !f.ejected().is_empty() {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (at, task)
}

/// Every input through the frontend, [`CLIENTS`] at a time; answers by input index.
async fn ask_all(f: &Frontend, inputs: &[Vec<f32>]) -> anyhow::Result<Vec<Answer>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..CLIENTS).map(|_| {
        let (f, next) = (f.clone(), next.clone());
        async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(x) = inputs.get(i) else { return Ok::<_, anyhow::Error>(got) };
                let prediction = f.predict(x.clone()).await.with_context(|| format!("query {i}"))?;
                got.push((i, Answer { prediction, at: Instant::now() }));
            }
        }
    });
    let mut all: Vec<(usize, Answer)> = futures::future::try_join_all(clients).await?.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, a)| a).collect())
}

/// The `q` quantile of `v` (nearest rank; 0 if empty).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn top1(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0)
}
