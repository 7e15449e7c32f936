//! Weights are validated before use: truncated, corrupted, shape-mismatched and non-finite
//! weights files, and absurd metadata, give clear errors (never a panic or a model that fails
//! while serving). Also replays the fuzzer's saved inputs for the weights loader
//! (`tests/fuzz-regressions/weights/`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use parm_nn::mlp::Init;
use parm_nn::train::{load_net, save_model};
use parm_nn::weights::load_net_bytes;
use parm_nn::{MlpConfig, ModelMeta, Predictor};

fn meta(mlp: MlpConfig) -> ModelMeta {
    ModelMeta::untrained(mlp, "test")
}

fn small() -> MlpConfig {
    MlpConfig { input: 6, hidden: vec![5], classes: 3 }
}

/// A temporary directory with `m.bpk` / `m.json` of a freshly initialised small MLP.
fn saved(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("parm-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let device = Device::flex();
    let model = small().init(Init::Default, &device);
    save_model(&model, &meta(small()), &dir, "m").unwrap();
    let bpk = dir.join("m.bpk");
    (dir, bpk)
}

fn load_err(path: &Path) -> String {
    let e = load_net(path, &Device::flex()).expect_err("loading must fail");
    let msg = format!("{e}");
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    msg
}

#[test]
fn good_weights_load_and_predict() {
    let (dir, bpk) = saved("good");
    let p = Predictor::load(&bpk).unwrap();
    assert_eq!(p.infer(&[0.5; 12], 2).unwrap().len(), 6);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_corrupted_files_are_rejected() {
    let (dir, bpk) = saved("corrupt");
    let bytes = std::fs::read(&bpk).unwrap();
    for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bpk, &bytes[..cut]).unwrap();
        let msg = load_err(&bpk);
        assert!(msg.contains("truncated") || msg.contains("burnpack") || msg.contains("Record"), "cut {cut}: {msg}");
    }
    // Flipped bytes anywhere in the header: an error, not a panic.
    for at in (0..bytes.len().min(400)).step_by(7) {
        let mut b = bytes.clone();
        b[at] ^= 0xa5;
        std::fs::write(&bpk, &b).unwrap();
        let _ = load_net(&bpk, &Device::flex()); // Ok (a flipped weight) or Err, never a panic
    }
    // Garbage of the right size.
    std::fs::write(&bpk, vec![0x5au8; bytes.len()]).unwrap();
    load_err(&bpk);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn shape_mismatched_weights_are_rejected() {
    let (dir, bpk) = saved("shape");
    // The metadata now claims a wider hidden layer than the file holds.
    let other = MlpConfig { input: 6, hidden: vec![4], classes: 3 };
    meta(other).save(&dir.join("m.json")).unwrap();
    let msg = load_err(&bpk);
    assert!(msg.to_lowercase().contains("shape") || msg.contains("truncated") || msg.contains("Validation"), "{msg}");
    // And an extra layer: missing tensors.
    let deeper = MlpConfig { input: 6, hidden: vec![5, 5], classes: 3 };
    meta(deeper).save(&dir.join("m.json")).unwrap();
    let msg = load_err(&bpk);
    assert!(msg.contains("Missing") || msg.contains("shape mismatch") || msg.contains("truncated"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn non_finite_weights_are_rejected() {
    let (dir, bpk) = saved("nan");
    let device = Device::flex();
    let model = small().init(Init::Default, &device);
    save_model(&model, &meta(small()), &dir, "m").unwrap();
    let mut bytes = std::fs::read(&bpk).unwrap();
    // Find one weight's bytes in the file and make it NaN.
    let first: f32 = {
        let mut v = None;
        struct First<'a>(&'a mut Option<f32>);
        impl burn::module::ModuleVisitor for First<'_> {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
                if self.0.is_none() {
                    *self.0 = p.val().into_data().as_slice::<f32>().ok().and_then(|s| s.iter().copied().find(|x| *x != 0.0));
                }
            }
        }
        model.visit(&mut First(&mut v));
        v.unwrap()
    };
    let pat = first.to_le_bytes();
    let at = bytes.windows(4).position(|w| w == pat).expect("weight bytes in the file");
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&bpk, &bytes).unwrap();
    let msg = load_err(&bpk);
    assert!(msg.contains("non-finite"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn absurd_metadata_is_rejected_before_allocating() {
    let (dir, bpk) = saved("meta");
    for m in [
        MlpConfig { input: 1 << 40, hidden: vec![1 << 20], classes: 3 },
        MlpConfig { input: 0, hidden: vec![5], classes: 3 },
        MlpConfig { input: 1 << 20, hidden: vec![1 << 20, 1 << 20], classes: 1 << 20 },
    ] {
        meta(m).save(&dir.join("m.json")).unwrap();
        load_err(&bpk);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every input the fuzzer saved for the weights target loads or fails cleanly.
#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions/weights");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let m = meta(MlpConfig { input: 4, hidden: vec![3], classes: 2 });
    for e in entries {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let _ = load_net_bytes(&m, bytes, &Device::flex(), &path.display().to_string());
    }
}

/// Writes the weights fuzz target's seed, a real 4-3-2 MLP weights file
/// (`cargo test -p parm-nn --test weights -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/weights");
    let mlp = MlpConfig { input: 4, hidden: vec![3], classes: 2 };
    let tmp = std::env::temp_dir().join(format!("parm-weights-seed-{}", std::process::id()));
    save_model(&mlp.init(Init::Default, &Device::flex()), &meta(mlp), &tmp, "m").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(tmp.join("m.bpk"), dir.join("mlp-4-3-2.bpk")).unwrap();
    std::fs::remove_dir_all(tmp).unwrap();
}
