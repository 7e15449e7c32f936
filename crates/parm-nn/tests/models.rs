//! LeNet-5 and CIFAR ResNet-18 train, save, load and serve (tiny scale), and a parity model
//! trains against a CNN; ResNet-18 reads its data through the CIFAR-10 binary loader.

use parm_codes::ConcatenationEncoder;
use parm_data::cifar::{CIFAR_DIM, CIFAR_RECORD, load_cifar10};
use parm_data::{Dataset, Split};
use parm_nn::parity::{ParityConfig, ParityJob, train_parity};
use parm_nn::train::{TrainConfig, load_net, save_net, train_deployed_net};
use parm_nn::{NetConfig, Predictor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn split(n: usize, dim: usize, rng: &mut StdRng) -> Split {
    // Learnable: class c brightens the c-th tenth of the image.
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10u8)).collect();
    let mut images = Vec::with_capacity(n * dim);
    for &l in &labels {
        for p in 0..dim {
            let on = p * 10 / dim == l as usize;
            images.push(if on { 0.9 } else { 0.1 } + 0.1 * rng.random::<f32>());
        }
    }
    Split { images, labels, n }
}

#[test]
fn lenet_trains_saves_loads_and_gets_a_parity_model() {
    let mut rng = StdRng::seed_from_u64(5);
    let ds = Dataset {
        name: "synthetic".into(),
        rows: 28,
        cols: 28,
        input_shape: vec![1, 28, 28],
        classes: 10,
        has_labels: true,
        preprocess: None,
        train: split(512, 784, &mut rng),
        val: split(64, 784, &mut rng),
        test: split(128, 784, &mut rng),
    };
    let cfg = TrainConfig { epochs: 6, progress: false, ..Default::default() };
    let net = NetConfig::LeNet { channels: 1, side: 28, classes: 10 };
    let (model, meta) = train_deployed_net(&ds, &cfg, &net).unwrap();
    assert_eq!(meta.arch, "lenet5-1x28x28-10");
    assert!(meta.test_accuracy.unwrap() > 0.3, "accuracy {:?}", meta.test_accuracy);
    let dir = tempfile::tempdir().unwrap();
    save_net(&model, &meta, dir.path(), "deployed").unwrap();
    let p = Predictor::load(&dir.path().join("deployed.bpk")).unwrap();
    let out = p.infer(ds.test.image(0), 1).unwrap();
    assert_eq!(out.len(), 10);
    let direct = parm_nn::eval::logits(&model, ds.test.image(0), 1, 784, &burn::tensor::Device::flex());
    for (a, b) in out.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-4);
    }
    // A per-query parity model (parm's recipe) against the CNN.
    let (f, fmeta) = load_net(&dir.path().join("deployed.bpk"), &burn::tensor::Device::flex()).unwrap();
    let enc = ConcatenationEncoder::inferred(2).unwrap();
    let job =
        ParityJob { ds: &ds, deployed: &f, deployed_meta: &fmeta, deployed_hash: 1, encoder: &enc, out_dir: dir.path(), name: "parity" };
    let pcfg = ParityConfig { progress: false, cells: false, hidden: Some(vec![400, 200]), ..ParityConfig::parm_own_recipe(2, 2) };
    let pmeta = train_parity(&job, &pcfg).unwrap();
    assert_eq!(pmeta.mlp.classes, 20);
    assert_eq!(pmeta.arch, "mlp-784-400-200-20");
    // parm's recipe: the cell-wise parity model, with augmentation; it resumes from its
    // checkpoint, and loads and serves like any model.
    let job = ParityJob { name: "cells", ..job };
    let aug = Some(parm_nn::parity::Augment { shift: 1, hflip: true });
    let pcfg = ParityConfig { progress: false, augment: aug, ..ParityConfig::parm_own_recipe(2, 1) };
    train_parity(&job, &pcfg).unwrap();
    let pmeta = train_parity(&job, &ParityConfig { epochs: 2, ..pcfg }).unwrap();
    assert_eq!(pmeta.arch, "cellmlp-k2-1x28x28-200-100-20");
    assert_eq!((pmeta.mlp.input, pmeta.mlp.classes), (784, 20));
    let p = Predictor::load(&dir.path().join("cells.bpk")).unwrap();
    let x = parm_codes::Encoder::encode(&enc, &[ds.test.image(0), ds.test.image(1)]).unwrap();
    assert_eq!(p.infer(&x, 1).unwrap().len(), 20);
}

#[test]
fn resnet18_trains_at_tiny_scale_on_cifar_binary_files() {
    let mut rng = StdRng::seed_from_u64(9);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, n: usize, rng: &mut StdRng| {
        let s = split(n, CIFAR_DIM, rng);
        let mut bytes = Vec::with_capacity(n * CIFAR_RECORD);
        for i in 0..n {
            bytes.push(s.labels[i]);
            bytes.extend(s.image(i).iter().map(|v| (v * 255.0).round().min(255.0) as u8));
        }
        std::fs::write(dir.path().join(name), bytes).unwrap();
    };
    write("data_batch_1.bin", 96, &mut rng);
    write("test_batch.bin", 32, &mut rng);
    let c = load_cifar10(dir.path(), 16).unwrap();
    let ds = Dataset {
        name: "cifar10-tiny".into(),
        rows: 32,
        cols: 32,
        input_shape: vec![3, 32, 32],
        classes: 10,
        has_labels: true,
        preprocess: None,
        train: c.train,
        val: c.val,
        test: c.test,
    };
    let net = NetConfig::ResNet18 { channels: 3, side: 32, classes: 10, width: 4 };
    let cfg = TrainConfig { epochs: 1, batch_size: 16, progress: false, ..Default::default() };
    let (model, meta) = train_deployed_net(&ds, &cfg, &net).unwrap();
    assert_eq!(meta.arch, "resnet18-w4-3x32x32-10");
    assert_eq!(meta.steps, 5);
    let out = dir.path().join("models");
    save_net(&model, &meta, &out, "resnet").unwrap();
    let p = Predictor::load(&out.join("resnet.bpk")).unwrap();
    let logits = p.infer(&ds.test.images[..2 * CIFAR_DIM], 2).unwrap();
    assert_eq!(logits.len(), 20);
    assert!(logits.iter().all(|v| v.is_finite()));
}
