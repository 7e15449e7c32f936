//! Coding over batches: a request carrying a batch of B queries is sent to a deployed-model
//! instance as ONE batched request, and k such batches form one **batch coding group** whose
//! parity request is ONE batched request of B parity rows, row i = encode(row i of each of
//! the k batches). Decoding is per row; a batch is answered when every row has its
//! prediction (all at once when its instance answers) or its reconstruction.
//!
//! Compared with the per-row path of [`crate::frontend`] (each row of a batch joins a coding
//! group on its own, so a batch of B costs B deployed requests and about B/k parity
//! requests), this costs 1 deployed request per batch and 1 parity request per k batches, and
//! lets the instances run each batch as one model execution.
//!
//! Groups: consecutive batch requests, k per group; a group is closed after
//! [`FrontendConfig::group_timeout`] with fewer. Batches of different sizes code together:
//! the parity request has max B rows, and where a batch has no row i (or the group has fewer
//! than k batches) the row is padded with an all-zero query whose output F(0) the decoder
//! subtracts. No parity request is sent for a group whose batches are all answered already.
//! A reconstruction is held until [`FrontendConfig::decode_grace`] after its batch was sent,
//! so that an original about to arrive wins, as in the per-row path. A failed batch request
//! is retried once on the next instance.
//!
//! Opt-in: `parm serve --batch-coding` (see [`crate::api::Serving::batch_coding`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parm_codes::{Answer, Encoder, GroupState, Slot};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::InstanceClient;
use crate::frontend::{FrontendConfig, FrontendError, Prediction};

/// Counters of the batch-coded path (monotonic).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batch requests accepted, and their rows.
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    /// Batched requests sent to deployed instances (retries included).
    pub deployed_requests: AtomicU64,
    /// Batched parity requests sent, and their rows.
    pub parity_requests: AtomicU64,
    pub parity_rows: AtomicU64,
    /// Rows answered with a reconstruction.
    pub reconstructed_rows: AtomicU64,
    /// Groups closed without a parity request because every batch was answered already.
    pub parity_skipped: AtomicU64,
}

/// Per-row results of one batch, in row order.
pub type BatchResult = Vec<Result<Prediction, FrontendError>>;

struct Job {
    rows: Vec<Vec<f32>>,
    reply: oneshot::Sender<BatchResult>,
}

enum GroupMsg {
    Member(Job),
    Seal,
}

/// Instances of one kind, round-robin.
struct Pool {
    clients: Vec<InstanceClient>,
    model: String,
    next: AtomicUsize,
}

impl Pool {
    fn new(addrs: &[String], model: &str) -> anyhow::Result<Self> {
        let clients = addrs.iter().map(|a| InstanceClient::connect_lazy(a)).collect::<Result<_, _>>()?;
        Ok(Self { clients, model: model.to_owned(), next: AtomicUsize::new(0) })
    }

    /// One batched request `[rows, dim]`; on a retryable failure once more on the next
    /// instance. Skips instances out of rotation while another is usable. `None` on failure.
    async fn infer(&self, input: Vec<f32>, rows: usize, timeout: Duration, sent: &AtomicU64) -> Option<Vec<f32>> {
        let n = self.clients.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let dim = input.len() / rows.max(1);
        let shape = vec![rows as i64, dim as i64];
        let mut tried = 0;
        for j in 0..n {
            if tried == 2 {
                break;
            }
            let client = &self.clients[(first + j) % n];
            if !client.usable() && (0..n).any(|i| self.clients[i].usable()) {
                continue;
            }
            tried += 1;
            sent.fetch_add(1, Ordering::Relaxed);
            match client.infer(&self.model, &input, &shape, timeout).await {
                Ok(out) if out.len() % rows.max(1) == 0 => return Some(out),
                Ok(out) => {
                    tracing::debug!("batched answer of {} values for {rows} rows", out.len());
                    return None;
                }
                Err(e) if e.is_retryable() => tracing::debug!("batch: retrying after: {e}"),
                Err(e) => {
                    tracing::debug!("batch: instance failed: {e}");
                    return None;
                }
            }
        }
        None
    }
}

struct Inner {
    deployed: Pool,
    parity: Option<Pool>,
    encoder: Arc<dyn Encoder>,
    input_len: usize,
    group_timeout: Duration,
    instance_timeout: Duration,
    decode_grace: Duration,
    next_group: AtomicU64,
    stats: BatchStats,
    /// F(0), fetched once when first needed (padding rows).
    zero_output: tokio::sync::OnceCell<Option<Vec<f32>>>,
}

impl Inner {
    /// F(0), asked of every deployed instance at once the first time (first answer wins, so a
    /// stalled instance does not hold it up).
    async fn zero_output(&self) -> Option<Vec<f32>> {
        self.zero_output
            .get_or_init(|| async {
                let n = self.input_len;
                let pool = &self.deployed;
                let (zeros, shape) = (vec![0.0; n], [1, n as i64]);
                let calls = pool.clients.iter().map(|c| Box::pin(c.infer(&pool.model, &zeros, &shape, self.instance_timeout)));
                let out = futures::future::select_ok(calls).await.ok().map(|(out, _)| out);
                if out.is_none() {
                    tracing::warn!("batch coding: could not compute F(0); padded groups go unprotected");
                }
                out
            })
            .await
            .clone()
    }
}

/// Handle to the batch-coding task; cheap to clone.
#[derive(Clone)]
pub struct BatchCoder {
    tx: mpsc::Sender<Job>,
    inner: Arc<Inner>,
}

impl BatchCoder {
    /// Starts grouping batches over the instances, model names, encoder (its k), group timeout,
    /// instance timeout and decode grace of `cfg` (its redundancy setting is not used). Opens
    /// its own connections. Must be called inside a tokio runtime.
    ///
    /// Errors: no deployed instances, an unparsable address, or k = 0.
    pub fn start(cfg: &FrontendConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(!cfg.deployed.is_empty(), "at least one deployed-model instance is needed");
        anyhow::ensure!(cfg.encoder.k() >= 1, "k must be at least 1");
        let parity = if cfg.parity.is_empty() { None } else { Some(Pool::new(&cfg.parity, &cfg.parity_model)?) };
        let inner = Arc::new(Inner {
            deployed: Pool::new(&cfg.deployed, &cfg.deployed_model)?,
            parity,
            encoder: cfg.encoder.clone(),
            input_len: cfg.spec.input_len(),
            group_timeout: cfg.group_timeout,
            instance_timeout: cfg.instance_timeout,
            decode_grace: cfg.decode_grace,
            next_group: AtomicU64::new(0),
            stats: BatchStats::default(),
            zero_output: Default::default(),
        });
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(group_batches(rx, inner.clone()));
        Ok(Self { tx, inner })
    }

    /// Computes F(0) (for padded rows) now, so that the first padded group does not wait.
    pub async fn warm_up(&self) {
        self.inner.zero_output().await;
    }

    pub fn stats(&self) -> &BatchStats {
        &self.inner.stats
    }

    /// Predicts a batch (every row `input_len` values); one result per row, in order. A row
    /// is an error when neither its batch's instance nor the decoder delivered.
    ///
    /// Errors (every row): [`FrontendError::InvalidArgument`] for an empty batch or a row of
    /// the wrong length; [`FrontendError::Unavailable`] when shutting down.
    pub async fn predict(&self, rows: Vec<Vec<f32>>) -> BatchResult {
        let n = rows.len();
        let want = self.inner.input_len;
        let all = |e: FrontendError| vec![Err(e); n.max(1)];
        if n == 0 {
            return all(FrontendError::InvalidArgument("empty batch".into()));
        }
        if let Some(r) = rows.iter().find(|r| r.len() != want) {
            return all(FrontendError::InvalidArgument(format!("expected {want} input values per row, got {}", r.len())));
        }
        self.inner.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.inner.stats.rows.fetch_add(n as u64, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let closed = || FrontendError::Unavailable("frontend is shutting down".into());
        if self.tx.send(Job { rows, reply }).await.is_err() {
            return all(closed());
        }
        rx.await.unwrap_or_else(|_| all(closed()))
    }
}

/// Forms groups of k consecutive batches, closing a partial one after the group timeout.
async fn group_batches(mut rx: mpsc::Receiver<Job>, inner: Arc<Inner>) {
    let k = if inner.parity.is_some() { inner.encoder.k() } else { 1 };
    let mut open: Option<(mpsc::UnboundedSender<GroupMsg>, usize, Instant)> = None;
    loop {
        let deadline = open.as_ref().map(|(_, _, d)| *d);
        let job = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => break },
            _ = crate::timer::sleep_until_opt(deadline) => {
                if let Some((tx, _, _)) = open.take() {
                    let _ = tx.send(GroupMsg::Seal);
                }
                continue;
            }
        };
        let (tx, count, _) = open.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let id = inner.next_group.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(run_group(id, k, rx, inner.clone()));
            (tx, 0, Instant::now() + inner.group_timeout)
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

/// One batch of a group.
struct Member {
    rows: usize,
    sent_at: Instant,
    /// `None` while its request is outstanding; then its flat output (or `None`: failed).
    output: Option<Option<Vec<f32>>>,
    /// Per row: a reconstruction, or `Err` when the row can never be answered.
    decoded: Vec<Option<Result<Vec<f32>, ()>>>,
    reply: Option<oneshot::Sender<BatchResult>>,
    task: AbortHandle,
}

impl Member {
    fn done(&self) -> bool {
        self.reply.is_none()
    }
}

/// Events of a group: a batch's output (`Slot::Data(j)`) or the parity output.
type Events = mpsc::UnboundedSender<(Slot, Option<Vec<f32>>)>;

/// One batch coding group: dispatch, collect outputs, decode per row, answer every batch once.
async fn run_group(id: u64, k: usize, mut msgs: mpsc::UnboundedReceiver<GroupMsg>, inner: Arc<Inner>) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<(Slot, Option<Vec<f32>>)>();
    let mut members: Vec<Member> = Vec::with_capacity(k);
    let mut inputs: Vec<Vec<Vec<f32>>> = Vec::with_capacity(k);
    // After the seal, with a parity request out: one decoding state per row.
    let mut rows: Vec<GroupState> = Vec::new();
    let mut parity_task: Option<AbortHandle> = None;
    let mut sealed = false;
    while !(sealed && members.iter().all(Member::done)) {
        let due = members.iter().filter(|m| !m.done() && m.decoded.iter().all(Option::is_some)).map(|m| m.sent_at + inner.decode_grace).min();
        tokio::select! {
            msg = msgs.recv(), if !sealed => match msg {
                Some(GroupMsg::Member(job)) => {
                    let j = members.len();
                    let n = job.rows.len();
                    let flat: Vec<f32> = job.rows.concat();
                    let task = spawn_call(&inner, false, Slot::Data(j), flat, n, &events_tx);
                    members.push(Member { rows: n, sent_at: Instant::now(), output: None, decoded: vec![None; n], reply: Some(job.reply), task });
                    inputs.push(job.rows);
                }
                Some(GroupMsg::Seal) | None => {
                    sealed = true;
                    match seal(&inner, k, &members, &inputs, &events_tx).await {
                        Some((states, task)) => {
                            rows = states;
                            parity_task = Some(task);
                            for i in 0..rows.len() {
                                let answers = replay(&mut rows[i], i, &members);
                                apply(&mut members, i, answers);
                            }
                        }
                        None => {
                            // Unprotected: a failed batch can never be answered.
                            for m in members.iter_mut().filter(|m| matches!(m.output, Some(None))) {
                                m.decoded = vec![Some(Err(())); m.rows];
                            }
                        }
                    }
                }
            },
            Some((slot, out)) = events.recv() => match slot {
                Slot::Data(j) => {
                    let m = &mut members[j];
                    m.output = Some(out.clone());
                    if out.is_none() && sealed && rows.is_empty() {
                        m.decoded = vec![Some(Err(())); m.rows];
                    }
                    for i in 0..rows.len() {
                        let row_out = out.as_ref().and_then(|o| row_of(o, members[j].rows, i));
                        if i < members[j].rows {
                            let answers = rows[i].on_output(Slot::Data(j), row_out);
                            apply(&mut members, i, answers);
                        }
                    }
                }
                Slot::Parity => {
                    let n = rows.len();
                    for i in 0..n {
                        let row_out = out.as_ref().and_then(|o| row_of(o, n, i));
                        let answers = rows[i].on_output(Slot::Parity, row_out);
                        apply(&mut members, i, answers);
                    }
                }
            },
            _ = crate::timer::sleep_until_opt(due) => {}
        }
        answer_ready(id, &mut members, &inner);
    }
    for m in &members {
        m.task.abort(); // outputs nobody needs any more
    }
    if let Some(t) = parity_task {
        t.abort();
    }
}

/// Row `i` of a flat output of `n` rows.
fn row_of(out: &[f32], n: usize, i: usize) -> Option<Vec<f32>> {
    let per = out.len() / n.max(1);
    (i < n && per > 0).then(|| out[i * per..(i + 1) * per].to_vec())
}

/// Feeds row `i`'s state with the batch outputs that arrived before the seal.
fn replay(state: &mut GroupState, i: usize, members: &[Member]) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (j, m) in members.iter().enumerate() {
        if let (Some(out), true) = (&m.output, i < m.rows) {
            answers.extend(state.on_output(Slot::Data(j), out.as_ref().and_then(|o| row_of(o, m.rows, i))));
        }
    }
    answers
}

/// Records row `i`'s reconstructions and losses (originals are answered per batch).
fn apply(members: &mut [Member], i: usize, answers: Vec<Answer>) {
    for a in answers {
        let (j, value) = match a {
            Answer::Original { .. } => continue,
            Answer::Reconstructed { slot, output } => (slot, Ok(output)),
            Answer::Unavailable { slot } => (slot, Err(())),
        };
        if let Some(m) = members.get_mut(j) {
            if i < m.rows && m.decoded[i].is_none() {
                m.decoded[i] = Some(value);
            }
        }
    }
}

/// Answers every batch whose output arrived, or whose rows are all decoded (reconstructions
/// once the decode grace has passed).
fn answer_ready(id: u64, members: &mut [Member], inner: &Inner) {
    let now = Instant::now();
    for (j, m) in members.iter_mut().enumerate() {
        if m.done() {
            continue;
        }
        let result: BatchResult = match &m.output {
            Some(Some(out)) => (0..m.rows)
                .map(|i| Ok(Prediction { output: row_of(out, m.rows, i).unwrap_or_default(), reconstructed: false, group: id, position: j }))
                .collect(),
            _ if m.decoded.iter().all(Option::is_some) => {
                let any_recon = m.decoded.iter().any(|d| matches!(d, Some(Ok(_))));
                if any_recon && now < m.sent_at + inner.decode_grace && !matches!(m.output, Some(None)) {
                    continue; // the original may still win
                }
                m.task.abort(); // ParM cancels the queued original
                m.decoded
                    .iter()
                    .map(|d| match d {
                        Some(Ok(output)) => {
                            inner.stats.reconstructed_rows.fetch_add(1, Ordering::Relaxed);
                            Ok(Prediction { output: output.clone(), reconstructed: true, group: id, position: j })
                        }
                        _ => Err(FrontendError::Unavailable(
                            "model instance failed and the batch coding group cannot reconstruct the prediction".into(),
                        )),
                    })
                    .collect()
            }
            _ => continue,
        };
        if let Some(reply) = m.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// Sends the group's parity request: row i = encode(row i of every batch), zero rows where a
/// batch has no row i or the group has fewer than k batches. Returns one decoding state per
/// row (padding fed in) and the request's task, or `None` when the group goes unprotected
/// (no parity instances, every batch answered, F(0) unknown, or the encoder failed).
async fn seal(
    inner: &Arc<Inner>,
    k: usize,
    members: &[Member],
    inputs: &[Vec<Vec<f32>>],
    events: &Events,
) -> Option<(Vec<GroupState>, AbortHandle)> {
    inner.parity.as_ref()?;
    if members.iter().all(|m| matches!(m.output, Some(Some(_)))) {
        inner.stats.parity_skipped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let n = members.iter().map(|m| m.rows).max()?;
    let padded = members.len() < k || members.iter().any(|m| m.rows < n);
    let zero_out = if padded { Some(inner.zero_output().await?) } else { None };
    let zeros = vec![0.0f32; inner.input_len];
    let mut parity_input = Vec::with_capacity(n * inner.input_len);
    let mut states = Vec::with_capacity(n);
    for i in 0..n {
        let mut queries: Vec<&[f32]> = Vec::with_capacity(k);
        let mut state = GroupState::new(k, true);
        for j in 0..k {
            match inputs.get(j).and_then(|rows| rows.get(i)) {
                Some(row) => queries.push(row),
                None => {
                    queries.push(&zeros);
                    // Padding: its output F(0) is known (the resulting "original" answers a
                    // row that does not exist and is ignored).
                    state.on_output(Slot::Data(j), zero_out.clone());
                }
            }
        }
        match inner.encoder.encode(&queries) {
            Ok(p) => parity_input.extend(p),
            Err(e) => {
                tracing::warn!("batch coding: encoder failed: {e}");
                return None;
            }
        }
        states.push(state);
    }
    inner.stats.parity_requests.fetch_add(1, Ordering::Relaxed);
    inner.stats.parity_rows.fetch_add(n as u64, Ordering::Relaxed);
    let task = spawn_call(inner, true, Slot::Parity, parity_input, n, events);
    Some((states, task))
}

fn spawn_call(inner: &Arc<Inner>, parity: bool, slot: Slot, input: Vec<f32>, rows: usize, events: &Events) -> AbortHandle {
    let inner = inner.clone();
    let events = events.clone();
    tokio::spawn(async move {
        let pool = if parity { inner.parity.as_ref().expect("parity pool") } else { &inner.deployed };
        let sent = if parity { &inner.stats.parity_requests } else { &inner.stats.deployed_requests };
        // Parity requests are counted once in `seal` (retries not counted).
        let scratch = AtomicU64::new(0);
        let out = pool.infer(input, rows, inner.instance_timeout, if parity { &scratch } else { sent }).await;
        let _ = events.send((slot, out));
    })
    .abort_handle()
}
