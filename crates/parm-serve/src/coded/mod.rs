//! ParM's coded path, in the order a query travels:
//!
//! 1. [`Frontend::predict`] (one query) or [`Frontend::predict_block`] (a request's batch as one
//!    block of rows): the unit joins the open coding group ([`group::Member::join`]);
//! 2. its own deployed-model call runs in the caller's task ([`group::Member::run`], through
//!    [`crate::upstream::pool::Pool::infer`]);
//! 3. the group is sealed when it has k members or its seal time passes
//!    ([`policy::seal_after`]); with ParM's eager parity (or, lazily, once a member straggles,
//!    [`policy::parity_due_after`]) its redundant queries go: padded, encoded row by row, sent
//!    to their instances ([`group`]'s `run_parity`);
//! 4. each output is fed to the group's decoding state ([`parm_codes::GroupState`]): a member
//!    is answered with its own prediction, or with its reconstruction once, with e
//!    predictions not in, e redundant outputs are (ParM: the parity output and the other k-1
//!    predictions), held back for the decode grace ([`policy::decode_grace`]);
//! 5. the answer goes back; a member no one can answer gets an error naming its instance's
//!    failure. Every accepted query gets exactly one answer.
//!
//! Source: ParM (Kosaian et al., SOSP 2019) §4: queries are sent to their instances at once;
//! when k queries have arrived the encoder builds the parity query; the decoder runs eagerly
//! as soon as the parity output and k-1 of the k predictions are in, and the queued original
//! is cancelled. parm adds: a partly filled group is sealed after its seal time and still gets
//! a parity query, padded with all-zero queries whose output F(0) the decoder subtracts (so
//! that low load does not leave queries waiting for group-mates); a failed RPC is retried once
//! on the next instance; a request's batch can be coded as one member (one deployed request
//! per batch, one parity request per k batches); the group timeout adapts to the deployed
//! instances' latency and the parity query may wait for a straggler ([`policy`]).
//!
//! The code is a choice of encoders, decoder and the model that serves the redundant
//! queries ([`Code`]), on this one path: ParM's one parity model; r parity models of the
//! r-parity linear code (any r unavailable predictions of a group decoded); or the
//! training-free systematic Berrut code (S blended queries run by the deployed model).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parm_codes::{BerrutCode, Encoder, GroupCode, LinearCode};

use crate::oip::ModelSpec;
use crate::upstream::client::InstanceClient;
use crate::upstream::pool::Pool;
use crate::upstream::redundancy::Redundancy;
use crate::upstream::{Instance, InstanceError};

pub mod check;
pub mod config;
mod group;
pub mod policy;
mod stats;

pub use check::{CheckVerdict, OutputChecks};
pub use config::{Code, ConfigError, FrontendConfig, ParityInstances};
pub use stats::Stats;

use group::{Group, Member};

/// One answered unit (a query, or a block of rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The deployed model's output, `[rows, output_len]` row-major (`[output_len]` for one
    /// query).
    pub output: Vec<f32>,
    /// True if the output was reconstructed by the decoder rather than computed by F.
    pub reconstructed: bool,
    /// Id of the coding group and the unit's position in it.
    pub group: u64,
    pub position: usize,
    /// How long the answer was up to the instances: from the unit's deployed-model call going
    /// out to its output (or the reconstruction that replaced it) coming in. The gRPC client's
    /// encoding and decoding are inside; the frontend's own work before and after is not.
    pub waited: Duration,
}

/// Why a query got no prediction.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FrontendError {
    /// The input does not fit the model (wrong length).
    #[error("{0}")]
    InvalidArgument(String),
    /// Uncoded: the deployed instance failed (every retry or copy included).
    #[error("prediction unavailable: {0}")]
    Instance(#[source] InstanceError),
    /// Coded: the deployed instance failed and the coding group could not reconstruct the
    /// prediction (its parity or another member failed too).
    #[error("prediction unavailable: {0}; the coding group could not reconstruct it")]
    NotReconstructed(#[source] InstanceError),
    /// The frontend is shutting down.
    #[error("prediction unavailable: the frontend is shutting down")]
    Closed,
}

/// One redundant query of every coding group: how it is built, and which pool of
/// [`Shared::parity`] runs it.
pub(crate) struct Redundant {
    encoder: Arc<dyn Encoder>,
    pool: usize,
}

/// What the coded path's tasks share.
pub(crate) struct Shared {
    cfg: FrontendConfig,
    deployed: Pool,
    /// The pools of redundant instances ([`FrontendConfig::parity_sets`]); empty: uncoded.
    parity: Vec<Pool>,
    /// The redundant queries of a group, in [`parm_codes::Slot::Parity`] order.
    redundant: Vec<Redundant>,
    /// How a group's redundant outputs are decoded.
    code: GroupCode,
    /// Output checks, when on.
    checker: Option<check::Checker>,
    stats: Stats,
    next_group: AtomicU64,
    /// F(0), the deployed model's output for one all-zero row, fetched once when first needed.
    zero_output: tokio::sync::OnceCell<Option<Vec<f32>>>,
    /// The coding group now taking members, and how many it has.
    open: Mutex<Option<(Arc<Group>, usize)>>,
    /// Where parity tasks are spawned (also from `Drop`, outside any task).
    runtime: tokio::runtime::Handle,
    /// With instance discovery: how many pools are watched, and how many of them finished
    /// their first round.
    discovered: std::sync::OnceLock<(usize, tokio::sync::watch::Receiver<usize>)>,
}

impl Shared {
    /// F(0), asked of every deployed instance at once the first time (a stalled instance must
    /// not hold up every padded group).
    async fn zero_output(&self) -> Option<Vec<f32>> {
        self.zero_output
            .get_or_init(|| async {
                let n = self.cfg.spec.input_len();
                let out = self.deployed.infer_first(&vec![0.0; n].into(), &self.shape(1), self.cfg.instance_timeout).await;
                out.map_err(|e| tracing::warn!("could not compute F(0) ({e}); padded coding groups go unprotected")).ok()
            })
            .await
            .clone()
    }

    /// The OIP shape of a block of `rows` queries.
    fn shape(&self, rows: usize) -> [i64; 2] {
        [rows as i64, self.cfg.spec.input_len() as i64]
    }
}

/// Handle to a running frontend; cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    shared: Arc<Shared>,
}

impl Frontend {
    /// Sets up the instance pools over gRPC (connections open lazily). Instance entries that
    /// are DNS names or files ([`crate::upstream::discovery`]) start empty and are resolved by
    /// a background task every `discovery_interval` (first at once; [`Self::warm_up`] waits
    /// for that). Must be called inside a tokio runtime.
    ///
    /// Errors: a setting [`FrontendConfig::validate`] refuses, or an unparsable address.
    pub fn start(cfg: FrontendConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let fixed = |entries: &[String]| -> anyhow::Result<Vec<Arc<dyn Instance>>> {
            let sources = crate::upstream::discovery::sources(entries)?;
            let addrs = sources.iter().filter_map(|s| match s {
                crate::upstream::discovery::Source::Addr(a) => Some(a),
                _ => None,
            });
            addrs.map(|a| instance_for(a, &cfg)).collect()
        };
        let deployed = fixed(&cfg.deployed)?;
        let parity = cfg.parity_sets().iter().map(|p| fixed(&p.instances)).collect::<anyhow::Result<_>>()?;
        let frontend = Self::build(cfg, deployed, parity)?;
        frontend.watch_instances()?;
        Ok(frontend)
    }

    /// [`Self::start`] over given instances (scripted ones in tests); the addresses in `cfg`
    /// are not used.
    ///
    /// Errors: a setting [`FrontendConfig::validate`] refuses (no deployed instances, k = 0,
    /// bad straggler policy or dispatch batching), or no tokio runtime.
    pub fn with_instances(cfg: FrontendConfig, deployed: Vec<Arc<dyn Instance>>, parity: Vec<Arc<dyn Instance>>) -> anyhow::Result<Self> {
        let parity = if parity.is_empty() { Vec::new() } else { vec![parity] };
        Self::with_parity_instances(cfg, deployed, parity)
    }

    /// [`Self::with_instances`] with one list of instances per pool of
    /// [`FrontendConfig::parity_sets`] (parity 0, then parities 1..r-1; or the Berrut code's
    /// extra instances); the addresses in `cfg` are not used.
    ///
    /// Errors: those of [`Self::with_instances`], and a number of lists that does not match
    /// the code.
    pub fn with_parity_instances(
        cfg: FrontendConfig,
        deployed: Vec<Arc<dyn Instance>>,
        parity: Vec<Vec<Arc<dyn Instance>>>,
    ) -> anyhow::Result<Self> {
        let cfg = with_addresses(cfg, &deployed, &parity)?;
        Self::build(cfg, deployed, parity)
    }

    /// The frontend over `deployed` and one list of instances per pool of
    /// [`FrontendConfig::parity_sets`].
    fn build(cfg: FrontendConfig, deployed: Vec<Arc<dyn Instance>>, parity: Vec<Vec<Arc<dyn Instance>>>) -> anyhow::Result<Self> {
        cfg.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| anyhow::anyhow!("Frontend::start needs a tokio runtime"))?;
        let stats = Stats::default();
        let (dispatch, timeout) = (cfg.dispatch, cfg.instance_timeout);
        let deployed = Pool::new(deployed, &cfg.deployed_model, cfg.redundancy.clone(), dispatch, timeout, stats.backups.clone());
        let models = cfg.parity_sets().into_iter().map(|p| p.model);
        let parity: Vec<Pool> = parity
            .into_iter()
            .zip(models)
            .map(|(p, m)| Pool::new(p, &m, Redundancy::None, dispatch, timeout, Default::default()))
            .collect();
        let (redundant, code) = if parity.is_empty() { (Vec::new(), GroupCode::Parity) } else { redundant_queries(&cfg)? };
        let checker = cfg.checks.clone().map(check::Checker::new);
        let shared = Arc::new(Shared {
            cfg,
            deployed,
            parity,
            redundant,
            code,
            checker,
            stats,
            next_group: AtomicU64::new(0),
            zero_output: Default::default(),
            open: Mutex::new(None),
            runtime,
            discovered: Default::default(),
        });
        Ok(Self { shared })
    }

    /// The pools with their instance entries: deployed, then [`FrontendConfig::parity_sets`].
    fn pools_with_entries(&self) -> impl Iterator<Item = (&Pool, Vec<String>)> {
        let s = &self.shared;
        let entries = std::iter::once(s.cfg.deployed.clone()).chain(s.cfg.parity_sets().into_iter().map(|p| p.instances));
        std::iter::once(&s.deployed).chain(&s.parity).zip(entries)
    }

    /// For every pool whose entries name DNS names or files, a task that re-resolves them
    /// every `discovery_interval` (first at once) and updates the pool; it ends with the
    /// frontend. [`Self::warm_up`] waits for the first round.
    fn watch_instances(&self) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        let mut watched = 0;
        for (index, (_, entries)) in self.pools_with_entries().enumerate() {
            let resolver = crate::upstream::discovery::Resolver::new(crate::upstream::discovery::sources(&entries)?);
            if resolver.is_dynamic() {
                watched += 1;
                let round = tx.clone();
                tokio::spawn(watch_pool(Arc::downgrade(&self.shared), index, resolver, round));
            }
        }
        let _ = self.shared.discovered.set((watched, rx));
        Ok(())
    }

    /// Opens the connections to every instance, looks up their metadata and computes F(0), so
    /// that the first queries do not pay for it (and lose the race to their reconstruction).
    /// Failures are only logged: instances that are down are retried per query.
    pub async fn warm_up(&self) {
        if let Some((watched, rx)) = self.shared.discovered.get() {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|done| done >= watched).await;
        }
        let timeout = Duration::from_secs(2);
        let pools = std::iter::once(&self.shared.deployed).chain(&self.shared.parity);
        let all: Vec<(Arc<dyn Instance>, &str)> = pools.flat_map(|p| p.instances().into_iter().map(move |i| (i, p.model()))).collect();
        let calls = all.iter().map(|(i, model)| i.connect(model, timeout));
        for result in futures::future::join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!("warm-up: {e}");
            }
        }
        if self.is_coded() {
            self.shared.zero_output().await;
        }
    }

    /// The model clients see.
    pub fn spec(&self) -> &ModelSpec {
        &self.shared.cfg.spec
    }

    /// How the frontend was wired (instances, k, timeouts).
    pub fn config(&self) -> &FrontendConfig {
        &self.shared.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// True if the frontend runs with parity instances (of any code).
    pub fn is_coded(&self) -> bool {
        !self.shared.redundant.is_empty()
    }

    /// Every instance now, as `(role, address, model)`: role `"deployed"` or `"parity"` (which
    /// includes the Berrut code's extra instances).
    pub fn instances(&self) -> Vec<(&'static str, String, String)> {
        let s = &self.shared;
        let pools = std::iter::once(("deployed", &s.deployed)).chain(s.parity.iter().map(|p| ("parity", p)));
        pools.flat_map(|(role, p)| p.instances().into_iter().map(move |i| (role, i.addr().to_string(), p.model().to_string()))).collect()
    }

    /// [`Self::instances`] while the frontend runs, `None` once it is dropped: for watchers
    /// that must not keep it alive.
    pub fn instances_while_running(&self) -> impl Fn() -> Option<Vec<(&'static str, String, String)>> + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.shared);
        move || weak.upgrade().map(|shared| Frontend { shared }.instances())
    }

    /// True if some of the frontend's instances come from DNS names or files (see
    /// [`crate::upstream::discovery`]).
    pub fn is_discovering(&self) -> bool {
        self.shared.discovered.get().is_some_and(|(watched, _)| *watched > 0)
    }

    /// The verdict on every checked coding group from now on, when output checks are on
    /// ([`FrontendConfig::checks`]); `None` otherwise. A receiver that falls more than 4,096
    /// verdicts behind loses the oldest.
    pub fn subscribe_checks(&self) -> Option<tokio::sync::broadcast::Receiver<CheckVerdict>> {
        self.shared.checker.as_ref().map(check::Checker::subscribe)
    }

    /// The deployed instances out of rotation now because their outputs disagreed with the
    /// code ([`check`]).
    pub fn ejected(&self) -> Vec<String> {
        self.shared.deployed.ejected()
    }

    /// True if at least one deployed-model instance that is not ejected reports its model
    /// ready.
    pub async fn ready(&self) -> bool {
        let pool = &self.shared.deployed;
        for i in pool.instances().into_iter().filter(|i| !pool.is_ejected(i.addr())) {
            if i.model_ready(pool.model(), Duration::from_millis(500)).await {
                return true;
            }
        }
        false
    }

    /// Predicts one query, `input` of `spec().input_len()` values; returns `[output_len]`.
    ///
    /// The query's instance RPC runs in the caller's task (no hand-off to other tasks on the
    /// common path); dropping the returned future (deadline, disconnect) cancels it, which
    /// takes it out of the instance's queue, and counts the query as lost for its coding group.
    ///
    /// Errors: [`FrontendError::InvalidArgument`] for a wrong input length; otherwise the
    /// instance's failure when neither it nor the decoder delivered.
    pub async fn predict(&self, input: Vec<f32>) -> Result<Prediction, FrontendError> {
        self.predict_block(input, 1).await
    }

    /// Predicts a block of `rows` queries, `input` of `rows * spec().input_len()` values
    /// row-major, coded as one member of a coding group; returns `[rows, output_len]`. The
    /// block goes to one deployed instance as one request and shares its group's parity
    /// request (row i of the parity query encodes row i of every member). Cancellation and
    /// errors as [`Self::predict`]; a reconstruction covers every row of the block.
    pub async fn predict_block(&self, input: Vec<f32>, rows: usize) -> Result<Prediction, FrontendError> {
        let want = self.spec().input_len();
        if rows == 0 || input.len() != rows * want {
            return Err(FrontendError::InvalidArgument(format!("expected {rows} x {want} input values, got {}", input.len())));
        }
        let s = &self.shared;
        s.stats.queries.fetch_add(1, Ordering::Relaxed);
        s.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let input: Arc<[f32]> = input.into();
        let result = if self.is_coded() {
            let (member, answer) = Member::join(s, input.clone(), rows);
            member.run(&input, answer).await
        } else {
            self.predict_uncoded(&input, rows).await
        };
        let counters: &[&AtomicU64] = match &result {
            Ok(p) if p.reconstructed => &[&s.stats.answered, &s.stats.reconstructed],
            Ok(_) => &[&s.stats.answered],
            Err(_) => &[&s.stats.unavailable],
        };
        for c in counters {
            c.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// No parity instances: every unit is a coding group of its own, without protection.
    async fn predict_uncoded(&self, input: &Arc<[f32]>, rows: usize) -> Result<Prediction, FrontendError> {
        let s = &self.shared;
        let group = s.next_group.fetch_add(1, Ordering::Relaxed);
        s.stats.unprotected_groups.fetch_add(1, Ordering::Relaxed);
        let sent_at = tokio::time::Instant::now();
        let output = s.deployed.infer(input, &s.shape(rows), s.cfg.instance_timeout).await.map_err(FrontendError::Instance)?;
        Ok(Prediction { output, reconstructed: false, group, position: 0, waited: sent_at.elapsed() })
    }
}

/// The gRPC client of the instance at `addr` (connected lazily), reached with `options`.
/// The instance an entry names: its in-process instance (`inproc:PATH`, from
/// [`FrontendConfig::inproc`]), else a gRPC client of `addr` (connecting lazily).
///
/// Errors: an `inproc:` entry with no instance in `cfg.inproc`, or an unparsable address.
fn instance_for(addr: &str, cfg: &FrontendConfig) -> anyhow::Result<Arc<dyn Instance>> {
    if crate::instance::local::is_inproc(addr) {
        let local = cfg.inproc.get(addr.trim()).cloned();
        return local.ok_or_else(|| anyhow::anyhow!("instance '{addr}': no in-process instance was loaded for it"));
    }
    Ok(Arc::new(InstanceClient::connect(addr, &cfg.upstream)?))
}

/// Keeps pool `index` (see [`Frontend::pools_with_entries`]) of a frontend at what `resolver`
/// finds, every `discovery_interval`, until the frontend is dropped; counts its first round on
/// `round`.
async fn watch_pool(
    shared: std::sync::Weak<Shared>,
    index: usize,
    mut resolver: crate::upstream::discovery::Resolver,
    round: tokio::sync::watch::Sender<usize>,
) {
    let mut first = true;
    loop {
        let addrs = resolver.refresh().await;
        let Some(s) = shared.upgrade() else { return };
        let pool = if index == 0 { &s.deployed } else { &s.parity[index - 1] };
        let (current, mut instances) = (pool.instances(), Vec::new());
        for a in &addrs {
            let addr = crate::upstream::client::split_host(a).0;
            match current.iter().find(|i| i.addr() == addr).cloned().map(Ok).unwrap_or_else(|| instance_for(a, &s.cfg)) {
                Ok(i) => instances.push(i),
                Err(e) => tracing::warn!("instance discovery: {e:#}"),
            }
        }
        let (added, removed) = pool.update(instances);
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(model = pool.model(), ?added, ?removed, "instance discovery: instances changed");
        }
        if first {
            round.send_modify(|n| *n += 1);
            first = false;
        }
        let every = s.cfg.discovery_interval;
        drop(s);
        tokio::time::sleep(every).await;
    }
}

/// `cfg` with the addresses of the instances given: deployed, parity 0 (or the Berrut code's
/// extra instances), then parities 1..r-1.
///
/// Errors: with r >= 2 parities, a number of lists other than r.
fn with_addresses(
    cfg: FrontendConfig,
    deployed: &[Arc<dyn Instance>],
    parity: &[Vec<Arc<dyn Instance>>],
) -> anyhow::Result<FrontendConfig> {
    let addrs = |v: &[Arc<dyn Instance>]| v.iter().map(|i| i.addr().to_string()).collect::<Vec<String>>();
    let mut cfg = FrontendConfig { deployed: addrs(deployed), parity: parity.first().map_or_else(Vec::new, |p| addrs(p)), ..cfg };
    if let Code::Parities { further } = &mut cfg.code {
        let r = further.len() + 1;
        anyhow::ensure!(parity.len() == r, "{r} parities, {} lists of parity instances", parity.len());
        for (f, p) in further.iter_mut().zip(&parity[1..]) {
            f.instances = addrs(p);
        }
    }
    Ok(cfg)
}

/// The redundant queries of a coding group under `cfg.code`, each with its encoder and pool,
/// and how their outputs are decoded: ParM's one parity query by `cfg.encoder`; parity l of
/// the r-parity linear code on pool l; the Berrut code's S blended queries, all on pool 0.
///
/// Errors: a code that cannot be built for k (k or S zero).
fn redundant_queries(cfg: &FrontendConfig) -> anyhow::Result<(Vec<Redundant>, GroupCode)> {
    let k = cfg.encoder.k();
    Ok(match &cfg.code {
        Code::Parity => (vec![Redundant { encoder: cfg.encoder.clone(), pool: 0 }], GroupCode::Parity),
        Code::Parities { further } => {
            let code = LinearCode::vandermonde(k, further.len() + 1)?;
            let redundant = (0..code.r()).map(|l| Redundant { encoder: Arc::new(code.encoder(l)), pool: l }).collect();
            (redundant, GroupCode::Linear(code))
        }
        Code::Berrut { s } => {
            let code = BerrutCode::new(k, *s)?;
            let redundant = (0..*s).map(|t| Redundant { encoder: Arc::new(code.encoder(t)), pool: 0 }).collect();
            (redundant, GroupCode::Berrut(code))
        }
    })
}
