//! The user's own data: inputs from a `.npy` / `.npz` file, an IDX file or a folder of PNG /
//! JPEG images, optional labels, one [`Preprocess`] transform, and a fixed seeded split into
//! train / validation / test.
//!
//! Formats ([`detect_format`]):
//! - `.npy`: an array `[N, ...]` of float32 or float64 (taken as is, float64 narrowed) or
//!   uint8 (byte values, scaled by `1/255` by default); other dtypes are refused
//!   ([`INPUT_DTYPES`]). C or Fortran order.
//! - `.npz`: inputs are the array named `x`, `inputs`, `images` or `X` ([`NPZ_INPUT_NAMES`]),
//!   else the only array; labels the array named `y`, `labels` or `Y` if present.
//! - IDX (`*.idx`, `*-idx3-ubyte`, either with `.gz`): unsigned bytes, as MNIST.
//! - a folder: `ROOT/CLASS/IMAGE` (ImageFolder layout: labels are the indices of the sorted
//!   class folder names) or `ROOT/IMAGE` (no labels); PNG or JPEG, decoded to 8 bits, gray if
//!   every image is gray else RGB, held `[C, H, W]`.
//!
//! A query's raw shape is the array shape without `N`: `[d]` is a feature vector, `[H, W]` a
//! one-channel image, `[C, H, W]` a channel-first image; other ranks are refused.
//! Labels ([`UserData::labels`], overriding any in the inputs): `.npy` of an integer dtype
//! (`[N]` or `[N, 1]`) or an IDX label file, values `0..=255`.

mod arrays;
mod images;
mod preprocess;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use arrays::{INPUT_DTYPES, LABEL_DTYPES, NPZ_INPUT_NAMES, NPZ_LABEL_NAMES};
pub use images::IMAGE_EXTENSIONS;
pub use preprocess::{InputKind, Layout, Preprocess};

use crate::{DataError, Dataset, Split};

/// Fewest items [`load_user_data`] accepts (so that every split can hold one).
pub const MIN_ITEMS: usize = 10;

/// Where the user's data is and how to prepare and split it. Deserializes with defaults for
/// all but `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    /// Input file or image folder (see the module docs for formats).
    pub inputs: PathBuf,
    /// Label file (`.npy` of integers or IDX), overriding labels found with the inputs.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Transform applied to every input (its `scale` resolved by input kind).
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Fraction of items held out for validation, in `[0, 1)`. Default 0.1.
    #[serde(default = "default_fraction")]
    pub val_fraction: f64,
    /// Fraction of items held out for test, in `[0, 1)`. Default 0.1.
    #[serde(default = "default_fraction")]
    pub test_fraction: f64,
    /// Seed of the split's shuffle. Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_fraction() -> f64 {
    0.1
}

fn default_seed() -> u64 {
    1
}

impl UserData {
    /// `inputs` with no label file, the default [`Preprocess`], 10% validation, 10% test, seed 1.
    pub fn new(inputs: impl Into<PathBuf>) -> Self {
        UserData {
            inputs: inputs.into(),
            labels: None,
            preprocess: Preprocess::default(),
            val_fraction: default_fraction(),
            test_fraction: default_fraction(),
            seed: default_seed(),
        }
    }
}

/// The kind of an input path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Npy,
    Npz,
    Idx,
    ImageFolder,
}

/// Detects the format of `path`: a folder is an image folder; files by name (case-insensitive):
/// `*.npy`, `*.npz`, `*.idx[.gz]`, `*idx*ubyte[.gz]`.
///
/// Errors: [`DataError::Io`] if `path` does not exist; [`DataError::UnknownFormat`] otherwise.
pub fn detect_format(path: &Path) -> Result<InputFormat, DataError> {
    if !path.exists() {
        return Err(DataError::io("opening", path, std::io::ErrorKind::NotFound.into()));
    }
    if path.is_dir() {
        return Ok(InputFormat::ImageFolder);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    match () {
        _ if name.ends_with(".npy") => Ok(InputFormat::Npy),
        _ if name.ends_with(".npz") => Ok(InputFormat::Npz),
        _ if base.ends_with(".idx") || (base.contains("idx") && base.ends_with("ubyte")) => Ok(InputFormat::Idx),
        _ => Err(DataError::UnknownFormat { path: path.to_path_buf() }),
    }
}

/// Item indices of each split, each in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitIndices {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// The fixed split of `n` items: a seeded shuffle (SplitMix64 Fisher-Yates, implemented here
/// so it cannot change with a dependency) whose first `round(n * test_fraction)` items are the
/// test set, the next `round(n * val_fraction)` the validation set, the rest training; a
/// positive fraction gets at least one item. The same `(n, fractions, seed)` always give the
/// same split.
///
/// Errors: [`DataError::Config`] for a fraction outside `[0, 1)`, or fractions that leave no
/// training item.
pub fn split_indices(n: usize, val_fraction: f64, test_fraction: f64, seed: u64) -> Result<SplitIndices, DataError> {
    check_fractions(val_fraction, test_fraction)?;
    let count = |f: f64| if f > 0.0 { ((n as f64 * f).round() as usize).max(1) } else { 0 };
    let (n_val, n_test) = (count(val_fraction), count(test_fraction));
    if n_val + n_test >= n {
        let msg = format!("{n_val} validation + {n_test} test items leave none of {n} for training");
        return Err(DataError::Config { msg });
    }
    let perm = crate::prepare::seeded_permutation(n, seed);
    let sorted = |s: &[usize]| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v
    };
    let (test, rest) = perm.split_at(n_test);
    let (val, train) = rest.split_at(n_val);
    Ok(SplitIndices { train: sorted(train), val: sorted(val), test: sorted(test) })
}

fn check_fractions(val_fraction: f64, test_fraction: f64) -> Result<(), DataError> {
    for (what, f) in [("val_fraction", val_fraction), ("test_fraction", test_fraction)] {
        if !(0.0..1.0).contains(&f) {
            return Err(DataError::Config { msg: format!("{what} {f} is outside [0, 1)") });
        }
    }
    Ok(())
}

/// Loads the user's data as a [`Dataset`]: reads the inputs (and labels), applies
/// `u.preprocess` resolved for the input kind to every item, and splits with
/// [`split_indices`].
///
/// The dataset: `name` = file stem or folder name; `input_shape` = one preprocessed query
/// (`[d]`, `[C, H, W]` or `[H, W, C]`); `rows`/`cols` = `1`/`d` for vectors, else `H`/`W`;
/// with labels, `has_labels` and `classes` = number of class folders, else largest label + 1;
/// without, `has_labels = false`, all labels 0 and `classes = 0` (to be set by the caller);
/// `preprocess` = the resolved transform, to be applied to queries when serving.
///
/// Errors: those of [`detect_format`] and the readers ([`DataError::Io`], [`DataError::Dtype`],
/// [`DataError::NpzArrays`], [`DataError::NotAnImage`], [`DataError::Image`],
/// [`DataError::ImageSize`], [`DataError::Label`], [`DataError::Idx`], [`DataError::Shape`]);
/// [`DataError::Preprocess`] naming the item; [`DataError::Empty`]; [`DataError::TooFew`]
/// below [`MIN_ITEMS`]; [`DataError::CountMismatch`] when labels and inputs differ in number;
/// [`DataError::Config`] for bad fractions.
pub fn load_user_data(u: &UserData) -> Result<Dataset, DataError> {
    check_fractions(u.val_fraction, u.test_fraction)?;
    let loaded = read_and_preprocess(u, detect_format(&u.inputs)?)?;
    let n = loaded.n;
    if n < MIN_ITEMS {
        return Err(DataError::TooFew { origin: u.inputs.display().to_string(), n, min: MIN_ITEMS });
    }
    let (labels, classes) = labels_and_classes(u, loaded.labels, n)?;
    let has_labels = labels.is_some();
    let all = Split { images: loaded.values, labels: labels.unwrap_or_else(|| vec![0; n]), n };
    let idx = split_indices(n, u.val_fraction, u.test_fraction, u.seed)?;
    let (rows, cols) = rows_cols(&loaded.shape, loaded.preprocess.layout);
    Ok(Dataset {
        name: data_name(&u.inputs),
        rows,
        cols,
        input_shape: loaded.shape,
        classes,
        has_labels,
        preprocess: Some(loaded.preprocess),
        train: all.select(&idx.train),
        val: all.select(&idx.val),
        test: all.select(&idx.test),
    })
}

/// The labels (from `u.labels` if set, else those `found` with the inputs) and the class
/// count (`found`'s, else largest label + 1); `(None, 0)` without labels.
fn labels_and_classes(u: &UserData, found: Option<(Vec<u8>, Option<usize>)>, n: usize) -> Result<(Option<Vec<u8>>, usize), DataError> {
    let (labels, classes) = match (&u.labels, found) {
        (Some(path), _) => (read_label_file(path)?, None),
        (None, Some(found)) => found,
        (None, None) => return Ok((None, 0)),
    };
    if labels.len() != n {
        let origin = format!("{} vs {}", u.labels.as_deref().unwrap_or(&u.inputs).display(), u.inputs.display());
        return Err(DataError::CountMismatch { images: n, labels: labels.len(), origin });
    }
    let classes = classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| usize::from(m) + 1));
    Ok((Some(labels), classes))
}

/// Every item preprocessed, back to back.
struct Loaded {
    values: Vec<f32>,
    /// Shape of one preprocessed item.
    shape: Vec<usize>,
    n: usize,
    preprocess: Preprocess,
    /// Labels found with the inputs, and the class count if the source fixes it.
    labels: Option<(Vec<u8>, Option<usize>)>,
}

fn read_and_preprocess(u: &UserData, format: InputFormat) -> Result<Loaded, DataError> {
    let path = &u.inputs;
    let (array, labels) = match format {
        InputFormat::Npy => (arrays::read_npy_inputs(path)?, None),
        InputFormat::Idx => (arrays::read_idx_inputs(path)?, None),
        InputFormat::Npz => arrays::read_npz(path)?,
        InputFormat::ImageFolder => return read_images(u),
    };
    let preprocess = u.preprocess.resolved(array.kind);
    let (values, shape, n) = preprocess_array(&array, &preprocess, path)?;
    Ok(Loaded { values, shape, n, preprocess, labels: labels.map(|l| (l, None)) })
}

fn preprocess_array(a: &arrays::RawArray, pre: &Preprocess, path: &Path) -> Result<(Vec<f32>, Vec<usize>, usize), DataError> {
    let origin = path.display().to_string();
    let Some((&n, item)) = a.shape.split_first().filter(|(_, item)| !item.is_empty()) else {
        let msg = format!("array of shape {:?}; expected [N, d], [N, H, W] or [N, C, H, W]", a.shape);
        return Err(DataError::Shape { origin, msg });
    };
    if n == 0 || a.data.is_empty() {
        return Err(DataError::Empty { origin });
    }
    let d = a.data.len() / n;
    let (mut values, mut shape) = (Vec::new(), Vec::new());
    for (i, raw) in a.data.chunks_exact(d).enumerate() {
        let (v, s) = pre.apply_at(raw, item).map_err(|msg| DataError::Preprocess { origin: format!("{origin} item {i}"), msg })?;
        values.extend(v);
        shape = s;
    }
    Ok((values, shape, n))
}

fn read_images(u: &UserData) -> Result<Loaded, DataError> {
    let set = images::read_image_folder(&u.inputs, u.preprocess.resize.is_none())?;
    if set.items.is_empty() {
        return Err(DataError::Empty { origin: u.inputs.display().to_string() });
    }
    let preprocess = u.preprocess.resolved(InputKind::Bytes);
    let (mut values, mut shape) = (Vec::new(), Vec::new());
    for (path, raw, s) in &set.items {
        let (v, out) = preprocess.apply_at(raw, s).map_err(|msg| DataError::Preprocess { origin: path.display().to_string(), msg })?;
        values.extend(v);
        shape = out;
    }
    let classes = set.classes.len();
    Ok(Loaded { values, shape, n: set.items.len(), preprocess, labels: set.labels.map(|l| (l, Some(classes))) })
}

fn read_label_file(path: &Path) -> Result<Vec<u8>, DataError> {
    match detect_format(path)? {
        InputFormat::Npy => arrays::read_npy_labels(path),
        InputFormat::Idx => arrays::read_idx_labels(path),
        _ => Err(DataError::Shape { origin: path.display().to_string(), msg: "labels must be a .npy file or an IDX label file".into() }),
    }
}

/// `rows`/`cols` of a dataset whose query shape is `shape`: `1`/`d` for `[d]`, else `H`/`W`.
fn rows_cols(shape: &[usize], layout: Layout) -> (usize, usize) {
    match (shape, layout) {
        ([d], _) => (1, *d),
        ([_, h, w], Layout::Nchw) | ([h, w, _], Layout::Nhwc) => (*h, *w),
        _ => (1, shape.iter().product()),
    }
}

/// The file stem, or the folder name, of `path` (`"user-data"` if it has none).
fn data_name(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| "user-data".to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"").unwrap();
            p
        };
        assert_eq!(detect_format(&touch("a.NPY")).unwrap(), InputFormat::Npy);
        assert_eq!(detect_format(&touch("a.npz")).unwrap(), InputFormat::Npz);
        assert_eq!(detect_format(&touch("a.idx")).unwrap(), InputFormat::Idx);
        assert_eq!(detect_format(&touch("t10k-images-idx3-ubyte.gz")).unwrap(), InputFormat::Idx);
        assert_eq!(detect_format(dir.path()).unwrap(), InputFormat::ImageFolder);
        assert!(matches!(detect_format(&touch("a.csv")), Err(DataError::UnknownFormat { .. })));
        assert!(matches!(detect_format(&dir.path().join("missing.npy")), Err(DataError::Io { .. })));
    }

    #[test]
    fn rows_and_cols_follow_the_layout() {
        assert_eq!(rows_cols(&[13], Layout::Nchw), (1, 13));
        assert_eq!(rows_cols(&[3, 4, 5], Layout::Nchw), (4, 5));
        assert_eq!(rows_cols(&[4, 5, 3], Layout::Nhwc), (4, 5));
    }
}
