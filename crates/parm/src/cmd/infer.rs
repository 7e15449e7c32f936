//! `parm infer`: run a parm model on the first test images of a built-in data set, on a chosen
//! device, write the outputs and time it. For checking a GPU against the CPU: the same model
//! and queries on `--device cpu` and `--device cuda` must give (nearly) the same logits.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use parm_nn::Predictor;

use super::{DeviceArg, Paths};

#[derive(Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub paths: Paths,
    /// The parm model (.bpk, with its .json metadata beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// Test images to run (at most the test split's size).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Queries per model execution.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed passes over the n queries, after one untimed pass (kernel compilation, autotune).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Write the outputs here: raw little-endian f32, [n, outputs] row-major.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// What `parm infer` prints, one JSON line.
#[derive(serde::Serialize)]
struct InferReport {
    model: String,
    arch: String,
    device: String,
    n: usize,
    batch: usize,
    repeat: usize,
    /// Untimed first pass, seconds (includes kernel compilation on a GPU).
    first_pass_s: f64,
    /// Mean seconds of one timed pass over the n queries.
    pass_s: f64,
    rows_per_s: f64,
}

pub fn run(a: &InferArgs) -> anyhow::Result<()> {
    ensure!(a.n >= 1 && a.batch >= 1 && a.repeat >= 1, "--n, --batch and --repeat must be at least 1");
    let choice = a.device.choice()?;
    let device = choice.open()?;
    let model = super::bpk_path(&a.model);
    let p = Predictor::load_on(&model, &device).with_context(|| format!("loading {}", model.display()))?;
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    ensure!(
        ds.test.dim() == p.input_len(),
        "{} takes {} values per query; {} has {}",
        model.display(),
        p.input_len(),
        ds.name,
        ds.test.dim()
    );
    let n = a.n.min(ds.test.n);
    let queries = &ds.test.images[..n * p.input_len()];
    let start = Instant::now();
    let outputs = run_pass(&p, queries, a.batch)?;
    let first_pass_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..a.repeat {
        run_pass(&p, queries, a.batch)?;
    }
    let pass_s = start.elapsed().as_secs_f64() / a.repeat as f64;
    if let Some(path) = &a.out {
        let bytes: Vec<u8> = outputs.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let report = InferReport {
        model: model.display().to_string(),
        arch: p.meta().arch.clone(),
        device: choice.to_string(),
        n,
        batch: a.batch,
        repeat: a.repeat,
        first_pass_s,
        pass_s,
        rows_per_s: n as f64 / pass_s.max(1e-12),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The outputs of `queries` (row-major, `p.input_len()` values each) in batches of `batch`.
fn run_pass(p: &Predictor, queries: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in queries.chunks(batch * p.input_len()) {
        out.extend(p.infer(chunk, chunk.len() / p.input_len())?);
    }
    Ok(out)
}
