//! Model architectures, training of deployed and parity models, and accuracy evaluation.
//!
//! Built on burn 0.22 with the pure-Rust flex backend (CPU) and, with the `cuda` feature,
//! burn's CUDA backend: [`ComputeDevice::open`] gives the device. Training runs on
//! `device.autodiff()`, inference on `device` (`Device::flex()` unless asked otherwise).
//!
//! Sources: the deployed model and the parity-model recipe follow ParM (Kosaian et al.,
//! SOSP 2019, §3.3 and §5.1) and the public parity-models code (see `shared/docs/PARM.md` §2).

pub mod cells;
pub mod cnn;
pub mod deployed;
pub mod device;
pub mod eval;
pub mod export;
pub mod meta;
pub mod mlp;
pub mod onnx;
pub mod onnx_ort;
pub mod parity;
pub mod predictor;
pub mod testing;
pub mod train;
pub mod weights;

pub use cnn::{Classifier, Net, NetConfig};
pub use deployed::DeployedModel;
pub use device::ComputeDevice;
pub use meta::{ModelKind, ModelMeta};
pub use mlp::{Mlp, MlpConfig};
pub use onnx::OnnxModel;
pub use predictor::Predictor;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Errors of training, loading and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("data: {0}")]
    Data(#[from] parm_data::DataError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not valid model metadata: {source}")]
    Meta { path: String, source: serde_json::Error },
    #[error("{path}: cannot load weights: {message}")]
    Weights { path: String, message: String },
    /// An ONNX file that cannot be served ([`onnx::OnnxModel::load`]), or a run that failed.
    #[error("{path}: {message}")]
    Onnx { path: String, message: String },
    /// A compute device that cannot be used ([`ComputeDevice::open`]).
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> NnError + '_ {
    move |source| NnError::Io { path: path.display().to_string(), source }
}

/// A `[rows, cols]` float tensor from row-major values.
pub fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// A `[n]` integer tensor of class labels.
pub fn labels1(labels: &[u8], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// The row-major values of a float tensor.
pub fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("float tensor holds f32 values")
}

/// Index of the largest value (first on ties); `None` for an empty slice.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}
