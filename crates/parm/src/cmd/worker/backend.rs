//! parm-nn models as parm-serve backends: parm's own models (`.bpk`) and ONNX files.

use std::path::Path;
use std::sync::Mutex;

use parm_nn::onnx::BatchAxis;
use parm_nn::{OnnxModel, Predictor};
use parm_serve::instance::backend::InferenceBackend;
use parm_serve::oip::ModelSpec;

/// A trained model served by a worker. The mutex makes the model shareable; the worker runs
/// one request at a time anyway (one compute lane per instance).
pub struct NnBackend {
    predictor: Mutex<Predictor>,
    spec: ModelSpec,
}

impl NnBackend {
    /// Loads `weights` onto `device` and names the served model `name`.
    pub fn load(weights: &Path, name: &str, device: &burn::tensor::Device) -> anyhow::Result<Self> {
        let predictor = Predictor::load_on(weights, device)?;
        let meta = predictor.meta();
        let spec = ModelSpec {
            platform: format!("parm_{}", serde_json::to_value(meta.kind)?.as_str().unwrap_or("model")),
            input_name: "input".into(),
            output_name: "logits".into(),
            // The model's own output width: `classes`, or k x classes for a per-query parity model.
            ..ModelSpec::fp32(name, meta.input_shape.clone(), vec![meta.mlp.classes as i64])
        };
        Ok(Self { predictor: Mutex::new(predictor), spec })
    }
}

impl InferenceBackend for NnBackend {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let p = self.predictor.lock().map_err(|_| anyhow::anyhow!("model poisoned by an earlier panic"))?;
        Ok(p.infer(input, batch)?)
    }
}

/// OIP platform of ONNX models. Triton says `onnxruntime_onnx` for its onnxruntime backend;
/// parm runs them with tract, so it names the format only.
pub const ONNX_PLATFORM: &str = "onnx";

/// An ONNX file run in process by tract or ONNX Runtime ([`OnnxModel`]). The model is `Sync`:
/// no lock is needed here.
pub struct OnnxBackend {
    model: OnnxModel,
    spec: ModelSpec,
}

impl OnnxBackend {
    /// Loads `path` for `runtime`, serving the graph output `output` (default: the first
    /// float32 output of rank 2) under `name`; metadata carries the graph's own tensor names and per-query shapes.
    pub fn load(path: &Path, name: &str, output: Option<&str>, runtime: &parm_nn::onnx::OnnxRuntime) -> anyhow::Result<Self> {
        let model = OnnxModel::load_with(path, output, runtime)?;
        if let BatchAxis::Fixed(b) = model.batch_axis() {
            tracing::warn!("{}: the graph's batch axis is fixed to {b}: queries run {b} at a time", path.display());
        }
        let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<i64>>();
        let spec = ModelSpec {
            platform: ONNX_PLATFORM.into(),
            input_name: model.input_name().into(),
            output_name: model.output_name().into(),
            ..ModelSpec::fp32(name, dims(model.input_shape()), dims(model.output_shape()))
        };
        Ok(Self { model, spec })
    }
}

impl InferenceBackend for OnnxBackend {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn infer(&self, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        Ok(self.model.infer(input, batch)?)
    }
}
