//! A model instance's compute lane and its queue: what a `parm worker` does with a request
//! once it is parsed, and what an in-process instance ([`crate::instance::local`]) does with
//! a call, so that both run one model the same way.
//!
//! One compute lane per instance (a 1-permit FIFO [`Semaphore`]), like a single-GPU model
//! instance: requests run one at a time, in arrival order, the others wait in a queue of at
//! most `max_queue` requests (beyond that: `RESOURCE_EXHAUSTED`).
//!
//! * **Waiting in the queue is cancellable.** Dropping the [`Executor::infer`] future (the
//!   client reset its stream, or the frontend dropped the call) takes the request out of the
//!   queue without it ever running. This is how the frontend "cancels the queued original"
//!   once a reconstruction has answered for it (ParM, Kosaian et al., SOSP'19, §4).
//! * **Holding the lane is not.** Once a request holds the lane, its fault delay
//!   ([`FaultConfig`]) and compute run to completion, even if the caller goes away: a GPU
//!   kernel cannot be recalled either, and the lane stays busy meanwhile. A fast model
//!   computes in place, on the runtime thread, in one go; a slow one, or one behind a delay,
//!   in a task of its own ([`crate::instance::compute`]).
//! * With dynamic batching ([`crate::instance::batcher`]) the batcher holds the queue instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::Status;

use crate::instance::backend::InferenceBackend;
use crate::instance::batcher::{BatchConfig, Batcher};
use crate::instance::compute::{ComputeError, Placement};
use crate::instance::fault::{FaultConfig, FaultInjector};
use crate::oip::ModelSpec;

/// One model behind one compute lane.
pub(crate) struct Executor {
    backend: Arc<dyn InferenceBackend>,
    lane: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    faults: Arc<FaultInjector>,
    batcher: Option<Batcher>,
    /// Where executions run (in place or on the blocking pool).
    placement: Arc<Placement>,
}

impl Executor {
    /// Must run inside a tokio runtime when `batching` is set (it starts the batching task).
    pub(crate) fn new(backend: Arc<dyn InferenceBackend>, faults: FaultConfig, max_queue: usize, batching: Option<BatchConfig>) -> Self {
        let faults = Arc::new(FaultInjector::new(faults));
        let batcher = batching.map(|cfg| Batcher::start(Arc::clone(&backend), Arc::clone(&faults), cfg, max_queue));
        Executor {
            backend,
            lane: Arc::new(Semaphore::new(1)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_queue,
            faults,
            batcher,
            placement: Arc::default(),
        }
    }

    pub(crate) fn spec(&self) -> &ModelSpec {
        self.backend.spec()
    }

    /// Runs the model on `batch` rows of `input` (row-major, `batch * spec.input_len()`
    /// values, checked by the caller) and returns `batch * spec.output_len()` values.
    ///
    /// Errors: `RESOURCE_EXHAUSTED` when the queue is full; `INTERNAL` when the model failed,
    /// panicked, or returned another number of values.
    pub(crate) async fn infer(&self, input: Vec<f32>, batch: usize) -> Result<Vec<f32>, Status> {
        let out = match &self.batcher {
            Some(b) => b.infer(input, batch).await?,
            None => self.execute(input, batch).await?,
        };
        let want = batch * self.spec().output_len();
        if out.len() != want {
            return Err(Status::internal(format!("model returned {} values for batch {batch} x {}", out.len(), self.spec().output_len())));
        }
        Ok(out)
    }

    /// Waits for the compute lane. Cancellation point: dropping this future leaves the queue.
    async fn acquire_lane(&self) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(permit) = self.lane.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let slot = QueueSlot::take(&self.waiting, self.max_queue)
            .ok_or_else(|| Status::resource_exhausted(format!("instance queue full ({} waiting)", self.max_queue)))?;
        let permit = self.lane.clone().acquire_owned().await;
        slot.leave();
        permit.map_err(|_| Status::internal("compute lane closed"))
    }

    /// Queue, then compute; with an injected delay, delay + compute in a detached task that
    /// holds the lane until it finishes. A fast model computes in place ([`Placement`]): no
    /// await between taking the lane and releasing it, so it cannot be cancelled midway either.
    async fn execute(&self, input: Vec<f32>, batch: usize) -> Result<Vec<f32>, Status> {
        let permit = self.acquire_lane().await?;
        let delay = self.faults.next_delay();
        let result = if delay.is_none() && self.placement.inline(batch) {
            let out = self.placement.run_here(&*self.backend, &input, batch);
            drop(permit);
            corrupted(&self.faults, out, batch)
        } else {
            let (backend, faults, placement) = (Arc::clone(&self.backend), Arc::clone(&self.faults), Arc::clone(&self.placement));
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let _permit = permit; // released only when the compute is done
                if let Some(delay) = delay {
                    // Precise: tokio's sleep would add ~1 ms (whole-millisecond wheel) to every
                    // injected delay.
                    crate::timer::sleep(delay).await;
                }
                let out = placement.run(&backend, input, batch).await;
                let _ = tx.send(corrupted(&faults, out, batch)); // the caller may be gone; the work still counted
            });
            rx.await.map_err(|_| Status::internal("compute task vanished"))?
        };
        result.map_err(Status::from)
    }
}

/// The output with the injected wrong values, if any ([`FaultInjector::corrupt`]).
fn corrupted(faults: &FaultInjector, out: Result<Vec<f32>, ComputeError>, batch: usize) -> Result<Vec<f32>, ComputeError> {
    out.map(|mut out| {
        faults.corrupt(&mut out, batch);
        out
    })
}

/// One place in the bounded queue; released on drop, i.e. also when the waiting request is
/// cancelled by its caller.
struct QueueSlot {
    waiting: Arc<AtomicUsize>,
    served: bool,
}

impl QueueSlot {
    fn take(waiting: &Arc<AtomicUsize>, max_queue: usize) -> Option<Self> {
        let before = waiting.fetch_add(1, Ordering::SeqCst);
        let slot = QueueSlot { waiting: Arc::clone(waiting), served: false };
        (before < max_queue).then_some(slot) // on None, dropping `slot` undoes the add
    }

    fn leave(mut self) {
        self.served = true;
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if !self.served {
            tracing::debug!("request left the queue without running (cancelled or rejected)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_slots_are_bounded_and_released() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let a = QueueSlot::take(&waiting, 2).unwrap();
        let b = QueueSlot::take(&waiting, 2).unwrap();
        assert!(QueueSlot::take(&waiting, 2).is_none());
        assert_eq!(waiting.load(Ordering::SeqCst), 2);
        drop(a);
        b.leave();
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
    }
}
