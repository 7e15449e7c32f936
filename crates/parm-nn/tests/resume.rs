//! Parity training resumes from its last checkpoint instead of starting over.

use burn::tensor::Device;
use parm_codes::AdditionEncoder;
use parm_data::{Dataset, Split};
use parm_nn::mlp::Init;
use parm_nn::parity::{ParityConfig, ParityJob, train_parity};
use parm_nn::{MlpConfig, ModelMeta};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn split(n: usize, rng: &mut StdRng) -> Split {
    let images = (0..n * 784).map(|_| rng.random::<f32>()).collect();
    let labels = (0..n).map(|_| rng.random_range(0..10u8)).collect();
    Split { images, labels, n }
}

#[test]
fn interrupted_parity_training_resumes() {
    let mut rng = StdRng::seed_from_u64(3);
    let ds = Dataset {
        name: "synthetic".into(),
        rows: 28,
        cols: 28,
        input_shape: vec![1, 28, 28],
        classes: 10,
        has_labels: true,
        preprocess: None,
        train: split(256, &mut rng),
        val: split(64, &mut rng),
        test: split(64, &mut rng),
    };
    let cfg = MlpConfig::default();
    let deployed = cfg.init(Init::Default, &Device::flex());
    let meta = ModelMeta::untrained(cfg, &ds.name);
    let dir = tempfile::tempdir().unwrap();
    let encoder = AdditionEncoder::new(2).unwrap();
    let job = ParityJob {
        ds: &ds,
        deployed: &deployed,
        deployed_meta: &meta,
        deployed_hash: 42,
        encoder: &encoder,
        out_dir: dir.path(),
        name: "parity-k2-addition",
    };
    let recipe = |epochs| ParityConfig { progress: false, ..ParityConfig::parm_recipe(2, epochs) };
    train_parity(&job, &recipe(1)).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("parity-k2-addition.ckpt/state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 1);
    let steps_one_epoch = state["steps"].as_u64().unwrap();
    assert!(steps_one_epoch > 0);

    // Asking for 3 epochs in all continues from epoch 1: 2 more epochs of steps, not 3.
    train_parity(&job, &recipe(3)).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("parity-k2-addition.ckpt/state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 3);
    assert_eq!(state["steps"].as_u64().unwrap(), 3 * steps_one_epoch);
    assert!(dir.path().join("parity-k2-addition.bpk").exists());

    // A checkpoint made against another deployed model is refused, not silently reused.
    let other = ParityJob { deployed_hash: 43, ..job };
    let err = train_parity(&other, &recipe(4)).unwrap_err().to_string();
    assert!(err.contains("another deployed model"), "{err}");
}
