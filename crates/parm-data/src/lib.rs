//! Datasets for parm: an IDX reader (MNIST / Fashion-MNIST file format), the data-fetching step,
//! and an in-memory [`Dataset`] with train / validation / test [`Split`]s of images scaled to
//! `[0, 1]`.
//!
//! Entry points: [`load_dataset`] (by name), [`load_fashion_mnist`], [`load_mnist`],
//! [`prepare_fashion_mnist`], [`prepare_mnist`], and the IDX functions in [`idx`].

pub mod cifar;
pub mod idx;
pub mod prepare;

use std::path::{Path, PathBuf};

pub use idx::{IdxArray, load_images, load_labels, parse_idx, read_idx};
pub use prepare::{DATASET_NAMES, load_dataset, load_fashion_mnist, load_mnist, prepare_fashion_mnist, prepare_mnist};

/// Every error this crate returns. Messages name the file involved where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading, writing or copying a file failed.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bytes that are not a valid IDX array (bad magic, unsupported type, wrong length, ...).
    /// `origin` is the file path, or `<memory>` for [`parse_idx`].
    #[error("{origin}: invalid IDX data: {msg}")]
    Idx { origin: String, msg: String },
    /// A valid file whose shape or content does not fit its role (e.g. an image file with 1 dim).
    #[error("{origin}: {msg}")]
    Shape { origin: String, msg: String },
    /// Image and label counts differ.
    #[error("{images} images but {labels} labels ({origin})")]
    CountMismatch { images: usize, labels: usize, origin: String },
    /// A JSON data file could not be parsed.
    #[error("{path}: invalid JSON: {source}", path = .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The raw data could not be obtained (no local copy and the download step failed).
    #[error("could not obtain {dataset}: {msg}")]
    Fetch { dataset: &'static str, msg: String },
    /// [`load_dataset`] was given a name it does not know.
    #[error("unknown dataset {name:?}; valid names: {}", DATASET_NAMES.join(", "))]
    UnknownDataset { name: String },
}

impl DataError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        DataError::Io { op, path: path.to_path_buf(), source }
    }
}

/// A labelled image dataset split into train, validation and test sets.
///
/// Images are single-channel, `rows x cols` pixels, row-major; `classes` labels `0..classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Dataset name as accepted by [`load_dataset`] (e.g. `"fashion-mnist"`).
    pub name: String,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Number of classes; every label is `< classes`.
    pub classes: usize,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    /// Pixels per image, `rows * cols`.
    pub fn dim(&self) -> usize {
        self.rows * self.cols
    }
}

/// One set of `n` labelled images.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    /// `n * dim` pixel intensities, image after image, each image row-major; raw byte values
    /// divided by 255, so in `[0, 1]`.
    pub images: Vec<f32>,
    /// `n` class labels.
    pub labels: Vec<u8>,
    /// Number of images (= `labels.len()`).
    pub n: usize,
}

impl Split {
    /// Builds a split from raw bytes (`labels.len() * dim` of them), scaling each by `1/255`.
    ///
    /// Errors: [`DataError::CountMismatch`] if `pixels.len() != labels.len() * dim`
    /// (`origin` names the source in the message).
    pub fn from_bytes(pixels: &[u8], dim: usize, labels: Vec<u8>, origin: &str) -> Result<Split, DataError> {
        let n_images = pixels.len().checked_div(dim).unwrap_or(0);
        if dim == 0 || !pixels.len().is_multiple_of(dim) || n_images != labels.len() {
            return Err(DataError::CountMismatch { images: n_images, labels: labels.len(), origin: origin.to_string() });
        }
        let images = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        Ok(Split { images, labels, n: n_images })
    }

    /// Pixels per image (`images.len() / n`; 0 for an empty split).
    pub fn dim(&self) -> usize {
        self.images.len().checked_div(self.n).unwrap_or(0)
    }

    /// The `dim()` pixels of image `i`. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.n, "image index {i} out of range (n = {})", self.n);
        let d = self.dim();
        &self.images[i * d..(i + 1) * d]
    }

    /// A new split holding images `range` of this one, in order. Panics if out of range.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Split {
        let d = self.dim();
        Split { images: self.images[range.start * d..range.end * d].to_vec(), labels: self.labels[range.clone()].to_vec(), n: range.len() }
    }

    /// A new split holding the images at `indices`, in that order. Panics if out of range.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.dim());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Split { images, labels, n: indices.len() }
    }
}

/// Loads an IDX image file (3 dims) and its IDX label file (1 dim) into a [`Split`].
///
/// Returns `(rows, cols, split)`. Errors: any error of [`load_images`] / [`load_labels`], and
/// [`DataError::CountMismatch`] when the two files hold different numbers of items.
pub fn load_idx_pair(images: &Path, labels: &Path) -> Result<(usize, usize, Split), DataError> {
    let (n, rows, cols, pixels) = load_images(images)?;
    let labels_v = load_labels(labels)?;
    if n != labels_v.len() {
        return Err(DataError::CountMismatch {
            images: n,
            labels: labels_v.len(),
            origin: format!("{} vs {}", images.display(), labels.display()),
        });
    }
    let split = Split::from_bytes(&pixels, rows * cols, labels_v, &images.display().to_string())?;
    Ok((rows, cols, split))
}
