//! `parm export`: a parm model (deployed or parity) as an ONNX file, for any ONNX runtime.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use parm_nn::{OnnxModel, Predictor};

#[derive(Args)]
pub struct ExportArgs {
    /// The ONNX file to write: input "input" [N, d] float32, output "output" [N, outputs]
    /// float32, N a symbolic batch (opset 13).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The parm model to export (.bpk, with its .json metadata beside it): MLP and cell-wise
    /// MLP models (every parity model parm trains); not LeNet or ResNet-18 yet.
    #[arg(long)]
    pub model: PathBuf,
    /// Overwrite the ONNX file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Rows of the check run through both burn and the exported graph.
const CHECK_ROWS: usize = 4;

pub fn run(a: &ExportArgs) -> anyhow::Result<()> {
    let p = Predictor::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let m = p.meta();
    let mut props = vec![("parm.arch".to_string(), m.arch.clone()), ("parm.kind".into(), format!("{:?}", m.kind).to_lowercase())];
    props.push(("parm.dataset".into(), m.dataset.clone()));
    props.extend(m.k.map(|k| ("parm.k".to_string(), k.to_string())));
    props.extend(m.encoder.clone().map(|e| ("parm.encoder".to_string(), e)));
    parm_nn::export::write_onnx(p.model(), &props, &a.onnx, a.force)?;
    let diff = check(&p, &a.onnx)?;
    println!("wrote {} ({}; tract's outputs match burn's within {diff:.1e})", a.onnx.display(), m.arch);
    Ok(())
}

/// Runs a few rows through burn and through the written file with tract: the largest
/// absolute difference, which must be below 1e-4.
fn check(p: &Predictor, onnx: &std::path::Path) -> anyhow::Result<f32> {
    let d = p.input_len();
    let x: Vec<f32> = (0..CHECK_ROWS * d).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
    let want = p.infer(&x, CHECK_ROWS)?;
    let got = OnnxModel::load(onnx, None)?.infer(&x, CHECK_ROWS)?;
    anyhow::ensure!(got.len() == want.len(), "the exported graph returns {} values, burn {}", got.len(), want.len());
    let diff = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
    anyhow::ensure!(diff < 1e-4, "the exported graph differs from burn by {diff} (file kept for inspection)");
    Ok(diff)
}
