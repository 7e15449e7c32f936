//! Reader for the IDX file format, as described on Yann LeCun's MNIST page
//! (<http://yann.lecun.com/exdb/mnist/>) and used by MNIST and Fashion-MNIST.
//!
//! Layout (all integers big-endian):
//! - magic number, 4 bytes: `0x00 0x00 <type> <ndims>`; type `0x08` = unsigned byte,
//!   (`0x09` i8, `0x0B` i16, `0x0C` i32, `0x0D` f32, `0x0E` f64 exist but are not supported here);
//! - `ndims` sizes, 4 bytes each (u32);
//! - the data: `product(sizes)` elements, last index changing fastest (row-major).
//!
//! Files may be gzip-compressed (detected by the magic bytes `1f 8b`), as distributed.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use crate::DataError;

/// Element type code for unsigned bytes, the only type supported.
pub const TYPE_U8: u8 = 0x08;
/// Largest number of dimensions accepted.
pub const MAX_DIMS: usize = 4;
/// Largest decompressed IDX file accepted from a gzip stream (bytes): 1 GiB.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first (e.g. `[60000, 28, 28]` for MNIST images).
    pub dims: Vec<usize>,
    /// `product(dims)` elements, row-major.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// Encodes the array as an uncompressed IDX file (type 0x08).
    ///
    /// Panics if `dims` is empty or longer than [`MAX_DIMS`], a size exceeds `u32::MAX`, or
    /// `data.len()` differs from the product of `dims`.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!((1..=MAX_DIMS).contains(&self.dims.len()), "IDX needs 1..=4 dims");
        assert_eq!(self.dims.iter().product::<usize>(), self.data.len(), "data length");
        let mut out = vec![0, 0, TYPE_U8, self.dims.len() as u8];
        for &d in &self.dims {
            out.extend_from_slice(&u32::try_from(d).expect("dim fits u32").to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// Reads and decodes an IDX file (gzip-compressed or plain) of unsigned bytes.
///
/// Errors: [`DataError::Io`] if the file cannot be read; [`DataError::Idx`] (naming `path`)
/// for the format errors listed on [`parse_idx`].
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("reading", path, e))?;
    parse_from(&bytes, &path.display().to_string())
}

/// Decodes IDX bytes, gunzipping first if they start with the gzip magic `1f 8b`.
///
/// Errors ([`DataError::Idx`], origin `<memory>`): corrupt gzip stream; magic whose first two
/// bytes are not zero; an element type other than 0x08 (the message names the type);
/// a number of dims outside `1..=4`; a zero-sized dimension; sizes whose product overflows;
/// a length other than exactly `4 + 4 * ndims + product(dims)` bytes (truncated or trailing).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, DataError> {
    parse_from(bytes, "<memory>")
}

/// Reads an IDX image file: 3 dims `(n, rows, cols)`.
///
/// Returns `(n, rows, cols, pixels)` with `n * rows * cols` raw bytes (0..=255), row-major.
/// Errors: those of [`read_idx`], and [`DataError::Shape`] if the file does not have 3 dims.
pub fn load_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let arr = read_idx(path)?;
    match arr.dims[..] {
        [n, rows, cols] => Ok((n, rows, cols, arr.data)),
        _ => Err(wrong_dims(path, "an image file", "3 (n, rows, cols)", &arr.dims)),
    }
}

/// Reads an IDX label file: 1 dim `(n)`, returning the `n` labels.
///
/// Errors: those of [`read_idx`], and [`DataError::Shape`] if the file does not have 1 dim.
pub fn load_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let arr = read_idx(path)?;
    match arr.dims[..] {
        [_] => Ok(arr.data),
        _ => Err(wrong_dims(path, "a label file", "1 (n)", &arr.dims)),
    }
}

fn wrong_dims(path: &Path, role: &str, want: &str, dims: &[usize]) -> DataError {
    DataError::Shape {
        origin: path.display().to_string(),
        msg: format!("expected {want} dims for {role}, found {} dims {dims:?}", dims.len()),
    }
}

fn parse_from(bytes: &[u8], origin: &str) -> Result<IdxArray, DataError> {
    let err = |msg: String| DataError::Idx { origin: origin.to_string(), msg };
    let raw = gunzip_if_needed(bytes).map_err(err)?;
    parse_raw(&raw).map_err(err)
}

/// Gunzips `bytes` if they start with the gzip magic, reading no more than the header
/// declares (plus one byte, to detect trailing data) and at most [`MAX_IDX_BYTES`]: a gzip
/// bomb cannot make it allocate more than the file says it holds.
fn gunzip_if_needed(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(Cow::Borrowed(bytes));
    }
    let corrupt = |e: std::io::Error| format!("corrupt gzip stream: {e}");
    let mut dec = flate2::read::MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    (&mut dec).take(4).read_to_end(&mut out).map_err(corrupt)?;
    let Ok(nd) = check_magic(&out) else { return Ok(Cow::Owned(out)) };
    let header = 4 + 4 * nd;
    (&mut dec).take((header - 4) as u64).read_to_end(&mut out).map_err(corrupt)?;
    let total = if out.len() < header {
        0 // truncated header: parse_raw reports it
    } else {
        out[4..header]
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .try_fold(1u64, |a, d| a.checked_mul(d))
            .and_then(|p| p.checked_add(header as u64))
            .unwrap_or(u64::MAX)
    };
    if total > MAX_IDX_BYTES {
        return Err(format!("declared size of {total} bytes exceeds the limit of {MAX_IDX_BYTES}"));
    }
    let left = (total + 1).saturating_sub(out.len() as u64);
    (&mut dec).take(left).read_to_end(&mut out).map_err(corrupt)?;
    Ok(Cow::Owned(out))
}

fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => return None,
    })
}

fn check_magic(b: &[u8]) -> Result<usize, String> {
    if b.len() < 4 {
        return Err(format!("only {} bytes, too short for the 4-byte magic number", b.len()));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(format!("bad magic number {:02x} {:02x} {:02x} {:02x}: first two bytes must be zero", b[0], b[1], b[2], b[3]));
    }
    match (b[2], type_name(b[2])) {
        (TYPE_U8, _) => {}
        (t, Some(name)) => {
            return Err(format!("unsupported element type 0x{t:02X} ({name}); only 0x08 (unsigned byte) is supported"));
        }
        (t, None) => return Err(format!("unknown element type code 0x{t:02X}")),
    }
    let nd = usize::from(b[3]);
    if !(1..=MAX_DIMS).contains(&nd) {
        return Err(format!("number of dimensions is {nd}, must be 1..={MAX_DIMS}"));
    }
    Ok(nd)
}

fn parse_raw(b: &[u8]) -> Result<IdxArray, String> {
    let nd = check_magic(b)?;
    let header = 4 + 4 * nd;
    if b.len() < header {
        return Err(format!("truncated header: {} bytes, need {header} for {nd} dims", b.len()));
    }
    let dims: Vec<usize> = b[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        return Err(format!("dimension {i} has size zero (dims {dims:?})"));
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|p| p.checked_add(header))
        .ok_or_else(|| format!("dims {dims:?} overflow the addressable size"))?;
    if b.len() != expected {
        let what = if b.len() < expected { "truncated" } else { "trailing bytes" };
        return Err(format!("{what}: dims {dims:?} need exactly {expected} bytes, found {}", b.len()));
    }
    Ok(IdxArray { dims, data: b[header..].to_vec() })
}
