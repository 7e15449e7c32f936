//! Test support shared by parm's test suites (not used by the library itself): the ONNX
//! fixtures of `tests/onnx/` and onnxruntime's outputs to compare against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The fixtures `tests/onnx/make_fixtures.py` writes, and the virtual environment's python
/// that has onnxruntime.
#[derive(Debug)]
pub struct OnnxFixtures {
    /// Folder holding `mlp.onnx`, `cnn.onnx`, `sklearn.onnx`, `digits_x.npy`, ...
    pub dir: PathBuf,
    /// `target/onnx-venv/bin/python`.
    pub python: PathBuf,
}

/// The repository's root (two levels above this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ONNX fixtures, made once per process by `tests/onnx/fixtures.sh` into
/// `target/onnx-fixtures` (which builds `target/onnx-venv` on first use, about 20 s of pip).
///
/// `None`, after a message on stderr, only when `PARM_SKIP_ONNX_FIXTURES=1` and not in CI
/// (`CI=true`); callers then skip their test.
///
/// # Panics
/// If the script fails (no python3, no network for pip on the first run).
pub fn onnx_fixtures() -> Option<&'static OnnxFixtures> {
    static FIXTURES: OnceLock<Option<OnnxFixtures>> = OnceLock::new();
    FIXTURES.get_or_init(make_fixtures).as_ref()
}

fn make_fixtures() -> Option<OnnxFixtures> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("PARM_SKIP_ONNX_FIXTURES").is_ok_and(|v| v == "1") {
        eprintln!("ONNX test skipped: PARM_SKIP_ONNX_FIXTURES=1 (tests/onnx/fixtures.sh not run)");
        return None;
    }
    let root = repo_root();
    let dir = root.join("target/onnx-fixtures");
    let out = Command::new("bash")
        .arg(root.join("tests/onnx/fixtures.sh"))
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run bash tests/onnx/fixtures.sh");
    assert!(out.status.success(), "tests/onnx/fixtures.sh failed (outside CI, PARM_SKIP_ONNX_FIXTURES=1 skips the ONNX tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let python = PathBuf::from(stdout.lines().last().expect("fixtures.sh prints the venv's python").trim());
    Some(OnnxFixtures { dir, python })
}

impl OnnxFixtures {
    /// `dir/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The ONNX Runtime shared library of the virtual environment's onnxruntime wheel
    /// (`lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so*`).
    ///
    /// # Panics
    /// If the wheel holds none.
    pub fn ort_library(&self) -> PathBuf {
        let venv = self.python.parent().and_then(Path::parent).expect("python is VENV/bin/python");
        let lib = std::fs::read_dir(venv.join("lib")).expect("VENV/lib").flatten().find_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi)
                .ok()?
                .flatten()
                .map(|f| f.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        });
        lib.expect("the onnxruntime wheel ships libonnxruntime.so")
    }

    /// onnxruntime's output `output` of `model` on `input` of shape `shape` (batch first),
    /// row-major, through `tests/onnx/ort_run.py`.
    ///
    /// # Panics
    /// If the script fails.
    pub fn onnxruntime(&self, model: &Path, input: &[f32], shape: &[usize], output: &str) -> Vec<f32> {
        let tmp = tempfile_dir();
        let (x, y) = (tmp.join("x.f32"), tmp.join("y.f32"));
        std::fs::write(&x, input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).expect("write input");
        let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
        let status = Command::new(&self.python)
            .arg(repo_root().join("tests/onnx/ort_run.py"))
            .args([model.as_os_str(), x.as_os_str()])
            .arg(shape.join(","))
            .arg(output)
            .arg(&y)
            .status()
            .expect("run tests/onnx/ort_run.py");
        assert!(status.success(), "tests/onnx/ort_run.py failed on {}", model.display());
        let bytes = std::fs::read(&y).expect("read onnxruntime output");
        let _ = std::fs::remove_dir_all(&tmp);
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// A fresh folder under the system temp dir.
fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("parm-ort-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A float32 (`<f4`) or int64 (`<i8`) C-order `.npy` file (format 1.0 or 2.0): its values as
/// f64 and its shape.
///
/// # Panics
/// On any other file.
pub fn read_npy(path: &Path) -> (Vec<f64>, Vec<usize>) {
    let b = std::fs::read(path).expect("read .npy");
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not a .npy file", path.display());
    let (len, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + len]).expect("header");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let dims = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("shape");
    let shape: Vec<usize> = dims.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().expect("dim")).collect();
    let data = &b[start + len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
    } else if header.contains("'<i8'") {
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64).collect()
    } else {
        panic!("{}: unsupported dtype in {header}", path.display())
    };
    (values, shape)
}
