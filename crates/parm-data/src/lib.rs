//! Datasets for parm: an IDX reader (MNIST / Fashion-MNIST file format), the data-fetching step,
//! the user's own data, and an in-memory [`Dataset`] with train / validation / test [`Split`]s.
//!
//! Entry points: [`load_dataset`] (by name), [`load_fashion_mnist`], [`load_mnist`],
//! [`prepare_fashion_mnist`], [`prepare_mnist`], the IDX functions in [`idx`], CIFAR-10 in
//! [`cifar`], and the user's own data ([`user`]): [`load_user_data`] reads `.npy` / `.npz` /
//! IDX files or a folder of PNG / JPEG images, applies one [`Preprocess`] transform (the same
//! one serving applies to queries) and splits with a fixed seed.

pub mod cifar;
pub mod idx;
pub mod prepare;
pub mod user;

use std::path::{Path, PathBuf};

pub use idx::{IdxArray, load_images, load_labels, parse_idx, read_idx};
pub use prepare::{DATASET_NAMES, load_dataset, load_fashion_mnist, load_mnist, prepare_fashion_mnist, prepare_mnist};
pub use user::{
    InputFormat, InputKind, Layout, MIN_ITEMS, Preprocess, SplitIndices, UserData, detect_format, load_user_data, split_indices,
};

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
    /// An input or label array of a dtype that is not supported (`expected` lists those that are).
    #[error("{origin}: unsupported dtype {dtype}; expected {expected}")]
    Dtype { origin: String, dtype: String, expected: &'static str },
    /// The inputs hold no item.
    #[error("{origin}: no data (0 items)")]
    Empty { origin: String },
    /// Too few items to split into train / validation / test.
    #[error("{origin}: {n} items; at least {min} are needed to split into train / validation / test")]
    TooFew { origin: String, n: usize, min: usize },
    /// Images of different sizes without a resize (sizes are `[H, W]` in pixels).
    #[error(
        "{path}: image is {}x{} (HxW) but {first} is {}x{}; images must share a size unless preprocessing resizes them",
        size[0], size[1], first_size[0], first_size[1], path = .path.display(), first = .first.display()
    )]
    ImageSize { path: PathBuf, size: [usize; 2], first: PathBuf, first_size: [usize; 2] },
    /// An entry of an image folder that is not a PNG / JPEG file where one is expected.
    #[error("{path}: {why}; an image folder holds .png / .jpg / .jpeg files, or class folders of them", path = .path.display())]
    NotAnImage { path: PathBuf, why: &'static str },
    /// An image file that could not be decoded.
    #[error("{path}: cannot decode image: {msg}", path = .path.display())]
    Image { path: PathBuf, msg: String },
    /// A label outside `0..=255` (labels are bytes).
    #[error("{origin}: label {value} at index {index} is outside 0..=255")]
    Label { origin: String, index: usize, value: i128 },
    /// An `.npz` archive without a recognisable input array.
    #[error(
        "{path}: no input array; expected one named {} (or a single array), found {found:?}",
        user::NPZ_INPUT_NAMES.join(" / "), path = .path.display()
    )]
    NpzArrays { path: PathBuf, found: Vec<String> },
    /// An input path whose kind is not recognised.
    #[error(
        "{path}: unknown input format; expected a .npy or .npz file, an IDX file (.idx or *-idx3-ubyte, optionally .gz) \
         or a folder of PNG / JPEG images",
        path = .path.display()
    )]
    UnknownFormat { path: PathBuf },
    /// [`Preprocess::apply`] could not transform a query (`origin`: the item, or `<query>`).
    #[error("{origin}: preprocessing: {msg}")]
    Preprocess { origin: String, msg: String },
    /// Invalid settings for the user's data (e.g. split fractions).
    #[error("invalid data settings: {msg}")]
    Config { msg: String },
}

impl DataError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        DataError::Io { op, path: path.to_path_buf(), source }
    }
}

/// A dataset split into train, validation and test sets.
///
/// Each item (query) is `input_shape` values, row-major; `classes` labels `0..classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Dataset name: as accepted by [`load_dataset`] (e.g. `"fashion-mnist"`), or the file stem
    /// / folder name of the user's data.
    pub name: String,
    /// Image height in pixels; 1 for feature vectors.
    pub rows: usize,
    /// Image width in pixels; `d` for feature vectors.
    pub cols: usize,
    /// Shape of one query without the batch dimension, in the layout the model takes:
    /// `[1, 28, 28]` for the built-in MNIST-like sets, `[3, 32, 32]` for CIFAR-10, `[C, H, W]`
    /// (or `[H, W, C]` with [`Layout::Nhwc`]) for the user's images, `[d]` for feature vectors.
    pub input_shape: Vec<usize>,
    /// Number of classes; every label is `< classes`. 0 for user data without labels (the
    /// caller sets it, e.g. from the model's output width).
    pub classes: usize,
    /// Whether the labels are real. `true` for the built-in sets; `false` for user data without
    /// labels, whose labels are all 0 placeholders: downstream code substitutes the deployed
    /// model's predictions and reports agreement with it, not accuracy.
    pub has_labels: bool,
    /// The transform that produced the inputs from raw data (scale resolved), which serving
    /// must apply to raw queries too; `None` for the built-in sets (already scaled to `[0, 1]`).
    pub preprocess: Option<Preprocess>,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    /// Values per query: the product of `input_shape` (`C * H * W`, or `d`).
    pub fn dim(&self) -> usize {
        self.input_shape.iter().product()
    }
}

/// One set of `n` labelled items (images or feature vectors).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    /// `n * dim` values, item after item, each row-major. For the built-in sets raw byte
    /// values divided by 255, so in `[0, 1]`; for user data, preprocessed values.
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
