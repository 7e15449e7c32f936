//! Wrong outputs caught (`FrontendConfig::checks`), in process against scripted instances: one
//! of five deployed instances makes a share of its outputs wrong with the worker's own fault
//! injection; the frontend checks each coding group against its code, locates the wrong
//! member (r = 2) or suspects the group (r = 1), and ejects the instance.
//!
//! F(x) = 2x on 10 values (its top-1 class is the largest input); the parity models are F plus
//! a small fixed error per value, standing in for a learned parity model's approximation.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use parm_serve::coded::policy::StragglerPolicy;
use parm_serve::coded::{CheckVerdict, Code, Frontend, FrontendConfig, OutputChecks, ParityInstances};
use parm_serve::instance::fault::{FaultConfig, FaultInjector};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::{Instance, InstanceError};

const D: usize = 10;

/// F(x) = 2x; a faulty one corrupts rows as `parm worker --fault wrong=...` does and records
/// the inputs whose output it changed; a parity one adds a fixed error of up to +-`noise`.
struct Scripted {
    name: String,
    faults: Option<FaultInjector>,
    noise: f32,
    corrupted: Mutex<Vec<Vec<u32>>>,
}

impl Scripted {
    fn new(name: &str, faults: Option<&str>, noise: f32) -> Arc<Self> {
        let faults = faults.map(|f| FaultInjector::new(f.parse::<FaultConfig>().unwrap()));
        Arc::new(Scripted { name: name.into(), faults, noise, corrupted: Mutex::new(Vec::new()) })
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

impl Instance for Scripted {
    fn addr(&self) -> &str {
        &self.name
    }

    fn infer<'a>(&'a self, _: &'a str, input: &'a [f32], _: &'a [i64], _: Duration) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut out: Vec<f32> =
                input.iter().enumerate().map(|(t, x)| 2.0 * x + self.noise * (((t * 7 + 3) % 5) as f32 - 2.0) / 2.0).collect();
            if let Some(f) = &self.faults
                && f.corrupt(&mut out, 1) > 0
            {
                self.corrupted.lock().unwrap().push(bits(input));
            }
            Ok(out)
        })
    }
}

fn top1(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// Query i: pseudo-random values in [0, 1), a different top-1 class per query.
fn query(i: usize) -> Vec<f32> {
    (0..D).map(|t| (((i * 7919 + t * 104_729) % 1000) as f32) / 1000.0).collect()
}

struct Outcome {
    corrupted: usize,
    caught: usize,
    clean: usize,
    false_alarms: usize,
    wrong_after_ejection: usize,
    ejected_at_wave: Option<usize>,
}

/// Runs `waves` full coding groups of `k` through five deployed instances (one faulty) and
/// the parities of `code`, and scores the verdicts against what the faulty instance did.
async fn run(k: usize, code: Code, parity: Vec<Vec<Arc<dyn Instance>>>, waves: usize, checks: OutputChecks) -> (Frontend, Outcome) {
    let bad = Scripted::new("bad", Some("wrong=0.3,wrong_kind=mixed,wrong_scale=-1,seed=5"), 0.0);
    let mut deployed: Vec<Arc<dyn Instance>> = (0..4).map(|i| Scripted::new(&format!("ok{i}"), None, 0.0) as Arc<dyn Instance>).collect();
    deployed.insert(2, bad.clone());
    let cfg = FrontendConfig {
        parity_model: "parity-p0".into(),
        encoder: Arc::from(parm_codes::encoder_by_name("addition", k).unwrap()),
        code,
        group_timeout: Duration::from_millis(500),
        straggler: StragglerPolicy::default().with_min(Duration::from_millis(500)),
        checks: Some(checks),
        ..FrontendConfig::new(ModelSpec::fp32("m", vec![D as i64], vec![D as i64]), vec![])
    };
    let f = Frontend::with_parity_instances(cfg, deployed, parity).unwrap();
    let mut verdicts = f.subscribe_checks().expect("checks are on");
    let mut by_group: HashMap<u64, Vec<(usize, Vec<f32>)>> = HashMap::new();
    let (mut wrong_after_ejection, mut ejected_at_wave) = (0, None);
    for wave in 0..waves {
        let ids: Vec<usize> = (wave * k..wave * k + k).collect();
        let answers = futures::future::join_all(ids.iter().map(|&i| f.predict(query(i)))).await;
        for (&i, a) in ids.iter().zip(answers) {
            let a = a.expect("every query answered");
            let clean = query(i).iter().map(|x| 2.0 * x).collect::<Vec<_>>();
            if ejected_at_wave.is_some() && top1(&a.output) != top1(&clean) {
                wrong_after_ejection += 1;
            }
            by_group.entry(a.group).or_default().push((a.position, query(i)));
        }
        if ejected_at_wave.is_none() && !f.ejected().is_empty() {
            ejected_at_wave = Some(wave);
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // the last parity outputs
    let corrupted: Vec<Vec<u32>> = bad.corrupted.lock().unwrap().clone();
    let mut o = Outcome { corrupted: 0, caught: 0, clean: 0, false_alarms: 0, wrong_after_ejection, ejected_at_wave };
    while let Ok(CheckVerdict { group, blamed, instances, .. }) = verdicts.try_recv() {
        for (position, input) in &by_group[&group] {
            let wrong = instances[*position].as_deref() == Some("bad") && corrupted.contains(&bits(input));
            let blamed = blamed.contains(position);
            if wrong {
                o.corrupted += 1;
                o.caught += blamed as usize;
            } else {
                o.clean += 1;
                o.false_alarms += blamed as usize;
            }
        }
    }
    (f, o)
}

fn two_parities() -> (Code, Vec<Vec<Arc<dyn Instance>>>) {
    let parity: Vec<Vec<Arc<dyn Instance>>> =
        vec![vec![Scripted::new("p0", None, 0.05) as Arc<dyn Instance>], vec![Scripted::new("p1", None, 0.05) as Arc<dyn Instance>]];
    (Code::Parities { further: vec![ParityInstances { instances: vec![], model: "parity-p1".into() }] }, parity)
}

#[tokio::test]
async fn two_parities_locate_wrong_outputs() {
    let (code, parity) = two_parities();
    // Never ejected (it would need every check blamed), so every corrupted output is checked.
    let (f, o) = run(4, code, parity, 150, OutputChecks { eject_rate: 1.0, ..Default::default() }).await;
    assert!(f.ejected().is_empty());
    assert!(o.corrupted >= 25, "{} corrupted outputs seen by checks", o.corrupted);
    assert!(o.caught as f64 >= 0.95 * o.corrupted as f64, "caught {} of {} corrupted outputs", o.caught, o.corrupted);
    assert!(o.false_alarms as f64 <= 0.01 * o.clean as f64, "{} false alarms in {} clean outputs", o.false_alarms, o.clean);
    let s = f.stats();
    assert_eq!(s.answered.load(Ordering::Relaxed), 600, "exactly one answer per query");
    assert_eq!(s.checks.load(Ordering::Relaxed), 150, "every group checked");
}

#[tokio::test]
async fn an_instance_that_keeps_disagreeing_is_ejected_and_its_wrong_outputs_stop() {
    let (code, parity) = two_parities();
    let (f, o) = run(4, code, parity, 150, OutputChecks { window: 20, ..Default::default() }).await;
    assert_eq!(f.ejected(), vec!["bad".to_string()], "the faulty instance is out of rotation");
    assert_eq!(f.stats().ejections.load(Ordering::Relaxed), 1);
    assert!(o.ejected_at_wave.is_some_and(|w| w < 50), "ejected after {:?} groups", o.ejected_at_wave);
    assert!(o.caught >= 1 && o.false_alarms == 0, "caught {} of {}, {} false alarms", o.caught, o.corrupted, o.false_alarms);
    assert_eq!(o.wrong_after_ejection, 0, "no wrong answer once the instance is out");
    assert_eq!(f.stats().answered.load(Ordering::Relaxed), 600, "exactly one answer per query");
}

#[tokio::test]
async fn one_parity_suspects_groups_and_still_ejects_the_instance_that_is_in_all_of_them() {
    // r = 1 cannot tell which member is wrong; with k = 2 of 5 instances, a healthy instance
    // shares a quarter of its groups with the faulty one, so its suspicion stays far lower.
    let parity: Vec<Vec<Arc<dyn Instance>>> = vec![vec![Scripted::new("p0", None, 0.05) as Arc<dyn Instance>]];
    let (f, o) = run(2, Code::Parity, parity, 300, OutputChecks { window: 20, ..Default::default() }).await;
    assert_eq!(f.ejected(), vec!["bad".to_string()]);
    assert!(o.caught as f64 >= 0.9 * o.corrupted as f64, "flagged {} of {} corrupted outputs", o.caught, o.corrupted);
    assert_eq!(o.wrong_after_ejection, 0);
}

#[test]
fn bad_check_settings_are_refused() {
    let spec = ModelSpec::fp32("m", vec![2], vec![2]);
    let cfg = |checks: OutputChecks, parity: Vec<String>, code: Code| FrontendConfig {
        parity,
        code,
        checks: Some(checks),
        ..FrontendConfig::new(spec.clone(), vec!["127.0.0.1:1".into()])
    };
    let p = || vec!["127.0.0.1:2".to_string()];
    for (c, needle) in [
        (cfg(OutputChecks { threshold: 0.5, ..Default::default() }, p(), Code::Parity), "threshold"),
        (cfg(OutputChecks { window: 1, ..Default::default() }, p(), Code::Parity), "window"),
        (cfg(OutputChecks::default(), vec![], Code::Parity), "parity instances"),
        (cfg(OutputChecks::default(), p(), Code::Berrut { s: 1 }), "Berrut"),
    ] {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(cfg(OutputChecks::default(), p(), Code::Parity).validate().is_ok());
}
