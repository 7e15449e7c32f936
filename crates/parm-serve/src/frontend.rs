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
use std::sync::Arc;
use std::time::Duration;

use parm_codes::{Answer, Encoder, GroupState, Slot};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::backend::ModelSpec;
use crate::client::{InstanceClient, InstanceError};
use crate::redundancy::{timed, LatencyWindow, Redundancy};
use crate::straggler::{StragglerPolicy, MEDIAN};

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
    pub decode_grace: Duration,
    /// How queries are sent to deployed instances (replication and hedging are baselines;
    /// use them without parity instances).
    pub redundancy: Redundancy,
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

struct Job {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Prediction, FrontendError>>,
    /// Resolves when the caller of [`Frontend::predict`] went away (deadline, disconnect):
    /// the query's instance RPC is then dropped, which takes it out of the instance's queue.
    gone: oneshot::Receiver<()>,
}

enum GroupMsg {
    Member(Job),
    /// No more members: the group is full, or its timeout expired.
    Seal,
}

/// Instances of one kind and a round-robin cursor over them.
struct Pool {
    clients: Vec<InstanceClient>,
    model: String,
    next: AtomicUsize,
    redundancy: Redundancy,
    /// Recent latencies for the hedging delay (its percentile).
    latencies: LatencyWindow,
    /// Recent latencies for the straggler threshold (their median).
    medians: LatencyWindow,
}

impl Pool {
    fn new(addrs: &[String], model: &str, redundancy: Redundancy) -> anyhow::Result<Self> {
        let clients = addrs.iter().map(|a| InstanceClient::connect_lazy(a)).collect::<Result<_, _>>()?;
        Ok(Self {
            clients,
            model: model.to_string(),
            next: AtomicUsize::new(0),
            redundancy,
            latencies: Default::default(),
            medians: Default::default(),
        })
    }

    /// Runs one query as the pool's [`Redundancy`] says; `None` if every attempt failed.
    async fn infer(&self, input: Vec<f32>, shape: Vec<i64>, timeout: Duration, stats: &Stats) -> Option<Vec<f32>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.redundancy {
            Redundancy::None => {
                let (out, took) = timed(self.infer_with_retry(first, &input, &shape, timeout)).await;
                if out.is_some() {
                    self.medians.record(took, MEDIAN);
                }
                out
            }
            Redundancy::Replication { copies } => {
                let n = (*copies).clamp(1, self.clients.len());
                stats.backups.fetch_add(n as u64 - 1, Ordering::Relaxed);
                let calls = (0..n).map(|i| Box::pin(self.call(first + i, &input, &shape, timeout)));
                futures::future::select_ok(calls).await.ok().map(|(out, _)| out)
            }
            Redundancy::Hedged { percentile, min_delay, max_delay } => {
                let delay = self.latencies.hedge_delay(*min_delay, *max_delay);
                let (out, took) = timed(self.hedged(first, &input, &shape, timeout, delay, stats)).await;
                if out.is_some() {
                    self.latencies.record(took, *percentile);
                }
                out
            }
        }
    }

    /// Runs on instance `index` (mod n), or, if it is out of rotation (see
    /// [`crate::health::Breaker`]), on the next one in rotation (the original if none is).
    async fn call(&self, index: usize, input: &[f32], shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let n = self.clients.len();
        let client = (0..n).map(|j| &self.clients[(index + j) % n]).find(|c| c.usable()).unwrap_or(&self.clients[index % n]);
        client.infer(&self.model, input.to_vec(), shape.to_vec(), timeout).await
    }

    /// One instance; on a connection failure, once more on the next one.
    async fn infer_with_retry(&self, first: usize, input: &[f32], shape: &[i64], timeout: Duration) -> Option<Vec<f32>> {
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
        input: &[f32],
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
            _ = tokio::time::sleep(delay) => false,
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
}

impl Shared {
    async fn zero_output(&self) -> Option<Vec<f32>> {
        self.zero_output
            .get_or_init(|| async {
                let n = self.cfg.spec.input_len();
                let out = self.deployed.infer(vec![0.0; n], vec![1, n as i64], self.cfg.instance_timeout, &self.stats).await;
                if out.is_none() {
                    tracing::warn!("could not compute F(0); partly filled coding groups go unprotected");
                }
                out
            })
            .await
            .clone()
    }
}

/// Handle to a running frontend; cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// Queries waiting to join a coding group; past this, `predict` waits (back-pressure).
const INTAKE_QUEUE: usize = 4096;

impl Frontend {
    /// Starts the grouping task. Must be called inside a tokio runtime.
    ///
    /// Errors: no deployed instances, an unparsable address, or k = 0.
    pub fn start(cfg: FrontendConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(!cfg.deployed.is_empty(), "at least one deployed-model instance is needed");
        anyhow::ensure!(cfg.encoder.k() >= 1, "k must be at least 1");
        cfg.straggler.validate().map_err(anyhow::Error::msg)?;
        let deployed = Pool::new(&cfg.deployed, &cfg.deployed_model, cfg.redundancy.clone())?;
        let parity = if cfg.parity.is_empty() { None } else { Some(Pool::new(&cfg.parity, &cfg.parity_model, Redundancy::None)?) };
        let shared = Arc::new(Shared {
            cfg,
            deployed,
            parity,
            stats: Stats::default(),
            next_group: AtomicU64::new(0),
            zero_output: Default::default(),
        });
        let (tx, rx) = mpsc::channel(INTAKE_QUEUE);
        tokio::spawn(group_queries(rx, shared.clone()));
        Ok(Self { tx, shared })
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
    /// Errors: [`FrontendError::InvalidArgument`] for a wrong input length,
    /// [`FrontendError::Unavailable`] when neither the instance nor the decoder delivered.
    pub async fn predict(&self, input: Vec<f32>) -> Result<Prediction, FrontendError> {
        let want = self.spec().input_len();
        if input.len() != want {
            return Err(FrontendError::InvalidArgument(format!("expected {want} input values, got {}", input.len())));
        }
        self.shared.stats.queries.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let (_alive, gone) = oneshot::channel::<()>(); // dropped with this future
        let closed = || FrontendError::Unavailable("frontend is shutting down".into());
        self.tx.send(Job { input, reply, gone }).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Forms coding groups of k consecutive queries, closing a partial one after the timeout.
async fn group_queries(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let k = if shared.parity.is_some() { shared.cfg.encoder.k() } else { 1 };
    let mut open: Option<(mpsc::UnboundedSender<GroupMsg>, usize, Instant)> = None;
    loop {
        let deadline = open.as_ref().map(|(_, _, d)| *d);
        let job = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => break },
            _ = sleep_until_opt(deadline) => {
                if let Some((tx, _, _)) = open.take() {
                    let _ = tx.send(GroupMsg::Seal);
                }
                continue;
            }
        };
        let (tx, count, _) = open.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let id = shared.next_group.fetch_add(1, Ordering::Relaxed);
            // Read once per group: it sets how long the group stays open for members (the
            // group timeout, or the threshold if shorter: its first member may be a straggler)
            // and, with lazy parity, when its parity query goes.
            let threshold = shared.cfg.straggler.threshold(&shared.deployed.medians);
            tokio::spawn(run_group(id, k, threshold, rx, shared.clone()));
            (tx, 0, Instant::now() + shared.cfg.group_timeout.min(threshold))
        });
        let _ = tx.send(GroupMsg::Member(job));
        *count += 1;
        if *count == k {
            let _ = tx.send(GroupMsg::Seal);
            open = None;
        }
    }
    if let Some((tx, _, _)) = open {
        let _ = tx.send(GroupMsg::Seal);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One coding group: dispatch, collect outputs, decode, answer every member exactly once.
/// `threshold`: the straggler threshold when the group was opened (see [`crate::straggler`]).
async fn run_group(id: u64, k: usize, threshold: Duration, mut msgs: mpsc::UnboundedReceiver<GroupMsg>, shared: Arc<Shared>) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<(Slot, Option<Vec<f32>>)>();
    let mut state = GroupState::new(k, true);
    let mut inputs: Vec<Vec<f32>> = Vec::with_capacity(k);
    let mut replies: Vec<Option<oneshot::Sender<Result<Prediction, FrontendError>>>> = Vec::with_capacity(k);
    let mut tasks: Vec<AbortHandle> = Vec::with_capacity(k + 1);
    let mut held = Held::new(k, shared.cfg.decode_grace);
    let mut sealed = false;
    // Lazy parity only: the group is sealed but its parity query waits for a straggler.
    let mut parity_pending = false;
    let shape = vec![1, shared.cfg.spec.input_len() as i64];
    while !(sealed && !parity_pending && state.is_done() && held.is_empty()) {
        let straggler_due = if parity_pending { held.first_unanswered_due(&state, threshold) } else { None };
        let answers = tokio::select! {
            msg = msgs.recv(), if !sealed => match msg {
                Some(GroupMsg::Member(job)) => {
                    let slot = inputs.len();
                    held.sent(slot);
                    tasks.push(spawn_rpc(&shared, false, Slot::Data(slot), job.input.clone(), shape.clone(), &events_tx, Some(job.gone)));
                    inputs.push(job.input);
                    replies.push(Some(job.reply));
                    Vec::new()
                }
                Some(GroupMsg::Seal) | None => {
                    sealed = true;
                    if shared.cfg.straggler.lazy_parity && shared.parity.is_some() {
                        parity_pending = true;
                        Vec::new()
                    } else {
                        seal(&shared, &mut state, &inputs, &shape, &events_tx, &mut tasks).await
                    }
                }
            },
            Some((slot, out)) = events.recv() => {
                let failed = matches!(slot, Slot::Data(_)) && out.is_none();
                let original = held.original_arrived(slot, &out);
                let mut answers = state.on_output(slot, out);
                answers.extend(original);
                if parity_pending && (failed || (0..inputs.len()).all(|j| state.is_answered(j))) {
                    // A failure needs the parity now; with every prediction in, `seal` skips it.
                    parity_pending = false;
                    answers.extend(seal(&shared, &mut state, &inputs, &shape, &events_tx, &mut tasks).await);
                }
                answers
            }
            _ = sleep_until_opt(straggler_due) => {
                parity_pending = false;
                seal(&shared, &mut state, &inputs, &shape, &events_tx, &mut tasks).await
            }
            _ = sleep_until_opt(held.next_deadline()) => held.release_due(),
        };
        for answer in answers {
            if let Some(answer) = held.hold(answer) {
                deliver(id, answer, &mut replies, &tasks, &shared.stats);
            }
        }
    }
    for t in &tasks {
        t.abort(); // outputs nobody needs any more: free the instances' queues
    }
}

/// Reconstructions held back until their original has been outstanding for the decode grace,
/// so that an original about to arrive wins the race: same latency to within the grace, and
/// the exact prediction instead of an approximation.
struct Held {
    grace: Duration,
    sent_at: Vec<Instant>,
    waiting: Vec<Option<(Instant, Vec<f32>)>>,
}

impl Held {
    fn new(k: usize, grace: Duration) -> Self {
        Self { grace, sent_at: Vec::with_capacity(k), waiting: vec![None; k] }
    }

    fn sent(&mut self, slot: usize) {
        self.sent_at.push(Instant::now());
        debug_assert_eq!(self.sent_at.len(), slot + 1);
    }

    fn is_empty(&self) -> bool {
        self.waiting.iter().all(Option::is_none)
    }

    /// Passes an answer through, or keeps a too-early reconstruction for later.
    fn hold(&mut self, answer: Answer) -> Option<Answer> {
        if let Answer::Reconstructed { slot, output } = &answer {
            let due = self.sent_at.get(*slot).map(|t| *t + self.grace);
            if let Some(due) = due.filter(|d| *d > Instant::now()) {
                self.waiting[*slot] = Some((due, output.clone()));
                return None;
            }
        }
        Some(answer)
    }

    /// The original of a held reconstruction arrived in time: answer with it instead.
    fn original_arrived(&mut self, slot: Slot, out: &Option<Vec<f32>>) -> Option<Answer> {
        let (Slot::Data(j), Some(output)) = (slot, out) else { return None };
        self.waiting.get_mut(j)?.take()?;
        Some(Answer::Original { slot: j, output: output.clone() })
    }

    /// When the earliest still-unanswered member will have been outstanding for `threshold`
    /// (lazy parity's trigger); `None` if every member is answered.
    fn first_unanswered_due(&self, state: &GroupState, threshold: Duration) -> Option<Instant> {
        let unanswered = self.sent_at.iter().enumerate().filter(|(j, _)| !state.is_answered(*j));
        unanswered.map(|(_, t)| *t + threshold).min()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().flatten().map(|(d, _)| *d).min()
    }

    fn release_due(&mut self) -> Vec<Answer> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (slot, w) in self.waiting.iter_mut().enumerate() {
            if w.as_ref().is_some_and(|(d, _)| *d <= now) {
                let (_, output) = w.take().expect("checked");
                out.push(Answer::Reconstructed { slot, output });
            }
        }
        out
    }
}

/// Sends the group's parity query: the encoding of its members, padded with all-zero queries
/// if the group is only partly filled (their prediction F(0) is then subtracted like any
/// other available output). Without parity instances, or if F(0) is not known, the group is
/// closed unprotected.
async fn seal(
    shared: &Arc<Shared>,
    state: &mut GroupState,
    inputs: &[Vec<f32>],
    shape: &[i64],
    events: &mpsc::UnboundedSender<(Slot, Option<Vec<f32>>)>,
    tasks: &mut Vec<AbortHandle>,
) -> Vec<Answer> {
    let k = state.k();
    let m = inputs.len();
    if shared.parity.is_none() {
        return state.close_without_parity(m);
    }
    if (0..m).all(|j| state.is_answered(j)) {
        // Every member already has its prediction: a parity query would protect nothing.
        // This is most partly filled groups at moderate load, where the group timeout outlives
        // the healthy instances' latency.
        shared.stats.parity_skipped.fetch_add(1, Ordering::Relaxed);
        return state.close_without_parity(m);
    }
    let zeros = vec![0.0f32; shared.cfg.spec.input_len()];
    let mut answers = Vec::new();
    if m < k {
        match shared.zero_output().await {
            Some(z) => answers = state.fill_padding(m, &z),
            None => {
                shared.stats.unprotected_groups.fetch_add(1, Ordering::Relaxed);
                return state.close_without_parity(m);
            }
        }
        shared.stats.padded_groups.fetch_add(1, Ordering::Relaxed);
    }
    let mut members: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    members.resize(k, &zeros);
    match shared.cfg.encoder.encode(&members) {
        Ok(p) => {
            shared.stats.parity_queries.fetch_add(1, Ordering::Relaxed);
            tasks.push(spawn_rpc(shared, true, Slot::Parity, p, shape.to_vec(), events, None));
            answers
        }
        Err(e) => {
            tracing::warn!("encoder failed: {e}");
            answers.extend(state.close_without_parity(m));
            answers
        }
    }
}

fn spawn_rpc(
    shared: &Arc<Shared>,
    parity: bool,
    slot: Slot,
    input: Vec<f32>,
    shape: Vec<i64>,
    events: &mpsc::UnboundedSender<(Slot, Option<Vec<f32>>)>,
    gone: Option<oneshot::Receiver<()>>,
) -> AbortHandle {
    let shared = shared.clone();
    let events = events.clone();
    tokio::spawn(async move {
        let pool = if parity { shared.parity.as_ref().expect("parity pool") } else { &shared.deployed };
        let call = pool.infer(input, shape, shared.cfg.instance_timeout, &shared.stats);
        // A query whose caller left is dropped (its instance RPC cancelled) and counts as
        // lost; group-mates then lose it as a decoding input too.
        let out = match gone {
            Some(gone) => tokio::select! { out = call => out, _ = gone => None },
            None => call.await,
        };
        let _ = events.send((slot, out));
    })
    .abort_handle()
}

fn deliver(
    group: u64,
    answer: Answer,
    replies: &mut [Option<oneshot::Sender<Result<Prediction, FrontendError>>>],
    tasks: &[AbortHandle],
    stats: &Stats,
) {
    let (slot, result) = match answer {
        Answer::Original { slot, output } => {
            (slot, Ok(Prediction { output, reconstructed: false, group, position: slot }))
        }
        Answer::Reconstructed { slot, output } => {
            tasks[slot].abort(); // ParM cancels the queued original
            stats.reconstructed.fetch_add(1, Ordering::Relaxed);
            (slot, Ok(Prediction { output, reconstructed: true, group, position: slot }))
        }
        Answer::Unavailable { slot } => {
            if replies.get(slot).and_then(Option::as_ref).is_some_and(|r| !r.is_closed()) {
                stats.unavailable.fetch_add(1, Ordering::Relaxed); // not for callers that left
            }
            let msg = "model instance failed and the coding group cannot reconstruct the prediction";
            (slot, Err(FrontendError::Unavailable(msg.into())))
        }
    };
    if result.is_ok() {
        stats.answered.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(reply) = replies.get_mut(slot).and_then(Option::take) {
        let _ = reply.send(result);
    }
}
