//! `parm train-parity`: train a parity model for coding groups of k queries, and the
//! parity-training helpers the other commands use.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::Device;
use clap::Args;
use parm_codes::encoder_for_shape;
use parm_nn::parity::{Distill, LrSchedule, ParityConfig, ParityJob, file_hash, train_parity as run_parity_training};

use super::{Paths, parity_name};

#[derive(Args)]
pub struct TrainParityArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Encoder: addition or concatenation.
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// Total epochs (ParM trains 500); an interrupted run resumes from its last checkpoint.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Base recipe: `parm-paper` (ParM's published one) or `parm` (parm's own: cosine
    /// schedule, distillation, wider parity model); the flags below override single items.
    #[arg(long, default_value = "parm-paper")]
    pub recipe: String,
    /// Learning-rate schedule: constant or cosine.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Weight of the distillation term (0: MSE only).
    #[arg(long)]
    pub distill: Option<f32>,
    /// Distillation temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Hidden layer sizes of the parity model, e.g. 400,200 (default: the deployed model's).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub groups_per_step: Option<usize>,
    /// Per-query parity model: k x classes outputs, block j ~= F(X_j), decoded without
    /// subtraction (evaluation only; the serving frontend decodes by subtraction).
    #[arg(long)]
    pub per_query: bool,
    /// Initialise the parity model like a deployed model (Kaiming uniform) instead of ParM's
    /// N(0, 0.01).
    #[arg(long)]
    pub kaiming_init: bool,
    /// Cell-wise parity model (with --per-query and the concatenation encoder): one MLP of
    /// the hidden layers, shared by the k cells of the parity query.
    #[arg(long)]
    pub cells: bool,
    /// Augmentation: random shifts of up to this many pixels, F recomputed on the shifted
    /// queries for the targets (0: none).
    #[arg(long)]
    pub augment_shift: Option<usize>,
    /// Augmentation: random left-right flips (with recomputed targets).
    #[arg(long)]
    pub hflip: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Deployed model weights (default: MODELS_DIR/DATASET/deployed.bpk).
    #[arg(long)]
    pub deployed: Option<PathBuf>,
    /// File stem of the result (default: parity-k{K}-{ENCODER}).
    #[arg(long)]
    pub name: Option<String>,
    /// Delete an existing parity model and checkpoint of that name and start over.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &TrainParityArgs) -> anyhow::Result<()> {
    let dir = a.paths.model_dir();
    let name = a.name.clone().unwrap_or_else(|| parity_name(a.k, &a.encoder));
    let deployed_path = a.deployed.clone().unwrap_or_else(|| dir.join("deployed.bpk"));
    if a.force {
        let (w, j) = parm_nn::meta::model_paths(&dir, &name);
        for p in [w, j] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(dir.join(format!("{name}.ckpt")));
    }
    let mut cfg = recipe_config(&a.recipe, a.k, a.epochs)?;
    cfg.seed = a.seed;
    if let Some(s) = &a.schedule {
        cfg.schedule = match s.as_str() {
            "constant" => LrSchedule::Constant,
            "cosine" => LrSchedule::Cosine,
            _ => bail!("--schedule: constant or cosine, not {s}"),
        };
    }
    if let Some(w) = a.distill {
        let temperature = a.temperature.or(cfg.distill.map(|d| d.temperature)).unwrap_or(2.0);
        cfg.distill = (w > 0.0).then_some(Distill { weight: w, temperature });
    } else if let (Some(t), Some(d)) = (a.temperature, cfg.distill.as_mut()) {
        d.temperature = t;
    }
    if let Some(h) = &a.hidden {
        cfg.hidden = Some(h.clone());
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    if let Some(g) = a.groups_per_step {
        cfg.groups_per_step = g;
    }
    cfg.per_query |= a.per_query;
    if a.kaiming_init {
        cfg.init = parm_nn::mlp::Init::Default;
    }
    cfg.cells |= a.cells;
    if a.augment_shift.is_some() || a.hflip {
        let shift = a.augment_shift.unwrap_or(0);
        cfg.augment = (shift > 0 || a.hflip).then_some(parm_nn::parity::Augment { shift, hflip: a.hflip });
    }
    let meta = parity_training_with(&a.paths, &deployed_path, a.k, &a.encoder, &cfg, &name)?;
    println!(
        "parity model {name}: validation degraded-mode accuracy {:.2}% after {} epochs ({} steps, {:.1} s, {:.0} steps/s) -> {}",
        100.0 * meta.val_degraded_accuracy.unwrap_or(0.0),
        meta.epochs,
        meta.steps,
        meta.train_seconds,
        meta.steps as f64 / meta.train_seconds.max(1e-9),
        dir.join(format!("{name}.bpk")).display()
    );
    Ok(())
}

/// `linear-rR-pL`: parity L of the r-parity Vandermonde code ([`parm_codes::LinearCode`]);
/// `None` for any other encoder name.
pub fn linear_encoder(name: &str, k: usize) -> anyhow::Result<Option<Box<dyn parm_codes::Encoder>>> {
    let Some(rest) = name.strip_prefix("linear-r") else { return Ok(None) };
    let (r, l) = rest.split_once("-p").context("linear encoder name: linear-rR-pL")?;
    let (r, l): (usize, usize) = (r.parse()?, l.parse()?);
    if l >= r {
        bail!("parity index {l} of a code with r = {r}");
    }
    Ok(Some(Box::new(parm_codes::LinearCode::vandermonde(k, r)?.encoder(l))))
}

/// The training recipe called `name`: `parm-paper` (ParM's published recipe) or `parm`
/// (parm's own).
pub fn recipe_config(name: &str, k: usize, epochs: usize) -> anyhow::Result<ParityConfig> {
    match name {
        "parm-paper" => Ok(ParityConfig::parm_recipe(k, epochs)),
        "parm" => Ok(ParityConfig::parm_own_recipe(k, epochs)),
        _ => bail!("unknown recipe {name} (known: parm-paper, parm)"),
    }
}

/// Trains (or resumes, or finds finished) the parity model `name` against `deployed_path`.
pub fn parity_training(
    paths: &Paths,
    deployed_path: &std::path::Path,
    k: usize,
    encoder: &str,
    epochs: usize,
    seed: u64,
    name: &str,
) -> anyhow::Result<parm_nn::ModelMeta> {
    let cfg = ParityConfig { seed, ..ParityConfig::parm_recipe(k, epochs) };
    parity_training_with(paths, deployed_path, k, encoder, &cfg, name)
}

/// As [`parity_training`] with a full training configuration.
pub fn parity_training_with(
    paths: &Paths,
    deployed_path: &std::path::Path,
    k: usize,
    encoder: &str,
    cfg: &ParityConfig,
    name: &str,
) -> anyhow::Result<parm_nn::ModelMeta> {
    let ds = parm_data::load_dataset(&paths.dataset, &paths.data_dir)?;
    let encoder = linear_encoder(encoder, k)?.map_or_else(|| encoder_for_shape(encoder, k, &[ds.rows, ds.cols]), Ok)?;
    let (deployed, deployed_meta) = parm_nn::train::load_net(deployed_path, &Device::flex())
        .with_context(|| "loading the deployed model (train it first with `parm train`)".to_string())?;
    let job = ParityJob {
        ds: &ds,
        deployed: &deployed,
        deployed_meta: &deployed_meta,
        deployed_hash: file_hash(deployed_path)?,
        encoder: encoder.as_ref(),
        out_dir: &paths.model_dir(),
        name,
    };
    Ok(run_parity_training(&job, cfg)?)
}
