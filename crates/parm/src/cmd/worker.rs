//! `parm worker`: serve one model (deployed or parity) as a model instance over OIP gRPC.

mod backend;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parm_serve::instance::worker::WorkerOptions;

use parm_serve::instance::backend::InferenceBackend;

use self::backend::{NnBackend, OnnxBackend};
use super::{block_on_drained, shutdown_signal};

#[derive(Args)]
pub struct WorkerArgs {
    /// The model: a parm weights file (.bpk, with its .json metadata beside it), or an ONNX
    /// file (.onnx: one float32 input [batch, ...], run in process by tract; OIP platform
    /// "onnx", with the graph's input and output names and per-query shapes).
    #[arg(long)]
    pub model: PathBuf,
    /// ONNX only: the graph output to serve (default: the first float32 output of rank 2,
    /// e.g. skl2onnx's `probabilities`, not its int64 `label`).
    #[arg(long)]
    pub output: Option<String>,
    /// ONNX only: the runtime that executes the model, `tract` (pure Rust, built in) or `ort`
    /// (ONNX Runtime's shared library, loaded at start: see --ort-library). tract checks the
    /// graph either way.
    #[arg(long, default_value = "tract", value_parser = ["tract", "ort"])]
    pub onnx_runtime: String,
    /// With `--onnx-runtime ort`: the ONNX Runtime library (1.17 or newer), for example
    /// `.../site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0` from PyPI's onnxruntime.
    /// Default: $ORT_DYLIB_PATH, else `libonnxruntime.so` on the library path.
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// With `--onnx-runtime ort`: intra-op threads per run (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub ort_threads: usize,
    /// Name to serve the model under (default: the file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on; port 0 picks a free port. The first line printed on stdout is
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: String,
    /// Injected faults, e.g. `delay_ms=20,prob=1.0,seed=7`: with probability `prob` each
    /// request holds the instance's compute lane `delay_ms` longer; `wrong=0.1` replaces each
    /// output row with probability 0.1 by a wrong one (`wrong_kind=random|permute|scale|mixed`).
    #[arg(long, default_value = "")]
    pub fault: String,
    /// Requests that may wait for the compute lane; more are rejected (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Most connections open at once; more are closed as they are accepted.
    #[arg(long, default_value_t = parm_serve::server::conn::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A connection that moves no byte for this long (ms) is closed (the frontend reconnects
    /// on its next call).
    #[arg(long, default_value_t = parm_serve::server::conn::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    /// Dynamic batching: most queries per model execution (1: no batching).
    #[arg(long, default_value_t = 1)]
    pub max_batch: usize,
    /// Dynamic batching: longest wait for more requests after the first (microseconds).
    #[arg(long, default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// On SIGTERM / Ctrl-C: stop accepting, let in-flight requests finish for at most this
    /// long (ms), then exit 0.
    #[arg(long, default_value_t = parm_serve::server::listen::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
    pub drain_timeout_ms: u64,
    /// Threads of the worker's async runtime (gRPC I/O, and models fast enough to run in
    /// place); 0 (the default): one current-thread runtime. Slow models run on tokio's blocking
    /// pool either way, so I/O and compute still overlap. One thread saves the hand-offs
    /// between threads when the worker shares a core with the frontend (BENCHMARKS.md, "Where
    /// a query's CPU goes").
    #[arg(long, default_value_t = 0)]
    pub runtime_threads: usize,
    /// Require this bearer token (file holding it) on every call: gRPC metadata
    /// `authorization: Bearer TOKEN`. Default: $PARM_AUTH_TOKEN if set, else no auth.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Only load models from inside this directory: `--model` is taken relative to it and may
    /// not leave it (`..`, absolute paths elsewhere, symbolic links pointing out).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Where a parm model (.bpk) computes; an ONNX model always runs on the CPU (tract or ONNX Runtime).
    #[command(flatten)]
    pub device: super::DeviceArg,
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// The backend for `model`, chosen by its extension: `.onnx` (run by `a`'s ONNX runtime) or a
/// parm model (on `a`'s device).
fn load_backend(model: &std::path::Path, name: &str, a: &WorkerArgs) -> anyhow::Result<Arc<dyn InferenceBackend>> {
    let output = a.output.as_deref();
    let onnx = is_onnx(model);
    anyhow::ensure!(onnx || output.is_none(), "--output applies to ONNX models (.onnx) only");
    anyhow::ensure!(
        onnx || (a.onnx_runtime == "tract" && a.ort_library.is_none()),
        "--onnx-runtime and --ort-library apply to ONNX models (.onnx) only"
    );
    let runtime = match a.onnx_runtime.as_str() {
        "ort" => parm_nn::onnx::OnnxRuntime::Ort { library: ort_library(a.ort_library.as_deref()), threads: a.ort_threads },
        _ => {
            anyhow::ensure!(a.ort_library.is_none() && a.ort_threads == 0, "--ort-library and --ort-threads need --onnx-runtime ort");
            parm_nn::onnx::OnnxRuntime::Tract
        }
    };
    open_model(model, name, output, &runtime, a.device.choice()?)
}

fn is_onnx(model: &std::path::Path) -> bool {
    model.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// `model` as a backend serving it under `name`: an ONNX file (`.onnx`, its `output` or the
/// first float32 output of rank 2, run by `runtime` on the CPU), else a parm model (`.bpk`)
/// on `device`.
///
/// # Errors
/// A file that cannot be loaded, or an ONNX model asked to run on a GPU.
pub fn open_model(
    model: &std::path::Path,
    name: &str,
    output: Option<&str>,
    runtime: &parm_nn::onnx::OnnxRuntime,
    device: parm_nn::ComputeDevice,
) -> anyhow::Result<Arc<dyn InferenceBackend>> {
    let onnx = is_onnx(model);
    anyhow::ensure!(
        !onnx || device == parm_nn::ComputeDevice::Cpu,
        "--device {device}: ONNX models run on the CPU (tract or ONNX Runtime); only parm models (.bpk) run on a GPU"
    );
    Ok(if onnx {
        Arc::new(OnnxBackend::load(model, name, output, runtime)?)
    } else {
        Arc::new(NnBackend::load(model, name, &device.open()?)?)
    })
}

/// `--ort-library`, else $ORT_DYLIB_PATH, else the system's `libonnxruntime.so`.
fn ort_library(flag: Option<&std::path::Path>) -> PathBuf {
    flag.map(PathBuf::from)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
}

pub fn run(a: WorkerArgs) -> anyhow::Result<()> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.model.file_stem().and_then(|s| s.to_str()).context("model path has no file name")?.to_string(),
    };
    let model = match &a.models_dir {
        Some(dir) => parm_serve::oip::security::confine(dir, &a.model).context("--model")?,
        None => super::bpk_path(&a.model),
    };
    let auth = parm_serve::oip::security::AuthToken::resolve(a.auth_token_file.as_deref())?;
    let backend = load_backend(&model, &name, &a)?;
    let faults = a.fault.parse().map_err(|e| anyhow::anyhow!("--fault: {e}"))?;
    anyhow::ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    let batching = (a.max_batch > 1).then(|| parm_serve::instance::batcher::BatchConfig {
        max_batch: a.max_batch,
        max_delay: Duration::from_micros(a.max_queue_delay_us),
    });
    let conn = super::serve::conn_limits(a.max_connections, a.idle_timeout_ms)?;
    let opts = WorkerOptions { faults, max_queue: a.max_queue, batching, tls: a.tls.files()?, conn };
    let drain = Duration::from_millis(a.drain_timeout_ms);
    block_on_drained(a.runtime_threads, async move {
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        println!("listening on {}", listener.local_addr()?);
        parm_serve::server::listen::drain_within(shutdown_signal(), drain, |stop| {
            parm_serve::instance::worker::serve_worker_with_auth(listener, backend, opts, auth, stop.wait())
        })
        .await
    })
}
