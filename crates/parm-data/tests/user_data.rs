//! The user's own data: every input format, preprocessing, the fixed split, and the errors,
//! on fixtures written into a temporary directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use npyz::WriterBuilder;
use parm_data::{DataError, Dataset, IdxArray, Layout, Preprocess, Split, UserData, load_user_data, split_indices};

fn write_npy<T: npyz::AutoSerialize + Clone>(path: &Path, shape: &[u64], data: &[T]) -> PathBuf {
    let mut f = BufWriter::new(File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut f).begin_nd().unwrap();
    w.extend(data.iter().cloned()).unwrap();
    w.finish().unwrap();
    path.to_path_buf()
}

/// An `.npz` archive being written, as numpy's `savez` (entries stored) or `savez_compressed`
/// (deflated) writes one.
type Npz = zip::ZipWriter<File>;

fn npz(path: &Path) -> Npz {
    zip::ZipWriter::new(File::create(path).unwrap())
}

fn write_npz_array<T: npyz::AutoSerialize + Clone>(npz: &mut Npz, name: &str, shape: &[u64], data: &[T], compressed: bool) {
    let method = if compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    npz.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut *npz).begin_nd().unwrap();
    w.extend(data.iter().cloned()).unwrap();
    w.finish().unwrap();
}

/// `n` rows of `d` features, feature `j` of row `i` = `100 i + j` (so each row names itself).
fn tabular(n: usize, d: usize) -> Vec<f32> {
    (0..n).flat_map(|i| (0..d).map(move |j| (100 * i + j) as f32)).collect()
}

fn all_items(ds: &Dataset) -> Vec<&Split> {
    vec![&ds.train, &ds.val, &ds.test]
}

fn load(u: &UserData) -> Dataset {
    load_user_data(u).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(u: &UserData) -> DataError {
    load_user_data(u).expect_err("loading should fail")
}

#[test]
fn float32_tabular_npy_with_npy_labels() {
    let dir = tempfile::tempdir().unwrap();
    let x = write_npy(&dir.path().join("tab.npy"), &[20, 13], &tabular(20, 13));
    let labels: Vec<i64> = (0..20).map(|i| i % 3).collect();
    let y = write_npy(&dir.path().join("y.npy"), &[20], &labels);
    let ds = load(&UserData { labels: Some(y), ..UserData::new(&x) });
    assert_eq!((ds.name.as_str(), ds.rows, ds.cols, ds.input_shape.clone(), ds.dim()), ("tab", 1, 13, vec![13], 13));
    assert_eq!((ds.classes, ds.has_labels), (3, true));
    assert_eq!(ds.preprocess.as_ref().unwrap().scale, Some(1.0));
    assert_eq!((ds.train.n, ds.val.n, ds.test.n), (16, 2, 2));
    // Items keep their values (float inputs are taken as is) and their labels.
    let idx = split_indices(20, 0.1, 0.1, 1).unwrap();
    for (split, want) in all_items(&ds).into_iter().zip([&idx.train, &idx.val, &idx.test]) {
        let rows: Vec<usize> = (0..split.n).map(|k| split.image(k)[0] as usize / 100).collect();
        assert_eq!(&rows, want);
        for (k, &i) in rows.iter().enumerate() {
            assert_eq!(split.image(k), &tabular(20, 13)[i * 13..(i + 1) * 13]);
            assert_eq!(split.labels[k] as usize, i % 3);
        }
    }
}

#[test]
fn uint8_images_npy_are_scaled_by_1_over_255_and_have_no_labels() {
    let dir = tempfile::tempdir().unwrap();
    let raw: Vec<u8> = (0..12 * 64).map(|v| (v % 251) as u8).collect();
    let x = write_npy(&dir.path().join("digits.npy"), &[12, 1, 8, 8], &raw);
    let ds = load(&UserData::new(&x));
    assert_eq!((ds.rows, ds.cols, ds.input_shape.clone(), ds.dim()), (8, 8, vec![1, 8, 8], 64));
    assert_eq!((ds.classes, ds.has_labels), (0, false));
    assert_eq!(ds.preprocess.as_ref().unwrap().scale, Some(1.0 / 255.0));
    let idx = split_indices(12, 0.1, 0.1, 1).unwrap();
    for (split, want) in all_items(&ds).into_iter().zip([&idx.train, &idx.val, &idx.test]) {
        assert!(split.labels.iter().all(|&l| l == 0));
        for (k, &i) in want.iter().enumerate() {
            let expect: Vec<f32> = raw[i * 64..(i + 1) * 64].iter().map(|&v| f32::from(v) / 255.0).collect();
            assert_eq!(split.image(k), &expect[..]);
        }
    }
    // A custom scale replaces 1/255.
    let ds = load(&UserData { preprocess: Preprocess { scale: Some(2.0), ..Preprocess::default() }, ..UserData::new(&x) });
    let first = idx.train[0] * 64;
    let want: Vec<f32> = raw[first..first + 3].iter().map(|&v| 2.0 * f32::from(v)).collect();
    assert_eq!(ds.train.image(0)[..3], want[..]);
}

#[test]
fn float64_and_fortran_order_arrays_are_read_row_major_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f64> = tabular(10, 2).into_iter().map(|v| f64::from(v) + 0.25).collect();
    let p = write_npy(&dir.path().join("f64.npy"), &[10, 2], &x);
    let ds = load(&UserData { val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&p) });
    assert_eq!(ds.train.images, x.iter().map(|&v| v as f32).collect::<Vec<_>>());
    // The same 10x2 array stored column-major.
    let p = dir.path().join("fortran.npy");
    let column_major: Vec<f32> = (0..2).flat_map(|j| (0..10).map(move |i| (100 * i + j) as f32)).collect();
    let mut f = BufWriter::new(File::create(&p).unwrap());
    let opts = npyz::WriteOptions::new().default_dtype().shape(&[10, 2]).order(npyz::Order::Fortran);
    let mut w = opts.writer(&mut f).begin_nd().unwrap();
    w.extend(column_major).unwrap();
    w.finish().unwrap();
    drop(f);
    let ds = load(&UserData { val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&p) });
    assert_eq!(ds.train.images, tabular(10, 2));
}

#[test]
fn npz_with_x_and_y_and_with_a_single_array() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pack.npz");
    let mut w = npz(&p);
    write_npz_array(&mut w, "x", &[10, 2, 3], &tabular(10, 6), true);
    write_npz_array(&mut w, "y", &[10], &(0..10u8).map(|i| 9 - i).collect::<Vec<_>>(), true);
    write_npz_array(&mut w, "meta", &[1], &[7i32], true);
    w.finish().unwrap();
    let ds = load(&UserData { val_fraction: 0.2, test_fraction: 0.0, ..UserData::new(&p) });
    // [N, H, W] arrays are one-channel images.
    assert_eq!((ds.name.as_str(), ds.input_shape.clone(), ds.rows, ds.cols), ("pack", vec![1, 2, 3], 2, 3));
    assert_eq!((ds.classes, ds.has_labels, ds.train.n, ds.val.n), (10, true, 8, 2));
    for split in [&ds.train, &ds.val] {
        for k in 0..split.n {
            let i = split.image(k)[0] as usize / 100;
            assert_eq!(split.image(k), &tabular(10, 6)[i * 6..(i + 1) * 6]);
            assert_eq!(split.labels[k] as usize, 9 - i);
        }
    }
    // A label file overrides y.
    let y = write_npy(&dir.path().join("ones.npy"), &[10], &[1i32; 10]);
    let ds = load(&UserData { labels: Some(y), ..UserData::new(&p) });
    assert_eq!((ds.classes, ds.train.labels.clone()), (2, vec![1; 8]));
    // One array of any name, no labels.
    let q = dir.path().join("single.npz");
    let mut w = npz(&q);
    write_npz_array(&mut w, "features", &[10, 4], &tabular(10, 4), false);
    w.finish().unwrap();
    let ds = load(&UserData::new(&q));
    assert_eq!((ds.input_shape.clone(), ds.has_labels, ds.classes), (vec![4], false, 0));
}

#[test]
fn idx_inputs_and_labels_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let images = IdxArray { dims: vec![12, 3, 3], data: (0..108u8).collect() };
    let labels = IdxArray { dims: vec![12], data: (0..12u8).map(|i| i % 4).collect() };
    let x = dir.path().join("train-images-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(File::create(&x).unwrap(), flate2::Compression::default());
    gz.write_all(&images.to_bytes()).unwrap();
    gz.finish().unwrap();
    let y = dir.path().join("labels.idx");
    std::fs::write(&y, labels.to_bytes()).unwrap();
    let ds = load(&UserData { labels: Some(y), val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&x) });
    assert_eq!((ds.name.as_str(), ds.input_shape.clone(), ds.classes), ("train-images-idx3-ubyte", vec![1, 3, 3], 4));
    assert_eq!(ds.train.images, (0..108u8).map(|v| f32::from(v) / 255.0).collect::<Vec<_>>());
    assert_eq!(ds.train.labels, labels.data);
}

fn gray_png(path: &Path, side: u32, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_pixel(side, side, Luma([value])).save(path).unwrap();
}

#[test]
fn image_folder_of_two_sizes_with_resize() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pets");
    for k in 0..5u8 {
        gray_png(&root.join("cat").join(format!("{k}.png")), 4, 10 * k);
        gray_png(&root.join("dog").join(format!("{k}.PNG")), 2, 100 + 10 * k);
    }
    std::fs::write(root.join(".DS_Store"), b"hidden files are skipped").unwrap();
    let pre = Preprocess { resize: Some([2, 2]), ..Preprocess::default() };
    let ds = load(&UserData { preprocess: pre, val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&root) });
    assert_eq!((ds.name.as_str(), ds.input_shape.clone(), ds.classes, ds.has_labels), ("pets", vec![1, 2, 2], 2, true));
    // Order: cat/0..4 then dog/0..4; constant images stay constant when resized.
    let want: Vec<f32> = (0..5u8).map(|k| 10 * k).chain((0..5).map(|k| 100 + 10 * k)).flat_map(|v| [f32::from(v) / 255.0; 4]).collect();
    assert_eq!(ds.train.images, want);
    assert_eq!(ds.train.labels, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
}

#[test]
fn rgb_folder_with_mean_std_and_nhwc_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flat");
    std::fs::create_dir(&root).unwrap();
    // Image k, pixel p (row-major in a 2x3 image): r = k + 1 + p, g = 2 + 2 (k + 1), b = 3 + 4 (k + 2).
    for k in 0..10u32 {
        let im = RgbImage::from_fn(3, 2, |x, y| Rgb([(k + 1 + 3 * y + x) as u8, (2 + 2 * (k + 1)) as u8, (3 + 4 * (k + 2)) as u8]));
        im.save(root.join(format!("img{k:02}.png"))).unwrap();
    }
    let pre: Preprocess = toml::from_str("scale = 1.0\nmean = [1.0, 2.0, 3.0]\nstd = [1.0, 2.0, 4.0]\nlayout = \"nhwc\"").unwrap();
    assert_eq!(pre.layout, Layout::Nhwc);
    let ds = load(&UserData { preprocess: pre, val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&root) });
    assert_eq!((ds.input_shape.clone(), ds.rows, ds.cols, ds.has_labels, ds.classes), (vec![2, 3, 3], 2, 3, false, 0));
    for k in 0..10 {
        // (r - 1) / 1 = k + p, (g - 2) / 2 = k + 1, (b - 3) / 4 = k + 2, channel-last.
        let want: Vec<f32> = (0..6).flat_map(|p| [k + p, k + 1, k + 2]).map(|v| v as f32).collect();
        assert_eq!(ds.train.image(k), &want[..], "image {k}");
    }
    // The same transform applied to one raw query (as serving does) gives the same values.
    let raw: Vec<f32> = (0..3).flat_map(|c| (0..6).map(move |p| [1 + p, 4, 11][c] as f32)).collect();
    let (x, shape) = ds.preprocess.as_ref().unwrap().apply(&raw, &[3, 2, 3]).unwrap();
    assert_eq!((x.as_slice(), shape), (ds.train.image(0), vec![2, 3, 3]));
}

#[test]
fn rgb_if_any_image_has_colour_and_jpeg_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mixed");
    for k in 0..9u8 {
        gray_png(&root.join(format!("g{k}.png")), 2, 50);
    }
    RgbImage::from_pixel(2, 2, Rgb([200, 0, 0])).save(root.join("red.png")).unwrap();
    GrayImage::from_pixel(8, 8, Luma([128])).save(root.join("z.jpg")).unwrap();
    let pre = Preprocess { resize: Some([2, 2]), scale: Some(1.0), ..Preprocess::default() };
    let ds = load(&UserData { preprocess: pre, val_fraction: 0.0, test_fraction: 0.0, ..UserData::new(&root) });
    assert_eq!((ds.input_shape.clone(), ds.train.n), (vec![3, 2, 2], 11));
    assert_eq!(ds.train.image(0), &[50.0; 12]); // gray replicated to R, G, B
    assert_eq!(ds.train.image(9), &[200.0, 200.0, 200.0, 200.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert!(ds.train.image(10).iter().all(|v| (v - 128.0).abs() <= 2.0), "{:?}", ds.train.image(10));
}

#[test]
fn the_split_is_fixed_by_the_seed() {
    let a = split_indices(100, 0.1, 0.2, 7).unwrap();
    assert_eq!(a, split_indices(100, 0.1, 0.2, 7).unwrap());
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (70, 10, 20));
    let mut all: Vec<usize> = [a.train.clone(), a.val.clone(), a.test.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert_ne!(a, split_indices(100, 0.1, 0.2, 8).unwrap());
    // Pinned: a change of algorithm would silently move items between train and test.
    let s = split_indices(10, 0.1, 0.1, 1).unwrap();
    assert_eq!((s.val, s.test), (vec![0], vec![9]));
    // The same settings, from code or from a config file, load the same dataset every time
    // (as train-parity and eval both do).
    let dir = tempfile::tempdir().unwrap();
    let x = write_npy(&dir.path().join("t.npy"), &[30, 2], &tabular(30, 2));
    let from_code = UserData { seed: 3, ..UserData::new(&x) };
    let from_toml: UserData = toml::from_str(&format!("inputs = {:?}\nseed = 3", x.display().to_string())).unwrap();
    assert_eq!(from_toml, from_code);
    let first = load(&from_code);
    assert_eq!(first, load(&from_toml));
    let idx = split_indices(30, 0.1, 0.1, 3).unwrap();
    let test_rows: Vec<usize> = (0..first.test.n).map(|k| first.test.image(k)[0] as usize / 100).collect();
    assert_eq!(test_rows, idx.test);
}

#[test]
fn errors_name_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = |u: &UserData| load_err(u).to_string();
    // Empty data and too few rows.
    let e = load_err(&UserData::new(write_npy(&d.join("empty.npy"), &[0, 3], &[0f32; 0])));
    assert!(matches!(e, DataError::Empty { .. }), "{e}");
    std::fs::create_dir(d.join("nothing")).unwrap();
    assert!(matches!(load_err(&UserData::new(d.join("nothing"))), DataError::Empty { .. }));
    let few = write_npy(&d.join("few.npy"), &[9, 3], &tabular(9, 3));
    assert!(matches!(load_err(&UserData::new(&few)), DataError::TooFew { n: 9, min: 10, .. }));
    assert!(msg(&UserData::new(&few)).contains("few.npy: 9 items; at least 10"));
    // A 1-d input array is not [N, ...].
    let flat = write_npy(&d.join("flat.npy"), &[12], &[1f32; 12]);
    assert!(msg(&UserData::new(&flat)).contains("expected [N, d], [N, H, W] or [N, C, H, W]"));
    // Unsupported dtypes, for inputs and for labels.
    let ints = write_npy(&d.join("ints.npy"), &[10, 2], &[1i16; 20]);
    let m = msg(&UserData::new(&ints));
    assert!(m.contains("ints.npy: unsupported dtype '<i2'; expected float32, float64 or uint8"), "{m}");
    let x = write_npy(&d.join("x.npy"), &[10, 2], &tabular(10, 2));
    let float_labels = write_npy(&d.join("fl.npy"), &[10], &[1f32; 10]);
    let m = msg(&UserData { labels: Some(float_labels), ..UserData::new(&x) });
    assert!(m.contains("fl.npy: unsupported dtype '<f4'; expected an integer type"), "{m}");
    // Labels: count mismatch, values above 255 or negative.
    let short = write_npy(&d.join("short.npy"), &[9], &[1u8; 9]);
    let e = load_err(&UserData { labels: Some(short), ..UserData::new(&x) });
    assert!(matches!(e, DataError::CountMismatch { images: 10, labels: 9, .. }), "{e}");
    let big = write_npy(&d.join("big.npy"), &[10], &[1, 2, 3, 300, 0, 0, 0, 0, 0, 0i32]);
    let m = msg(&UserData { labels: Some(big), ..UserData::new(&x) });
    assert!(m.contains("big.npy: label 300 at index 3 is outside 0..=255"), "{m}");
    let neg = write_npy(&d.join("neg.npy"), &[10], &[-1i64; 10]);
    assert!(matches!(load_err(&UserData { labels: Some(neg), ..UserData::new(&x) }), DataError::Label { value: -1, index: 0, .. }));
    // Mixed image sizes without resize name the first mismatch.
    let mixed = d.join("mixed");
    for k in 0..10 {
        gray_png(&mixed.join(format!("{k}.png")), if k == 4 { 3 } else { 2 }, 0);
    }
    let m = msg(&UserData::new(&mixed));
    assert!(m.contains("4.png: image is 3x3 (HxW) but") && m.contains("0.png is 2x2"), "{m}");
    // A non-image file, a file beside class folders, a corrupt image.
    std::fs::write(mixed.join("notes.txt"), b"hello").unwrap();
    let e = load_err(&UserData::new(&mixed));
    assert!(matches!(&e, DataError::NotAnImage { path, .. } if path.ends_with("notes.txt")), "{e}");
    let classes = d.join("classes");
    gray_png(&classes.join("a").join("0.png"), 2, 0);
    std::fs::write(classes.join("stray.png"), b"").unwrap();
    assert!(msg(&UserData::new(&classes)).contains("stray.png: a file beside class folders"));
    let bad = d.join("bad");
    gray_png(&bad.join("0.png"), 2, 0);
    std::fs::write(bad.join("1.png"), b"not a png").unwrap();
    let e = load_err(&UserData::new(&bad));
    assert!(matches!(&e, DataError::Image { path, .. } if path.ends_with("1.png")), "{e}");
    // An .npz without a recognisable input array lists what it holds.
    let p = d.join("two.npz");
    let mut w = npz(&p);
    write_npz_array(&mut w, "a", &[10, 2], &tabular(10, 2), false);
    write_npz_array(&mut w, "b", &[10], &[0u8; 10], false);
    w.finish().unwrap();
    let m = msg(&UserData::new(&p));
    assert!(m.contains("no input array; expected one named x / inputs / images / X") && m.contains(r#"["a", "b"]"#), "{m}");
    // An .npz that is no zip archive, and one whose array is cut short.
    std::fs::write(d.join("bad.npz"), b"not a zip archive").unwrap();
    assert!(matches!(load_err(&UserData::new(d.join("bad.npz"))), DataError::Io { .. }));
    let mut w = npz(&d.join("short.npz"));
    w.start_file("x.npy", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(&std::fs::read(write_npy(&d.join("whole.npy"), &[10, 2], &tabular(10, 2))).unwrap()[..150]).unwrap();
    w.finish().unwrap();
    assert!(matches!(load_err(&UserData::new(d.join("short.npz"))), DataError::Io { .. } | DataError::Shape { .. }));
    // Unknown formats, missing files, bad fractions, bad preprocessing.
    std::fs::write(d.join("data.csv"), b"1,2").unwrap();
    assert!(msg(&UserData::new(d.join("data.csv"))).contains("data.csv: unknown input format"));
    assert!(matches!(load_err(&UserData::new(d.join("missing.npy"))), DataError::Io { .. }));
    assert!(msg(&UserData { test_fraction: 1.0, ..UserData::new(&x) }).contains("test_fraction 1 is outside [0, 1)"));
    // Settings are checked before any file is read.
    let e = load_err(&UserData { val_fraction: -0.1, ..UserData::new(d.join("missing.npy")) });
    assert!(matches!(e, DataError::Config { .. }), "{e}");
    assert!(msg(&UserData { val_fraction: 0.5, test_fraction: 0.5, ..UserData::new(&x) }).contains("leave none of 10 for training"));
    let pre = Preprocess { resize: Some([2, 2]), ..Preprocess::default() };
    let m = msg(&UserData { preprocess: pre, ..UserData::new(&x) });
    assert!(m.contains("x.npy item 0: preprocessing: resize applies to images"), "{m}");
}
