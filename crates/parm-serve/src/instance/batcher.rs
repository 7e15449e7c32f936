//! Dynamic batching on a worker (opt-in, `parm worker --max-batch N --max-queue-delay-us D`):
//! requests waiting for the compute lane are merged into one model execution of at most
//! `max_batch` rows, waiting at most `max_delay` after the first request for more (Triton's
//! `dynamic_batching { max_queue_delay_microseconds }`).
//!
//! Semantics kept from the unbatched worker (see [`crate::instance::worker`]): one compute lane, FIFO
//! order, a bounded queue (`max_queue` requests; beyond that `RESOURCE_EXHAUSTED`), a request
//! whose client left while it was queued is never computed, a running batch completes even if
//! its clients leave, and the fault delay applies once per execution.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use crate::instance::backend::InferenceBackend;
use crate::instance::compute::Placement;
use crate::instance::fault::FaultInjector;

/// Dynamic batching settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Most rows (queries) in one model execution, >= 1.
    pub max_batch: usize,
    /// Longest wait after the first queued request for more to join its batch.
    pub max_delay: Duration,
}

struct Item {
    input: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<f32>, Status>>,
    slot: QueueSlot,
}

/// A place in the bounded queue, held by a request from submission until its batch starts or
/// its client leaves, whichever comes first (both sides hold a clone; the first release counts).
#[derive(Clone)]
struct QueueSlot {
    waiting: Arc<AtomicUsize>,
    released: Arc<AtomicBool>,
}

impl QueueSlot {
    fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The client's side: leaving releases the place.
struct SlotGuard(QueueSlot);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The queue and its batching task; cheap to share.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Item>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
}

impl Batcher {
    /// Starts the batching task (inside a tokio runtime); at most `max_queue` requests wait.
    pub fn start(backend: Arc<dyn InferenceBackend>, faults: Arc<FaultInjector>, cfg: BatchConfig, max_queue: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, backend, faults, cfg));
        Self { tx, waiting: Arc::default(), max_queue }
    }

    /// Queues `rows` queries (`input`, row-major) and waits for their outputs.
    ///
    /// Errors: `RESOURCE_EXHAUSTED` when the queue is full, `INTERNAL` when the model failed.
    /// Dropping the future before the batch starts takes the request out of the queue.
    pub async fn infer(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, Status> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted(format!("instance queue full ({} waiting)", self.max_queue)));
        }
        let slot = QueueSlot { waiting: Arc::clone(&self.waiting), released: Arc::default() };
        let _guard = SlotGuard(slot.clone());
        let (reply, rx) = oneshot::channel();
        self.tx.send(Item { input, rows, reply, slot }).map_err(|_| Status::unavailable("worker shutting down"))?;
        rx.await.map_err(|_| Status::internal("batch task vanished"))?
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Item>, backend: Arc<dyn InferenceBackend>, faults: Arc<FaultInjector>, cfg: BatchConfig) {
    let mut carry: Option<Item> = None;
    let placement = Placement::default();
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        if first.reply.is_closed() {
            continue; // its client left while it waited
        }
        let (batch, next) = collect(&mut rx, first, &cfg).await;
        carry = next;
        execute(batch, &backend, &faults, &placement).await;
    }
}

/// Gathers live requests after `first` until `max_batch` rows or `max_delay`; a request that
/// would overflow the batch is returned to start the next one.
async fn collect(rx: &mut mpsc::UnboundedReceiver<Item>, first: Item, cfg: &BatchConfig) -> (Vec<Item>, Option<Item>) {
    let deadline = Instant::now() + cfg.max_delay;
    let mut rows = first.rows;
    let mut batch = vec![first];
    while rows < cfg.max_batch {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(_) => tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = crate::timer::sleep_until(deadline) => break,
            },
        };
        if item.reply.is_closed() {
            continue;
        }
        if rows + item.rows > cfg.max_batch {
            return (batch, Some(item));
        }
        rows += item.rows;
        batch.push(item);
    }
    (batch, None)
}

/// One model execution for the whole batch; each request gets its own rows back.
async fn execute(batch: Vec<Item>, backend: &Arc<dyn InferenceBackend>, faults: &FaultInjector, placement: &Placement) {
    for item in &batch {
        item.slot.release(); // running now: no longer waiting
    }
    if let Some(delay) = faults.next_delay() {
        // Precise: tokio's sleep would add ~1 ms (whole-millisecond wheel).
        crate::timer::sleep(delay).await;
    }
    let rows: usize = batch.iter().map(|i| i.rows).sum();
    let input: Vec<f32> = batch.iter().flat_map(|i| i.input.iter().copied()).collect();
    let out = match placement.run(backend, input, rows).await {
        Ok(mut out) if out.len() % rows.max(1) == 0 => {
            faults.corrupt(&mut out, rows);
            Ok(out)
        }
        Ok(out) => Err(Status::internal(format!("model returned {} values for batch {rows}", out.len()))),
        Err(e) => Err(e.into()),
    };
    match out {
        Ok(out) => {
            let per_row = out.len() / rows.max(1);
            let mut at = 0;
            for item in batch {
                let n = item.rows * per_row;
                let _ = item.reply.send(Ok(out[at..at + n].to_vec()));
                at += n;
            }
        }
        Err(status) => {
            for item in batch {
                let _ = item.reply.send(Err(status.clone()));
            }
        }
    }
}
