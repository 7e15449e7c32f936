//! Training parity models: Fp(X1 + ... + Xk) ~= F(X1) + ... + F(Xk).
//!
//! Source: ParM SOSP 2019 §3.3 and the public parity-models code (recipe in
//! `shared/docs/PARM.md` §2): same architecture as F, fresh N(0, 0.01) init, MSE against the
//! sum of F's logits (computed once and cached), Adam lr 1e-3, weight decay 1e-5, 64 coding
//! groups per step for k = 2 (32 otherwise), best checkpoint by validation degraded-mode
//! accuracy.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use parm_codes::Encoder;
use parm_data::{Dataset, Split};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::deployed::{DeployedModel, cached_outputs, outputs_of};
use crate::eval::degraded_accuracy;
use crate::mlp::Init;
use crate::train::{progress_bar, save_net};
use crate::{MlpConfig, ModelKind, ModelMeta, Net, NetConfig, NnError, io_err, tensor2};

/// Seed of the validation coding groups, fixed so checkpoints are comparable.
const VAL_GROUP_SEED: u64 = 7;

/// Learning-rate schedule of parity training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// ParM: constant.
    Constant,
    /// Cosine annealing from lr to 0 over all steps (Loshchilov & Hutter, SGDR, 2017).
    Cosine,
}

impl LrSchedule {
    /// The learning rate at `step` of `total` steps.
    pub fn lr(&self, base: f64, step: u64, total: u64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let t = (step as f64 / total.max(1) as f64).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Distillation term beside the MSE loss: for every query j of a group, the reconstruction
/// `(Fp(P) - sum_{i != j} w_i F(X_i)) / w_j` the decoder would output is pushed towards F(X_j)
/// with the KL divergence of their softmaxes at temperature T, scaled by T^2 (Hinton et al.,
/// "Distilling the knowledge in a neural network", 2015). MSE weighs every logit error alike;
/// this term weighs the errors that change the reconstruction's class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distill {
    pub weight: f32,
    pub temperature: f32,
}

/// Hyper-parameters of parity-model training.
#[derive(Debug, Clone)]
pub struct ParityConfig {
    pub epochs: usize,
    /// Coding groups per step; ParM: 64 for k = 2, else 32.
    pub groups_per_step: usize,
    pub lr: f64,
    pub weight_decay: f32,
    pub seed: u64,
    pub progress: bool,
    /// ParM: constant.
    pub schedule: LrSchedule,
    /// ParM: none (MSE only).
    pub distill: Option<Distill>,
    /// Hidden layer sizes of the parity model; ParM: `None`, the deployed model's.
    pub hidden: Option<Vec<usize>>,
    /// ParM: false, Fp(P) ~= sum_j w_j F(X_j) and the subtraction decoder. True: the parity
    /// model has k x classes outputs, trained so that its j-th block ~= F(X_j), and the
    /// decoder returns block j for an unavailable F(X_j) (no subtraction, so the errors of the
    /// other k - 1 terms do not add up). Made for the concatenation encoder, where each query
    /// keeps its own cell of the parity query. Recognised at load time by the parity model's
    /// output width (`mlp.classes == k * classes`).
    pub per_query: bool,
    /// Initialisation; ParM: N(0, 0.01) linear weights.
    pub init: Init,
    /// ParM: false. True (with `per_query` and the concatenation encoder): the parity model is
    /// [`crate::cells::CellMlp`], one MLP (of `hidden` layers) shared by the k cells.
    pub cells: bool,
    /// ParM: false (an MLP). True: a small CNN, LeNet-5 ([`crate::cnn::LeNet`]) on the parity
    /// query's `[C, S, S]`, for image queries whose side S is a multiple of 4 and at least 12.
    pub cnn: bool,
    /// ParM: none. Random shifts / flips of the training queries, with the targets F(X_j)
    /// recomputed on the augmented queries (not cached).
    pub augment: Option<Augment>,
    /// Where to train (plain, without autodiff: training wraps it). Default: the CPU
    /// (`Device::flex()`); see [`crate::ComputeDevice::open`].
    pub device: Device,
}

/// Training-time augmentation of the queries of a coding group. Each query is independently
/// shifted by up to `shift` pixels in each direction (zero fill) and, with `hflip`, mirrored
/// left-right with probability 1/2; F runs on the augmented queries for the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    pub shift: usize,
    pub hflip: bool,
}

impl Augment {
    /// `img`: `channels x rows x cols` row-major.
    fn apply(&self, img: &[f32], rows: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
        use rand::Rng;
        let s = self.shift as i64;
        let (dy, dx) = if s > 0 { (rng.random_range(-s..=s), rng.random_range(-s..=s)) } else { (0, 0) };
        let flip = self.hflip && rng.random::<bool>();
        let plane = rows * cols;
        let mut out = vec![0.0f32; img.len()];
        for ch in 0..img.len() / plane {
            for r in 0..rows as i64 {
                let sr = r - dy;
                if sr < 0 || sr >= rows as i64 {
                    continue;
                }
                for c in 0..cols as i64 {
                    let sc0 = c - dx;
                    if sc0 < 0 || sc0 >= cols as i64 {
                        continue;
                    }
                    let sc = if flip { cols as i64 - 1 - sc0 } else { sc0 };
                    out[ch * plane + (r as usize) * cols + c as usize] = img[ch * plane + (sr as usize) * cols + sc as usize];
                }
            }
        }
        out
    }
}

impl ParityConfig {
    /// ParM's published recipe for `k` with a given epoch budget (ParM itself runs 500).
    pub fn parm_recipe(k: usize, epochs: usize) -> Self {
        Self {
            epochs,
            groups_per_step: if k == 2 { 64 } else { 32 },
            lr: 1e-3,
            weight_decay: 1e-5,
            seed: 1,
            progress: true,
            schedule: LrSchedule::Constant,
            distill: None,
            hidden: None,
            per_query: false,
            init: Init::Normal001,
            cells: false,
            cnn: false,
            augment: None,
            device: Device::flex(),
        }
    }

    /// parm's own recipe, chosen by measurement (BENCHMARKS.md, "Parity-model quality"), to
    /// be used with the concatenation encoder: a per-query parity model (k x classes outputs,
    /// no subtraction) that is cell-wise ([`crate::cells::CellMlp`]: one MLP shared by the k
    /// cells) with the deployed MLP's hidden layers (200-100; 200-100 for a CNN F too), a
    /// distillation term (weight 1, T = 2) beside the MSE, Kaiming init, Adam lr 3e-3 with 16
    /// groups per step. Measured and dropped: cosine annealing (no gain at short budgets),
    /// shift / flip augmentation with recomputed targets (lower A_d at 4 and 10 epochs), cells
    /// of 400-200 (up to 1 point more A_d on Fashion-MNIST for 2.4x the parity model's compute,
    /// which would then cost well over 1/k of the deployed instances' work).
    pub fn parm_own_recipe(k: usize, epochs: usize) -> Self {
        Self {
            cells: true,
            distill: Some(Distill { weight: 1.0, temperature: 2.0 }),
            per_query: true,
            init: Init::Default,
            lr: 3e-3,
            groups_per_step: 16,
            ..Self::parm_recipe(k, epochs)
        }
    }
}

/// Where a training run keeps its resumable state (`<out>/<name>.ckpt/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epochs_done: usize,
    steps: u64,
    best_val: f64,
    train_seconds: f64,
    deployed_hash: u64,
}

/// A content hash of a weights file (identifies the deployed model for caches and resumes).
pub fn file_hash(path: &Path) -> Result<u64, NnError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(h.finish())
}

/// Inputs to [`train_parity`].
pub struct ParityJob<'a> {
    pub ds: &'a Dataset,
    /// The deployed model F (any architecture; the parity model is an MLP).
    pub deployed: &'a dyn DeployedModel,
    pub deployed_meta: &'a ModelMeta,
    pub deployed_hash: u64,
    pub encoder: &'a dyn Encoder,
    pub out_dir: &'a Path,
    /// File stem of the result, e.g. `parity-k2-addition`.
    pub name: &'a str,
}

/// Trains a parity model, writing the best checkpoint (by validation degraded-mode accuracy)
/// to `out_dir/name.{bpk,json}` and the last epoch's state to `out_dir/name.ckpt/`, from which
/// an interrupted run resumes. Returns the best model's metadata.
pub fn train_parity(job: &ParityJob, cfg: &ParityConfig) -> Result<ModelMeta, NnError> {
    let ds = job.ds;
    let k = job.encoder.k();
    let classes = ds.classes;
    let dim = ds.train.dim();
    let plain = cfg.device.clone();
    let device = plain.clone().autodiff();
    let cache = job.out_dir.join("cache");
    let train_logits = cached_outputs(job.deployed, job.deployed_hash, &ds.train, "train", &cache)?;
    let val_logits = cached_outputs(job.deployed, job.deployed_hash, &ds.val, "val", &cache)?;

    let ckpt_dir = job.out_dir.join(format!("{}.ckpt", job.name));
    let weights = job.encoder.weights();
    let net_cfg = parity_net(job.deployed_meta, cfg, k, ds)?;
    let out_width = net_cfg.classes();
    let mut model = net_cfg.init(cfg.init, &device);
    let mut aug_rng = StdRng::seed_from_u64(cfg.seed ^ 0xA5A5 ^ ((state_epochs_hint(&ckpt_dir) as u64) << 20));
    let mut optim = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay))).init();
    let mut state = CheckpointState { epochs_done: 0, steps: 0, best_val: -1.0, train_seconds: 0.0, deployed_hash: job.deployed_hash };
    if let Some((m, o, s)) = load_checkpoint(&ckpt_dir, model.clone(), optim.clone(), job.deployed_hash)? {
        eprintln!("resuming {} from epoch {} (best validation A_d {:.4})", job.name, s.epochs_done, s.best_val);
        (model, optim, state) = (m, o, s);
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(state.epochs_done as u64));
    let steps_per_epoch = (ds.train.n / k).div_ceil(cfg.groups_per_step);
    let total_steps = (steps_per_epoch * cfg.epochs) as u64;
    let remaining = cfg.epochs.saturating_sub(state.epochs_done);
    let bar = progress_bar((steps_per_epoch * remaining) as u64, cfg.progress, "train-parity");
    let mut best_meta = None;
    for epoch in state.epochs_done..cfg.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..ds.train.n).collect();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks_exact(k).collect::<Vec<_>>().chunks(cfg.groups_per_step) {
            let aug = match cfg.augment {
                Some(a) => Some(augmented_split(batch, &ds.train, ds.rows, ds.cols, a, job.deployed, &mut aug_rng)?),
                None => None,
            };
            let (split, groups_now, targets): (&Split, Vec<&[usize]>, &[f32]) = match &aug {
                Some((sp, members, fl)) => (sp, members.iter().map(|g| g.as_slice()).collect(), fl),
                None => (&ds.train, batch.to_vec(), &train_logits),
            };
            let (x, y) = parity_batch(&groups_now, split, targets, classes, job.encoder, cfg.per_query);
            let out = model.forward(tensor2(x, batch.len(), dim, &device));
            let mut loss = MseLoss::new().forward(out.clone(), tensor2(y.clone(), batch.len(), out_width, &device), Reduction::Mean);
            if let Some(d) = cfg.distill {
                let kd = if cfg.per_query {
                    per_query_distill_loss(out, &groups_now, targets, classes, d, &device)
                } else {
                    distill_loss(out, &groups_now, &y, targets, &weights, classes, d, &device)
                };
                loss = loss + kd.mul_scalar(d.weight);
            }
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.schedule.lr(cfg.lr, state.steps, total_steps), model, grads);
            state.steps += 1;
            bar.inc(1);
        }
        state.train_seconds += start.elapsed().as_secs_f64();
        state.epochs_done = epoch + 1;
        let valid = model.valid();
        let val = degraded_accuracy(&val_logits, &valid, &ds.val, job.encoder, classes, VAL_GROUP_SEED, &plain);
        bar.set_message(format!("epoch {} loss {:.4} val A_d {:.4}", epoch + 1, loss_sum / steps_per_epoch as f64, val));
        if val > state.best_val {
            state.best_val = val;
            let meta = parity_meta(job, cfg, &state, val);
            save_net(&valid, &meta, job.out_dir, job.name)?;
            best_meta = Some(meta);
        }
        save_checkpoint(&ckpt_dir, &model, &optim, &state)?;
    }
    bar.finish_and_clear();
    match best_meta {
        Some(m) => Ok(m),
        None => ModelMeta::load(&job.out_dir.join(format!("{}.json", job.name))),
    }
}

/// The parity model's architecture for `cfg`: an MLP ([`parity_mlp`]) or, with `cfg.cells`,
/// the cell-wise MLP with the same hidden layers and interface.
fn parity_net(deployed: &ModelMeta, cfg: &ParityConfig, k: usize, ds: &Dataset) -> Result<NetConfig, NnError> {
    let mlp = parity_mlp(deployed, cfg, k);
    let plane = ds.rows * ds.cols;
    if cfg.cnn {
        let channels = mlp.input.checked_div(plane).unwrap_or(0);
        if cfg.cells || ds.rows != ds.cols || ds.rows < 12 || !ds.rows.is_multiple_of(4) || channels * plane != mlp.input {
            return Err(NnError::Invalid(format!(
                "a CNN parity model needs square image queries with a side that is a multiple of 4 and at least 12, not {} values of {}x{} (use --parity-arch mlp)",
                mlp.input, ds.rows, ds.cols
            )));
        }
        return Ok(NetConfig::LeNet { channels, side: ds.rows, classes: mlp.classes });
    }
    if !cfg.cells {
        return Ok(NetConfig::Mlp(mlp));
    }
    if !cfg.per_query || plane == 0 || !mlp.input.is_multiple_of(plane) {
        return Err(NnError::Invalid(format!(
            "a cell-wise parity model needs a per-query parity model and image queries ({} values, {}x{} images)",
            mlp.input, ds.rows, ds.cols
        )));
    }
    Ok(NetConfig::CellMlp { k, channels: mlp.input / plane, rows: ds.rows, cols: ds.cols, mlp })
}

/// Epochs a resumable run has done (0 if none), to seed its augmentation stream.
fn state_epochs_hint(ckpt_dir: &Path) -> usize {
    std::fs::read_to_string(ckpt_paths(ckpt_dir).2)
        .ok()
        .and_then(|t| serde_json::from_str::<CheckpointState>(&t).ok())
        .map_or(0, |s| s.epochs_done)
}

/// What [`augmented_split`] returns: the split, its groups, and F's logits on it.
type AugmentedSplit = (Split, Vec<Vec<usize>>, Vec<f32>);

/// Augmented copies of the queries of `groups` as a small split (`groups.len() * k` images,
/// numbered group by group), the groups renumbered into it, and F's logits on it.
fn augmented_split(
    groups: &[&[usize]],
    split: &Split,
    rows: usize,
    cols: usize,
    a: Augment,
    deployed: &dyn DeployedModel,
    rng: &mut StdRng,
) -> Result<AugmentedSplit, NnError> {
    let dim = split.dim();
    let mut images = Vec::with_capacity(groups.len() * groups.first().map_or(0, |g| g.len()) * dim);
    let mut labels = Vec::new();
    let mut members = Vec::with_capacity(groups.len());
    for g in groups {
        let mut local = Vec::with_capacity(g.len());
        for &i in g.iter() {
            local.push(labels.len());
            images.extend(a.apply(split.image(i), rows, cols, rng));
            labels.push(split.labels[i]);
        }
        members.push(local);
    }
    let n = labels.len();
    let fl = outputs_of(deployed, &images, n, dim)?;
    Ok((Split { images, labels, n }, members, fl))
}

/// The MLP parity model's layers for `cfg`: the deployed model's, or wider.
fn parity_mlp(deployed: &ModelMeta, cfg: &ParityConfig, k: usize) -> MlpConfig {
    let mut m = deployed.mlp.clone();
    if m.hidden.is_empty() {
        // A convolutional F (its metadata's MLP config has no hidden layers): ParM's MLP.
        m.hidden = vec![200, 100];
    }
    if let Some(h) = &cfg.hidden {
        m.hidden = h.clone();
    }
    if cfg.per_query {
        m.classes = k * deployed.classes;
    }
    m
}

/// Soft targets softmax(F(X_i) / T) of the members of `groups`, `[groups x k, classes]`.
fn soft_targets(groups: &[&[usize]], logits: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let mut soft = Vec::new();
    for group in groups {
        for &i in group.iter() {
            let f = &logits[i * classes..(i + 1) * classes];
            let mx = f.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = f.iter().map(|v| ((v - mx) / t).exp()).collect();
            let z: f32 = e.iter().sum();
            soft.extend(e.iter().map(|v| v / z));
        }
    }
    soft
}

/// The distillation term for a per-query parity model: KL of softmax(F(X_j) / T) and
/// softmax(block j / T), times T^2.
fn per_query_distill_loss(out: Tensor<2>, groups: &[&[usize]], logits: &[f32], classes: usize, d: Distill, device: &Device) -> Tensor<1> {
    let rows = groups.len() * groups.first().map_or(0, |g| g.len());
    let soft = soft_targets(groups, logits, classes, d.temperature);
    let logq = log_softmax(out.reshape([rows, classes]).div_scalar(d.temperature), 1);
    (tensor2(soft, rows, classes, device) * logq).sum_dim(1).mean().neg().mul_scalar(d.temperature * d.temperature)
}

/// The distillation term of [`Distill`] for a batch: `out` `[G, C]` parity outputs, `y`
/// their targets `sum_i w_i F(X_i)` (flattened), `logits` F on the split.
#[allow(clippy::too_many_arguments)]
fn distill_loss(
    out: Tensor<2>,
    groups: &[&[usize]],
    y: &[f32],
    logits: &[f32],
    weights: &[f32],
    classes: usize,
    d: Distill,
    device: &Device,
) -> Tensor<1> {
    let g = groups.len();
    let k = weights.len();
    let t = d.temperature;
    // For row (group, j): rec = (out - (y - w_j F_j)) / w_j.
    let mut others = Vec::with_capacity(g * k * classes);
    let mut inv_w = Vec::with_capacity(g * k * classes);
    let soft = soft_targets(groups, logits, classes, t);
    for (gi, group) in groups.iter().enumerate() {
        for (j, &i) in group.iter().enumerate() {
            let f = &logits[i * classes..(i + 1) * classes];
            for c in 0..classes {
                others.push(y[gi * classes + c] - weights[j] * f[c]);
                inv_w.push(1.0 / weights[j]);
            }
        }
    }
    let rep = out.unsqueeze_dim::<3>(1).repeat_dim(1, k).reshape([g * k, classes]);
    let rec = (rep - tensor2(others, g * k, classes, device)) * tensor2(inv_w, g * k, classes, device);
    let logq = log_softmax(rec.div_scalar(t), 1);
    (tensor2(soft, g * k, classes, device) * logq).sum_dim(1).mean().neg().mul_scalar(t * t)
}

/// Parity queries `[groups, dim]` and targets `[groups, classes]` (`sum_j w_j F(X_j)`, the
/// encoder's weights; all 1 for ParM's codes).
fn parity_batch(
    groups: &[&[usize]],
    split: &Split,
    logits: &[f32],
    classes: usize,
    encoder: &dyn Encoder,
    per_query: bool,
) -> (Vec<f32>, Vec<f32>) {
    let mut x = Vec::with_capacity(groups.len() * split.dim());
    if per_query {
        let mut y = Vec::with_capacity(groups.len() * encoder.k() * classes);
        for group in groups {
            let members: Vec<&[f32]> = group.iter().map(|&i| split.image(i)).collect();
            x.extend(encoder.encode(&members).expect("members have equal shape"));
            for &i in group.iter() {
                y.extend_from_slice(&logits[i * classes..(i + 1) * classes]);
            }
        }
        return (x, y);
    }
    let mut y = vec![0.0f32; groups.len() * classes];
    let w = encoder.weights();
    for (g, group) in groups.iter().enumerate() {
        let members: Vec<&[f32]> = group.iter().map(|&i| split.image(i)).collect();
        x.extend(encoder.encode(&members).expect("members have equal shape"));
        for (j, &i) in group.iter().enumerate() {
            for c in 0..classes {
                y[g * classes + c] += w[j] * logits[i * classes + c];
            }
        }
    }
    (x, y)
}

fn parity_meta(job: &ParityJob, cfg: &ParityConfig, state: &CheckpointState, val: f64) -> ModelMeta {
    let mlp = parity_mlp(job.deployed_meta, cfg, job.encoder.k());
    let arch = parity_net(job.deployed_meta, cfg, job.encoder.k(), job.ds).map_or_else(|_| mlp.name(), |n| n.name());
    ModelMeta {
        kind: ModelKind::Parity,
        arch,
        mlp,
        k: Some(job.encoder.k()),
        encoder: Some(job.encoder.name().to_string()),
        val_degraded_accuracy: Some(val),
        test_accuracy: None,
        epochs: state.epochs_done.min(cfg.epochs),
        steps: state.steps,
        train_seconds: state.train_seconds,
        ..job.deployed_meta.clone()
    }
}

fn ckpt_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("model.bpk"), dir.join("optimizer.bpk"), dir.join("state.json"))
}

fn save_checkpoint(dir: &Path, model: &Net, optim: &burn::optim::ModuleOptimizer, state: &CheckpointState) -> Result<(), NnError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (m, o, s) = ckpt_paths(dir);
    let werr = |p: &Path, e: &dyn std::fmt::Display| NnError::Weights { path: p.display().to_string(), message: e.to_string() };
    match model {
        Net::Mlp(x) => x.clone().save_file(&m).map_err(|e| werr(&m, &e))?,
        Net::CellMlp(x) => x.clone().save_file(&m).map_err(|e| werr(&m, &e))?,
        Net::LeNet(x) => x.clone().save_file(&m).map_err(|e| werr(&m, &e))?,
        Net::ResNet18(x) => x.clone().save_file(&m).map_err(|e| werr(&m, &e))?,
    }
    optim.save(&o).map_err(|e| werr(&o, &e))?;
    std::fs::write(&s, serde_json::to_string_pretty(state).expect("state serialises")).map_err(io_err(&s))
}

type Resumed = (Net, burn::optim::ModuleOptimizer, CheckpointState);

fn load_checkpoint(dir: &Path, model: Net, optim: burn::optim::ModuleOptimizer, deployed_hash: u64) -> Result<Option<Resumed>, NnError> {
    let (m, o, s) = ckpt_paths(dir);
    let Ok(text) = std::fs::read_to_string(&s) else { return Ok(None) };
    let state: CheckpointState = serde_json::from_str(&text).map_err(|source| NnError::Meta { path: s.display().to_string(), source })?;
    if state.deployed_hash != deployed_hash {
        return Err(NnError::Invalid(format!(
            "checkpoint {} was trained against another deployed model; remove it to start over",
            dir.display()
        )));
    }
    let werr = |p: &Path, e: &dyn std::fmt::Display| NnError::Weights { path: p.display().to_string(), message: e.to_string() };
    let model = match model {
        Net::Mlp(x) => Net::Mlp(x.try_load_file(&m).map_err(|e| werr(&m, &e))?),
        Net::CellMlp(x) => Net::CellMlp(x.try_load_file(&m).map_err(|e| werr(&m, &e))?),
        Net::LeNet(x) => Net::LeNet(x.try_load_file(&m).map_err(|e| werr(&m, &e))?),
        Net::ResNet18(x) => Net::ResNet18(x.try_load_file(&m).map_err(|e| werr(&m, &e))?),
    };
    let optim = optim.load(&o).map_err(|e| werr(&o, &e))?;
    Ok(Some((model, optim, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_anneals_to_zero() {
        let c = LrSchedule::Cosine;
        assert!((c.lr(1.0, 0, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 50, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 100, 100).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.lr(0.3, 77, 100), 0.3);
    }

    #[test]
    fn recipes_differ_only_where_documented() {
        let p = ParityConfig::parm_recipe(2, 5);
        assert_eq!((p.groups_per_step, p.lr, p.per_query, p.distill), (64, 1e-3, false, None));
        assert_eq!(ParityConfig::parm_recipe(3, 5).groups_per_step, 32);
        let o = ParityConfig::parm_own_recipe(8, 5);
        assert!(o.per_query && o.cells && o.distill.is_some() && o.hidden.is_none());
        assert!(!p.cells && p.augment.is_none() && o.augment.is_none());
    }
}
