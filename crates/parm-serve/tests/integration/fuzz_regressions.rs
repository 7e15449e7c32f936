//! Replays the inputs saved by the fuzz targets `http_infer` and `grpc_infer` (see
//! `fuzz/run.sh`): every file in `tests/fuzz-regressions/TARGET/` once made the target fail,
//! and must now be handled (parsed or rejected with an error) with the target's invariants
//! holding. The targets' seed inputs (`fuzz/seeds/TARGET/`) must parse.

use std::path::{Path, PathBuf};

use parm_serve::oip::ModelSpec;
use parm_serve::server::api::MAX_BATCH_SIZE;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn check_rows(rows: &[Vec<f32>], what: &Path) {
    assert!(!rows.is_empty() && rows.len() <= MAX_BATCH_SIZE, "{}", what.display());
    for r in rows {
        assert_eq!(r.len(), 4, "{}", what.display());
        assert!(r.iter().all(|v| v.is_finite()), "{}", what.display());
    }
}

/// The `http_infer` target's input layout: see fuzz/fuzz_targets/http_infer.rs.
fn http(data: &[u8]) -> Option<Result<Vec<Vec<f32>>, String>> {
    let spec = ModelSpec::fp32("m", vec![4], vec![3]);
    let (&mode, rest) = data.split_first()?;
    let (header, body) = if mode & 1 == 0 {
        (None, rest)
    } else {
        let (&len, body) = rest.split_first()?;
        let text = if mode & 2 == 0 { len.to_string() } else { format!("{}{}", len as char, mode >> 2) };
        (Some(text), body)
    };
    Some(parm_serve::server::request::parse_http(&spec, header.as_deref().map(str::as_bytes), body).map(|r| r.rows).map_err(|e| e.message))
}

fn grpc(data: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let spec = ModelSpec::fp32("m", vec![4], vec![3]);
    parm_serve::server::request::decode_grpc(&spec, data).map_err(|e| e.message)
}

#[test]
fn http_infer_regressions() {
    for f in files(&root().join("tests/fuzz-regressions/http_infer")) {
        if let Some(Ok(rows)) = http(&std::fs::read(&f).unwrap()) {
            check_rows(&rows, &f);
        }
    }
    let seeds = files(&root().join("../../fuzz/seeds/http_infer"));
    for f in &seeds {
        let rows = http(&std::fs::read(f).unwrap()).unwrap().unwrap_or_else(|e| panic!("seed {}: {e}", f.display()));
        check_rows(&rows, f);
    }
}

#[test]
fn grpc_infer_regressions() {
    for f in files(&root().join("tests/fuzz-regressions/grpc_infer")) {
        if let Ok(rows) = grpc(&std::fs::read(&f).unwrap()) {
            check_rows(&rows, &f);
        }
    }
    for f in files(&root().join("../../fuzz/seeds/grpc_infer")) {
        let rows = grpc(&std::fs::read(&f).unwrap()).unwrap_or_else(|e| panic!("seed {}: {e}", f.display()));
        check_rows(&rows, &f);
    }
}
