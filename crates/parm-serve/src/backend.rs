//! What a model instance computes: the [`InferenceBackend`] trait, the [`ModelSpec`] a worker
//! advertises through Open Inference Protocol metadata, and [`LinearBackend`], a tiny exact
//! model for tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, ensure};

/// What a model instance runs. Implemented by parm-nn's models in the binary crate.
///
/// Called from a blocking thread (`tokio::task::spawn_blocking`), one call at a time per worker
/// (the worker has a single compute lane), so implementations may take their time.
pub trait InferenceBackend: Send + Sync + 'static {
    /// The model's name, version and tensor shapes.
    fn spec(&self) -> &ModelSpec;
    /// input: batch * spec.input_len() f32 values, row-major. Returns batch * spec.output_len() values.
    ///
    /// # Errors
    /// Any failure of the model; the worker answers it with gRPC `INTERNAL`.
    fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>>;
}

/// A served model as described by OIP model metadata (`GET /v2/models/{name}` or gRPC
/// `ModelMetadata`). Shapes are per query, without the batch dimension: on the wire they are
/// advertised as `[-1, ...shape]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelSpec {
    /// Model name used in requests (`model_name`).
    pub name: String,
    /// Version string reported in metadata and responses, e.g. "1".
    pub version: String,
    /// OIP platform string, e.g. "parm" or "pytorch_libtorch".
    pub platform: String,
    /// Name of the single input tensor.
    pub input_name: String,
    /// Per-query input shape, no batch dim, e.g. `[784]` or `[3, 32, 32]`.
    pub input_shape: Vec<i64>,
    /// Name of the single output tensor.
    pub output_name: String,
    /// Per-query output shape, no batch dim, e.g. `[10]`.
    pub output_shape: Vec<i64>,
    /// OIP datatype of input and output; parm serves "FP32" only.
    pub datatype: String,
}

impl ModelSpec {
    /// An FP32 model with version "1", platform "parm", tensors named "input" and "output".
    pub fn fp32(name: &str, input_shape: Vec<i64>, output_shape: Vec<i64>) -> Self {
        ModelSpec {
            name: name.to_owned(),
            version: "1".to_owned(),
            platform: "parm".to_owned(),
            input_name: "input".to_owned(),
            input_shape,
            output_name: "output".to_owned(),
            output_shape,
            datatype: "FP32".to_owned(),
        }
    }

    /// Number of f32 values in one query (product of `input_shape`; negative dims count as 0).
    pub fn input_len(&self) -> usize {
        shape_len(&self.input_shape)
    }

    /// Number of f32 values in one prediction (product of `output_shape`).
    pub fn output_len(&self) -> usize {
        shape_len(&self.output_shape)
    }

    /// Checks the spec can be served.
    ///
    /// # Errors
    /// Empty name, datatype other than FP32, or a shape that is empty or has a dim < 1.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.name.is_empty(), "model name is empty");
        ensure!(
            self.datatype == "FP32",
            "datatype {:?} unsupported (FP32 only)",
            self.datatype
        );
        for (what, shape) in [("input", &self.input_shape), ("output", &self.output_shape)] {
            if shape.is_empty() || shape.iter().any(|&d| d < 1) {
                bail!("{what} shape {shape:?} must be non-empty with every dim >= 1");
            }
        }
        Ok(())
    }
}

fn shape_len(shape: &[i64]) -> usize {
    shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .product()
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
        ensure!(
            weights.len() == n_in * n_out,
            "weights: {} values, want {n_out}x{n_in}",
            weights.len()
        );
        ensure!(
            bias.len() == n_out,
            "bias: {} values, want {n_out}",
            bias.len()
        );
        Ok(LinearBackend {
            spec,
            weights,
            bias,
            calls: AtomicUsize::new(0),
        })
    }

    /// Number of `infer` calls so far (calls, not queries).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The exact output for `input` (same maths as `infer`, without counting a call).
    pub fn forward(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let (n_in, n_out) = (self.spec.input_len(), self.spec.output_len());
        ensure!(
            input.len() == batch * n_in,
            "input: {} values, want {batch}x{n_in}",
            input.len()
        );
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
        assert!(
            ModelSpec {
                datatype: "FP16".into(),
                ..spec
            }
            .validate()
            .is_err()
        );
    }
}
