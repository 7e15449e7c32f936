//! Adaptive batching on the frontend's side of an instance connection: single queries bound
//! for one instance that queue up while its earlier requests are in flight are sent together,
//! as one batched request (`[b, ...]`), and the answer's rows go back to their queries.
//!
//! Source: Clipper (Crankshaw et al., NSDI 2017) §4.3, "adaptive batching" in the model
//! abstraction layer, and Triton's dynamic batcher. A batch is never delayed to grow: at low
//! load every query goes alone at once (one cheap hand-off to the dispatcher task); under load,
//! queries wait only while `max_in_flight` batches are already outstanding, so batches grow
//! with the load and the number of RPCs (the frontend's and the instance's main per-query
//! cost, BENCHMARKS.md "Efficiency") falls. A query whose caller has gone (a reconstructed
//! original, a deadline) is dropped before it is sent; once sent, it runs with its batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::upstream::{Instance, InstanceError};

/// How far the frontend batches queries to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchBatching {
    /// Most queries per request to an instance (1: no batching, every query its own request).
    pub max_batch: usize,
    /// Requests outstanding per instance before further queries wait (and batch up).
    /// Default 1: a parm worker runs one execution at a time (one compute lane), so a second
    /// request in flight only waits in its queue, where it cannot join a batch. Raise it for
    /// an instance that runs several executions at once (Triton with an `instance_group`
    /// count above 1). Measured (BENCHMARKS.md, "Throughput at a latency objective"): with a
    /// worker on the frontend's core and batches of up to 32, 1 passed p99 <= 5 ms in 35 of 52
    /// 5 s trials at 2,500-6,500 req/s, where 4 passed 23.
    pub max_in_flight: usize,
}

impl Default for DispatchBatching {
    fn default() -> Self {
        Self { max_batch: 1, max_in_flight: 1 }
    }
}

impl DispatchBatching {
    /// True when queries are batched at all.
    pub fn enabled(&self) -> bool {
        self.max_batch > 1
    }

    /// Errors: `max_batch` or `max_in_flight` zero.
    pub fn validate(&self) -> Result<(), BadDispatch> {
        if self.max_batch == 0 || self.max_in_flight == 0 {
            return Err(BadDispatch(*self));
        }
        Ok(())
    }
}

/// Dispatch batching settings that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("dispatch batching needs max_batch >= 1 and max_in_flight >= 1, got {0:?}")]
pub struct BadDispatch(pub DispatchBatching);

type Reply = oneshot::Sender<Result<Vec<f32>, InstanceError>>;

struct Pending {
    /// A block of `rows` rows.
    input: Arc<[f32]>,
    rows: usize,
    reply: Reply,
}

/// One instance's dispatcher: a task that sends the queued queries for `model` in batches.
#[derive(Clone)]
pub struct Coalescer {
    tx: mpsc::UnboundedSender<Pending>,
    addr: Arc<str>,
}

impl Coalescer {
    /// Starts the dispatcher task (on the current tokio runtime). `timeout` bounds each
    /// batched request.
    pub fn start(client: Arc<dyn Instance>, model: String, cfg: DispatchBatching, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr: Arc<str> = client.addr().into();
        tokio::spawn(run(client, model, cfg, timeout, rx));
        Self { tx, addr }
    }

    /// One block of rows, `input` of `shape` `[b, ...]` (the instance sees its rows as rows of
    /// a larger `[B, ...]` request); returns its `b` output rows.
    ///
    /// Errors: the batch's error (every query of a failed batch gets it), or
    /// [`InstanceError::Timeout`] after `timeout` (queueing included).
    pub async fn infer(&self, input: Arc<[f32]>, shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let (reply, rx) = oneshot::channel();
        let gone = || InstanceError::Unavailable { addr: self.addr.to_string(), message: "dispatcher stopped".into() };
        let rows = shape.first().map_or(1, |&b| b.max(1) as usize);
        self.tx.send(Pending { input, rows, reply }).map_err(|_| gone())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(InstanceError::Timeout { addr: self.addr.to_string(), timeout }),
        }
    }
}

async fn run(client: Arc<dyn Instance>, model: String, cfg: DispatchBatching, timeout: Duration, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            p = rx.recv(), if open => match p {
                Some(p) => queue.push_back(p),
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
        while let Ok(p) = rx.try_recv() {
            queue.push_back(p);
        }
        queue.retain(|p| !p.reply.is_closed());
        while in_flight.len() < cfg.max_in_flight && !queue.is_empty() {
            let batch = take_batch(&mut queue, cfg.max_batch);
            in_flight.push(send_batch(&*client, &model, batch, timeout));
        }
    }
}

/// The queued blocks at the front whose rows add up to at most `max_rows` (at least one block).
fn take_batch(queue: &mut VecDeque<Pending>, max_rows: usize) -> Vec<Pending> {
    let mut rows = 0;
    let n = queue
        .iter()
        .take_while(|p| {
            rows += p.rows;
            rows <= max_rows
        })
        .count();
    queue.drain(..n.max(1)).collect()
}

/// Sends `batch` as one `[B, n]` request (B the rows of all its blocks) and answers each
/// block with its rows.
async fn send_batch(client: &dyn Instance, model: &str, batch: Vec<Pending>, timeout: Duration) {
    let rows: usize = batch.iter().map(|p| p.rows).sum();
    let n = batch[0].input.len() / batch[0].rows;
    if batch.iter().any(|p| p.input.len() != p.rows * n) {
        // Queries of one model all have the same length; anything else is a caller's bug.
        for p in batch {
            let message = format!("queries of different lengths in one batch ({n} vs {} / {})", p.input.len(), p.rows);
            let _ = p.reply.send(Err(InstanceError::InvalidArgument { addr: client.addr().into(), message }));
        }
        return;
    }
    let input: Vec<f32> = batch.iter().flat_map(|p| p.input.iter().copied()).collect();
    let result = client.infer(model, &input, &[rows as i64, n as i64], timeout).await;
    let result = result.and_then(|out| match out.len() % rows == 0 && !out.is_empty() {
        true => Ok(out),
        false => {
            Err(InstanceError::BadResponse { addr: client.addr().into(), message: format!("{} output values for {rows} rows", out.len()) })
        }
    });
    match result {
        Ok(out) => {
            let m = out.len() / rows;
            let mut at = 0;
            for p in batch {
                let end = at + p.rows * m;
                let _ = p.reply.send(Ok(out[at..end].to_vec()));
                at = end;
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}
