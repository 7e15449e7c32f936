//! Model metadata, stored as JSON beside the weights (`NAME.json` next to `NAME.bpk`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{MlpConfig, NnError, io_err};

/// Deployed model F, or parity model Fp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Deployed,
    Parity,
}

/// What a weights file is: architecture, data, and how good it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub kind: ModelKind,
    /// Architecture name, e.g. `mlp-784-200-100-10`.
    pub arch: String,
    pub mlp: MlpConfig,
    pub dataset: String,
    /// Shape of one query, without the batch dimension, e.g. `[784]`.
    pub input_shape: Vec<i64>,
    pub classes: usize,
    /// Deployed model: top-1 test accuracy (fraction).
    pub test_accuracy: Option<f64>,
    /// Parity model: queries per coding group.
    pub k: Option<usize>,
    /// Parity model: encoder name, e.g. `addition`.
    pub encoder: Option<String>,
    /// Parity model: best validation degraded-mode accuracy (fraction).
    pub val_degraded_accuracy: Option<f64>,
    pub epochs: usize,
    pub steps: u64,
    pub train_seconds: f64,
    /// The preprocessing of the data the model was trained on (`parm_data::Preprocess` as
    /// JSON, resolved: its `scale` filled in), so that `parm eval` applies the same; absent
    /// for parm's built-in data sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<serde_json::Value>,
}

/// `dir/name.bpk` and `dir/name.json`.
pub fn model_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.bpk")), dir.join(format!("{name}.json")))
}

impl ModelMeta {
    /// Metadata of a deployed model of architecture `mlp` that parm did not train (or has not
    /// yet): one query is `[mlp.input]` values and its prediction `mlp.classes`, with no
    /// accuracy and no training recorded. Callers that know more set those fields (a parity
    /// model's `kind`, `k` and `encoder`, another input shape) with `..ModelMeta::untrained(..)`.
    pub fn untrained(mlp: MlpConfig, dataset: &str) -> Self {
        ModelMeta {
            kind: ModelKind::Deployed,
            arch: mlp.name(),
            dataset: dataset.to_owned(),
            input_shape: vec![mlp.input as i64],
            classes: mlp.classes,
            mlp,
            test_accuracy: None,
            k: None,
            encoder: None,
            val_degraded_accuracy: None,
            epochs: 0,
            steps: 0,
            train_seconds: 0.0,
            preprocess: None,
        }
    }

    /// Reads metadata from a JSON file. Errors: I/O, or JSON that does not match.
    pub fn load(path: &Path) -> Result<Self, NnError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|source| NnError::Meta { path: path.display().to_string(), source })
    }

    /// Writes metadata as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), NnError> {
        let text = serde_json::to_string_pretty(self).expect("metadata serialises");
        std::fs::write(path, text).map_err(io_err(path))
    }
}
