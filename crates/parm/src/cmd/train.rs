//! `parm train`: train the deployed model.

use anyhow::{Context, bail};
use clap::Args;
use parm_nn::train::{TrainConfig, save_model, train_deployed};

use super::{DeviceArg, Paths};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// File stem of the result in the model directory.
    #[arg(long, default_value = "deployed")]
    pub name: String,
    /// Overwrite an existing model of that name.
    #[arg(long)]
    pub force: bool,
    /// Architecture: mlp (ParM's 784-200-100-10), lenet5, or resnet18 (CIFAR variant).
    #[arg(long, default_value = "mlp")]
    pub arch: String,
    /// resnet18: channels of the first stage (64 in ResNet-18; small for tiny-scale runs).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// mlp: hidden layer sizes (default ParM's 200,100). Smaller ones make a cheap backup
    /// model: 100,50 costs about 1/2 of F's compute per query, 50,25 about 1/4, the extra
    /// compute per query of a parity model at k = 2 and k = 4.
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<usize>,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(a: &TrainArgs) -> anyhow::Result<()> {
    let dir = a.paths.model_dir();
    let (weights, _) = parm_nn::meta::model_paths(&dir, &a.name);
    if weights.exists() && !a.force {
        bail!("{} exists; pass --force to overwrite it or --name to train another", weights.display());
    }
    let device = a.device.open()?;
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let cfg = TrainConfig { epochs: a.epochs, batch_size: a.batch_size, lr: a.lr, seed: a.seed, device, ..Default::default() };
    let side = (ds.rows == ds.cols).then_some(ds.rows).context("square images needed for a CNN")?;
    let channels = ds.dim() / (side * side);
    let meta = match a.arch.as_str() {
        "mlp" if a.hidden.is_empty() => {
            let (model, meta) = train_deployed(&ds, &cfg)?;
            save_model(&model, &meta, &dir, &a.name)?;
            meta
        }
        "mlp" => {
            anyhow::ensure!(a.hidden.iter().all(|&h| h > 0), "--hidden sizes must be above 0");
            let net = parm_nn::NetConfig::Mlp(parm_nn::MlpConfig { input: ds.dim(), hidden: a.hidden.clone(), classes: ds.classes });
            let (model, meta) = parm_nn::train::train_deployed_net(&ds, &cfg, &net)?;
            parm_nn::train::save_net(&model, &meta, &dir, &a.name)?;
            meta
        }
        "lenet5" | "resnet18" => {
            let net = if a.arch == "lenet5" {
                parm_nn::NetConfig::LeNet { channels, side, classes: ds.classes }
            } else {
                parm_nn::NetConfig::ResNet18 { channels, side, classes: ds.classes, width: a.width }
            };
            let (model, meta) = parm_nn::train::train_deployed_net(&ds, &cfg, &net)?;
            parm_nn::train::save_net(&model, &meta, &dir, &a.name)?;
            meta
        }
        other => bail!("unknown --arch {other} (known: mlp, lenet5, resnet18)"),
    };
    println!(
        "trained {} on {}: test accuracy {:.2}% in {:.1} s ({} steps, {:.0} steps/s) -> {}",
        meta.arch,
        meta.dataset,
        100.0 * meta.test_accuracy.unwrap_or(0.0),
        meta.train_seconds,
        meta.steps,
        meta.steps as f64 / meta.train_seconds.max(1e-9),
        weights.display()
    );
    Ok(())
}
