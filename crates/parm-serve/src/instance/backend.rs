//! What a model instance computes: the [`InferenceBackend`] trait and [`LinearBackend`], a
//! tiny exact model for tests. The shapes a backend serves are its [`ModelSpec`].

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::ensure;

use crate::oip::ModelSpec;

/// What a model instance runs. Implemented by parm-nn's models in the binary crate.
///
/// Called one call at a time per worker (the worker has a single compute lane): on a blocking
/// thread (`tokio::task::spawn_blocking`), or in place on a runtime thread when its last call
/// took under 100 us per the rows asked ([`crate::instance::compute`]). So implementations may
/// take their time, but must not block on the tokio runtime themselves.
pub trait InferenceBackend: Send + Sync + 'static {
    /// The model's name, version and tensor shapes.
    fn spec(&self) -> &ModelSpec;
    /// input: batch * spec.input_len() f32 values, row-major. Returns batch * spec.output_len() values.
    ///
    /// # Errors
    /// Any failure of the model; the worker answers it with gRPC `INTERNAL`.
    fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>>;
}

/// Test backend: y = W x + b per query, exact, with a call counter (so tests can check which
/// requests were actually computed, e.g. that a cancelled queued request never ran).
pub struct LinearBackend {
    spec: ModelSpec,
    /// `output_len x input_len`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    calls: AtomicUsize,
}

impl LinearBackend {
    /// `weights` is `spec.output_len() x spec.input_len()` row-major, `bias` has `output_len`.
    ///
    /// # Errors
    /// Invalid spec or weight/bias lengths that do not match it.
    pub fn new(spec: ModelSpec, weights: Vec<f32>, bias: Vec<f32>) -> anyhow::Result<Self> {
        spec.validate()?;
        let (n_in, n_out) = (spec.input_len(), spec.output_len());
        ensure!(weights.len() == n_in * n_out, "weights: {} values, want {n_out}x{n_in}", weights.len());
        ensure!(bias.len() == n_out, "bias: {} values, want {n_out}", bias.len());
        Ok(LinearBackend { spec, weights, bias, calls: AtomicUsize::new(0) })
    }

    /// Number of `infer` calls so far (calls, not queries).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The exact output for `input` (same maths as `infer`, without counting a call).
    pub fn forward(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let (n_in, n_out) = (self.spec.input_len(), self.spec.output_len());
        ensure!(input.len() == batch * n_in, "input: {} values, want {batch}x{n_in}", input.len());
        let mut out = Vec::with_capacity(batch * n_out);
        for x in input.chunks_exact(n_in) {
            for (row, b) in self.weights.chunks_exact(n_in).zip(&self.bias) {
                out.push(row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b);
            }
        }
        Ok(out)
    }
}

impl InferenceBackend for LinearBackend {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.forward(input, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_backend_computes_wx_plus_b() {
        let spec = ModelSpec::fp32("lin", vec![2], vec![2]);
        let lin = LinearBackend::new(spec, vec![1.0, 2.0, 3.0, 4.0], vec![0.5, -0.5]).unwrap();
        let y = lin.infer(&[1.0, 1.0, 0.0, 2.0], 2).unwrap();
        assert_eq!(y, vec![3.5, 6.5, 4.5, 7.5]);
        assert_eq!(lin.calls(), 1);
        assert!(lin.infer(&[1.0], 1).is_err());
    }

    #[test]
    fn spec_lengths_and_validation() {
        let spec = ModelSpec::fp32("m", vec![1, 28, 28], vec![10]);
        assert_eq!((spec.input_len(), spec.output_len()), (784, 10));
        assert!(spec.validate().is_ok());
        assert!(ModelSpec::fp32("m", vec![0], vec![10]).validate().is_err());
        assert!(ModelSpec { datatype: "FP16".into(), ..spec }.validate().is_err());
    }
}
