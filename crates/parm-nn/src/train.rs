//! Training the deployed model: Adam and cross-entropy on the true labels.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use parm_data::Dataset;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::eval::{accuracy, logits};
use crate::mlp::Init;
use crate::{Mlp, MlpConfig, ModelKind, ModelMeta, Net, NetConfig, NnError, labels1, meta, tensor2};

/// Hyper-parameters of deployed-model training.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    pub lr: f64,
    /// L2 weight decay added to the gradient (as PyTorch's Adam `weight_decay`).
    pub weight_decay: f32,
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Where to train (plain, without autodiff: training wraps it); the returned model stays
    /// there. Default: the CPU (`Device::flex()`); see [`crate::ComputeDevice::open`].
    pub device: Device,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 10, batch_size: 64, lr: 1e-3, weight_decay: 0.0, seed: 1, progress: true, device: Device::flex() }
    }
}

/// A progress bar over `total` steps, hidden when `show` is false.
pub(crate) fn progress_bar(total: u64, show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Trains ParM's MLP on `ds.train` (Adam, cross-entropy), reports test accuracy, and returns the
/// model (on `cfg.device`, without autodiff, ready for inference) with its metadata.
///
/// Source: ParM SOSP 2019 §5.1 (deployed models); the recipe is the usual one for this MLP.
pub fn train_deployed(ds: &Dataset, cfg: &TrainConfig) -> Result<(Mlp, ModelMeta), NnError> {
    let mlp = MlpConfig { input: ds.train.dim(), hidden: vec![200, 100], classes: ds.classes };
    match train_deployed_net(ds, cfg, &NetConfig::Mlp(mlp))? {
        (Net::Mlp(model), meta) => Ok((model, meta)),
        _ => unreachable!("an MLP config trains an MLP"),
    }
}

/// Writes `dir/name.bpk` (burnpack weights) and `dir/name.json` (metadata).
pub fn save_model(model: &Mlp, meta: &ModelMeta, dir: &Path, name: &str) -> Result<(), NnError> {
    std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
    let (weights, json) = meta::model_paths(dir, name);
    model.clone().save_file(&weights).map_err(|e| NnError::Weights { path: weights.display().to_string(), message: e.to_string() })?;
    meta.save(&json)
}

/// Loads a model from `weights` (`.bpk`) and the `.json` beside it onto `device`.
///
/// Errors: missing or malformed metadata, or weights whose names or shapes do not match the
/// architecture the metadata describes.
pub fn load_model(weights: &Path, device: &Device) -> Result<(Mlp, ModelMeta), NnError> {
    match load_net(weights, device)? {
        (Net::Mlp(model), meta) => Ok((model, meta)),
        (_, meta) => {
            Err(NnError::Weights { path: weights.display().to_string(), message: format!("architecture {} is not an MLP", meta.arch) })
        }
    }
}

/// Trains any architecture as the deployed model (Adam, cross-entropy), like
/// [`train_deployed`]; an MLP config gives exactly [`train_deployed`]'s model. The metadata's
/// `arch` names the architecture ([`NetConfig::name`]); for a CNN its `mlp` field holds only
/// the input and class counts (no hidden layers).
pub fn train_deployed_net(ds: &Dataset, cfg: &TrainConfig, net: &NetConfig) -> Result<(Net, ModelMeta), NnError> {
    let dim = ds.train.dim();
    if net.input() != dim || net.classes() != ds.classes {
        return Err(NnError::Invalid(format!(
            "{} takes {} values and {} classes; {} has {dim} and {}",
            net.name(),
            net.input(),
            net.classes(),
            ds.name,
            ds.classes
        )));
    }
    let plain = cfg.device.clone();
    let device = plain.clone().autodiff();
    let mut model = net.init(Init::Default, &device);
    let mut optim = AdamConfig::new().with_weight_decay((cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay))).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..ds.train.n).collect();
    let steps_per_epoch = ds.train.n.div_ceil(cfg.batch_size);
    let bar = progress_bar((steps_per_epoch * cfg.epochs) as u64, cfg.progress, "train");
    let start = Instant::now();
    let mut steps = 0u64;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let mut x = Vec::with_capacity(batch.len() * dim);
            let mut y = Vec::with_capacity(batch.len());
            for &i in batch {
                x.extend_from_slice(ds.train.image(i));
                y.push(ds.train.labels[i]);
            }
            let out = model.forward(tensor2(x, batch.len(), dim, &device));
            let loss = loss_fn.forward(out, labels1(&y, &device));
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            steps += 1;
            bar.inc(1);
        }
        bar.set_message(format!("epoch {} loss {:.4}", epoch + 1, loss_sum / steps_per_epoch as f64));
    }
    bar.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    let model = model.valid();
    let test_logits = logits(&model, &ds.test.images, ds.test.n, dim, &plain);
    let test_accuracy = accuracy(&test_logits, &ds.test.labels, ds.classes);
    let mlp = match net {
        NetConfig::Mlp(c) => c.clone(),
        _ => MlpConfig { input: dim, hidden: Vec::new(), classes: ds.classes },
    };
    let meta = ModelMeta {
        kind: ModelKind::Deployed,
        arch: net.name(),
        mlp,
        dataset: ds.name.clone(),
        input_shape: vec![dim as i64],
        classes: ds.classes,
        test_accuracy: Some(test_accuracy),
        k: None,
        encoder: None,
        val_degraded_accuracy: None,
        epochs: cfg.epochs,
        steps,
        train_seconds,
        preprocess: None,
    };
    Ok((model, meta))
}

/// Writes a [`Net`] like [`save_model`]: the weights of the architecture itself (an MLP's file
/// is the same as [`save_model`]'s) and the metadata.
pub fn save_net(model: &Net, meta: &ModelMeta, dir: &Path, name: &str) -> Result<(), NnError> {
    std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
    let (weights, json) = meta::model_paths(dir, name);
    let werr = |e: &dyn std::fmt::Display| NnError::Weights { path: weights.display().to_string(), message: e.to_string() };
    match model {
        Net::Mlp(m) => m.clone().save_file(&weights).map_err(|e| werr(&e))?,
        Net::LeNet(m) => m.clone().save_file(&weights).map_err(|e| werr(&e))?,
        Net::ResNet18(m) => m.clone().save_file(&weights).map_err(|e| werr(&e))?,
        Net::CellMlp(m) => m.clone().save_file(&weights).map_err(|e| werr(&e))?,
    }
    meta.save(&json)
}

/// Loads any architecture (by the metadata's `arch`) from `weights` and its `.json`.
///
/// Errors: those of [`load_model`]; [`NnError::Invalid`] for an unknown architecture name.
pub fn load_net(weights: &Path, device: &Device) -> Result<(Net, ModelMeta), NnError> {
    let meta = ModelMeta::load(&weights.with_extension("json"))?;
    if !weights.exists() {
        return Err(NnError::Weights { path: weights.display().to_string(), message: "file not found".into() });
    }
    // Sizes, names, shapes, dtypes and values checked before use (see crate::weights).
    let net = crate::weights::load_net_file(&meta, weights, device)?;
    Ok((net, meta))
}
