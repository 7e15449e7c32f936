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
use burn::tensor::Device;
use parm_codes::Encoder;
use parm_data::{Dataset, Split};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::eval::{degraded_accuracy, logits};
use crate::mlp::Init;
use crate::train::{progress_bar, save_model};
use crate::{io_err, tensor2, Mlp, ModelKind, ModelMeta, NnError};

/// Seed of the validation coding groups, fixed so checkpoints are comparable.
const VAL_GROUP_SEED: u64 = 7;

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

/// The deployed model's logits on `split`, cached in `cache_dir` under a name derived from the
/// deployed weights' content hash, so that every parity model trained against the same F
/// reuses them. Returns `[n, classes]` flattened.
pub fn cached_logits(
    deployed: &Mlp,
    deployed_hash: u64,
    split: &Split,
    split_name: &str,
    cache_dir: &Path,
    device: &Device,
) -> Result<Vec<f32>, NnError> {
    let path = cache_dir.join(format!("logits-{deployed_hash:016x}-{split_name}.f32"));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() % 4 == 0 && bytes.len() / 4 % split.n.max(1) == 0 {
            return Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect());
        }
    }
    let out = logits(deployed, &split.images, split.n, split.dim(), device);
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    std::fs::write(&path, bytes).map_err(io_err(&path))?;
    Ok(out)
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
    pub deployed: &'a Mlp,
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
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let cache = job.out_dir.join("cache");
    let train_logits = cached_logits(job.deployed, job.deployed_hash, &ds.train, "train", &cache, &plain)?;
    let val_logits = cached_logits(job.deployed, job.deployed_hash, &ds.val, "val", &cache, &plain)?;

    let ckpt_dir = job.out_dir.join(format!("{}.ckpt", job.name));
    let mut model = job.deployed_meta.mlp.init(Init::Normal001, &device);
    let mut optim = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay))).init();
    let mut state = CheckpointState {
        epochs_done: 0,
        steps: 0,
        best_val: -1.0,
        train_seconds: 0.0,
        deployed_hash: job.deployed_hash,
    };
    if let Some((m, o, s)) = load_checkpoint(&ckpt_dir, model.clone(), optim.clone(), job.deployed_hash)? {
        eprintln!("resuming {} from epoch {} (best validation A_d {:.4})", job.name, s.epochs_done, s.best_val);
        (model, optim, state) = (m, o, s);
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(state.epochs_done as u64));
    let steps_per_epoch = (ds.train.n / k).div_ceil(cfg.groups_per_step);
    let remaining = cfg.epochs.saturating_sub(state.epochs_done);
    let bar = progress_bar((steps_per_epoch * remaining) as u64, cfg.progress, "train-parity");
    let mut best_meta = None;
    for epoch in state.epochs_done..cfg.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..ds.train.n).collect();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks_exact(k).collect::<Vec<_>>().chunks(cfg.groups_per_step) {
            let (x, y) = parity_batch(batch, &ds.train, &train_logits, classes, job.encoder);
            let out = model.forward(tensor2(x, batch.len(), dim, &device));
            let loss = MseLoss::new().forward(out, tensor2(y, batch.len(), classes, &device), Reduction::Mean);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
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
            save_model(&valid, &meta, job.out_dir, job.name)?;
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

/// Parity queries `[groups, dim]` and targets `[groups, classes]` (sum of F's logits).
fn parity_batch(
    groups: &[&[usize]],
    split: &Split,
    logits: &[f32],
    classes: usize,
    encoder: &dyn Encoder,
) -> (Vec<f32>, Vec<f32>) {
    let mut x = Vec::with_capacity(groups.len() * split.dim());
    let mut y = vec![0.0f32; groups.len() * classes];
    for (g, group) in groups.iter().enumerate() {
        let members: Vec<&[f32]> = group.iter().map(|&i| split.image(i)).collect();
        x.extend(encoder.encode(&members).expect("members have equal shape"));
        for &i in group.iter() {
            for c in 0..classes {
                y[g * classes + c] += logits[i * classes + c];
            }
        }
    }
    (x, y)
}

fn parity_meta(job: &ParityJob, cfg: &ParityConfig, state: &CheckpointState, val: f64) -> ModelMeta {
    ModelMeta {
        kind: ModelKind::Parity,
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

fn save_checkpoint(
    dir: &Path,
    model: &Mlp,
    optim: &burn::optim::ModuleOptimizer,
    state: &CheckpointState,
) -> Result<(), NnError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (m, o, s) = ckpt_paths(dir);
    let werr = |p: &Path, e: &dyn std::fmt::Display| NnError::Weights { path: p.display().to_string(), message: e.to_string() };
    model.clone().save_file(&m).map_err(|e| werr(&m, &e))?;
    optim.save(&o).map_err(|e| werr(&o, &e))?;
    std::fs::write(&s, serde_json::to_string_pretty(state).expect("state serialises")).map_err(io_err(&s))
}

type Resumed = (Mlp, burn::optim::ModuleOptimizer, CheckpointState);

fn load_checkpoint(
    dir: &Path,
    model: Mlp,
    optim: burn::optim::ModuleOptimizer,
    deployed_hash: u64,
) -> Result<Option<Resumed>, NnError> {
    let (m, o, s) = ckpt_paths(dir);
    let Ok(text) = std::fs::read_to_string(&s) else { return Ok(None) };
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|source| NnError::Meta { path: s.display().to_string(), source })?;
    if state.deployed_hash != deployed_hash {
        return Err(NnError::Invalid(format!(
            "checkpoint {} was trained against another deployed model; remove it to start over",
            dir.display()
        )));
    }
    let werr = |p: &Path, e: &dyn std::fmt::Display| NnError::Weights { path: p.display().to_string(), message: e.to_string() };
    let model = model.try_load_file(&m).map_err(|e| werr(&m, &e))?;
    let optim = optim.load(&o).map_err(|e| werr(&o, &e))?;
    Ok(Some((model, optim, state)))
}
