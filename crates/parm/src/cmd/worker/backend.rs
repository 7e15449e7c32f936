//! parm-nn models as parm-serve backends.

use std::path::Path;
use std::sync::Mutex;

use parm_nn::Predictor;
use parm_serve::instance::backend::InferenceBackend;
use parm_serve::oip::ModelSpec;

/// A trained model served by a worker. The mutex makes the model shareable; the worker runs
/// one request at a time anyway (one compute lane per instance).
pub struct NnBackend {
    predictor: Mutex<Predictor>,
    spec: ModelSpec,
}

impl NnBackend {
    /// Loads `weights` and names the served model `name`.
    pub fn load(weights: &Path, name: &str) -> anyhow::Result<Self> {
        let predictor = Predictor::load(weights)?;
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
