//! An in-process model instance: the model runs inside the frontend's process, behind the
//! same compute lane and queue as a `parm worker` ([`crate::instance::executor`]), and the
//! frontend calls it through the same [`Instance`] seam as a remote one. Named in an instance
//! list as `inproc:PATH` (`parm serve --deployed inproc:model.bpk`), like Triton's model
//! instances that run in the server process.
//!
//! Why: on a machine where the frontend and its instances share cores, a remote call costs
//! more CPU than a small model's compute. `bench/efficiency/sched-trace.sh` measured `parm
//! serve` + `parm worker` at 5,600 req/s on one core: 94 us of the frontend's CPU and 64 us of
//! the worker's per request, of which the Fashion-MNIST MLP itself computes about 20 us; the
//! rest is the gRPC hop (encodings, HTTP/2, the worker's wake-up). An in-process call saves
//! the hop and the worker's wake-up: 87-89 us of CPU per request against 158 us at 5,600
//! req/s, saturation 27,800-28,100 req/s against 12,600-12,900 (`MODES="pair inproc"
//! bench/efficiency/cpu-per-query.sh`). The price is the failure model: the model shares the
//! frontend's process, so a crash of the one is a crash of the other, and a coding group's
//! parity query protects against a slow lane, not a dead machine. Use remote instances where
//! that matters.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::instance::backend::InferenceBackend;
use crate::instance::executor::Executor;
use crate::instance::fault::FaultConfig;
use crate::instance::worker::{batch_of, check_model};
use crate::upstream::{Instance, InstanceError};

/// How an instance list names an in-process instance: `inproc:PATH`.
pub const INPROC: &str = "inproc:";

/// True for an instance-list entry that names an in-process instance (`inproc:PATH`).
pub fn is_inproc(entry: &str) -> bool {
    entry.trim().starts_with(INPROC)
}

/// Most calls waiting for an in-process instance's compute lane: no bound of its own, since
/// every call comes from this frontend, whose admission control bounds them (`--max-inflight`,
/// and the calls kept after a reconstruction). A bound of 1,024, a worker's default, equal to
/// the default `--max-inflight`, failed queries with "queue full" at 1.5x the 5 ms objective
/// rate of the coded in-process setup (bench/efficiency/slo.sh, parm-inproc-coded).
pub const MAX_QUEUE: usize = usize::MAX;

/// One model behind one compute lane, in this process.
pub struct LocalInstance {
    /// The entry that names it (`inproc:PATH`), its address in errors, logs and metrics.
    addr: String,
    exec: Executor,
}

impl LocalInstance {
    /// Serves `backend` under its spec's name as the instance named `entry`, with injected
    /// `faults` (for experiments; `FaultConfig::default()`: none).
    ///
    /// # Errors
    /// `entry` is not `inproc:PATH`, or the backend's spec is invalid.
    pub fn new(entry: &str, backend: Arc<dyn InferenceBackend>, faults: FaultConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(is_inproc(entry), "instance '{entry}': an in-process instance is named {INPROC}PATH");
        backend.spec().validate()?;
        Ok(LocalInstance { addr: entry.trim().to_string(), exec: Executor::new(backend, faults, MAX_QUEUE, None) })
    }

    /// The model served here: name, version, tensor shapes.
    pub fn spec(&self) -> &crate::oip::ModelSpec {
        self.exec.spec()
    }

    /// `model` must be the one served here.
    fn check(&self, model: &str) -> Result<(), InstanceError> {
        check_model(self.exec.spec(), model, "").map_err(|s| InstanceError::from_status(&self.addr, &s))
    }

    async fn run(&self, model: &str, input: &[f32], shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        self.check(model)?;
        let invalid = |message: String| InstanceError::InvalidArgument { addr: self.addr.clone(), message };
        let spec = self.exec.spec();
        let batch = batch_of(spec, shape).map_err(invalid)?;
        if input.len() != batch * spec.input_len() {
            return Err(invalid(format!("{} values for shape {shape:?}", input.len())));
        }
        // A fast model computes in place: without this yield a request would be read,
        // admitted, computed and answered in one poll, and under overload the queue would
        // form in the socket buffers before admission, where its queueing delay cannot be
        // seen. Yielding lets the runtime read what has arrived first, so the queue forms
        // here, after admission (`server::admission`), which sheds by it.
        tokio::task::yield_now().await;
        match tokio::time::timeout(timeout, self.exec.infer(input.to_vec(), batch)).await {
            Ok(out) => out.map_err(|s| InstanceError::from_status(&self.addr, &s)),
            Err(_) => Err(InstanceError::Timeout { addr: self.addr.clone(), timeout }),
        }
    }
}

impl Instance for LocalInstance {
    fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `model` on `input` (`shape` `[b, ...]`); waiting for the lane ends when the
    /// future is dropped, as a remote call's would.
    ///
    /// Errors: [`InstanceError::NotFound`] for another model, [`InstanceError::InvalidArgument`]
    /// for a shape that does not fit the model or `input`, [`InstanceError::Other`] (`INTERNAL`) when the model failed or
    /// panicked, [`InstanceError::Timeout`] after `timeout`.
    fn infer<'a>(
        &'a self,
        model: &'a str,
        input: &'a [f32],
        shape: &'a [i64],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
        Box::pin(self.run(model, input, shape, timeout))
    }

    fn connect<'a>(&'a self, model: &'a str, _timeout: Duration) -> BoxFuture<'a, Result<(), InstanceError>> {
        Box::pin(async move { self.check(model) })
    }

    fn model_ready<'a>(&'a self, model: &'a str, _timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.check(model).is_ok() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::backend::LinearBackend;
    use crate::oip::ModelSpec;

    fn linear() -> Arc<LinearBackend> {
        let spec = ModelSpec::fp32("lin", vec![2], vec![2]);
        Arc::new(LinearBackend::new(spec, vec![1.0, 2.0, 3.0, 4.0], vec![0.5, -0.5]).unwrap())
    }

    #[tokio::test]
    async fn computes_the_model_and_refuses_what_a_worker_would() {
        let backend = linear();
        let i = LocalInstance::new("inproc:lin.bpk", backend.clone(), FaultConfig::default()).unwrap();
        let t = Duration::from_secs(1);
        assert_eq!(i.infer("lin", &[1.0, 1.0, 0.0, 2.0], &[2, 2], t).await.unwrap(), vec![3.5, 6.5, 4.5, 7.5]);
        assert!(matches!(i.infer("other", &[1.0, 1.0], &[1, 2], t).await, Err(InstanceError::NotFound { .. })));
        assert!(matches!(i.infer("lin", &[1.0, 1.0], &[1, 3], t).await, Err(InstanceError::InvalidArgument { .. })));
        assert!(matches!(i.infer("lin", &[1.0], &[1, 2], t).await, Err(InstanceError::InvalidArgument { .. })));
        assert_eq!(backend.calls(), 1, "refused calls never reach the model");
        assert!(i.model_ready("lin", t).await && !i.model_ready("other", t).await);
        assert!(LocalInstance::new("127.0.0.1:9001", backend, FaultConfig::default()).is_err());
    }

    #[tokio::test]
    async fn a_call_past_its_timeout_is_a_timeout_and_a_dropped_one_never_runs() {
        let backend = linear();
        let faults: FaultConfig = "delay_ms=200,prob=1.0".parse().unwrap();
        let i = Arc::new(LocalInstance::new("inproc:lin", backend.clone(), faults).unwrap());
        let t = Duration::from_millis(50);
        // The first call holds the lane for 200 ms; the second waits in the queue and gives up.
        let first = tokio::spawn({
            let i = i.clone();
            async move { i.infer("lin", &[1.0, 1.0], &[1, 2], Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = i.infer("lin", &[1.0, 1.0], &[1, 2], t).await.unwrap_err();
        assert!(matches!(err, InstanceError::Timeout { .. }), "{err}");
        assert_eq!(first.await.unwrap().unwrap(), vec![3.5, 6.5]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(backend.calls(), 1, "the call that left the queue never ran");
    }
}
