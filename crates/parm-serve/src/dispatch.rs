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

use crate::client::{InstanceClient, InstanceError};

/// How far the frontend batches queries to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchBatching {
    /// Most queries per request to an instance (1: no batching, every query its own request).
    pub max_batch: usize,
    /// Requests outstanding per instance before further queries wait (and batch up).
    pub max_in_flight: usize,
}

impl Default for DispatchBatching {
    fn default() -> Self {
        Self { max_batch: 1, max_in_flight: 4 }
    }
}

impl DispatchBatching {
    /// True when queries are batched at all.
    pub fn enabled(&self) -> bool {
        self.max_batch > 1
    }

    /// Errors: `max_batch` or `max_in_flight` zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 || self.max_in_flight == 0 {
            return Err(format!("dispatch batching needs max_batch >= 1 and max_in_flight >= 1, got {self:?}"));
        }
        Ok(())
    }
}

type Reply = oneshot::Sender<Result<Vec<f32>, InstanceError>>;

struct Pending {
    input: Arc<[f32]>,
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
    pub fn start(client: InstanceClient, model: String, cfg: DispatchBatching, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr: Arc<str> = client.addr().into();
        tokio::spawn(run(client, model, cfg, timeout, rx));
        Self { tx, addr }
    }

    /// One query, `input` of `query_len` values (the instance sees it as a row of a
    /// `[b, query_len]` request); returns its output row.
    ///
    /// Errors: the batch's error (every query of a failed batch gets it), or
    /// [`InstanceError::Timeout`] after `timeout` (queueing included).
    pub async fn infer(&self, input: Arc<[f32]>, timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let (reply, rx) = oneshot::channel();
        let gone = || InstanceError::Unavailable { addr: self.addr.to_string(), message: "dispatcher stopped".into() };
        self.tx.send(Pending { input, reply }).map_err(|_| gone())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(InstanceError::Timeout { addr: self.addr.to_string(), timeout }),
        }
    }
}

async fn run(client: InstanceClient, model: String, cfg: DispatchBatching, timeout: Duration, mut rx: mpsc::UnboundedReceiver<Pending>) {
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
            let n = queue.len().min(cfg.max_batch);
            let batch: Vec<Pending> = queue.drain(..n).collect();
            in_flight.push(send_batch(&client, &model, batch, timeout));
        }
    }
}

/// Sends `batch` as one `[b, n]` request and answers each query with its row.
async fn send_batch(client: &InstanceClient, model: &str, batch: Vec<Pending>, timeout: Duration) {
    let n = batch[0].input.len();
    if batch.iter().any(|p| p.input.len() != n) {
        // Queries of one model all have the same length; anything else is a caller's bug.
        for p in batch {
            let message = format!("queries of different lengths in one batch ({n} vs {})", p.input.len());
            let _ = p.reply.send(Err(InstanceError::InvalidArgument { addr: client.addr().into(), message }));
        }
        return;
    }
    let rows = batch.len();
    let input: Vec<f32> = batch.iter().flat_map(|p| p.input.iter().copied()).collect();
    let result = client.infer(model, &input, &[rows as i64, n as i64], timeout).await;
    match result {
        Ok(out) => {
            let m = out.len() / rows; // infer checked: a positive multiple of rows
            for (p, row) in batch.into_iter().zip(out.chunks_exact(m)) {
                let _ = p.reply.send(Ok(row.to_vec()));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}
