//! The deployed model F as parity training and evaluation see it: a function from a batch of
//! queries to their outputs, wherever it runs.
//!
//! A parity model learns from F's outputs, never from F's weights (ParM SOSP 2019 §3.3:
//! targets are `F(X1) + ... + F(Xk)`), so any F works: one of parm's own burn models (every
//! [`Classifier`] is a [`DeployedModel`]), an ONNX file run in process, or a model on any Open
//! Inference Protocol server reached over the network. [`cached_outputs`] computes F's outputs
//! on a data set once, in chunks that survive an interrupted run.

use std::path::{Path, PathBuf};

use parm_data::Split;

use crate::train::progress_bar;
use crate::{Classifier, NnError, io_err, tensor2, to_vec};

/// Rows of one cache chunk: a resumed run redoes at most this many rows.
const CACHE_CHUNK: usize = 1024;

/// The deployed model F: queries in, outputs (logits) out.
pub trait DeployedModel {
    /// `input`: `[batch, d]` row-major f32 (d = values per query) -> `[batch, outputs]`
    /// row-major f32.
    ///
    /// # Errors
    /// Whatever the model's runtime or the network reports; input of the wrong length is
    /// [`NnError::Invalid`].
    fn outputs(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError>;

    /// Most rows per [`DeployedModel::outputs`] call when a whole data set is computed.
    fn max_batch(&self) -> usize {
        1000
    }
}

impl<T: Classifier> DeployedModel for T {
    fn outputs(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        if batch == 0 || !input.len().is_multiple_of(batch) {
            return Err(NnError::Invalid(format!("{} input values do not split into {batch} queries", input.len())));
        }
        let dim = input.len() / batch;
        Ok(to_vec(self.classify(tensor2(input.to_vec(), batch, dim, &self.device()))))
    }
}

/// F's outputs on `n` row-major queries of `dim` values, in calls of at most
/// `model.max_batch()` rows: `[n, outputs]` flattened.
///
/// # Errors
/// The first error of [`DeployedModel::outputs`]; outputs whose length is not a multiple of
/// the rows asked are [`NnError::Invalid`].
pub fn outputs_of(model: &dyn DeployedModel, inputs: &[f32], n: usize, dim: usize) -> Result<Vec<f32>, NnError> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        // Read each time: a remote model may lower it after a refused batch.
        let rows = model.max_batch().max(1).min(n - start);
        let y = model.outputs(&inputs[start * dim..(start + rows) * dim], rows)?;
        if y.is_empty() || !y.len().is_multiple_of(rows) {
            return Err(NnError::Invalid(format!("the deployed model returned {} values for {rows} queries", y.len())));
        }
        out.extend(y);
        start += rows;
    }
    Ok(out)
}

/// F's outputs on `split`, `[n, outputs]` flattened, cached in `cache_dir` under
/// `logits-{model_hash}-{split_name}.f32` so that every parity model trained against the same
/// F reuses them. Computed in chunks of 1024 rows, each written to
/// `logits-{model_hash}-{split_name}.parts/` as soon as it is done: an interrupted run (a slow
/// remote model, Ctrl-C) resumes from the last finished chunk.
///
/// `model_hash` must identify F's function (content hash of its weights, or of a remote
/// model's address and metadata).
///
/// # Errors
/// Those of [`outputs_of`], and I/O errors of the cache.
pub fn cached_outputs(
    model: &dyn DeployedModel,
    model_hash: u64,
    split: &Split,
    split_name: &str,
    cache_dir: &Path,
) -> Result<Vec<f32>, NnError> {
    let path = cache_dir.join(format!("logits-{model_hash:016x}-{split_name}.f32"));
    if let Some(v) = read_f32(&path).filter(|v| !v.is_empty() && v.len().is_multiple_of(split.n.max(1))) {
        return Ok(v);
    }
    let parts = cache_dir.join(format!("logits-{model_hash:016x}-{split_name}.parts"));
    std::fs::create_dir_all(&parts).map_err(io_err(&parts))?;
    let dim = split.dim();
    let chunks = split.n.div_ceil(CACHE_CHUNK);
    let bar = progress_bar(split.n as u64, chunks > 1, &format!("F on {split_name}"));
    let mut out = Vec::new();
    for c in 0..chunks {
        let (start, end) = (c * CACHE_CHUNK, ((c + 1) * CACHE_CHUNK).min(split.n));
        let part = parts.join(format!("{c:06}.f32"));
        let y = match read_f32(&part) {
            Some(y) if !y.is_empty() && y.len().is_multiple_of(end - start) => y,
            _ => {
                let y = outputs_of(model, &split.images[start * dim..end * dim], end - start, dim)?;
                write_f32(&part, &y)?;
                y
            }
        };
        out.extend(y);
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    write_f32(&path, &out)?;
    let _ = std::fs::remove_dir_all(&parts);
    Ok(out)
}

fn read_f32(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    bytes.len().is_multiple_of(4).then(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Writes through a temporary name and renames, so a killed run never leaves a short file.
fn write_f32(path: &Path, values: &[f32]) -> Result<(), NnError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// y = [sum(x), -sum(x)]; fails once after `fail_after` calls, then works again.
    struct Sums {
        calls: Cell<usize>,
        fail_at: Cell<Option<usize>>,
    }

    impl DeployedModel for Sums {
        fn outputs(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
            let call = self.calls.get();
            self.calls.set(call + 1);
            if self.fail_at.get() == Some(call) {
                self.fail_at.set(None);
                return Err(NnError::Invalid("connection reset".into()));
            }
            let d = input.len() / batch;
            Ok(input.chunks(d).flat_map(|x| [x.iter().sum::<f32>(), -x.iter().sum::<f32>()]).collect())
        }
        fn max_batch(&self) -> usize {
            300
        }
    }

    #[test]
    fn an_interrupted_computation_resumes_from_its_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2500;
        let split = Split { images: (0..n * 3).map(|i| i as f32).collect(), labels: vec![0; n], n };
        // 1024-row chunks in calls of <= 300 rows: 4 calls per full chunk; fail in chunk 2.
        let model = Sums { calls: Cell::new(0), fail_at: Cell::new(Some(5)) };
        assert!(cached_outputs(&model, 9, &split, "train", dir.path()).is_err());
        assert_eq!(model.calls.get(), 6);
        let y = cached_outputs(&model, 9, &split, "train", dir.path()).unwrap();
        // Chunk 0 (4 calls) was kept: only chunks 1 and 2 were computed again (4 + 2 calls).
        assert_eq!(model.calls.get(), 12);
        assert_eq!(y.len(), n * 2);
        assert_eq!(&y[2 * 2499..], &[3.0 * 7497.0 + 3.0, -(3.0 * 7497.0 + 3.0)]);
        // Cached: no more calls, and the chunk folder is gone.
        assert_eq!(cached_outputs(&model, 9, &split, "train", dir.path()).unwrap(), y);
        assert_eq!(model.calls.get(), 12);
        assert!(!dir.path().join(format!("logits-{:016x}-train.parts", 9)).exists());
    }
}
