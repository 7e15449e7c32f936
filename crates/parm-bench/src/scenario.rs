//! Benchmark scenarios: a TOML file naming the load, the setups to compare and the faults.
//!
//! ```toml
//! name = "one-slow"
//! dataset = "fashion-mnist"
//! queries = 10300         # test queries per run, warm-up included
//! warmup = 300            # first queries not timed (10,000 timed: p99.9 rests on 10)
//! rates = [150.0]         # offered loads, queries/s (open-loop Poisson)
//! trials = 2              # runs per (mode, rate), different seeds
//! instances = 12          # N deployed-model instances
//! modes = ["none", "equal-resources-k2", "replication", "hedged-k2", "parm-k2", "parm-k3", "parm-k4"]
//! seed = 1
//!
//! [[faults]]
//! kind = "delay"          # every request on deployed instance 0 takes 20 ms longer
//! instance = 0
//! delay_ms = 20.0
//! ```
//!
//! `faults_on = "any-machine"` moves instance faults onto parity instances in a share of the
//! trials (see [`FaultsOn`]).

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Timed queries (after warm-up) a trial needs for its p99.9 to rest on 10 queries: of N
/// timed queries, N / 1,000 lie above the p99.9. The committed scenarios time at least this
/// many (`committed_scenarios_time_enough_queries_for_p99_9`); `parm bench` warns below it.
pub const MIN_TIMED_QUERIES: usize = 10_000;

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "default_dataset")]
    pub dataset: String,
    pub queries: usize,
    #[serde(default)]
    pub warmup: usize,
    pub rates: Vec<f64>,
    #[serde(default = "one")]
    pub trials: usize,
    pub instances: usize,
    pub modes: Vec<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Frontend: ms a partly filled coding group waits before its padded parity query.
    #[serde(default = "default_group_timeout_ms")]
    pub group_timeout_ms: u64,
    /// Frontend: ms after sending a query before its reconstruction may be released (at most
    /// the straggler threshold; absent: the threshold, `parm serve`'s default).
    #[serde(default)]
    pub decode_grace_ms: Option<u64>,
    /// Frontend: parity queries only for groups with a straggler (see parm_serve::coded::policy).
    #[serde(default)]
    pub lazy_parity: bool,
    /// Frontend: straggler threshold = this x median deployed latency, within
    /// [`straggler_min_us`, 5 ms].
    #[serde(default = "default_straggler_factor")]
    pub straggler_factor: f64,
    /// Frontend: the straggler threshold's floor (us; default 1000); above 5 ms also its cap.
    #[serde(default = "default_straggler_min_us")]
    pub straggler_min_us: u64,
    /// Hedged modes: backup after this percentile of recent latencies.
    #[serde(default = "default_hedge_percentile")]
    pub hedge_percentile: f64,
    /// Which machines the instance faults (delay, episodes, stall, crash) land on.
    #[serde(default)]
    pub faults_on: FaultsOn,
    /// Emulated compute on every instance (`[compute]`); absent: the models' real compute.
    #[serde(default)]
    pub compute: Option<EmulatedCompute>,
    /// Emulated hosts ([`crate::network`]): 1 (the default) runs everything on loopback; 3 or
    /// more put the load generator, the frontend and the instances on hosts of their own
    /// (`instances + extra + 2` gives every instance its own host).
    #[serde(default = "one")]
    pub hosts: usize,
    /// Every emulated host's link (`[link] delay_ms, jitter_ms, loss`); needs `hosts`.
    #[serde(default)]
    pub link: Option<crate::proxy::Link>,
    /// Numbers of frontend replicas to run each setup with (default `[1]`): the load
    /// generator sends query i to replica i mod F, as a round-robin load balancer would, and
    /// each replica forms its own coding groups. With `hosts`, each replica has a host.
    #[serde(default = "one_frontend")]
    pub frontends: Vec<usize>,
    /// Pin the benchmark process (load generator, frontends, proxies) to one CPU and the
    /// instances to the others ([`crate::cpus`]).
    #[serde(default)]
    pub pin: bool,
    /// Run the load generator as a process of its own (`parm loadgen`, [`crate::client`]) on
    /// the client's host, with `pin` on a CPU of its own, instead of on a runtime of the
    /// benchmark process that the frontend and the links' proxies share.
    #[serde(default)]
    pub client_process: bool,
}

fn one_frontend() -> Vec<usize> {
    vec![1]
}

/// Emulated compute (`parm worker --fault service_ms=M,service_cv=C`): every executed request
/// waits a lognormal service time of mean `service_ms` and coefficient of variation
/// `service_cv` while holding its instance's compute lane, instead of burning the shared CPU,
/// so that N instances on one machine behave like N machines (issue 17).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmulatedCompute {
    pub service_ms: f64,
    #[serde(default)]
    pub service_cv: f64,
}

/// Which of a setup's machines an instance fault (`instance = i`) lands on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultsOn {
    /// Deployed instance i in every trial: for parm the worst case, as its parity instances
    /// never slow down.
    #[default]
    Deployed,
    /// Any of the setup's machines with equal chance, stratified over trials: with D deployed
    /// and P = D/k parity instances, trial t puts the fault on parity instance i mod P when
    /// t mod (k+1) = k, else on deployed instance i, so every k+1 trials give each role its
    /// share D : P. Setups without parity instances are symmetric: deployed instance i. A
    /// slowed machine in a real cluster does not choose its role.
    AnyMachine,
}

fn default_hedge_percentile() -> f64 {
    95.0
}

impl Scenario {
    /// The emulated network of the scenario's runs, if it has one.
    /// `frontends`: the run's number of frontend replicas.
    pub fn network(&self, frontends: usize) -> Option<crate::network::NetworkSpec> {
        (self.hosts > 1).then(|| crate::network::NetworkSpec { hosts: self.hosts, frontends, link: self.link.unwrap_or_default() })
    }

    /// The frontend's straggler policy for this scenario.
    pub fn straggler(&self) -> parm_serve::coded::policy::StragglerPolicy {
        parm_serve::coded::policy::StragglerPolicy { lazy_parity: self.lazy_parity, factor: self.straggler_factor, ..Default::default() }
            .with_min(std::time::Duration::from_micros(self.straggler_min_us))
    }
}

fn default_straggler_min_us() -> u64 {
    parm_serve::coded::policy::StragglerPolicy::default().min.as_micros() as u64
}

fn default_straggler_factor() -> f64 {
    parm_serve::coded::policy::StragglerPolicy::default().factor
}

fn default_dataset() -> String {
    "fashion-mnist".into()
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn mixed() -> String {
    "mixed".into()
}
fn default_group_timeout_ms() -> u64 {
    5
}

/// A fault injected during every run of a scenario. Instance indices count deployed-model
/// instances from 0. Each is reproducible from the scenario's seed.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// With probability `prob`, each request on the instance takes `delay_ms` longer.
    Delay {
        instance: usize,
        delay_ms: f64,
        #[serde(default = "one_f")]
        prob: f64,
    },
    /// Slowdown episodes: every `every_s` seconds on average (exponential gaps) the instance
    /// takes `delay_ms` longer per request for `len_s` seconds.
    Episodes { instance: usize, every_s: f64, len_s: f64, delay_ms: f64 },
    /// SIGSTOP the instance `at_s` seconds into the run, SIGCONT it `duration_s` later.
    Stall { instance: usize, at_s: f64, duration_s: f64 },
    /// SIGKILL the instance `at_s` seconds into the run and restart it on the same address
    /// `restart_after_s` later.
    Crash { instance: usize, at_s: f64, restart_after_s: f64 },
    /// `threads` background threads spinning on the CPU for the whole run.
    CpuBurn { threads: usize },
    /// With probability `prob`, each output row of the instance is wrong: random logits, a
    /// permuted class, a scaled row, or any of them (`wrong_kind`: random, permute, scale,
    /// mixed; `parm worker --fault wrong=P,wrong_kind=K`).
    Wrong {
        instance: usize,
        prob: f64,
        #[serde(default = "mixed")]
        wrong_kind: String,
    },
    /// The host of the instance loses its link `at_s` seconds into the run and gets it back
    /// `duration_s` later: a network partition (needs `hosts`; every instance on that host is
    /// cut off, open connections see silence).
    Partition { instance: usize, at_s: f64, duration_s: f64 },
    /// The host of the instance has `delay_ms` more one-way delay on its link for the whole
    /// run: a slowed link (needs `hosts`).
    SlowLink { instance: usize, delay_ms: f64 },
    /// Background bulk transfers on loopback (ParM's network "shuffles"): `concurrent`
    /// transfers of `megabytes` MB each, repeated after `gap_ms`, for the whole run.
    Network { megabytes: usize, concurrent: usize, gap_ms: u64 },
}

/// A setup to compare, parsed from a mode name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `none`: N deployed instances.
    None,
    /// `equal-resources[-kK]`: N + N/K deployed instances (K = 2 by default).
    EqualResources { k: usize },
    /// `replication`: 2N deployed instances, every query to 2 of them.
    Replication,
    /// `hedged[-kK]`: N + N/K deployed instances, backup after the running p95.
    Hedged { k: usize },
    /// `parm-kK[-rR][-checked]`: N deployed + R N/K parity instances (R = 1, ParM's one parity
    /// model, by default; R >= 2: the r-parity linear code, N/K instances per parity index).
    /// `-checked`: the frontend checks outputs against the code and ejects an instance that
    /// keeps disagreeing (`parm serve --check-outputs`, its defaults).
    Parm { k: usize, r: usize, checked: bool },
    /// `cheap-backup-kK`: N deployed + N/K instances of a cheap backup model (about 1/K of F's
    /// compute per query, ParM's extra compute per query at K); every query also goes to a
    /// backup instance, whose answer stands in when the original is late (ParM §5's
    /// approximate backup models).
    CheapBackup { k: usize },
}

impl Mode {
    /// Parses `none`, `equal-resources`, `equal-resources-k3`, `replication`, `hedged`,
    /// `hedged-k4`, `parm-k2`, ...
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let k_of = |rest: &str| -> anyhow::Result<usize> {
            match rest {
                "" => Ok(2),
                r => r.strip_prefix("-k").and_then(|k| k.parse().ok()).filter(|k| *k >= 2).context("expected -kK with K >= 2"),
            }
        };
        let mode = if s == "none" {
            Mode::None
        } else if s == "replication" {
            Mode::Replication
        } else if let Some(rest) = s.strip_prefix("equal-resources") {
            Mode::EqualResources { k: k_of(rest)? }
        } else if let Some(rest) = s.strip_prefix("hedged") {
            Mode::Hedged { k: k_of(rest)? }
        } else if let Some(rest) = s.strip_prefix("cheap-backup") {
            Mode::CheapBackup { k: k_of(rest)? }
        } else if let Some(rest) = s.strip_prefix("parm") {
            let (rest, checked) = rest.strip_suffix("-checked").map_or((rest, false), |rest| (rest, true));
            let (rest, r) = match rest.rsplit_once("-r") {
                Some((rest, r)) => (rest, r.parse().ok().filter(|r| *r >= 1).context("expected -rR with R >= 1")?),
                None => (rest, 1),
            };
            Mode::Parm { k: k_of(rest)?, r, checked }
        } else {
            bail!("unknown mode '{s}' (none, equal-resources[-kK], replication, hedged[-kK], parm-kK[-rR][-checked], cheap-backup-kK)")
        };
        Ok(mode)
    }

    /// The `mode` field of result rows: none, equal-resources, replication, hedged, parm.
    pub fn family(&self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::EqualResources { .. } => "equal-resources",
            Mode::Replication => "replication",
            Mode::Hedged { .. } => "hedged",
            Mode::Parm { .. } => "parm",
            Mode::CheapBackup { .. } => "cheap-backup",
        }
    }

    /// The `code` field of result rows: `parity` for parm (learned parity models: ParM's, or r
    /// of the r-parity linear code), `parity-checked` with output checks; None otherwise.
    pub fn code(&self) -> Option<String> {
        match self {
            Mode::Parm { checked: false, .. } => Some("parity".into()),
            Mode::Parm { checked: true, .. } => Some("parity-checked".into()),
            _ => None,
        }
    }

    /// The k that sizes the setup (2 for replication: two copies; 1 for none).
    pub fn k(&self) -> usize {
        match self {
            Mode::None => 1,
            Mode::Replication => 2,
            Mode::EqualResources { k } | Mode::Hedged { k } | Mode::Parm { k, .. } | Mode::CheapBackup { k } => *k,
        }
    }

    /// (deployed, parity) instance counts for N deployed instances.
    pub fn instances(&self, n: usize) -> (usize, usize) {
        match self {
            Mode::None => (n, 0),
            Mode::Replication => (2 * n, 0),
            Mode::EqualResources { k } | Mode::Hedged { k } => (n + n / k, 0),
            Mode::Parm { k, r, .. } => (n, r * (n / k)),
            Mode::CheapBackup { k } => (n, n / k),
        }
    }

    /// Extra instances over N, as a fraction of N.
    pub fn extra_resources(&self, n: usize) -> f64 {
        let (d, p) = self.instances(n);
        (d + p - n) as f64 / n as f64
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    ///
    /// Errors: unreadable file, TOML that does not match, unknown modes, N not divisible by a
    /// mode's k, a fault naming an instance >= N, empty rates, warm-up >= queries.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        s.validate().with_context(|| format!("in {}", path.display()))?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.rates.is_empty() && self.rates.iter().all(|r| *r > 0.0 && r.is_finite()), "rates must be positive");
        anyhow::ensure!(self.queries > self.warmup, "queries must exceed warmup");
        anyhow::ensure!(self.instances >= 2 && self.trials >= 1, "need instances >= 2 and trials >= 1");
        for m in &self.modes {
            let mode = Mode::parse(m)?;
            anyhow::ensure!(self.instances.is_multiple_of(mode.k()), "mode {m}: instances ({}) must be a multiple of k", self.instances);
        }
        for f in &self.faults {
            let instance = f.instance().unwrap_or(0);
            anyhow::ensure!(instance < self.instances, "fault {f:?} names instance {instance} of {}", self.instances);
        }
        anyhow::ensure!(!self.frontends.is_empty() && !self.frontends.contains(&0), "frontends: a list of replica counts, each >= 1");
        let most = self.frontends.iter().max().copied().unwrap_or(1);
        anyhow::ensure!(
            self.hosts == 1 || self.hosts >= most + 2,
            "hosts = {}: 1 (loopback) or at least {} (client, {most} frontends, instances)",
            self.hosts,
            most + 2
        );
        let networked = self.faults.iter().any(|f| matches!(f, Fault::Partition { .. } | Fault::SlowLink { .. })) || self.link.is_some();
        anyhow::ensure!(!networked || self.hosts >= 3, "partition, slow-link faults and [link] need emulated hosts (hosts >= 3)");
        if let Some(link) = &self.link {
            link.validate().map_err(anyhow::Error::msg)?;
        }
        if self.faults_on == FaultsOn::AnyMachine {
            for m in &self.modes {
                let mode = Mode::parse(m)?;
                let (_, parity) = mode.instances(self.instances);
                anyhow::ensure!(
                    parity == 0 || self.trials.is_multiple_of(mode.k() + 1),
                    "faults_on = \"any-machine\": mode {m} needs trials a multiple of k+1 = {} (each role its share of trials), got {}",
                    mode.k() + 1,
                    self.trials
                );
            }
        }
        Ok(())
    }

    /// The faults of trial `trial` (0-based) for `mode`, instance faults addressed to
    /// machines: deployed instances 0..D, then parity instances D..D+P (see [`FaultsOn`]).
    pub fn trial_faults(&self, mode: Mode, trial: u64) -> Vec<Fault> {
        let (deployed, parity) = mode.instances(self.instances);
        let on_parity = self.faults_on == FaultsOn::AnyMachine && parity > 0 && trial % (mode.k() as u64 + 1) == mode.k() as u64;
        self.faults
            .iter()
            .map(|f| match f.instance() {
                Some(i) if on_parity => f.on(deployed + i % parity),
                _ => f.clone(),
            })
            .collect()
    }
}

impl Fault {
    /// The instance an instance fault names (None for host faults).
    pub fn instance(&self) -> Option<usize> {
        match self {
            Fault::Delay { instance, .. }
            | Fault::Episodes { instance, .. }
            | Fault::Stall { instance, .. }
            | Fault::Crash { instance, .. }
            | Fault::Partition { instance, .. }
            | Fault::SlowLink { instance, .. }
            | Fault::Wrong { instance, .. } => Some(*instance),
            Fault::CpuBurn { .. } | Fault::Network { .. } => None,
        }
    }

    /// The same fault on instance `i` (host faults unchanged).
    pub fn on(&self, i: usize) -> Fault {
        let mut f = self.clone();
        match &mut f {
            Fault::Delay { instance, .. }
            | Fault::Episodes { instance, .. }
            | Fault::Stall { instance, .. }
            | Fault::Crash { instance, .. }
            | Fault::Partition { instance, .. }
            | Fault::SlowLink { instance, .. }
            | Fault::Wrong { instance, .. } => *instance = i,
            Fault::CpuBurn { .. } | Fault::Network { .. } => {}
        }
        f
    }

    /// Faults of `faults` on instances `range`, renumbered from 0 (host faults dropped).
    pub fn within(faults: &[Fault], range: std::ops::Range<usize>) -> Vec<Fault> {
        faults.iter().filter_map(|f| f.instance().filter(|i| range.contains(i)).map(|i| f.on(i - range.start))).collect()
    }
}

/// The `parm worker --fault` string for machine `i` given a trial's machine-addressed
/// `faults` ([`Scenario::trial_faults`]) and the trial's seed (the scenario's seed + the
/// trial's index), empty if none. Its random draws (which requests are delayed, when episodes
/// start) are seeded `seed + i`: each trial sees its own episode times.
pub fn worker_fault(faults: &[Fault], i: usize, seed: u64, compute: Option<&EmulatedCompute>) -> String {
    let mut parts = Vec::new();
    if let Some(c) = compute {
        parts.push(format!("service_ms={},service_cv={}", c.service_ms, c.service_cv));
    }
    for f in faults {
        match f {
            Fault::Delay { instance, delay_ms, prob } if *instance == i => {
                parts.push(format!("delay_ms={delay_ms},prob={prob}"));
            }
            Fault::Episodes { instance, every_s, len_s, delay_ms } if *instance == i => {
                parts.push(format!("episode_every_s={every_s},episode_len_s={len_s},episode_delay_ms={delay_ms}"));
            }
            Fault::Wrong { instance, prob, wrong_kind } if *instance == i => {
                parts.push(format!("wrong={prob},wrong_kind={wrong_kind}"));
            }
            _ => {}
        }
    }
    if !parts.is_empty() {
        parts.push(format!("seed={}", seed.wrapping_add(i as u64)));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_size() {
        assert_eq!(Mode::parse("parm-k3").unwrap(), Mode::Parm { k: 3, r: 1, checked: false });
        assert_eq!(Mode::parse("parm-k4-r2").unwrap(), Mode::Parm { k: 4, r: 2, checked: false });
        assert_eq!(Mode::parse("parm-k2-r2-checked").unwrap(), Mode::Parm { k: 2, r: 2, checked: true });
        assert_eq!(Mode::parse("parm-k4-checked").unwrap(), Mode::Parm { k: 4, r: 1, checked: true });
        assert_eq!(Mode::parse("parm-k4-r2").unwrap().instances(12), (12, 6));
        assert!(Mode::parse("parm-k4-r0").is_err());
        assert_eq!(Mode::parse("cheap-backup-k2").unwrap().instances(12), (12, 6));
        assert_eq!(Mode::parse("equal-resources").unwrap(), Mode::EqualResources { k: 2 });
        assert_eq!(Mode::parse("hedged-k4").unwrap().instances(12), (15, 0));
        assert_eq!(Mode::parse("parm-k4").unwrap().instances(12), (12, 3));
        assert!((Mode::Replication.extra_resources(12) - 1.0).abs() < 1e-9);
        assert!(Mode::parse("parm-k1").is_err());
        assert!(Mode::parse("raid5").is_err());
    }

    #[test]
    fn scenario_parses_and_validates() {
        let s: Scenario = toml::from_str(
            "name='x'\nqueries=100\nwarmup=10\nrates=[50.0]\ninstances=4\nmodes=['none','parm-k2']\n\
             [[faults]]\nkind='delay'\ninstance=1\ndelay_ms=5.0\n[[faults]]\nkind='cpu-burn'\nthreads=1\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(worker_fault(&s.faults, 1, 0, None), "delay_ms=5,prob=1,seed=1");
        assert_eq!(worker_fault(&s.faults, 1, 7, None), "delay_ms=5,prob=1,seed=8", "seeded per trial");
        assert_eq!(worker_fault(&s.faults, 0, 0, None), "");
        let compute = EmulatedCompute { service_ms: 2.0, service_cv: 0.3 };
        assert_eq!(worker_fault(&s.faults, 0, 7, Some(&compute)), "service_ms=2,service_cv=0.3,seed=7");
        assert_eq!(worker_fault(&s.faults, 1, 0, Some(&compute)), "service_ms=2,service_cv=0.3,delay_ms=5,prob=1,seed=1");
        let parm = Mode::Parm { k: 2, r: 1, checked: false };
        assert_eq!(s.trial_faults(parm, 2), s.faults, "faults on deployed instances by default");
        let bad = Scenario { modes: vec!["parm-k3".into()], ..s.clone() };
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<Scenario>("name='x'\nqueries=1\nrates=[1.0]\ninstances=2\nmodes=[]\nbogus=1").is_err());
    }

    /// Emulated hosts: `hosts` and `[link]` parse into the run's network; network faults and
    /// links need hosts, and a bad link or two hosts are refused.
    #[test]
    fn network_scenarios_need_hosts() {
        let text = "name='x'\nqueries=100\nrates=[50.0]\ninstances=4\nmodes=['parm-k2']\nhosts=8\n\
                    [link]\ndelay_ms=0.2\njitter_ms=0.05\n[[faults]]\nkind='partition'\ninstance=1\nat_s=1.0\nduration_s=2.0\n";
        let s: Scenario = toml::from_str(text).unwrap();
        s.validate().unwrap();
        let net = s.network(1).unwrap();
        assert_eq!((net.hosts, net.link.delay_ms, net.link.jitter_ms), (8, 0.2, 0.05));
        assert!(Scenario { hosts: 1, ..s.clone() }.validate().is_err(), "a partition needs hosts");
        assert!(Scenario { frontends: vec![1, 7], ..s.clone() }.validate().is_err(), "7 frontends need 9 hosts");
        assert!(Scenario { frontends: vec![0], ..s.clone() }.validate().is_err());
        assert!(Scenario { hosts: 2, ..s.clone() }.validate().is_err());
        assert!(Scenario { hosts: 1, link: None, faults: vec![], ..s.clone() }.network(1).is_none());
        let lossy = Scenario { link: Some(crate::proxy::Link { loss: 1.5, ..Default::default() }), ..s.clone() };
        assert!(lossy.validate().is_err());
        let slow: Scenario = toml::from_str(
            &text.replace("kind='partition'\ninstance=1\nat_s=1.0\nduration_s=2.0", "kind='slow-link'\ninstance=0\ndelay_ms=20.0"),
        )
        .unwrap();
        assert_eq!(slow.faults, vec![Fault::SlowLink { instance: 0, delay_ms: 20.0 }]);
    }

    #[test]
    fn any_machine_gives_each_role_its_share_of_trials() {
        let slow = Fault::Delay { instance: 1, delay_ms: 5.0, prob: 1.0 };
        let base = Scenario {
            name: "x".into(),
            dataset: "fashion-mnist".into(),
            queries: 100,
            warmup: 0,
            rates: vec![1.0],
            trials: 6,
            instances: 12,
            modes: vec!["parm-k2".into(), "hedged-k2".into()],
            seed: 0,
            faults: vec![slow.clone(), Fault::CpuBurn { threads: 1 }],
            group_timeout_ms: 5,
            decode_grace_ms: None,
            lazy_parity: false,
            straggler_factor: 2.0,
            straggler_min_us: 1000,
            hedge_percentile: 95.0,
            faults_on: FaultsOn::AnyMachine,
            compute: None,
            hosts: 1,
            link: None,
            frontends: vec![1],
            pin: false,
            client_process: false,
        };
        base.validate().unwrap();
        let parm = Mode::Parm { k: 2, r: 1, checked: false };
        let machines: Vec<usize> = (0..6).map(|t| base.trial_faults(parm, t)[0].instance().unwrap()).collect();
        // 12 deployed + 6 parity machines: trials 2 and 5 slow parity instance 1 (machine 13).
        assert_eq!(machines, vec![1, 1, 13, 1, 1, 13]);
        assert_eq!(base.trial_faults(parm, 2)[1], Fault::CpuBurn { threads: 1 });
        assert_eq!(Fault::within(&base.trial_faults(parm, 2), 12..18), vec![slow.on(1)]);
        assert!(Fault::within(&base.trial_faults(parm, 2), 0..12).is_empty());
        assert_eq!(worker_fault(&base.trial_faults(parm, 2), 13, 3, None), "delay_ms=5,prob=1,seed=16");
        let hedged = Mode::Hedged { k: 2 };
        assert!((0..6).all(|t| base.trial_faults(hedged, t)[0] == slow), "no parity instances: symmetric");
        let bad = Scenario { trials: 4, ..base };
        assert!(bad.validate().is_err(), "4 trials cannot give k=2's roles their 2:1 share");
    }

    #[test]
    fn committed_scenarios_load_and_time_enough_queries_for_p99_9() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios");
        let mut files: Vec<std::path::PathBuf> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
        files.sort();
        assert!(files.len() >= 9, "{} scenario files in {}", files.len(), dir.display());
        for f in files {
            let s = Scenario::load(&f).unwrap();
            assert!(s.queries - s.warmup >= MIN_TIMED_QUERIES, "{}: {} timed queries per trial", f.display(), s.queries - s.warmup);
            assert!(s.warmup > 0, "{}: warm-up kept", f.display());
        }
    }
}
