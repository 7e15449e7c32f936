//! Replays the inputs saved by the `idx` fuzz target (see `fuzz/run.sh`): each file in
//! `tests/fuzz-regressions/idx/` once made the IDX reader fail; it must now be decoded or
//! rejected with an error, and what decodes must round-trip. The seeds (`fuzz/seeds/idx/`)
//! must decode.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn idx_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in files(&root.join("tests/fuzz-regressions/idx")) {
        if let Ok(a) = parm_data::parse_idx(&std::fs::read(&f).unwrap()) {
            assert_eq!(a.dims.iter().product::<usize>(), a.data.len(), "{}", f.display());
            assert_eq!(parm_data::parse_idx(&a.to_bytes()).unwrap(), a, "{}", f.display());
        }
    }
    for f in files(&root.join("../../fuzz/seeds/idx")) {
        parm_data::parse_idx(&std::fs::read(&f).unwrap()).unwrap_or_else(|e| panic!("seed {}: {e}", f.display()));
    }
}

/// A gzip bomb (a header declaring a small array, then far more data) stops at the declared
/// size instead of inflating everything.
#[test]
fn gzip_bomb_is_bounded() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&[0, 0, 8, 1, 0, 0, 0, 4]).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap(); // 64 MiB
    }
    let bomb = enc.finish().unwrap();
    let t = std::time::Instant::now();
    let e = parm_data::parse_idx(&bomb).unwrap_err().to_string();
    assert!(e.contains("trailing"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    // A header declaring more than the limit is refused before inflating.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&[0, 0, 8, 2, 0, 1, 0, 0, 0, 1, 0, 0]).unwrap(); // 65536 x 65536
    let e = parm_data::parse_idx(&enc.finish().unwrap()).unwrap_err().to_string();
    assert!(e.contains("exceeds the limit"), "{e}");
}
