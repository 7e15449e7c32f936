//! Input and label arrays from `.npy`, `.npz` and IDX files.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use npyz::{NpyFile, Order, TypeChar};

use super::preprocess::InputKind;
use crate::DataError;

/// Input dtypes accepted, for error messages.
pub const INPUT_DTYPES: &str =
    "float32, float64 or uint8 (refused: other integer types, bool, float16, complex, strings, objects, records)";
/// Label dtypes accepted, for error messages.
pub const LABEL_DTYPES: &str = "an integer type (int8..int64, uint8..uint64)";
/// `.npz` array names taken as inputs, in order of preference.
pub const NPZ_INPUT_NAMES: [&str; 4] = ["x", "inputs", "images", "X"];
/// `.npz` array names taken as labels, in order of preference.
pub const NPZ_LABEL_NAMES: [&str; 3] = ["y", "labels", "Y"];

/// A whole input array `[N, ...]`, as raw `f32` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub kind: InputKind,
}

/// Reads an `.npy` input array. Errors: [`DataError::Io`] for an unreadable or invalid file,
/// [`DataError::Dtype`] for a dtype outside [`INPUT_DTYPES`].
pub(crate) fn read_npy_inputs(path: &Path) -> Result<RawArray, DataError> {
    inputs_from(open_npy(path)?, &path.display().to_string())
}

/// Reads an `.npy` label array (`[N]` or `[N, 1]`, integer dtype, values `0..=255`).
/// Errors: [`DataError::Io`], [`DataError::Dtype`], [`DataError::Shape`], [`DataError::Label`].
pub(crate) fn read_npy_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    labels_from(open_npy(path)?, &path.display().to_string())
}

/// Reads an IDX file (gzip or plain, unsigned bytes) as inputs. Errors: those of
/// [`crate::read_idx`].
pub(crate) fn read_idx_inputs(path: &Path) -> Result<RawArray, DataError> {
    let a = crate::read_idx(path)?;
    Ok(RawArray { shape: a.dims, data: a.data.into_iter().map(f32::from).collect(), kind: InputKind::Bytes })
}

/// Reads an IDX label file (1 dim). Errors: those of [`crate::load_labels`].
pub(crate) fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    crate::load_labels(path)
}

/// Reads the inputs of an `.npz` archive (the first of [`NPZ_INPUT_NAMES`] present, else its
/// only array) and its labels (the first of [`NPZ_LABEL_NAMES`] present, if any).
///
/// Errors: [`DataError::Io`] for an unreadable archive, [`DataError::NpzArrays`] (names sorted)
/// when no array qualifies as inputs, and those of the `.npy` readers.
pub(crate) fn read_npz(path: &Path) -> Result<(RawArray, Option<Vec<u8>>), DataError> {
    let io = |e: zip::result::ZipError| DataError::io("reading", path, e.into());
    let file = File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let mut npz: Npz = zip::ZipArchive::new(BufReader::new(file)).map_err(io)?;
    // An .npz is a zip archive of .npy files, one per array (numpy.savez, savez_compressed).
    let mut names = Vec::new();
    for name in npz.file_names() {
        if let Some(array) = name.map_err(io)?.strip_suffix(".npy") {
            names.push(array.to_string());
        }
    }
    names.sort();
    let input = NPZ_INPUT_NAMES.iter().map(|s| s.to_string()).find(|n| names.contains(n));
    let Some(input) = input.or_else(|| (names.len() == 1).then(|| names[0].clone())) else {
        return Err(DataError::NpzArrays { path: path.to_path_buf(), found: names });
    };
    let origin = |name: &str| format!("{}[{name}]", path.display());
    let inputs = inputs_from(npz_array(&mut npz, path, &input)?, &origin(&input))?;
    let Some(label) = NPZ_LABEL_NAMES.iter().find(|n| names.iter().any(|m| m == *n) && **n != input) else {
        return Ok((inputs, None));
    };
    Ok((inputs, Some(labels_from(npz_array(&mut npz, path, label)?, &origin(label))?)))
}

type Npz = zip::ZipArchive<BufReader<File>>;

/// The array `name` of an `.npz` archive (its entry `name.npy`), read as it is decompressed.
fn npz_array<'a>(npz: &'a mut Npz, path: &Path, name: &str) -> Result<NpyFile<zip::read::ZipFile<'a, BufReader<File>>>, DataError> {
    let entry = npz.by_name(&format!("{name}.npy")).map_err(|e| DataError::io("reading", path, e.into()))?;
    NpyFile::new(entry).map_err(|e| DataError::io("reading", path, e))
}

fn open_npy(path: &Path) -> Result<NpyFile<BufReader<File>>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    NpyFile::new(BufReader::new(file)).map_err(|e| DataError::io("reading", path, e))
}

fn inputs_from<R: Read>(npy: NpyFile<R>, origin: &str) -> Result<RawArray, DataError> {
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == Order::Fortran;
    let (tc, size) = scalar_type(&npy, origin, INPUT_DTYPES)?;
    let (data, kind) = match (tc, size) {
        (TypeChar::Uint, 1) => (to_f32(values::<u8, _>(npy, origin)?), InputKind::Bytes),
        (TypeChar::Float, 4) => (values::<f32, _>(npy, origin)?, InputKind::Float),
        (TypeChar::Float, 8) => (values::<f64, _>(npy, origin)?.into_iter().map(|v| v as f32).collect(), InputKind::Float),
        _ => return Err(dtype_error(&npy, origin, INPUT_DTYPES)),
    };
    let data = if fortran { fortran_to_c(&data, &shape) } else { data };
    Ok(RawArray { shape, data, kind })
}

fn labels_from<R: Read>(npy: NpyFile<R>, origin: &str) -> Result<Vec<u8>, DataError> {
    let shape = npy.shape().to_vec();
    if !matches!(shape[..], [_] | [_, 1]) {
        return Err(DataError::Shape { origin: origin.into(), msg: format!("labels must have shape [N] or [N, 1], found {shape:?}") });
    }
    let (tc, size) = scalar_type(&npy, origin, LABEL_DTYPES)?;
    let wide: Vec<i128> = match (tc, size) {
        (TypeChar::Int, 1) => widen(values::<i8, _>(npy, origin)?),
        (TypeChar::Int, 2) => widen(values::<i16, _>(npy, origin)?),
        (TypeChar::Int, 4) => widen(values::<i32, _>(npy, origin)?),
        (TypeChar::Int, 8) => widen(values::<i64, _>(npy, origin)?),
        (TypeChar::Uint, 1) => widen(values::<u8, _>(npy, origin)?),
        (TypeChar::Uint, 2) => widen(values::<u16, _>(npy, origin)?),
        (TypeChar::Uint, 4) => widen(values::<u32, _>(npy, origin)?),
        (TypeChar::Uint, 8) => widen(values::<u64, _>(npy, origin)?),
        _ => return Err(dtype_error(&npy, origin, LABEL_DTYPES)),
    };
    to_labels(&wide, origin)
}

/// Labels as bytes. Errors: [`DataError::Label`] naming the first value outside `0..=255`.
fn to_labels(values: &[i128], origin: &str) -> Result<Vec<u8>, DataError> {
    values
        .iter()
        .enumerate()
        .map(|(index, &v)| u8::try_from(v).map_err(|_| DataError::Label { origin: origin.into(), index, value: v }))
        .collect()
}

fn widen<T: Into<i128>>(v: Vec<T>) -> Vec<i128> {
    v.into_iter().map(Into::into).collect()
}

fn to_f32(v: Vec<u8>) -> Vec<f32> {
    v.into_iter().map(f32::from).collect()
}

fn scalar_type<R: Read>(npy: &NpyFile<R>, origin: &str, expected: &'static str) -> Result<(TypeChar, u64), DataError> {
    match npy.dtype() {
        npyz::DType::Plain(ts) => Ok((ts.type_char(), ts.size_field())),
        _ => Err(dtype_error(npy, origin, expected)),
    }
}

fn dtype_error<R: Read>(npy: &NpyFile<R>, origin: &str, expected: &'static str) -> DataError {
    DataError::Dtype { origin: origin.into(), dtype: npy.dtype().descr(), expected }
}

fn values<T: npyz::Deserialize, R: Read>(npy: NpyFile<R>, origin: &str) -> Result<Vec<T>, DataError> {
    npy.into_vec::<T>().map_err(|e| DataError::Shape { origin: origin.into(), msg: format!("reading the array data: {e}") })
}

/// Reorders column-major (Fortran-order) `data` of `shape` to row-major.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        // Offset of `index` in column-major order: the first index changes fastest.
        let offset = index.iter().zip(shape).rev().fold(0, |acc, (&i, &n)| acc * n + i);
        out.push(data[offset]);
        for (i, &n) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < n {
                break;
            }
            *i = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_becomes_row_major() {
        // A 2x3 array [[0, 1, 2], [3, 4, 5]] stored column-major is 0 3 1 4 2 5.
        assert_eq!(fortran_to_c(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], &[2, 3]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // 2x2x2: element (i, j, k) = 4i + 2j + k, column-major offset i + 2j + 4k.
        let f: Vec<f32> = (0..8).map(|o| (4 * (o % 2) + 2 * ((o / 2) % 2) + o / 4) as f32).collect();
        assert_eq!(fortran_to_c(&f, &[2, 2, 2]), (0..8).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn labels_outside_a_byte_are_refused() {
        assert_eq!(to_labels(&[0, 255], "l").unwrap(), vec![0, 255]);
        assert!(to_labels(&[3, 256], "l").unwrap_err().to_string().contains("label 256 at index 1"));
        assert!(to_labels(&[-1], "l").is_err());
    }
}
