//! Dataset loading on real data, when present locally (never downloads: skipped otherwise).

use std::path::{Path, PathBuf};

use parm_data::{DataError, load_dataset, load_fashion_mnist, load_mnist, prepare::FASHION_SYSTEM_DIR};

/// The workspace's (gitignored) data directory, or `PARM_DATA_DIR`.
fn workspace_data() -> PathBuf {
    std::env::var_os("PARM_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"))
}

fn has_fashion_files(dir: &Path) -> bool {
    parm_data::prepare::FASHION_FILES.iter().all(|b| dir.join(format!("{b}.gz")).is_file() || dir.join(b).is_file())
}

#[test]
fn fashion_mnist_if_available() {
    let ws = workspace_data();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = if has_fashion_files(&ws.join("fashion-mnist")) {
        ws
    } else if has_fashion_files(Path::new(FASHION_SYSTEM_DIR)) {
        tmp.path().to_path_buf() // copies from the system dir, not apt-get
    } else {
        eprintln!("SKIPPED: no Fashion-MNIST in {} or {FASHION_SYSTEM_DIR}", ws.display());
        return;
    };
    let d = load_fashion_mnist(&data_dir).unwrap();
    assert_eq!((d.name.as_str(), d.rows, d.cols, d.classes), ("fashion-mnist", 28, 28, 10));
    assert_eq!((d.input_shape.clone(), d.dim(), d.has_labels, d.preprocess.clone()), (vec![1, 28, 28], 784, true, None));
    assert_eq!((d.train.n, d.val.n, d.test.n), (55_000, 5_000, 10_000));
    assert_eq!(d.train.images.len(), 55_000 * 784);
    assert_eq!(d.test.image(0).len(), 784);
    // Published first test labels of Fashion-MNIST: ankle boot, pullover, trouser, trouser, shirt.
    assert_eq!(&d.test.labels[..5], &[9, 2, 1, 1, 6]);
    for s in [&d.train, &d.val, &d.test] {
        assert!(s.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        let mut counts = [0usize; 10];
        s.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }
}

#[test]
fn mnist_if_available() {
    let ws = workspace_data();
    if !(0..10).all(|d| ws.join(format!("mnist/{d}.json")).is_file()) {
        eprintln!("SKIPPED: no MNIST JSON files in {}/mnist", ws.display());
        return;
    }
    let d = load_mnist(&ws).unwrap();
    assert_eq!((d.name.as_str(), d.rows, d.cols, d.classes), ("mnist", 28, 28, 10));
    assert_eq!((d.input_shape.clone(), d.dim(), d.has_labels, d.preprocess.clone()), (vec![1, 28, 28], 784, true, None));
    assert_eq!((d.train.n, d.val.n, d.test.n), (8_000, 1_000, 1_000));
    let again = load_mnist(&ws).unwrap();
    assert_eq!(d.test.labels, again.test.labels, "split must be deterministic");
    // Every pixel is a multiple of 1/255.
    assert!(d.val.images.iter().all(|&v| ((v * 255.0).round() - v * 255.0).abs() < 1e-3));
}

#[test]
fn unknown_name_lists_valid_names() {
    let e = load_dataset("cifar-11", Path::new("/nonexistent")).unwrap_err();
    assert!(matches!(e, DataError::UnknownDataset { .. }));
    let msg = e.to_string();
    assert!(msg.contains("fashion-mnist") && msg.contains("mnist") && msg.contains("cifar-11"));
}
