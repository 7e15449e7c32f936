//! `--data`, `--labels`, `--preprocess`: the user's own data for `train-parity` and `eval`, and
//! what both do with it so that they see the same queries (same preprocessing, same seeded
//! train / validation / test split, same labels).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use parm_data::{Dataset, Preprocess, UserData};

use crate::deployed::Deployed;

#[derive(Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// The user's inputs instead of a built-in data set: a .npy / .npz array [N, ...] (float32
    /// or uint8), a folder of PNG / JPEG images (CLASS/FILE.png gives labels), or an IDX file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labels of --data: a .npy of N integers. Without labels, the deployed model's own
    /// predictions stand in, and accuracy means agreement with it.
    #[arg(long, requires = "data")]
    pub labels: Option<PathBuf>,
    /// Preprocessing of --data (JSON or TOML: resize, scale, mean, std, layout), applied the
    /// same way in training, evaluation and serving.
    #[arg(long, requires = "data")]
    pub preprocess: Option<PathBuf>,
    /// Seed of the fixed train / validation / test split of --data.
    #[arg(long, default_value_t = 1, requires = "data")]
    pub split_seed: u64,
}

impl DataArgs {
    /// The user's data set, or `None` without `--data`.
    ///
    /// # Errors
    /// Unreadable data, labels or preprocessing file (messages name the file).
    pub fn load(&self) -> anyhow::Result<Option<Dataset>> {
        self.load_or(None)
    }

    /// As [`DataArgs::load`]; without `--preprocess`, `recorded` (what a parity model's metadata
    /// says its training data had) or none.
    pub fn load_or(&self, recorded: Option<Preprocess>) -> anyhow::Result<Option<Dataset>> {
        let Some(inputs) = &self.data else { return Ok(None) };
        let preprocess = match &self.preprocess {
            Some(p) => read_preprocess(p)?,
            None => recorded.unwrap_or_default(),
        };
        let spec = UserData { labels: self.labels.clone(), preprocess, seed: self.split_seed, ..UserData::new(inputs.clone()) };
        Ok(Some(parm_data::load_user_data(&spec)?))
    }
}

/// A [`Preprocess`] from a JSON (`.json`) or TOML file.
pub fn read_preprocess(path: &Path) -> anyhow::Result<Preprocess> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: not a preprocessing description", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{}: not a preprocessing description", path.display()))
    }
}

/// Makes `ds` fit F: checks the query shape, sets `classes` to F's output width, and, for data
/// without labels, labels every query with F's own prediction (cached in `cache`).
///
/// # Errors
/// Queries of another size than F takes; labels outside F's outputs; F's errors.
pub fn fit_to(ds: &mut Dataset, f: &Deployed, cache: &Path) -> anyhow::Result<()> {
    let want: usize = f.input_shape.iter().product();
    if ds.train.dim() != want {
        bail!(
            "the data's queries have {} values ({:?}) but the deployed model takes {want} ({:?})",
            ds.train.dim(),
            ds.input_shape,
            f.input_shape
        );
    }
    if ds.has_labels && ds.classes > f.outputs {
        bail!("the data has labels up to {} but the deployed model has {} outputs", ds.classes - 1, f.outputs);
    }
    ds.classes = f.outputs;
    if !ds.has_labels {
        eprintln!("no labels: the deployed model's own predictions stand in (accuracy = agreement with it)");
        let hash = data_hash(f.hash, ds);
        for (split, name) in [(&mut ds.train, "train"), (&mut ds.val, "val"), (&mut ds.test, "test")] {
            let y = parm_nn::deployed::cached_outputs(f.model.as_ref(), hash, split, name, cache)?;
            split.labels = y.chunks(f.outputs).map(|o| parm_nn::argmax(o).unwrap_or(0) as u8).collect();
        }
    }
    Ok(())
}

/// F's identity combined with the data's, for caches and resumable runs on the user's data
/// (the same F on other data must not reuse them).
pub fn data_hash(model_hash: u64, ds: &Dataset) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    model_hash.hash(&mut h);
    for split in [&ds.train, &ds.val, &ds.test] {
        split.n.hash(&mut h);
        for v in &split.images {
            v.to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// The encoder `name` for queries of `shape`. A query of one axis is a feature vector, never an
/// image: image encoders (concatenation) refuse it even when its length is a square (64 =
/// 8 x 8), which `parm_codes::encoder_for_shape` alone would accept for flat images.
///
/// # Errors
/// An image encoder for vectors; those of `parm_codes::encoder_for_shape`.
pub fn encoder_for_queries(name: &str, k: usize, shape: &[usize]) -> anyhow::Result<Box<dyn parm_codes::Encoder>> {
    if name == "concatenation" && shape.len() < 2 {
        bail!("the concatenation encoder tiles images, and these queries are vectors of shape {shape:?}: use --encoder addition");
    }
    Ok(parm_codes::encoder_for_shape(name, k, shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_encoders_refuse_vectors() {
        let e = encoder_for_queries("concatenation", 2, &[64]).err().unwrap().to_string();
        assert!(e.contains("vectors"), "{e}");
        assert!(encoder_for_queries("concatenation", 2, &[1, 8, 8]).is_ok());
        assert!(encoder_for_queries("addition", 2, &[64]).is_ok());
    }
}
