//! The frontend's coded path: group queries into coding groups, dispatch each query to a
//! deployed-model instance and the parity query to a parity-model instance, and answer each
//! query as soon as its prediction is available or reconstructable.
//!
//! Source: ParM (Kosaian et al., SOSP 2019) §4: queries are sent to their instances at once;
//! when k queries have arrived the encoder builds the parity query; the decoder runs eagerly
//! as soon as the parity output and k-1 of the k predictions are in, and the queued original
//! is cancelled. parm adds: a partly filled group is closed after `group_timeout` and still
//! gets a parity query, padded with all-zero queries whose output F(0) the decoder subtracts
//! (so that low load does not leave queries waiting for group-mates), a failed RPC is retried
//! once on the next instance, and a query that can be neither predicted nor reconstructed gets an explicit
//! error, so every accepted query gets exactly one answer. The group timeout adapts to the
//! deployed instances' latency and the parity query may wait for a straggler: see
//! [`crate::straggler`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parm_codes::{Answer, Encoder, GroupState, Slot};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::backend::ModelSpec;
use crate::client::{InstanceClient, InstanceError};
use crate::dispatch::{Coalescer, DispatchBatching};
use crate::redundancy::{timed, LatencyWindow, Redundancy};
use crate::straggler::{StragglerPolicy, MEDIAN};
use crate::timer;

/// How the frontend is wired.
#[derive(Clone)]
pub struct FrontendConfig {
    /// What clients see: name, input and output shapes.
    pub spec: ModelSpec,
    /// Deployed-model instances and the model name they serve.
    pub deployed: Vec<String>,
    pub deployed_model: String,
    /// Parity-model instances (empty: no redundancy) and the model name they serve.
    pub parity: Vec<String>,
    pub parity_model: String,
    /// Builds the parity query of a coding group; its `k()` is the group size.
    pub encoder: Arc<dyn Encoder>,
    /// A partly filled coding group is sealed (and padded) after at most this long (ms scale);
    /// sooner when the straggler threshold is shorter.
    pub group_timeout: Duration,
    /// Straggler threshold and when parity queries are sent (default: ParM's eager dispatch
    /// with an adaptive group timeout).
    pub straggler: StragglerPolicy,
    /// Longest wait for one instance RPC before it counts as failed.
    pub instance_timeout: Duration,
    /// A reconstruction is released no earlier than this long after its original was sent,
    /// so a healthy original that is about to arrive wins (zero: ParM's pure eager decoding).
    /// At most the straggler threshold: a query judged a straggler does not wait longer for
    /// its original.
    pub decode_grace: Duration,
    /// How queries are sent to deployed instances (replication and hedging are baselines;
    /// use them without parity instances).
    pub redundancy: Redundancy,
    /// Batching of queries to each instance (default: none, one request per query).
    pub dispatch: DispatchBatching,
}

/// One answered query.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The deployed model's output for the query, `[output_len]`.
    pub output: Vec<f32>,
    /// True if the output was reconstructed by the decoder rather than computed by F.
    pub reconstructed: bool,
    /// Id of the coding group and the query's position in it.
    pub group: u64,
    pub position: usize,
}

/// Why a query got no prediction.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FrontendError {
    #[error("prediction unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
}

/// Counters of the coded path (monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub answered: AtomicU64,
    pub reconstructed: AtomicU64,
    pub unavailable: AtomicU64,
    pub parity_queries: AtomicU64,
    /// Extra copies sent by replication and hedging (backup requests).
    pub backups: AtomicU64,
    /// Groups sealed after all their members were answered, so no parity query was sent.
    pub parity_skipped: AtomicU64,
    /// Partly filled groups closed on the group timeout and padded with zero queries.
    pub padded_groups: AtomicU64,
    /// Groups closed without any parity query (no parity instances, or F(0) unknown).
    pub unprotected_groups: AtomicU64,
}

/// Instances of one kind and a round-robin cursor over them.
struct Pool {
    clients: Vec<InstanceClient>,
    /// With dispatch batching: one dispatcher per client, same order.
    coalescers: Option<Vec<Coalescer>>,
    model: String,
    next: AtomicUsize,
    redundancy: Redundancy,
    /// Recent latencies for the hedging delay (its percentile).
    latencies: LatencyWindow,
    /// Recent latencies for the straggler threshold (their median).
    medians: LatencyWindow,
}

impl Pool {
    fn new(addrs: &[String], model: &str, redundancy: Redundancy, dispatch: DispatchBatching, timeout: Duration) -> anyhow::Result<Self> {
        let clients: Vec<InstanceClient> = addrs.iter().map(|a| InstanceClient::connect_lazy(a)).collect::<Result<_, _>>()?;
        let coalescers = dispatch.enabled().then(|| {
            clients.iter().map(|c| Coalescer::start(c.clone(), model.to_string(), dispatch, timeout)).collect()
        });
        Ok(Self {
            clients,
            coalescers,
            model: model.to_string(),
            next: AtomicUsize::new(0),
            redundancy,
            latencies: Default::default(),
            medians: Default::default(),
        })
    }

    /// Runs one query as the pool's [`Redundancy`] says; `None` if every attempt failed.
    async fn infer(&self, input: &Arc<[f32]>, shape: &[i64], timeout: Duration, stats: &Stats) -> Option<Vec<f32>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.redundancy {
            Redundancy::None => {
                let (out, took) = timed(self.infer_with_retry(first, input, shape, timeout)).await;
                if out.is_some() {
                    self.medians.record(took, MEDIAN);
                }
                out
            }
            Redundancy::Replication { copies } => {
                let n = (*copies).clamp(1, self.clients.len());
                stats.backups.fetch_add(n as u64 - 1, Ordering::Relaxed);
                let calls = (0..n).map(|i| Box::pin(self.call(first + i, input, shape, timeout)));
                futures::future::select_ok(calls).await.ok().map(|(out, _)| out)
            }
            Redundancy::Hedged { percentile, min_delay, max_delay } => {
                let delay = self.latencies.hedge_delay(*min_delay, *max_delay);
                let (out, took) = timed(self.hedged(first, input, shape, timeout, delay, stats)).await;
                if out.is_some() {
                    self.latencies.record(took, *percentile);
                }
                out
            }
        }
    }

    /// Runs on instance `index` (mod n), or, if it is out of rotation (see
    /// [`crate::health::Breaker`]), on the next one in rotation (the original if none is).
    async fn call(&self, index: usize, input: &Arc<[f32]>, shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let n = self.clients.len();
        let i = (0..n).map(|j| (index + j) % n).find(|&i| self.clients[i].usable()).unwrap_or(index % n);
        match &self.coalescers {
            Some(c) => c[i].infer(input.clone(), timeout).await,
            None => self.clients[i].infer(&self.model, input, shape, timeout).await,
        }
    }

    /// One instance; on a connection failure, once more on the next one.
    async fn infer_with_retry(&self, first: usize, input: &Arc<[f32]>, shape: &[i64], timeout: Duration) -> Option<Vec<f32>> {
        for attempt in 0..self.clients.len().min(2) {
            match self.call(first + attempt, input, shape, timeout).await {
                Ok(out) => return Some(out),
                Err(e) if e.is_retryable() => tracing::debug!("retrying after: {e}"),
                Err(e) => {
                    tracing::debug!("instance failed: {e}");
                    return None;
                }
            }
        }
        None
    }

    /// The primary; after `delay` without an answer (or at once if it failed), a backup on the
    /// next instance; the first answer wins.
    async fn hedged(
        &self,
        first: usize,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        delay: Duration,
        stats: &Stats,
    ) -> Option<Vec<f32>> {
        let primary = self.call(first, input, shape, timeout);
        tokio::pin!(primary);
        let primary_failed = tokio::select! {
            r = &mut primary => match r {
                Ok(out) => return Some(out),
                Err(_) => true,
            },
            _ = timer::sleep(delay) => false,
        };
        if self.clients.len() < 2 {
            return if primary_failed { None } else { primary.await.ok() };
        }
        stats.backups.fetch_add(1, Ordering::Relaxed);
        let backup = self.call(first + 1, input, shape, timeout);
        if primary_failed {
            return backup.await.ok();
        }
        futures::future::select_ok([Box::pin(primary) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>, Box::pin(backup)])
            .await
            .ok()
            .map(|(out, _)| out)
    }
}

struct Shared {
    cfg: FrontendConfig,
    deployed: Pool,
    parity: Option<Pool>,
    stats: Stats,
    next_group: AtomicU64,
    /// F(0), the deployed model's output for an all-zero query, fetched once when first needed.
    zero_output: tokio::sync::OnceCell<Option<Vec<f32>>>,
    /// The coding group now taking members, and how many it has.
    open: Mutex<Option<(Arc<Group>, usize)>>,
    /// Where parity tasks are spawned (also from `Drop`, outside any task).
    runtime: tokio::runtime::Handle,
}

impl Shared {
    async fn zero_output(&self) -> Option<Vec<f32>> {
        self.zero_output
            .get_or_init(|| async {
                let n = self.cfg.spec.input_len();
                let out = self.deployed.infer(&vec![0.0; n].into(), &[1, n as i64], self.cfg.instance_timeout, &self.stats).await;
                if out.is_none() {
                    tracing::warn!("could not compute F(0); partly filled coding groups go unprotected");
                }
                out
            })
            .await
            .clone()
    }

    fn shape(&self) -> [i64; 2] {
        [1, self.cfg.spec.input_len() as i64]
    }
}

/// Handle to a running frontend; cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    shared: Arc<Shared>,
}

impl Frontend {
    /// Sets up the instance pools (connections open lazily). Must be called inside a tokio
    /// runtime.
    ///
    /// Errors: no deployed instances, an unparsable address, or k = 0.
    pub fn start(cfg: FrontendConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(!cfg.deployed.is_empty(), "at least one deployed-model instance is needed");
        anyhow::ensure!(cfg.encoder.k() >= 1, "k must be at least 1");
        cfg.straggler.validate().map_err(anyhow::Error::msg)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| anyhow::anyhow!("Frontend::start needs a tokio runtime"))?;
        cfg.dispatch.validate().map_err(anyhow::Error::msg)?;
        let (dispatch, timeout) = (cfg.dispatch, cfg.instance_timeout);
        let deployed = Pool::new(&cfg.deployed, &cfg.deployed_model, cfg.redundancy.clone(), dispatch, timeout)?;
        let parity = match cfg.parity.is_empty() {
            true => None,
            false => Some(Pool::new(&cfg.parity, &cfg.parity_model, Redundancy::None, dispatch, timeout)?),
        };
        let shared = Arc::new(Shared {
            cfg,
            deployed,
            parity,
            stats: Stats::default(),
            next_group: AtomicU64::new(0),
            zero_output: Default::default(),
            open: Mutex::new(None),
            runtime,
        });
        Ok(Self { shared })
    }

    /// Opens the connections to every instance, looks up their metadata and computes F(0), so
    /// that the first queries do not pay for it (and lose the race to their reconstruction).
    /// Failures are only logged: instances that are down are retried per query.
    pub async fn warm_up(&self) {
        let timeout = Duration::from_secs(2);
        let pools = std::iter::once(&self.shared.deployed).chain(self.shared.parity.as_ref());
        let calls = pools.flat_map(|p| p.clients.iter().map(move |c| c.model_metadata(&p.model, timeout)));
        for result in futures::future::join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!("warm-up: {e}");
            }
        }
        if self.shared.parity.is_some() {
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

    /// True if the frontend runs with parity instances.
    pub fn is_coded(&self) -> bool {
        self.shared.parity.is_some()
    }

    /// True if at least one deployed-model instance reports its model ready.
    pub async fn ready(&self) -> bool {
        let pool = &self.shared.deployed;
        for c in &pool.clients {
            if c.model_ready(&pool.model, Duration::from_millis(500)).await {
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
    /// Errors: [`FrontendError::InvalidArgument`] for a wrong input length,
    /// [`FrontendError::Unavailable`] when neither the instance nor the decoder delivered.
    pub async fn predict(&self, input: Vec<f32>) -> Result<Prediction, FrontendError> {
        let want = self.spec().input_len();
        if input.len() != want {
            return Err(FrontendError::InvalidArgument(format!("expected {want} input values, got {}", input.len())));
        }
        let shared = &self.shared;
        shared.stats.queries.fetch_add(1, Ordering::Relaxed);
        let input: Arc<[f32]> = input.into();
        let result = if shared.parity.is_some() { self.predict_coded(input).await } else { self.predict_plain(&input).await };
        match &result {
            Ok(p) => {
                shared.stats.answered.fetch_add(1, Ordering::Relaxed);
                if p.reconstructed {
                    shared.stats.reconstructed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                shared.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// No parity instances: every query is a coding group of its own, without protection.
    async fn predict_plain(&self, input: &Arc<[f32]>) -> Result<Prediction, FrontendError> {
        let s = &self.shared;
        let group = s.next_group.fetch_add(1, Ordering::Relaxed);
        s.stats.unprotected_groups.fetch_add(1, Ordering::Relaxed);
        match s.deployed.infer(input, &s.shape(), s.cfg.instance_timeout, &s.stats).await {
            Some(output) => Ok(Prediction { output, reconstructed: false, group, position: 0 }),
            None => Err(unavailable()),
        }
    }

    async fn predict_coded(&self, input: Arc<[f32]>) -> Result<Prediction, FrontendError> {
        let (member, answer) = Member::join(&self.shared, input.clone());
        member.run(&input, answer).await
    }
}

fn unavailable() -> FrontendError {
    FrontendError::Unavailable("model instance failed and the coding group cannot reconstruct the prediction".into())
}

/// One coding group, shared by its members' tasks (each runs its own query's RPC) and its
/// parity task.
struct Group {
    id: u64,
    k: usize,
    /// The straggler threshold when the group was opened (see [`crate::straggler`]).
    threshold: Duration,
    /// The group takes members until this instant (the group timeout, or the threshold if
    /// shorter: its first member may be a straggler); then it is sealed, padded if partly filled.
    seal_at: Instant,
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    state: GroupState,
    inputs: Vec<Arc<[f32]>>,
    /// Where a member's answer goes when another task settles it (a reconstruction, or
    /// unavailable); taken when sent.
    notify: Vec<Option<oneshot::Sender<Answer>>>,
    sealed: bool,
    /// Lazy parity: the parity query is wanted (a straggler or a failure) but the group is not
    /// sealed yet.
    parity_wanted: bool,
    /// The parity task, once started.
    parity: Option<AbortHandle>,
}

impl Group {
    fn open(shared: &Shared, k: usize) -> Arc<Self> {
        // Read once per group: it sets how long the group stays open for members and, with
        // lazy parity, when its parity query goes.
        let threshold = shared.cfg.straggler.threshold(&shared.deployed.medians);
        Arc::new(Group {
            id: shared.next_group.fetch_add(1, Ordering::Relaxed),
            k,
            threshold,
            seal_at: Instant::now() + shared.cfg.group_timeout.min(threshold),
            inner: Mutex::new(GroupInner {
                state: GroupState::new(k, true),
                inputs: Vec::with_capacity(k),
                notify: Vec::with_capacity(k),
                sealed: false,
                parity_wanted: false,
                parity: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl GroupInner {
    /// Sends `answers` to their members, except `me`'s, which is returned; stops a parity
    /// query nobody needs any more once every member is answered.
    fn deliver(&mut self, answers: Vec<Answer>, me: Option<usize>) -> Option<Answer> {
        let mut mine = None;
        for answer in answers {
            let slot = answer_slot(&answer);
            if Some(slot) == me {
                mine = Some(answer);
            } else if let Some(tx) = self.notify.get_mut(slot).and_then(Option::take) {
                let _ = tx.send(answer);
            }
        }
        if self.sealed && self.state.is_done() {
            if let Some(task) = &self.parity {
                task.abort(); // frees the parity instance's queue
            }
        }
        mine
    }

    fn all_answered(&self) -> bool {
        (0..self.inputs.len()).all(|j| self.state.is_answered(j))
    }
}

fn answer_slot(answer: &Answer) -> usize {
    match answer {
        Answer::Original { slot, .. } | Answer::Reconstructed { slot, .. } | Answer::Unavailable { slot } => *slot,
    }
}

/// Closes the open coding group if it is `group` and seals it.
fn expire(shared: &Arc<Shared>, group: &Arc<Group>) {
    let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
    if open.as_ref().is_some_and(|(g, _)| Arc::ptr_eq(g, group)) {
        *open = None;
    }
    drop(open);
    seal(shared, group);
}

/// Stops `group` taking members and sends its parity query (ParM: eager; with lazy parity
/// only once wanted), unless every member already has its prediction: a parity query would
/// protect nothing (most partly filled groups at moderate load, where the group timeout
/// outlives the healthy instances' latency). Idempotent.
fn seal(shared: &Arc<Shared>, group: &Arc<Group>) {
    let mut g = group.lock();
    if g.sealed {
        return;
    }
    g.sealed = true;
    let m = g.inputs.len();
    if g.all_answered() {
        shared.stats.parity_skipped.fetch_add(1, Ordering::Relaxed);
        let answers = g.state.close_without_parity(m);
        g.deliver(answers, None);
        return;
    }
    if shared.cfg.straggler.lazy_parity && !g.parity_wanted {
        return;
    }
    start_parity(shared, group, &mut g);
}

/// Lazy parity: a member straggles or failed, so the group's parity query should go (as soon
/// as the group is sealed).
fn want_parity(shared: &Arc<Shared>, group: &Arc<Group>, g: &mut GroupInner) {
    if g.parity.is_some() {
        return;
    }
    if !g.sealed {
        g.parity_wanted = true;
    } else if !g.state.is_done() {
        start_parity(shared, group, g);
    }
}

fn start_parity(shared: &Arc<Shared>, group: &Arc<Group>, g: &mut GroupInner) {
    let task = shared.runtime.spawn(run_parity(shared.clone(), group.clone()));
    g.parity = Some(task.abort_handle());
}

/// The parity task of a sealed group: pads a partly filled group with all-zero queries (their
/// prediction F(0) is then subtracted like any other available output), encodes, runs the
/// parity model and decodes. Without F(0), or if the encoder fails, the group is closed
/// unprotected.
async fn run_parity(shared: Arc<Shared>, group: Arc<Group>) {
    let (k, m) = (group.k, group.lock().inputs.len());
    let zero = if m < k { shared.zero_output().await } else { None };
    let query = {
        let mut g = group.lock();
        if m < k {
            let Some(z) = zero else {
                shared.stats.unprotected_groups.fetch_add(1, Ordering::Relaxed);
                let answers = g.state.close_without_parity(m);
                g.deliver(answers, None);
                return;
            };
            shared.stats.padded_groups.fetch_add(1, Ordering::Relaxed);
            let answers = g.state.fill_padding(m, &z);
            g.deliver(answers, None);
        }
        if g.state.is_done() {
            return;
        }
        let zeros = vec![0.0f32; shared.cfg.spec.input_len()];
        let mut members: Vec<&[f32]> = g.inputs.iter().map(|v| &v[..]).collect();
        members.resize(k, &zeros);
        match shared.cfg.encoder.encode(&members) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("encoder failed: {e}");
                let answers = g.state.close_without_parity(m);
                g.deliver(answers, None);
                return;
            }
        }
    };
    shared.stats.parity_queries.fetch_add(1, Ordering::Relaxed);
    let pool = shared.parity.as_ref().expect("coded frontend");
    let out = pool.infer(&query.into(), &shared.shape(), shared.cfg.instance_timeout, &shared.stats).await;
    let mut g = group.lock();
    let answers = g.state.on_output(Slot::Parity, out);
    g.deliver(answers, None);
}

/// One query's place in a coding group, held by the caller's task. If the caller goes away
/// before its prediction arrived, the query counts as lost for its group (so group-mates
/// lose it as a decoding input, exactly as a failed instance).
struct Member {
    shared: Arc<Shared>,
    group: Arc<Group>,
    slot: usize,
    reported: bool,
}

impl Member {
    /// Joins the open coding group (opening one if needed, sealing one that is full or past
    /// its time) and returns where the group sends this query's answer if another task settles it.
    fn join(shared: &Arc<Shared>, input: Arc<[f32]>) -> (Self, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let k = shared.cfg.encoder.k();
        let now = Instant::now();
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        let expired = match open.take() {
            Some((g, _)) if g.seal_at <= now => Some(g),
            other => {
                *open = other;
                None
            }
        };
        let (group, count) = open.get_or_insert_with(|| (Group::open(shared, k), 0));
        let group = group.clone();
        let slot = {
            let mut g = group.lock();
            g.inputs.push(input);
            g.notify.push(Some(tx));
            g.inputs.len() - 1
        };
        *count += 1;
        let full = *count == k;
        if full {
            *open = None;
        }
        drop(open);
        if let Some(old) = expired {
            seal(shared, &old);
        }
        if full {
            seal(shared, &group);
        }
        (Member { shared: shared.clone(), group, slot, reported: false }, rx)
    }

    /// Runs the query on a deployed instance and answers with its prediction, or with the
    /// reconstruction the group delivers first (ParM §4.2, eager decoding), held back until
    /// the query has been outstanding for the decode grace so that an original about to
    /// arrive wins. Meanwhile seals the group when its time is up and, with lazy parity, asks
    /// for the parity query once this query has been outstanding for the straggler threshold.
    async fn run(mut self, input: &Arc<[f32]>, mut answer: oneshot::Receiver<Answer>) -> Result<Prediction, FrontendError> {
        let shared = self.shared.clone();
        let sent_at = Instant::now();
        let shape = shared.shape();
        let rpc = shared.deployed.infer(input, &shape, shared.cfg.instance_timeout, &shared.stats);
        tokio::pin!(rpc);
        let mut rpc_done = false;
        // The last member seals a full group as it joins; nobody else needs the seal timer then.
        let mut seal_at = (!self.group.lock().sealed).then_some(self.group.seal_at);
        let mut straggler_at = shared.cfg.straggler.lazy_parity.then_some(sent_at + self.group.threshold);
        // Capped at the straggler threshold: a query judged a straggler does not then wait
        // for its original (with precise timers, a 2 ms grace held every eager reconstruction
        // past the ~1 ms threshold plus the parity RPC: one-slow p99 2.6 ms eager, 2.1 lazy).
        let grace = shared.cfg.decode_grace.min(self.group.threshold);
        loop {
            tokio::select! {
                out = &mut rpc, if !rpc_done => {
                    rpc_done = true;
                    if let Some(a) = self.report(out) {
                        return self.finish(a);
                    }
                }
                a = &mut answer => {
                    let Ok(a) = a else { return Err(unavailable()) };
                    if let Answer::Reconstructed { .. } = a {
                        if !rpc_done {
                            // Decode grace: the original may still win.
                            let due = sent_at + grace;
                            tokio::select! {
                                out = &mut rpc => if let Some(a) = self.report(out).filter(|a| matches!(a, Answer::Original { .. })) {
                                    return self.finish(a);
                                },
                                _ = timer::sleep_until(due) => {}
                            }
                        }
                    }
                    self.reported = true; // the answer is settled; a late output changes nothing
                    return self.finish(a);
                }
                _ = timer::sleep_until_opt(seal_at) => {
                    seal_at = None;
                    expire(&shared, &self.group);
                }
                _ = timer::sleep_until_opt(straggler_at) => {
                    straggler_at = None;
                    let mut g = self.group.lock();
                    want_parity(&shared, &self.group, &mut g);
                }
            }
        }
    }

    /// Records this query's output (`None`: failed) with the group; returns this query's
    /// answer if that settles it (its original, or unavailable). A failure asks for the
    /// parity query at once (lazy parity).
    fn report(&mut self, out: Option<Vec<f32>>) -> Option<Answer> {
        self.reported = true;
        let mine = out.clone().map(|output| Answer::Original { slot: self.slot, output });
        let failed = out.is_none();
        let mut g = self.group.lock();
        let answers = g.state.on_output(Slot::Data(self.slot), out);
        let settled = g.deliver(answers, Some(self.slot));
        if failed && g.parity.is_none() && !g.state.is_done() {
            want_parity(&self.shared, &self.group, &mut g);
        }
        // An original that arrived is this query's answer even if a reconstruction was made
        // meanwhile (it is exact, and in time: the member is still waiting).
        mine.or(settled.filter(|a| !matches!(a, Answer::Original { .. })))
    }

    fn finish(&self, answer: Answer) -> Result<Prediction, FrontendError> {
        let (group, position) = (self.group.id, self.slot);
        match answer {
            Answer::Original { output, .. } => Ok(Prediction { output, reconstructed: false, group, position }),
            Answer::Reconstructed { output, .. } => Ok(Prediction { output, reconstructed: true, group, position }),
            Answer::Unavailable { .. } => Err(unavailable()),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.reported {
            self.report(None);
        }
    }
}
