//! The CLI commands.

pub mod bench;
pub mod demo;
pub mod simulate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::Args;
use parm_codes::{encoder_by_name, encoder_for_shape};
use parm_nn::eval::{self, AccuracyReport};
use parm_nn::parity::{file_hash, train_parity as run_parity_training, Distill, LrSchedule, ParityConfig, ParityJob};
use parm_nn::train::{load_model, save_model, train_deployed, TrainConfig};
use parm_serve::backend::ModelSpec;
use parm_serve::client::InstanceClient;
use parm_serve::frontend::{Frontend, FrontendConfig};
use parm_serve::redundancy::Redundancy;
use parm_serve::worker::WorkerOptions;

use crate::backend::NnBackend;
use crate::Paths;

/// How long a coding group waits for more members before its parity query is sent, padded
/// with zero queries (ms). Short, so low load does not delay reconstructions.
pub const DEFAULT_GROUP_TIMEOUT_MS: u64 = 5;

/// How long after sending a query its reconstruction may be released (ms): a healthy instance
/// answers within this, and its exact prediction then beats the approximate reconstruction.
pub const DEFAULT_DECODE_GRACE_MS: u64 = 2;

/// Default file stem of a parity model.
pub fn parity_name(k: usize, encoder: &str) -> String {
    format!("parity-k{k}-{encoder}")
}

pub fn data(p: &Paths) -> anyhow::Result<()> {
    let ds = parm_data::load_dataset(&p.dataset, &p.data_dir)?;
    println!("{}: train {} / validation {} / test {} images of {}x{}, {} classes, in {}",
        ds.name, ds.train.n, ds.val.n, ds.test.n, ds.rows, ds.cols, ds.classes, p.data_dir.display());
    Ok(())
}

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
}

pub fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let dir = a.paths.model_dir();
    let (weights, _) = parm_nn::meta::model_paths(&dir, &a.name);
    if weights.exists() && !a.force {
        bail!("{} exists; pass --force to overwrite it or --name to train another", weights.display());
    }
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let cfg = TrainConfig { epochs: a.epochs, batch_size: a.batch_size, lr: a.lr, seed: a.seed, ..Default::default() };
    let side = (ds.rows == ds.cols).then_some(ds.rows).context("square images needed for a CNN")?;
    let channels = ds.dim() / (side * side);
    let meta = match a.arch.as_str() {
        "mlp" => {
            let (model, meta) = train_deployed(&ds, &cfg)?;
            save_model(&model, &meta, &dir, &a.name)?;
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
        meta.arch, meta.dataset, 100.0 * meta.test_accuracy.unwrap_or(0.0), meta.train_seconds, meta.steps,
        meta.steps as f64 / meta.train_seconds.max(1e-9), weights.display()
    );
    Ok(())
}

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

pub fn train_parity(a: &TrainParityArgs) -> anyhow::Result<()> {
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
        100.0 * meta.val_degraded_accuracy.unwrap_or(0.0), meta.epochs, meta.steps, meta.train_seconds,
        meta.steps as f64 / meta.train_seconds.max(1e-9), dir.join(format!("{name}.bpk")).display()
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
        .with_context(|| format!("loading the deployed model (train it first with `parm train`)"))?;
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

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub paths: Paths,
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// Deployed model weights (default: MODELS_DIR/DATASET/deployed.bpk).
    #[arg(long)]
    pub deployed: Option<PathBuf>,
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
    /// Report: optimizer steps of each parity model it trains (rounded up to whole epochs).
    #[arg(long, default_value_t = 6000)]
    pub steps: usize,
    /// Report: ... and at least this many epochs.
    #[arg(long, default_value_t = 8)]
    pub min_epochs: usize,
    /// Report: epochs of a deployed model it trains.
    #[arg(long, default_value_t = 20)]
    pub deployed_epochs: usize,
}

pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    if !a.linear_parities.is_empty() {
        let dir = a.paths.model_dir();
        let deployed = a.deployed.clone().unwrap_or_else(|| dir.join("deployed.bpk"));
        let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
        let device = Device::flex();
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
        let opts = crate::report::ReportOptions {
            datasets: a.datasets.clone(),
            models: a.models.clone(),
            lenet_epochs: a.lenet_epochs,
            ks: a.ks.clone(),
            steps: a.steps,
            min_epochs: a.min_epochs,
            deployed_epochs: a.deployed_epochs,
            berrut_s: vec![1, 2, 3],
            approxifer: true,
            seed: a.seed,
        };
        let rows = crate::report::run(&a.paths, dir, &opts)?;
        print!("{}", crate::report::markdown(&rows));
        return Ok(());
    }
    let dir = a.paths.model_dir();
    let deployed = a.deployed.clone().unwrap_or_else(|| dir.join("deployed.bpk"));
    let parity = a.parity.clone().unwrap_or_else(|| dir.join(format!("{}.bpk", parity_name(a.k, &a.encoder))));
    let ds = parm_data::load_dataset(&a.paths.dataset, &a.paths.data_dir)?;
    let report = accuracy_report(&ds, &deployed, &parity, &a.encoder, a.k, a.seed)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        write_new(path, &serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// A_a, A_d (every single-erasure pattern of every test coding group), the default baseline
/// and A_o at f_u = 1%, 5%, 10% (ParM §5.2).
pub fn accuracy_report(
    ds: &parm_data::Dataset,
    deployed: &std::path::Path,
    parity: &std::path::Path,
    encoder: &str,
    k: usize,
    seed: u64,
) -> anyhow::Result<AccuracyReport> {
    let device = Device::flex();
    let (f, fmeta) = parm_nn::train::load_net(deployed, &device)?;
    let (fp, pmeta) = parm_nn::train::load_net(parity, &device)?;
    if pmeta.k != Some(k) || pmeta.encoder.as_deref() != Some(encoder) {
        bail!("{} is a parity model for k={:?} encoder {:?}, not k={k} {encoder}", parity.display(), pmeta.k, pmeta.encoder);
    }
    let enc = encoder_for_shape(encoder, k, &[ds.rows, ds.cols])?;
    let logits = eval::logits(&f, &ds.test.images, ds.test.n, ds.test.dim(), &device);
    let available = eval::accuracy(&logits, &ds.test.labels, ds.classes);
    let degraded = eval::degraded_accuracy(&logits, &fp, &ds.test, enc.as_ref(), ds.classes, seed, &device);
    let zero_logits = eval::logits(&f, &vec![0.0; ds.test.dim()], 1, ds.test.dim(), &device);
    let degraded_partial = (1..k)
        .map(|m| {
            let z = Some(zero_logits.as_slice());
            (m, eval::padded_degraded_accuracy(&logits, z, &fp, &ds.test, enc.as_ref(), m, ds.classes, seed, &device))
        })
        .collect();
    Ok(AccuracyReport {
        dataset: ds.name.clone(),
        model: fmeta.arch,
        k,
        encoder: encoder.to_string(),
        available,
        degraded,
        degraded_partial,
        default: eval::default_accuracy(&ds.test.labels, ds.classes),
        overall: [0.01, 0.05, 0.10].iter().map(|&f| (f, eval::overall_accuracy(available, degraded, f))).collect(),
    })
}

/// Writes `text` to `path`, creating parent directories. Overwrites: used only for report
/// files the user named on the command line.
pub fn write_new(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Weights file (.bpk) with its .json metadata beside it.
    #[arg(long)]
    pub model: PathBuf,
    /// Name to serve the model under (default: the file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on; port 0 picks a free port. The first line printed on stdout is
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: String,
    /// Injected slowdown, e.g. `delay_ms=20,prob=1.0,seed=7`: with probability `prob` each
    /// request holds the instance's compute lane `delay_ms` longer.
    #[arg(long, default_value = "")]
    pub fault: String,
    /// Requests that may wait for the compute lane; more are rejected (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Dynamic batching: most queries per model execution (1: no batching).
    #[arg(long, default_value_t = 1)]
    pub max_batch: usize,
    /// Dynamic batching: longest wait for more requests after the first (microseconds).
    #[arg(long, default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// On SIGTERM / Ctrl-C: stop accepting, let in-flight requests finish for at most this
    /// long (ms), then exit 0.
    #[arg(long, default_value_t = parm_serve::server::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
    pub drain_timeout_ms: u64,
    /// Require this bearer token (file holding it) on every call: gRPC metadata
    /// `authorization: Bearer TOKEN`. Default: $PARM_AUTH_TOKEN if set, else no auth.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Only load models from inside this directory: `--model` is taken relative to it and may
    /// not leave it (`..`, absolute paths elsewhere, symbolic links pointing out).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.model.file_stem().and_then(|s| s.to_str()).context("model path has no file name")?.to_string(),
    };
    let model = match &a.models_dir {
        Some(dir) => parm_serve::security::confine(dir, &a.model).context("--model")?,
        None => a.model.clone(),
    };
    let auth = parm_serve::security::AuthToken::resolve(a.auth_token_file.as_deref())?;
    let backend = Arc::new(NnBackend::load(&model, &name)?);
    let faults = a.fault.parse().map_err(|e| anyhow::anyhow!("--fault: {e}"))?;
    anyhow::ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    let batching = (a.max_batch > 1).then(|| parm_serve::batcher::BatchConfig {
        max_batch: a.max_batch,
        max_delay: Duration::from_micros(a.max_queue_delay_us),
    });
    let opts = WorkerOptions { faults, max_queue: a.max_queue, batching };
    let drain = Duration::from_millis(a.drain_timeout_ms);
    block_on_drained(2, async move {
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        println!("listening on {}", listener.local_addr()?);
        parm_serve::server::drain_within(shutdown_signal(), drain, |stop| {
            parm_serve::worker::serve_worker_with_auth(listener, backend, opts, auth, stop.wait())
        })
        .await
    })
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

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Deployed-model instances, comma-separated host:port.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub deployed: Vec<String>,
    /// Parity-model instances, comma-separated (none: no redundancy).
    #[arg(long, value_delimiter = ',')]
    pub parity: Vec<String>,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// Address for OIP HTTP clients. The first line printed on stdout is `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Model name clients use (default: the deployed model's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Model name on the deployed instances.
    #[arg(long, default_value = "deployed")]
    pub deployed_model: String,
    /// Model name on the parity instances (default: parity-k{K}-{ENCODER}).
    #[arg(long)]
    pub parity_model: Option<String>,
    /// A partly filled coding group gets its (zero-padded) parity query after this many ms.
    #[arg(long, default_value_t = DEFAULT_GROUP_TIMEOUT_MS)]
    pub group_timeout_ms: u64,
    /// An instance RPC counts as failed after this many ms.
    #[arg(long, default_value_t = 5000)]
    pub instance_timeout_ms: u64,
    /// A reconstruction is released no earlier than this many ms after its query was sent
    /// (0: answer with the first of original and reconstruction, as ParM does).
    #[arg(long, default_value_t = DEFAULT_DECODE_GRACE_MS)]
    pub decode_grace_ms: u64,
    /// Send a coding group's parity query only once one of its queries is a straggler
    /// (outstanding longer than the straggler threshold) instead of when the group fills.
    #[arg(long)]
    pub lazy_parity: bool,
    /// Straggler threshold = this x the median deployed-instance latency, within
    /// `--straggler-min-us`..5 ms; a partly filled group is also sealed after it.
    #[arg(long, default_value_t = parm_serve::straggler::StragglerPolicy::default().factor)]
    pub straggler_factor: f64,
    /// The straggler threshold's floor (microseconds); above 5 ms it is also the cap.
    #[arg(long, default_value_t = parm_serve::straggler::StragglerPolicy::default().min.as_micros() as u64)]
    pub straggler_min_us: u64,
    /// Uncoded baselines for queries without parity: none, replication (2 copies, first
    /// answer wins), hedged (backup after the running p95 latency).
    #[arg(long, default_value = "none")]
    pub redundancy: String,
    /// Address for OIP gRPC clients (`inference.GRPCInferenceService` and
    /// `grpc.health.v1.Health`); "off" disables it.
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub grpc_listen: String,
    /// Also serve Prometheus `/metrics` on this address (it is always on the HTTP port too).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Require this bearer token (file holding it) from clients (HTTP `Authorization: Bearer
    /// TOKEN`, gRPC metadata `authorization`), and send it to the instances. Default:
    /// $PARM_AUTH_TOKEN if set, else no auth. Health probes stay open.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Largest HTTP request body after decompression, and largest gRPC request (bytes); more
    /// gets 413 / RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = parm_serve::security::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// HTTP clients must send a request's headers within this (ms), else they are disconnected.
    #[arg(long, default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,
    /// HTTP clients must send a request's body within this of its headers (ms), else 408.
    #[arg(long, default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,
    /// Most queries in flight at the frontend (HTTP and gRPC together); past it requests get
    /// 503 + Retry-After / UNAVAILABLE at once (admission control, see parm_serve::admission).
    #[arg(long, default_value_t = parm_serve::admission::DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// On SIGTERM / Ctrl-C: stop accepting, let in-flight requests finish for at most this
    /// long (ms), then exit 0.
    #[arg(long, default_value_t = parm_serve::server::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
    pub drain_timeout_ms: u64,
    /// Coding over batches: a request of B > 1 rows goes to one deployed instance as one
    /// batched request, and k such requests share one batched parity request (row i encodes
    /// row i of each). Without it, each row of a batch joins a coding group on its own.
    #[arg(long)]
    pub batch_coding: bool,
    /// Threads of the frontend's async runtime; 0 (the default): one current-thread runtime,
    /// everything on one thread, which measured best on a 2-core machine shared with the
    /// instances (BENCHMARKS.md, "Efficiency": 19k vs 16k queries/s with dispatch batching,
    /// level without): every extra thread adds wake-ups between threads per query. More
    /// threads help only where the frontend has cores of its own.
    #[arg(long, default_value_t = 0)]
    pub runtime_threads: usize,
    /// Adaptive batching towards the instances (Clipper §4.3): queries to one instance that
    /// queue while `--dispatch-max-in-flight` requests to it are outstanding go together, up to
    /// this many per request. 1: every query its own request.
    #[arg(long, default_value_t = 1)]
    pub dispatch_max_batch: usize,
    /// Requests outstanding per instance before queries wait and batch (with
    /// `--dispatch-max-batch` > 1).
    #[arg(long, default_value_t = parm_serve::dispatch::DispatchBatching::default().max_in_flight)]
    pub dispatch_max_in_flight: usize,
    /// Settings file (TOML; example: examples/parm.toml). Keys present in the file replace
    /// the matching flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `a` with the settings of its `--config` file applied (see `parm_serve::config`).
///
/// Errors: the file's (unreadable, not TOML, unknown key, bad value), or no deployed
/// instance given anywhere.
fn with_config(mut a: ServeArgs) -> anyhow::Result<ServeArgs> {
    let Some(path) = a.config.clone() else { return Ok(a) };
    let f = parm_serve::config::ServeFile::load(&path)?;
    let (s, m, d) = (f.server, f.model, f.deadlines);
    fn set<T>(dst: &mut T, v: Option<T>) {
        if let Some(v) = v {
            *dst = v;
        }
    }
    set(&mut a.listen, s.http);
    set(&mut a.max_inflight, s.max_inflight);
    set(&mut a.drain_timeout_ms, s.drain_timeout_ms);
    set(&mut a.runtime_threads, s.runtime_threads);
    a.auth_token_file = s.auth_token_file.or(a.auth_token_file);
    set(&mut a.max_body_bytes, s.max_body_bytes);
    set(&mut a.header_read_timeout_ms, s.header_read_timeout_ms);
    set(&mut a.body_read_timeout_ms, s.body_read_timeout_ms);
    set(&mut a.grpc_listen, s.grpc);
    a.metrics_listen = s.metrics.or(a.metrics_listen);
    a.model_name = m.name.or(a.model_name);
    set(&mut a.deployed_model, m.deployed_model);
    a.parity_model = m.parity_model.or(a.parity_model);
    set(&mut a.deployed, m.deployed);
    set(&mut a.parity, m.parity);
    set(&mut a.k, m.k);
    set(&mut a.encoder, m.encoder);
    set(&mut a.redundancy, m.redundancy);
    set(&mut a.lazy_parity, m.lazy_parity);
    set(&mut a.batch_coding, m.batch_coding);
    set(&mut a.dispatch_max_batch, m.dispatch_max_batch);
    set(&mut a.dispatch_max_in_flight, m.dispatch_max_in_flight);
    set(&mut a.straggler_factor, m.straggler_factor);
    set(&mut a.straggler_min_us, m.straggler_min_us);
    set(&mut a.group_timeout_ms, d.group_timeout_ms);
    set(&mut a.decode_grace_ms, d.decode_grace_ms);
    set(&mut a.instance_timeout_ms, d.instance_timeout_ms);
    anyhow::ensure!(!a.deployed.is_empty(), "no deployed instances: give --deployed or model.deployed in {}", path.display());
    Ok(a)
}

/// Builds the frontend config, asking the first deployed instance (waiting up to 30 s) for
/// the model's input and output shapes.
pub async fn frontend_config(a: &ServeArgs) -> anyhow::Result<FrontendConfig> {
    let client = InstanceClient::connect_lazy(&a.deployed[0])?;
    client.wait_ready(&a.deployed_model, Duration::from_secs(30)).await?;
    let remote = client.model_metadata(&a.deployed_model, Duration::from_secs(5)).await?;
    let spec = ModelSpec { name: a.model_name.clone().unwrap_or_else(|| a.deployed_model.clone()), ..remote };
    Ok(FrontendConfig {
        spec,
        deployed: a.deployed.clone(),
        deployed_model: a.deployed_model.clone(),
        parity: a.parity.clone(),
        parity_model: a.parity_model.clone().unwrap_or_else(|| parity_name(a.k, &a.encoder)),
        encoder: Arc::from(encoder_by_name(&a.encoder, a.k)?),
        group_timeout: Duration::from_millis(a.group_timeout_ms),
        straggler: parm_serve::straggler::StragglerPolicy { lazy_parity: a.lazy_parity, factor: a.straggler_factor, ..Default::default() }
            .with_min(Duration::from_micros(a.straggler_min_us)),
        instance_timeout: Duration::from_millis(a.instance_timeout_ms),
        decode_grace: Duration::from_millis(a.decode_grace_ms),
        redundancy: match a.redundancy.as_str() {
            "none" => Redundancy::None,
            "replication" => Redundancy::Replication { copies: 2 },
            "hedged" => Redundancy::hedged_p95(),
            other => bail!("--redundancy {other}: expected none, replication or hedged"),
        },
        dispatch: parm_serve::dispatch::DispatchBatching {
            max_batch: a.dispatch_max_batch,
            max_in_flight: a.dispatch_max_in_flight,
        },
    })
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

pub fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let a = with_config(a)?;
    let options = parm_serve::security::ServeOptions {
        auth: parm_serve::security::AuthToken::resolve(a.auth_token_file.as_deref())?,
        max_body_bytes: a.max_body_bytes,
        header_read_timeout: Duration::from_millis(a.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(a.body_read_timeout_ms),
    };
    // The instance clients the frontend makes send the same token.
    parm_serve::client::set_default_auth_token(options.auth.clone());
    anyhow::ensure!(a.max_inflight >= 1, "--max-inflight must be at least 1");
    let drain = Duration::from_millis(a.drain_timeout_ms);
    block_on_drained(a.runtime_threads, async move {
        let frontend = Frontend::start(frontend_config(&a).await?)?;
        frontend.warm_up().await;
        let admission = parm_serve::admission::Admission::new(a.max_inflight);
        let serving = parm_serve::api::Serving::start_with_options(frontend, admission, options).await?;
        if a.batch_coding {
            let coder = parm_serve::batch_coding::BatchCoder::start(serving.frontend.config())?;
            coder.warm_up().await;
            let _ = serving.batch_coding.set(coder);
        }
        let http = bind(&a.listen).await?;
        println!("listening on {}", http.local_addr()?);
        let grpc = match a.grpc_listen.as_str() {
            "off" => None,
            addr => Some(bind(addr).await?),
        };
        let metrics = match &a.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        for (what, l) in [("grpc", &grpc), ("metrics", &metrics)] {
            if let Some(l) = l {
                println!("{what} listening on {}", l.local_addr()?);
            }
        }
        let listeners = parm_serve::server::Listeners { http, grpc, metrics };
        parm_serve::server::serve_all_draining(serving, listeners, shutdown_signal(), drain).await
    })
}
