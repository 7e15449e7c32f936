//! The CLI subcommands, one module each, and what several of them share.

pub mod bench;
pub mod bench_wrong_outputs;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod infer;
pub mod loadgen;
pub mod serve;
pub mod simulate;
pub mod train;
pub mod train_parity;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Paths shared by the commands that touch data and models.
#[derive(clap::Args, Clone, Debug)]
pub struct Paths {
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Where datasets are prepared.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Where models are written; each dataset gets a subdirectory.
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
}

impl Paths {
    pub fn model_dir(&self) -> PathBuf {
        self.models_dir.join(&self.dataset)
    }
}

/// `--device`, shared by the commands that run parm's own (burn) models.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArg {
    /// Where parm's models compute: cpu, cuda (GPU 0) or cuda:N. Default: $PARM_DEVICE if set
    /// (so that `parm bench` and `parm demo` start their workers on a GPU), else cpu. cuda
    /// needs a parm built with `--features cuda`, an NVIDIA driver and NVRTC
    /// (libnvrtc.so.12) at run time; see the README, "GPU". ONNX and remote models are not
    /// moved: they run where they are.
    #[arg(long)]
    pub device: Option<parm_nn::ComputeDevice>,
}

/// The environment variable that sets `--device` when the flag is not given.
pub const DEVICE_ENV: &str = "PARM_DEVICE";

impl DeviceArg {
    /// The device asked for: the flag, else $PARM_DEVICE, else the CPU.
    ///
    /// # Errors
    /// $PARM_DEVICE that does not parse (or names cuda on a build without it).
    pub fn choice(&self) -> anyhow::Result<parm_nn::ComputeDevice> {
        match (self.device, std::env::var(DEVICE_ENV)) {
            (Some(d), _) => Ok(d),
            (None, Ok(v)) if !v.is_empty() => v.parse().map_err(|e| anyhow::anyhow!("{DEVICE_ENV}={v}: {e}")),
            _ => Ok(parm_nn::ComputeDevice::Cpu),
        }
    }

    /// The burn device, probed (a CUDA device without a usable GPU is an error, not a panic).
    pub fn open(&self) -> anyhow::Result<burn::tensor::Device> {
        Ok(self.choice()?.open()?)
    }
}

/// How long a coding group waits for more members before its parity query is sent, padded
/// with zero queries (ms). Short, so low load does not delay reconstructions.
pub const DEFAULT_GROUP_TIMEOUT_MS: u64 = 5;

/// Default file stem of a parity model.
pub fn parity_name(k: usize, encoder: &str) -> String {
    format!("parity-k{k}-{encoder}")
}

/// `path`, or `path.bpk` when `path` has no extension, does not exist, and `path.bpk` does:
/// `train-parity --out DIR/parity` writes `DIR/parity.bpk`, and `--parity DIR/parity` /
/// `--model DIR/parity` name it the same way.
pub fn bpk_path(path: &std::path::Path) -> std::path::PathBuf {
    let bpk = path.with_extension("bpk");
    if path.extension().is_none() && !path.exists() && bpk.exists() { bpk } else { path.to_path_buf() }
}

/// Writes `text` to `path`, creating parent directories. Overwrites: used only for report
/// files the user named on the command line.
pub fn write_new(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A tokio runtime with `threads` worker threads; 0: a current-thread runtime (everything on
/// the calling thread).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    Ok(b.enable_all().build()?)
}

/// Runs a server to its end on a fresh runtime, then gives background work (a model
/// execution still running after the drain deadline) at most 1 s before the process exits.
fn block_on_drained<T>(threads: usize, f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = runtime(threads)?;
    let result = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// TLS on a server's listeners (`parm serve`, `parm worker`): PEM files, see
/// `parm_serve::oip::tls`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Demand client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long)]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The TLS files, checked (`None` without --tls-cert).
    ///
    /// Errors: flags that go together given alone, or files that cannot be used.
    pub fn files(&self) -> anyhow::Result<Option<parm_serve::oip::tls::TlsFiles>> {
        let files = parm_serve::oip::tls::TlsFiles::from_flags(self.tls_cert.clone(), self.tls_key.clone(), self.tls_client_ca.clone())?;
        if let Some(f) = &files {
            f.server_config()?;
        }
        Ok(files)
    }
}
