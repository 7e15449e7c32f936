//! `parm eval`: available, degraded-mode and overall accuracy of a deployed + parity model
//! pair, and the full quality report (`--report`).

mod report;

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::Device;
use clap::Args;
use parm_nn::deployed::outputs_of;
use parm_nn::eval::{self, AccuracyReport};
use parm_nn::train::load_model;

use crate::deployed::{Deployed, Source};

use super::{Paths, parity_name, write_new};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub paths: Paths,
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// The deployed model F: a parm model (.bpk), an ONNX file (.onnx), or a model on any OIP
    /// server (grpc://HOST:PORT/MODEL, http://HOST:PORT/MODEL). Default:
    /// MODELS_DIR/DATASET/deployed.bpk.
    #[arg(long)]
    pub deployed: Option<String>,
    #[command(flatten)]
    pub data: crate::userdata::DataArgs,
    /// Parity model weights (default: MODELS_DIR/DATASET/parity-k{K}-{ENCODER}.bpk).
    #[arg(long)]
    pub parity: Option<PathBuf>,
    /// Seed of the test coding groups.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Parity models of the r-parity Vandermonde code, in parity order (trained with
    /// `--encoder linear-rR-pL`): prints A_d with 1..=r unavailable predictions per group.
    #[arg(long, value_delimiter = ',')]
    pub linear_parities: Vec<PathBuf>,
    /// Write the full quality report (every dataset x k x code, training what is missing) to
    /// DIR: accuracy.json, accuracy.md, accuracy.svg.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Report: datasets.
    #[arg(long, value_delimiter = ',', default_value = "fashion-mnist,mnist")]
    pub datasets: Vec<String>,
    /// Report: deployed architectures (mlp, lenet5).
    #[arg(long, value_delimiter = ',', default_value = "mlp,lenet5")]
    pub models: Vec<String>,
    /// Report: epochs of a LeNet-5 it trains.
    #[arg(long, default_value_t = 5)]
    pub lenet_epochs: usize,
    /// Report: coding-group sizes.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,8,10,12")]
    pub ks: Vec<usize>,
    /// Report: coding-group sizes with rows for the r = 2 linear code (two parity models each).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub linear_ks: Vec<usize>,
    /// Report: optimizer steps of each parity model it trains (rounded up to whole epochs).
    #[arg(long, default_value_t = 6000)]
    pub steps: usize,
    /// Report: ... and at least this many epochs.
    #[arg(long, default_value_t = 8)]
    pub min_epochs: usize,
    /// Report: epochs of a deployed model it trains.
    #[arg(long, default_value_t = 20)]
    pub deployed_epochs: usize,
    /// Where a parm deployed model (.bpk) and the parity models compute (not with --report,
    /// which runs on the CPU).
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    let choice = a.device.choice()?;
    if a.report.is_some() && choice != parm_nn::ComputeDevice::Cpu {
        bail!("--report trains and evaluates on the CPU only; drop --device {choice}");
    }
    let device = a.device.open()?;
    if !a.linear_parities.is_empty() {
        let dir = a.paths.model_dir();
        let deployed = a.deployed.clone().map_or_else(|| dir.join("deployed.bpk"), PathBuf::from);
        let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
        let (f, _) = parm_nn::train::load_net(&deployed, &device)?;
        let models: Vec<_> = a.linear_parities.iter().map(|p| load_model(p, &device).map(|m| m.0)).collect::<Result<_, _>>()?;
        let refs: Vec<&dyn parm_nn::Classifier> = models.iter().map(|m| m as &dyn parm_nn::Classifier).collect();
        let code = parm_codes::LinearCode::vandermonde(a.k, models.len())?;
        let logits = eval::logits(&f, &ds.test.images, ds.test.n, ds.test.dim(), &device);
        println!("available accuracy A_a {:.4}", eval::accuracy(&logits, &ds.test.labels, ds.classes));
        for e in 1..=models.len().min(a.k) {
            let acc = eval::linear_degraded_accuracy(&logits, &refs, &ds.test, &code, e, ds.classes, a.seed, &device);
            println!("k {} r {}: A_d with {e} unavailable per group {:.4}", a.k, models.len(), acc);
        }
        return Ok(());
    }
    if let Some(dir) = &a.report {
        let opts = report::ReportOptions {
            datasets: a.datasets.clone(),
            models: a.models.clone(),
            lenet_epochs: a.lenet_epochs,
            ks: a.ks.clone(),
            steps: a.steps,
            min_epochs: a.min_epochs,
            deployed_epochs: a.deployed_epochs,
            berrut_s: vec![1, 2, 3],
            approxifer: true,
            linear_ks: a.linear_ks.clone(),
            backup: true,
            seed: a.seed,
        };
        let rows = report::run(&a.paths, dir, &opts)?;
        print!("{}", report::markdown(&rows));
        return Ok(());
    }
    let dir = a.paths.model_dir();
    let deployed = match &a.deployed {
        Some(s) => Source::parse(s)?,
        None => Source::Parm(dir.join("deployed.bpk")),
    };
    let parity = a.parity.as_deref().map_or_else(|| dir.join(format!("{}.bpk", parity_name(a.k, &a.encoder))), super::bpk_path);
    let f = Deployed::open_on(&deployed, &device)?;
    let recorded = parm_nn::ModelMeta::load(&parity.with_extension("json"))
        .ok()
        .and_then(|m| m.preprocess)
        .and_then(|v| serde_json::from_value(v).ok());
    let mut ds = match a.data.load_or(recorded)? {
        Some(ds) => ds,
        None => parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?,
    };
    let cache = parity.parent().unwrap_or(std::path::Path::new(".")).join("cache");
    crate::userdata::fit_to(&mut ds, &f, &cache)?;
    // Without labels, fit_to has already computed F on the test split into this cache.
    let cached = (!ds.has_labels).then_some(cache.as_path());
    let report = accuracy_report(&ds, &f, &parity, &a.encoder, a.k, a.seed, cached, &device)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        write_new(path, &serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// A_a, A_d (every single-erasure pattern of every test coding group), the default baseline
/// and A_o at f_u = 1%, 5%, 10% (ParM §5.2). F's test outputs come from `cache` (as
/// [`crate::userdata::fit_to`] caches them) when given, else are computed. The parity model
/// runs on `device`.
#[allow(clippy::too_many_arguments)]
pub fn accuracy_report(
    ds: &parm_data::Dataset,
    f: &Deployed,
    parity: &std::path::Path,
    encoder: &str,
    k: usize,
    seed: u64,
    cache: Option<&std::path::Path>,
    device: &Device,
) -> anyhow::Result<AccuracyReport> {
    let (fp, pmeta) = parm_nn::train::load_net(parity, device)?;
    if pmeta.k != Some(k) || pmeta.encoder.as_deref() != Some(encoder) {
        bail!("{} is a parity model for k={:?} encoder {:?}, not k={k} {encoder}", parity.display(), pmeta.k, pmeta.encoder);
    }
    let enc = crate::userdata::encoder_for_queries(encoder, k, &ds.input_shape)?;
    let dim = ds.test.dim();
    let logits = match cache {
        Some(dir) => parm_nn::deployed::cached_outputs(f.model.as_ref(), crate::userdata::data_hash(f.hash, ds), &ds.test, "test", dir)?,
        None => outputs_of(f.model.as_ref(), &ds.test.images, ds.test.n, dim)?,
    };
    let available = eval::accuracy(&logits, &ds.test.labels, ds.classes);
    let degraded = eval::degraded_accuracy(&logits, &fp, &ds.test, enc.as_ref(), ds.classes, seed, device);
    let zero_logits = outputs_of(f.model.as_ref(), &vec![0.0; dim], 1, dim)?;
    let degraded_partial = (1..k)
        .map(|m| {
            let z = Some(zero_logits.as_slice());
            (m, eval::padded_degraded_accuracy(&logits, z, &fp, &ds.test, enc.as_ref(), m, ds.classes, seed, device))
        })
        .collect();
    Ok(AccuracyReport {
        dataset: ds.name.clone(),
        model: f.meta.arch.clone(),
        k,
        // A per-query model over the concatenation encoder's tiles is collage (Narra et al.,
        // arXiv 1904.12222); reports name it so.
        encoder: if encoder == "concatenation" && pmeta.classes * k == pmeta.mlp.classes {
            "collage (concatenation encoder, per-query model)".to_string()
        } else {
            encoder.to_string()
        },
        available,
        degraded,
        degraded_partial,
        default: eval::default_accuracy(&ds.test.labels, ds.classes),
        overall: [0.01, 0.05, 0.10].iter().map(|&f| (f, eval::overall_accuracy(available, degraded, f))).collect(),
    })
}
