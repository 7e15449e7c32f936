//! `parm train-parity`: train a parity model for coding groups of k queries, and the
//! parity-training helpers the other commands use.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use parm_nn::parity::{Distill, LrSchedule, ParityConfig, ParityJob, train_parity as run_parity_training};

use crate::deployed::{Deployed, Source};

use super::{Paths, parity_name};

#[derive(Args)]
pub struct TrainParityArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Encoder: addition, concatenation, or linear-rR-pL: parity L (0-based) of the r-parity
    /// linear code, one model per parity index for `parm serve --parities R` (whose default
    /// parity model names are parity-k{K}-linear-rR-pL).
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// What to train: `parity` (ParM's learned parity model, with --encoder) or `collage`
    /// (Narra et al., "Collage Inference", arXiv 1904.12222: the k queries, downsampled, tiled
    /// into one input by the concatenation encoder, and one model that classifies every cell;
    /// parm's cell-wise model; written as parity-k{K}-collage for `parm serve --code collage`).
    #[arg(long, default_value = "parity")]
    pub code: String,
    /// Total epochs (ParM trains 500); an interrupted run resumes from its last checkpoint.
    /// Default: enough for about 7,500 optimizer steps, at least 20 (20 on Fashion-MNIST; a
    /// small data set of the user's gets more passes).
    #[arg(long)]
    pub epochs: Option<usize>,
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
    /// Parity model architecture: mlp (ParM's; any query), cnn (LeNet-5; square images with a
    /// side that is a multiple of 4), cells (parm's cell-wise model; the `parm` recipe's).
    /// Default: the recipe's.
    #[arg(long)]
    pub parity_arch: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The deployed model F: a parm model (.bpk), an ONNX file (.onnx), or a model on any OIP
    /// server (grpc://HOST:PORT/MODEL, http://HOST:PORT/MODEL). Default:
    /// MODELS_DIR/DATASET/deployed.bpk.
    #[arg(long)]
    pub deployed: Option<String>,
    #[command(flatten)]
    pub data: crate::userdata::DataArgs,
    /// Where to write the parity model: PATH.bpk with PATH.json beside it (default:
    /// MODELS_DIR/DATASET/NAME.bpk; with --data, DATASET is the data's file or folder name).
    #[arg(long, conflicts_with = "name")]
    pub out: Option<PathBuf>,
    /// File stem of the result (default: parity-k{K}-{ENCODER}).
    #[arg(long)]
    pub name: Option<String>,
    /// Delete an existing parity model and checkpoint of that name and start over.
    #[arg(long)]
    pub force: bool,
    /// Where the parity model trains, and a parm deployed model (.bpk) computes its targets.
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(a: &TrainParityArgs) -> anyhow::Result<()> {
    let (encoder, code_name) = match a.code.as_str() {
        "parity" => (a.encoder.as_str(), a.encoder.as_str()),
        "collage" => {
            anyhow::ensure!(
                matches!(a.encoder.as_str(), "addition" | "concatenation") && matches!(a.parity_arch.as_deref(), None | Some("cells")),
                "--code collage is the concatenation encoder with the cell-wise model: drop --encoder and --parity-arch"
            );
            ("concatenation", "collage")
        }
        other => bail!("--code {other}: expected parity or collage"),
    };
    let device = a.device.open()?;
    let user_ds = a.data.load()?;
    let data_dir = match &user_ds {
        Some(ds) => a.paths.models_dir.join(&ds.name),
        None => a.paths.model_dir(),
    };
    let (dir, name) = match &a.out {
        Some(out) => out_target(out)?,
        None => (data_dir.clone(), a.name.clone().unwrap_or_else(|| parity_name(a.k, code_name))),
    };
    let deployed = match &a.deployed {
        Some(s) => Source::parse(s)?,
        None => Source::Parm(a.paths.model_dir().join("deployed.bpk")),
    };
    if a.force {
        let (w, j) = parm_nn::meta::model_paths(&dir, &name);
        for p in [w, j] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(dir.join(format!("{name}.ckpt")));
    }
    let mut cfg = recipe_config(&a.recipe, a.k, a.epochs.unwrap_or(20))?;
    cfg.seed = a.seed;
    cfg.device = device.clone();
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
    if a.code == "collage" {
        (cfg.cells, cfg.cnn, cfg.per_query) = (true, false, true);
    }
    match a.parity_arch.as_deref() {
        None => {}
        Some("mlp") => (cfg.cells, cfg.cnn) = (false, false),
        Some("cnn") => (cfg.cells, cfg.cnn) = (false, true),
        Some("cells") => (cfg.cells, cfg.cnn, cfg.per_query) = (true, false, true),
        Some(other) => bail!("--parity-arch: mlp, cnn or cells, not {other}"),
    }
    if a.augment_shift.is_some() || a.hflip {
        let shift = a.augment_shift.unwrap_or(0);
        cfg.augment = (shift > 0 || a.hflip).then_some(parm_nn::parity::Augment { shift, hflip: a.hflip });
    }
    let mut f =
        Deployed::open_on(&deployed, &device).context("opening the deployed model (for parm's own, train it first with `parm train`)")?;
    // Recorded in the parity model's metadata, for `parm eval` and for serving.
    f.meta.preprocess = user_ds.as_ref().and_then(|ds| ds.preprocess.as_ref()).map(serde_json::to_value).transpose()?;
    let (ds, hash) = match user_ds {
        Some(mut ds) => {
            crate::userdata::fit_to(&mut ds, &f, &dir.join("cache"))?;
            let hash = crate::userdata::data_hash(f.hash, &ds);
            (ds, hash)
        }
        None => {
            let mut ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
            crate::userdata::fit_to(&mut ds, &f, &dir.join("cache"))?;
            (ds, f.hash)
        }
    };
    if a.epochs.is_none() {
        cfg.epochs = default_epochs(ds.train.n, a.k, cfg.groups_per_step);
    }
    let meta = train(&f, &ds, hash, a.k, encoder, &cfg, &dir, &name)?;
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

/// Trains (or resumes, or finds finished) the parity model `name` against the parm model at
/// `deployed_path` on the built-in data set of `paths`, ParM's recipe.
pub fn parity_training(
    paths: &Paths,
    deployed_path: &Path,
    k: usize,
    encoder: &str,
    epochs: usize,
    seed: u64,
    name: &str,
) -> anyhow::Result<parm_nn::ModelMeta> {
    let mut cfg = ParityConfig { seed, ..ParityConfig::parm_recipe(k, epochs) };
    let encoder = match encoder {
        "collage" => {
            (cfg.cells, cfg.cnn, cfg.per_query) = (true, false, true);
            "concatenation"
        }
        other => other,
    };
    parity_training_with(paths, deployed_path, k, encoder, &cfg, name)
}

/// As [`parity_training`] with a full training configuration.
pub fn parity_training_with(
    paths: &Paths,
    deployed_path: &Path,
    k: usize,
    encoder: &str,
    cfg: &ParityConfig,
    name: &str,
) -> anyhow::Result<parm_nn::ModelMeta> {
    let ds = parm_data::load_dataset(&paths.dataset, &paths.data_dir)?;
    let f = Deployed::open(&Source::Parm(deployed_path.to_path_buf()))
        .context("loading the deployed model (train it first with `parm train`)")?;
    train(&f, &ds, f.hash, k, encoder, cfg, &paths.model_dir(), name)
}

/// Trains the parity model `dir/name.bpk` for F on `ds`; `hash` identifies F and the data for
/// the output cache and for resuming.
#[allow(clippy::too_many_arguments)]
fn train(
    f: &Deployed,
    ds: &parm_data::Dataset,
    hash: u64,
    k: usize,
    encoder: &str,
    cfg: &ParityConfig,
    dir: &Path,
    name: &str,
) -> anyhow::Result<parm_nn::ModelMeta> {
    let encoder = linear_encoder(encoder, k)?.map_or_else(|| crate::userdata::encoder_for_queries(encoder, k, &ds.input_shape), Ok)?;
    let job = ParityJob {
        ds,
        deployed: f.model.as_ref(),
        deployed_meta: &f.meta,
        deployed_hash: hash,
        encoder: encoder.as_ref(),
        out_dir: dir,
        name,
    };
    Ok(run_parity_training(&job, cfg)?)
}

/// Epochs for about 7,500 optimizer steps of `groups_per_step` coding groups of k of the `n`
/// training queries, at least 20.
fn default_epochs(n: usize, k: usize, groups_per_step: usize) -> usize {
    let steps_per_epoch = (n / k.max(1)).div_ceil(groups_per_step.max(1)).max(1);
    7500usize.div_ceil(steps_per_epoch).max(20)
}

/// `--out PATH[.bpk]` as (directory, file stem).
fn out_target(out: &Path) -> anyhow::Result<(PathBuf, String)> {
    let stem = out.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).context("--out needs a file name")?;
    if out.extension().is_some_and(|e| e != "bpk") {
        bail!("--out {}: the parity model is written as PATH.bpk with PATH.json beside it", out.display());
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((dir.to_path_buf(), stem.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_epochs_aim_at_a_step_budget() {
        // Fashion-MNIST's 50,000 training images, k = 2, 64 groups per step: 391 steps per epoch.
        assert_eq!(default_epochs(50_000, 2, 64), 20);
        // 1,437 rows of tabular data: 12 steps per epoch.
        assert_eq!(default_epochs(1_437, 2, 64), 625);
        assert_eq!(default_epochs(0, 2, 64), 7500);
    }

    #[test]
    fn out_is_a_bpk_path() {
        assert_eq!(out_target(Path::new("m/parity")).unwrap(), (PathBuf::from("m"), "parity".to_string()));
        assert_eq!(out_target(Path::new("parity.bpk")).unwrap(), (PathBuf::from("."), "parity".to_string()));
        assert!(out_target(Path::new("m/parity.onnx")).is_err());
    }
}
