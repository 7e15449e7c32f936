//! Where one model execution runs: on the runtime thread that holds the request when the model
//! is fast, else on tokio's blocking pool.
//!
//! Handing a computation to the blocking pool and back costs two thread wake-ups. For the
//! Fashion-MNIST MLP (tens of us per query) that hand-off was a large share of a worker's CPU:
//! task switches led a profile of `parm serve` + `parm worker` at 4,000 req/s on one core
//! (BENCHMARKS.md, "Throughput at a latency objective"). tokio asks that a task run no longer
//! than 10-100 us between `.await`s, so an execution expected to take under [`INLINE_MAX`]
//! runs in place; longer ones (a ResNet, a big batch) keep the runtime free for other calls,
//! health checks and metrics. The expectation is the last execution's time per row times the
//! rows of this one; the first execution, with nothing measured yet, goes to the pool.
//!
//! Measured (`bench/efficiency/cpu-per-query.sh`, serve + worker on one core, with `parm
//! worker --runtime-threads 0`): at 4,000 req/s 3.2-3.4 context switches per request against
//! 5.4-6.1 before; closed-loop saturation 8,600-13,100 req/s (median 11,500, 9 runs) against
//! 8,700-10,300 (median 9,500, 9 runs), interleaved on a VM whose runs vary by a third.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::instance::backend::InferenceBackend;

/// Executions expected to take less than this run on the runtime thread (tokio's guidance
/// for the time between `.await`s: 10-100 us).
pub const INLINE_MAX: Duration = Duration::from_micros(100);

/// Why an execution gave no output.
#[derive(Debug)]
pub(crate) enum ComputeError {
    /// The model returned an error.
    Failed(anyhow::Error),
    /// The model panicked (the message, as far as it is a string).
    Panicked(String),
}

/// Chooses where each execution of one backend runs, from the time the last one took.
pub(crate) struct Placement {
    /// Nanoseconds per row of the last execution; `u64::MAX` before the first.
    last_ns_per_row: AtomicU64,
}

impl Default for Placement {
    fn default() -> Self {
        Placement { last_ns_per_row: AtomicU64::new(u64::MAX) }
    }
}

impl Placement {
    /// Whether an execution of `rows` rows is expected to take less than [`INLINE_MAX`].
    pub(crate) fn inline(&self, rows: usize) -> bool {
        let per_row = self.last_ns_per_row.load(Ordering::Relaxed);
        per_row.saturating_mul(rows.max(1) as u64) < INLINE_MAX.as_nanos() as u64
    }

    fn record(&self, took: Duration, rows: usize) {
        let per_row = took.as_nanos() / rows.max(1) as u128;
        self.last_ns_per_row.store(u64::try_from(per_row).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Runs `backend` on `input` (`rows` rows): in place when [`Placement::inline`], else on
    /// the blocking pool; a panic of the model is caught and returned as an error either way.
    pub(crate) async fn run(&self, backend: &Arc<dyn InferenceBackend>, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, ComputeError> {
        if self.inline(rows) {
            return self.run_here(&**backend, &input, rows);
        }
        let b = Arc::clone(backend);
        let out = tokio::task::spawn_blocking(move || timed(&*b, &input, rows)).await.map_err(|e| e.to_string());
        self.settle(out, rows)
    }

    /// Runs `backend` on this thread, whatever [`Placement::inline`] says (no `.await`: a
    /// caller holding a compute lane keeps it until the output is in).
    pub(crate) fn run_here(&self, backend: &dyn InferenceBackend, input: &[f32], rows: usize) -> Result<Vec<f32>, ComputeError> {
        let out = catch_unwind(AssertUnwindSafe(|| timed(backend, input, rows))).map_err(|p| panic_message(&*p));
        self.settle(out, rows)
    }

    /// Records the model's time and turns the outcome into the output or its error.
    fn settle(&self, out: Result<(anyhow::Result<Vec<f32>>, Duration), String>, rows: usize) -> Result<Vec<f32>, ComputeError> {
        let (out, took) = out.map_err(ComputeError::Panicked)?;
        self.record(took, rows);
        out.map_err(ComputeError::Failed)
    }
}

/// One model call and its time alone (the hand-off to the pool is not the model's time).
fn timed(backend: &dyn InferenceBackend, input: &[f32], rows: usize) -> (anyhow::Result<Vec<f32>>, Duration) {
    let started = Instant::now();
    let out = backend.infer(input, rows);
    (out, started.elapsed())
}

impl From<ComputeError> for tonic::Status {
    /// gRPC `INTERNAL`, naming what went wrong.
    fn from(e: ComputeError) -> Self {
        match e {
            ComputeError::Failed(e) => tonic::Status::internal(format!("model failed: {e:#}")),
            ComputeError::Panicked(msg) => tonic::Status::internal(format!("model panicked: {msg}")),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::ModelSpec;

    /// Busy for `per_row` per row (a spin: a sleep would oversleep by the timer slack), or
    /// panics on an empty input.
    struct Slow {
        spec: ModelSpec,
        per_row: Duration,
    }

    impl InferenceBackend for Slow {
        fn spec(&self) -> &ModelSpec {
            &self.spec
        }
        fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
            assert!(!input.is_empty(), "empty input");
            let until = Instant::now() + self.per_row * batch as u32;
            while Instant::now() < until {}
            Ok(vec![1.0; batch])
        }
    }

    fn backend(per_row: Duration) -> Arc<dyn InferenceBackend> {
        Arc::new(Slow { spec: ModelSpec::fp32("m", vec![1], vec![1]), per_row })
    }

    #[tokio::test]
    async fn a_fast_model_runs_in_place_after_its_first_execution() {
        let (b, p) = (backend(Duration::ZERO), Placement::default());
        assert!(!p.inline(1), "nothing measured yet: the blocking pool");
        assert_eq!(p.run(&b, vec![0.5], 1).await.unwrap(), vec![1.0]);
        assert!(p.inline(1) && p.inline(8));
    }

    #[tokio::test]
    async fn a_slow_model_or_a_big_batch_goes_to_the_blocking_pool() {
        let (b, p) = (backend(Duration::from_millis(1)), Placement::default());
        p.run(&b, vec![0.5], 1).await.unwrap();
        assert!(!p.inline(1), "1 ms per row");
        let (fast, p) = (backend(Duration::from_micros(20)), Placement::default());
        p.run(&fast, vec![0.5], 1).await.unwrap();
        assert!(p.inline(1), "about 20 us");
        assert!(!p.inline(64), "64 rows at ~20 us: over {INLINE_MAX:?}");
    }

    #[tokio::test]
    async fn a_panic_in_place_is_an_error_not_a_dead_task() {
        let (b, p) = (backend(Duration::ZERO), Placement::default());
        p.run(&b, vec![0.5], 1).await.unwrap();
        assert!(p.inline(1));
        match p.run(&b, Vec::new(), 1).await {
            Err(ComputeError::Panicked(msg)) => assert!(msg.contains("empty input"), "{msg}"),
            other => panic!("expected a caught panic, got {other:?}"),
        }
    }
}
