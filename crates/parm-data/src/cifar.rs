//! CIFAR-10 in its binary format (Krizhevsky 2009, "cifar-10-binary.tar.gz").
//!
//! Each file (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`) is a sequence of
//! 3,073-byte records: one label byte (0..9), then 3,072 pixel bytes: the 1,024 red values of
//! the 32x32 image row-major, then the 1,024 green, then the 1,024 blue. Images load
//! channel-first (`[3, 32, 32]` flattened), scaled to `[0, 1]` like the other datasets.
//! No CIFAR-10 exists on the project's machines; the loader is tested on files the tests write.

use std::path::Path;

use crate::{DataError, Split};

/// Image side in pixels.
pub const CIFAR_SIDE: usize = 32;
/// Colour channels.
pub const CIFAR_CHANNELS: usize = 3;
/// Values per image, `3 * 32 * 32`.
pub const CIFAR_DIM: usize = CIFAR_CHANNELS * CIFAR_SIDE * CIFAR_SIDE;
/// Bytes per record: label + pixels.
pub const CIFAR_RECORD: usize = 1 + CIFAR_DIM;
/// Classes.
pub const CIFAR_CLASSES: usize = 10;

/// Parses the records of one binary batch. `origin` names the source in errors.
///
/// Errors: [`DataError::Shape`] if the length is not a multiple of 3,073 bytes or a label is
/// not below 10.
pub fn parse_cifar10_bin(bytes: &[u8], origin: &str) -> Result<Split, DataError> {
    if !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(DataError::Shape {
            origin: origin.into(),
            msg: format!("{} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records", bytes.len()),
        });
    }
    let n = bytes.len() / CIFAR_RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * CIFAR_DIM);
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] as usize >= CIFAR_CLASSES {
            return Err(DataError::Shape { origin: origin.into(), msg: format!("record {i}: label {} >= 10", rec[0]) });
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Split::from_bytes(&pixels, CIFAR_DIM, labels, origin)
}

/// Reads one binary batch file. Errors: [`DataError::Io`], and those of [`parse_cifar10_bin`].
pub fn read_cifar10_bin(path: &Path) -> Result<Split, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("reading", path, e))?;
    parse_cifar10_bin(&bytes, &path.display().to_string())
}

/// CIFAR-10 split as ParM does: train = the five training batches less their last `val`
/// images, which are the validation set; test = `test_batch.bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cifar10 {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

/// Loads `dir/data_batch_{1..5}.bin` (those present, at least one) and `dir/test_batch.bin`,
/// holding out the last `val` training images (ParM: 5,000).
///
/// Errors: [`DataError::Io`] for a missing test batch or no training batch, and those of
/// [`read_cifar10_bin`]; [`DataError::Shape`] if `val` is not below the training count.
pub fn load_cifar10(dir: &Path, val: usize) -> Result<Cifar10, DataError> {
    let mut all = Split::default();
    for b in 1..=5 {
        let p = dir.join(format!("data_batch_{b}.bin"));
        if !p.exists() {
            continue;
        }
        let s = read_cifar10_bin(&p)?;
        all.images.extend(s.images);
        all.labels.extend(s.labels);
        all.n += s.n;
    }
    if all.n == 0 {
        let p = dir.join("data_batch_1.bin");
        return Err(DataError::io("reading", &p, std::io::Error::new(std::io::ErrorKind::NotFound, "no training batch")));
    }
    if val >= all.n {
        return Err(DataError::Shape { origin: dir.display().to_string(), msg: format!("validation {val} >= {} training images", all.n) });
    }
    let test = read_cifar10_bin(&dir.join("test_batch.bin"))?;
    let (train, val) = (all.slice(0..all.n - val), all.slice(all.n - val..all.n));
    Ok(Cifar10 { train, val, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..CIFAR_DIM).map(|i| (i as u8).wrapping_mul(seed)));
        r
    }

    #[test]
    fn writes_and_reads_a_small_cifar_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut b1 = Vec::new();
        for i in 0..6u8 {
            b1.extend(record(i % 10, i + 1));
        }
        std::fs::write(dir.path().join("data_batch_1.bin"), &b1).unwrap();
        std::fs::write(dir.path().join("data_batch_2.bin"), record(9, 3)).unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), [record(4, 5), record(7, 2)].concat()).unwrap();
        let c = load_cifar10(dir.path(), 2).unwrap();
        assert_eq!((c.train.n, c.val.n, c.test.n), (5, 2, 2));
        assert_eq!(c.train.dim(), CIFAR_DIM);
        assert_eq!(c.val.labels, vec![5, 9]);
        assert_eq!(c.test.labels, vec![4, 7]);
        // Channel-first layout: value i of image 0 is byte i of its record's pixels / 255.
        assert_eq!(c.train.image(0)[1024 + 3], ((1024 + 3) as u8).wrapping_mul(1) as f32 / 255.0);
        assert_eq!(c.test.image(1)[2047], (2047usize as u8).wrapping_mul(2) as f32 / 255.0);
    }

    #[test]
    fn rejects_truncated_files_and_bad_labels() {
        let mut r = record(1, 1);
        r.pop();
        assert!(parse_cifar10_bin(&r, "x").is_err());
        assert!(parse_cifar10_bin(&record(10, 1), "x").is_err());
        assert!(load_cifar10(Path::new("/nonexistent"), 1).is_err());
    }
}
