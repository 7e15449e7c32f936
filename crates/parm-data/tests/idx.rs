//! IDX reader and IDX-pair loading tests, on small files the tests write themselves.

use std::io::Write;
use std::path::{Path, PathBuf};

use parm_data::{DataError, IdxArray, load_idx_pair, load_images, load_labels, parse_idx, read_idx};

fn sample() -> IdxArray {
    IdxArray { dims: vec![3, 2, 4], data: (0..24u8).map(|i| i * 10).collect() }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn idx_err_msg(r: Result<IdxArray, DataError>) -> String {
    match r {
        Err(e @ DataError::Idx { .. }) => e.to_string(),
        other => panic!("expected an Idx error, got {other:?}"),
    }
}

#[test]
fn round_trip_plain_and_gzip() {
    let a = sample();
    let bytes = a.to_bytes();
    assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
    assert_eq!(bytes.len(), 4 + 12 + 24);
    assert_eq!(parse_idx(&bytes).unwrap(), a);
    assert_eq!(parse_idx(&gzip(&bytes)).unwrap(), a);

    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "a-idx3-ubyte", &bytes);
    let gz = write(dir.path(), "a-idx3-ubyte.gz", &gzip(&bytes));
    assert_eq!(read_idx(&plain).unwrap(), a);
    assert_eq!(read_idx(&gz).unwrap(), a);
    let (n, rows, cols, px) = load_images(&gz).unwrap();
    assert_eq!((n, rows, cols), (3, 2, 4));
    assert_eq!(px, a.data);
}

#[test]
fn one_dim_labels() {
    let labels = IdxArray { dims: vec![5], data: vec![9, 0, 3, 3, 1] };
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "l.gz", &gzip(&labels.to_bytes()));
    assert_eq!(load_labels(&p).unwrap(), vec![9, 0, 3, 3, 1]);
}

#[test]
fn wrong_magic() {
    let mut b = sample().to_bytes();
    b[0] = 1;
    assert!(idx_err_msg(parse_idx(&b)).contains("bad magic"));
    let mut b = sample().to_bytes();
    b[3] = 0; // zero dims
    assert!(idx_err_msg(parse_idx(&b)).contains("number of dimensions is 0"));
    let mut b = sample().to_bytes();
    b[3] = 5;
    assert!(idx_err_msg(parse_idx(&b)).contains("number of dimensions is 5"));
    assert!(idx_err_msg(parse_idx(&[0, 0])).contains("too short"));
}

#[test]
fn unsupported_type_code_is_named() {
    let mut b = sample().to_bytes();
    b[2] = 0x0D;
    let msg = idx_err_msg(parse_idx(&b));
    assert!(msg.contains("0x0D") && msg.contains("f32"), "{msg}");
    b[2] = 0x42;
    assert!(idx_err_msg(parse_idx(&b)).contains("0x42"));
}

#[test]
fn truncated_and_trailing() {
    let b = sample().to_bytes();
    let msg = idx_err_msg(parse_idx(&b[..b.len() - 1]));
    assert!(msg.contains("truncated"), "{msg}");
    assert!(idx_err_msg(parse_idx(&b[..10])).contains("truncated header"));
    let mut long = b.clone();
    long.push(7);
    assert!(idx_err_msg(parse_idx(&long)).contains("trailing"));
    // Also inside gzip, and the file path appears in the message.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "cut.gz", &gzip(&b[..b.len() - 3]));
    let msg = idx_err_msg(read_idx(&p));
    assert!(msg.contains("cut.gz") && msg.contains("truncated"), "{msg}");
    // A cut gzip stream is an error too.
    let gz = gzip(&b);
    assert!(idx_err_msg(parse_idx(&gz[..gz.len() / 2])).contains("gzip"));
}

#[test]
fn zero_and_overflowing_dims() {
    let mut b = sample().to_bytes();
    b[4..8].copy_from_slice(&0u32.to_be_bytes());
    assert!(idx_err_msg(parse_idx(&b)).contains("size zero"));
    let mut b = vec![0, 0, 8, 4];
    for _ in 0..4 {
        b.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert!(idx_err_msg(parse_idx(&b)).contains("overflow"));
}

#[test]
fn missing_file_names_path() {
    let e = read_idx(Path::new("/nonexistent/x-idx1-ubyte")).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/x-idx1-ubyte"));
}

#[test]
fn wrong_ndims_for_images_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let labels = IdxArray { dims: vec![3], data: vec![1, 2, 3] };
    let p1 = write(dir.path(), "labels", &labels.to_bytes());
    let e = load_images(&p1).unwrap_err();
    assert!(matches!(e, DataError::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("expected 3"), "{e}");
    let p3 = write(dir.path(), "images", &sample().to_bytes());
    assert!(matches!(load_labels(&p3), Err(DataError::Shape { .. })));
}

#[test]
fn pair_count_mismatch_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "img.gz", &gzip(&sample().to_bytes()));
    let two = IdxArray { dims: vec![2], data: vec![1, 2] };
    let bad = write(dir.path(), "lab2", &two.to_bytes());
    let e = load_idx_pair(&img, &bad).unwrap_err();
    assert!(matches!(e, DataError::CountMismatch { images: 3, labels: 2, .. }), "{e:?}");

    let three = IdxArray { dims: vec![3], data: vec![4, 5, 6] };
    let ok = write(dir.path(), "lab3", &three.to_bytes());
    let (rows, cols, s) = load_idx_pair(&img, &ok).unwrap();
    assert_eq!((rows, cols, s.n, s.dim()), (2, 4, 3, 8));
    assert_eq!(s.labels, vec![4, 5, 6]);
    assert_eq!(s.image(1)[0], 80.0 / 255.0);
    assert!(s.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(s.slice(1..3).image(0), s.image(1));
}
