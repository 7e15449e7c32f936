//! Finding trained models, or training them on a default budget, for `demo` and `bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parm_bench::harness::{Models, ParityCode};

use crate::cmd::train_parity::parity_training;
use crate::cmd::{Paths, parity_name};

/// Training budgets used when a model is missing.
pub struct Budget {
    pub deployed_epochs: usize,
    pub parity_epochs: usize,
    pub seed: u64,
}

/// The deployed model `MODELS_DIR/DATASET/deployed.bpk` and the addition parity models for
/// every k in `ks`, trained first if missing (a parity run interrupted before its first
/// checkpoint is resumed). Existing models are reused, never overwritten.
pub fn ensure_models(paths: &Paths, ks: &[usize], budget: &Budget) -> anyhow::Result<Models> {
    ensure_models_for(paths, ks, ParityCode::Addition, budget)
}

/// [`ensure_models`] with parity models of `code`: ParM's addition parity models, or collage
/// models (`parity-k{K}-collage`, see `parm train-parity --code collage`).
pub fn ensure_models_for(paths: &Paths, ks: &[usize], code: ParityCode, budget: &Budget) -> anyhow::Result<Models> {
    let dir = paths.model_dir();
    let deployed = ensure_deployed(paths, &dir, budget)?;
    let mut parity = BTreeMap::new();
    for &k in ks {
        parity.insert(k, ensure_parity(paths, &deployed, k, code.name(), budget)?);
    }
    Ok(Models { deployed, parity, code, linear: BTreeMap::new(), backup: BTreeMap::new() })
}

/// The parity model for coding groups of `k` under `encoder` (`addition`, `linear-rR-pL`,
/// `collage`, ...) of the deployed model at `deployed`, `MODELS_DIR/DATASET/parity-k{K}-{ENCODER}.bpk`,
/// trained first if missing; an existing one is reused, never overwritten.
pub fn ensure_parity(paths: &Paths, deployed: &Path, k: usize, encoder: &str, budget: &Budget) -> anyhow::Result<PathBuf> {
    let dir = paths.model_dir();
    let name = parity_name(k, encoder);
    let path = dir.join(format!("{name}.bpk"));
    if !path.exists() || has_unfinished_checkpoint(&dir, &name) {
        eprintln!("training the k={k} {encoder} parity model ({} epochs; ParM trains 500)...", budget.parity_epochs);
        parity_training(paths, deployed, k, encoder, budget.parity_epochs, budget.seed, &name)?;
    }
    Ok(path)
}

fn ensure_deployed(paths: &Paths, dir: &Path, budget: &Budget) -> anyhow::Result<PathBuf> {
    let path = dir.join("deployed.bpk");
    if path.exists() {
        eprintln!("reusing the deployed model {}", path.display());
        return Ok(path);
    }
    eprintln!("training the deployed model ({} epochs)...", budget.deployed_epochs);
    let ds = parm_data::load_dataset(&paths.dataset, &paths.data_dir)?;
    let cfg = parm_nn::train::TrainConfig { epochs: budget.deployed_epochs, seed: budget.seed, ..Default::default() };
    let (model, meta) = parm_nn::train::train_deployed(&ds, &cfg)?;
    parm_nn::train::save_model(&model, &meta, dir, "deployed")?;
    Ok(path)
}

/// The cheap backup model for k, `MODELS_DIR/DATASET/backup-k{K}.bpk`: ParM's MLP with hidden
/// layers 200/K and 100/K, so that it costs about 1/K of F's compute per query (a parity
/// model's extra compute per query at k = K), trained on the labels like F; trained first if
/// missing, reused, never overwritten.
pub fn ensure_backup(paths: &Paths, k: usize, budget: &Budget) -> anyhow::Result<PathBuf> {
    let dir = paths.model_dir();
    let name = parm_bench::harness::backup_name(k);
    let path = dir.join(format!("{name}.bpk"));
    if path.exists() {
        return Ok(path);
    }
    let ds = parm_data::load_dataset(&paths.dataset, &paths.data_dir)?;
    let hidden = vec![(200 / k).max(1), (100 / k).max(1)];
    eprintln!("training the cheap backup model for k={k} (hidden {hidden:?}, {} epochs)...", budget.deployed_epochs);
    let cfg = parm_nn::train::TrainConfig { epochs: budget.deployed_epochs, seed: budget.seed, ..Default::default() };
    let net = parm_nn::NetConfig::Mlp(parm_nn::MlpConfig { input: ds.train.dim(), hidden, classes: ds.classes });
    let (model, meta) = parm_nn::train::train_deployed_net(&ds, &cfg, &net)?;
    parm_nn::train::save_net(&model, &meta, &dir, &name)?;
    Ok(path)
}

fn has_unfinished_checkpoint(dir: &Path, name: &str) -> bool {
    // A checkpoint directory without the best model means an interrupted first run.
    dir.join(format!("{name}.ckpt")).exists() && !dir.join(format!("{name}.json")).exists()
}
