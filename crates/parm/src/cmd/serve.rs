//! `parm serve`: the frontend (OIP HTTP and gRPC for clients, coding groups over the
//! instances), for one model (`--deployed ...`, `--config`) or a model repository
//! (`--model-repository DIR`), both served as a map of models by name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::FutureExt;
use parm_codes::encoder_for_shape;
use parm_serve::coded::{Code, Frontend, FrontendConfig, ParityInstances};
use parm_serve::instance::local::{LocalInstance, is_inproc};
use parm_serve::oip::ModelSpec;
use parm_serve::server::api::{Model, Serving, ServingOptions, Transform};
use parm_serve::server::config::{DeadlineSection, ModelSection, Precedence, ServeFile};
use parm_serve::upstream::InstanceError;
use parm_serve::upstream::client::{ClientOptions, InstanceClient};
use parm_serve::upstream::redundancy::Redundancy;

use super::{DEFAULT_GROUP_TIMEOUT_MS, block_on_drained, parity_name, shutdown_signal};

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Deployed-model instances, comma-separated. Each is host:port, dns://NAME:PORT (every
    /// address NAME resolves to, re-resolved every --discovery-interval-ms: a Kubernetes
    /// headless Service), file:PATH (host:port lines, re-read when the file changes) or
    /// inproc:PATH (the model file at PATH, .bpk or .onnx, run in this process behind its own
    /// compute lane: no worker, no network hop; see README, "In-process instances"); so are
    /// the entries of --parity and --extra-instances.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["config", "model_repository"])]
    pub deployed: Vec<String>,
    /// Parity-model instances, comma-separated (none: no redundancy). With --parities R,
    /// give it once per parity index, in order: `--parity A1,A2 --parity B1` (parity 0 on A1
    /// and A2, parity 1 on B1).
    #[arg(long, value_parser = instance_list)]
    pub parity: Vec<Vec<String>>,
    /// Parity models per coding group (r): any r or fewer unavailable predictions of a group
    /// are reconstructed. r >= 2 uses the r-parity linear code (parity 0 is the addition
    /// code; parity L's model is trained with `train-parity --encoder linear-rR-pL`).
    /// Default 1 (ParM).
    #[arg(long)]
    pub parities: Option<usize>,
    /// The code: parity (learned parity models), collage (one model classifies the k
    /// queries tiled into one input, each answer its cell's; `parm train-parity --code
    /// collage`) or berrut (the systematic Berrut code: no parity model, the extra queries
    /// run the deployed model on --extra-instances).
    #[arg(long, default_value = "parity")]
    pub code: String,
    /// --code berrut: Berrut-blended queries per coding group, S (up to S unavailable
    /// predictions of a group are interpolated). Default 1.
    #[arg(long)]
    pub extra: Option<usize>,
    /// --code berrut: instances serving the deployed model (--deployed-model) that run the
    /// blended queries, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub extra_instances: Vec<String>,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value = "addition")]
    pub encoder: String,
    /// Address for OIP HTTP clients. The server listens at once, and its health probes say
    /// "not ready" until a deployed instance of every model has answered (logged every 10 s
    /// meanwhile); then the first line printed on stdout is `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Model name clients use (default: the deployed model's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Model name on the deployed instances.
    #[arg(long, default_value = "deployed")]
    pub deployed_model: String,
    /// Model name on the parity instances, once per parity index with --parities (default:
    /// parity-k{K}-{ENCODER}; with --parities R >= 2, parity-k{K}-linear-rR-pL; with --code
    /// collage, parity-k{K}-collage).
    #[arg(long)]
    pub parity_model: Vec<String>,
    /// A partly filled coding group gets its (zero-padded) parity query after this many ms.
    #[arg(long, default_value_t = DEFAULT_GROUP_TIMEOUT_MS)]
    pub group_timeout_ms: u64,
    /// An instance RPC counts as failed after this many ms.
    #[arg(long, default_value_t = 5000)]
    pub instance_timeout_ms: u64,
    /// A reconstruction is released no earlier than this many ms after its query was sent
    /// (0: answer with the first of original and reconstruction, as ParM does); at most the
    /// straggler threshold. Default: the straggler threshold, so that only a straggler is
    /// answered by its reconstruction.
    #[arg(long)]
    pub decode_grace_ms: Option<u64>,
    /// Send a coding group's parity query only once one of its queries is a straggler
    /// (outstanding longer than the straggler threshold) instead of when the group fills.
    #[arg(long)]
    pub lazy_parity: bool,
    /// Straggler threshold = this x the median deployed-instance latency, within
    /// `--straggler-min-us`..5 ms; a partly filled group is also sealed after it.
    #[arg(long, default_value_t = parm_serve::coded::policy::StragglerPolicy::default().factor)]
    pub straggler_factor: f64,
    /// The straggler threshold's floor (microseconds); above 5 ms it is also the cap.
    #[arg(long, default_value_t = parm_serve::coded::policy::StragglerPolicy::default().min.as_micros() as u64)]
    pub straggler_min_us: u64,
    /// Check each complete coding group against its code and take deployed instances whose
    /// outputs keep disagreeing with it out of rotation (wrong outputs: a corrupted model, a
    /// faulty accelerator). Needs parity instances (ParM's parity or --parities R; with
    /// R >= 2 the wrong member is located); every group then gets its parity queries.
    #[arg(long)]
    pub check_outputs: bool,
    /// Output checks: a group is flagged when its syndrome exceeds this x the running median.
    #[arg(long, default_value_t = parm_serve::coded::OutputChecks::default().threshold)]
    pub check_threshold: f32,
    /// Output checks: how many of each instance's last checks decide its ejection.
    #[arg(long, default_value_t = parm_serve::coded::OutputChecks::default().window)]
    pub check_window: usize,
    /// Output checks: blamed checks, as a share of the window, that eject an instance (2 at
    /// least; its share must also be at least three times the other instances' median share).
    #[arg(long, default_value_t = parm_serve::coded::OutputChecks::default().eject_rate)]
    pub eject_rate: f64,
    /// Output checks: flag a group by its syndrome alone, also when no member's top-1 class is
    /// in doubt (for models whose outputs are not class scores).
    #[arg(long)]
    pub check_any_change: bool,
    /// Output checks: seconds an ejected instance stays out of rotation.
    #[arg(long, default_value_t = parm_serve::coded::OutputChecks::default().eject_for.as_secs_f64())]
    pub eject_for_s: f64,
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
    /// TOKEN`, gRPC metadata `authorization`), and send it to the instances unless
    /// --instance-auth-token-file says otherwise. Default: $PARM_AUTH_TOKEN if set, else no
    /// auth. Health probes stay open.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Send this bearer token (file holding it) to the instances instead of the clients'
    /// (per model in a repository's config.toml).
    #[arg(long)]
    pub instance_auth_token_file: Option<PathBuf>,
    /// Largest HTTP request body after decompression, and largest gRPC request (bytes); more
    /// gets 413 / RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = parm_serve::oip::security::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// HTTP clients must send a request's headers within this (ms), else they are disconnected.
    #[arg(long, default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,
    /// HTTP clients must send a request's body within this of its headers (ms), else 408.
    #[arg(long, default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,
    /// Most connections open at once on each listener (HTTP, gRPC, metrics); more are closed
    /// as they are accepted.
    #[arg(long, default_value_t = parm_serve::server::conn::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A connection that moves no byte for this long (ms) is closed (keep it above the
    /// longest request deadline).
    #[arg(long, default_value_t = parm_serve::server::conn::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    /// Most queries in flight at the frontend (HTTP and gRPC together); past it requests get
    /// 503 + Retry-After / UNAVAILABLE at once (admission control, see parm_serve::server::admission).
    #[arg(long, default_value_t = parm_serve::server::admission::DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// Shedding by queueing delay (CoDel-style, see parm_serve::server::admission): when the
    /// fastest request of every --queue-interval-ms took more than this (ms) above the
    /// instances' own latency, queries in flight are capped so that admitted ones wait about
    /// half this long, and the rest get 503 + Retry-After at once. 0: only --max-inflight bounds.
    #[arg(long, default_value_t = parm_serve::server::admission::DelayTarget::default().target.as_secs_f64() * 1e3)]
    pub queue_target_ms: f64,
    /// The interval of --queue-target-ms (ms).
    #[arg(long, default_value_t = parm_serve::server::admission::DelayTarget::default().interval.as_secs_f64() * 1e3)]
    pub queue_interval_ms: f64,
    /// On SIGTERM / Ctrl-C: stop accepting, let in-flight requests finish for at most this
    /// long (ms), then exit 0.
    #[arg(long, default_value_t = parm_serve::server::listen::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
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
    /// `--dispatch-max-batch` > 1). 1 suits a parm worker (one execution at a time); raise it
    /// for an instance that runs several at once (Triton with `instance_group` count > 1).
    #[arg(long, default_value_t = parm_serve::upstream::dispatch::DispatchBatching::default().max_in_flight)]
    pub dispatch_max_in_flight: usize,
    /// Settings file (TOML; example: examples/parm.toml). A flag given on the command line
    /// beats the file's key, which beats the flag's default. With --model-repository it may
    /// hold [server] only.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve several models: one folder per model, DIR/NAME/config.toml (Triton's layout; the
    /// [model], [deadlines] and [preprocess] tables of --config's format; example:
    /// examples/model-repository). Each model is served as NAME with its own coding groups,
    /// statistics and instances. The policy flags given on the command line (timeouts,
    /// straggler, redundancy, batching) apply to every model, beating its file.
    #[arg(long, conflicts_with_all = ["deployed", "parity", "k", "encoder", "model_name", "deployed_model", "parity_model", "parities", "code", "extra", "extra_instances"])]
    pub model_repository: Option<PathBuf>,
    /// How often instance entries that are DNS names or files are re-resolved (ms).
    #[arg(long, default_value_t = parm_serve::upstream::discovery::DEFAULT_DISCOVERY_INTERVAL.as_millis() as u64)]
    pub discovery_interval_ms: u64,
    #[command(flatten)]
    pub tls: super::TlsArgs,
    /// Reach the instances over TLS, trusting this CA (PEM) for their certificates.
    #[arg(long)]
    pub instance_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to the instances (for workers with
    /// --tls-client-ca); needs --instance-tls-key.
    #[arg(long)]
    pub instance_tls_cert: Option<PathBuf>,
    /// The private key of --instance-tls-cert (PEM).
    #[arg(long)]
    pub instance_tls_key: Option<PathBuf>,
    /// Check the instances' certificates against this name instead of the host of their
    /// address (needed when the addresses are IPs, as dns:// entries give).
    #[arg(long)]
    pub instance_tls_server_name: Option<String>,
    /// The model config's `[preprocess]` table (from --config or a repository folder).
    #[arg(skip)]
    pub preprocess: Option<parm_serve::server::config::Preprocess>,
}

/// The queueing-delay bound of `--queue-target-ms` / `--queue-interval-ms` (`None` for a
/// target of 0).
///
/// Errors: a negative or non-finite value, or a zero interval with a target.
fn delay_target(target_ms: f64, interval_ms: f64) -> anyhow::Result<Option<parm_serve::server::admission::DelayTarget>> {
    let ms = |v: f64, flag: &str| match v.is_finite() && v >= 0.0 {
        true => Ok(Duration::from_secs_f64(v / 1e3)),
        false => Err(anyhow::anyhow!("{flag} must be a non-negative number of milliseconds, got {v}")),
    };
    let (target, interval) = (ms(target_ms, "--queue-target-ms")?, ms(interval_ms, "--queue-interval-ms")?);
    if target.is_zero() {
        return Ok(None);
    }
    anyhow::ensure!(!interval.is_zero(), "--queue-interval-ms must be above 0 when --queue-target-ms is");
    Ok(Some(parm_serve::server::admission::DelayTarget { target, interval }))
}

/// One `--parity` list: comma-separated instance addresses.
fn instance_list(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if list.is_empty() { Err("an empty list of instances".into()) } else { Ok(list) }
}

/// `a` with the settings of its `--config` file applied under the precedence flag given on
/// the command line > file > default (`parm_serve::server::config::Precedence`); `flag_given`
/// tells which flags were given.
///
/// Errors: the file's (unreadable, not TOML, unknown key, bad value), or no deployed
/// instance given anywhere.
fn with_config(mut a: ServeArgs, flag_given: impl Fn(&str) -> bool) -> anyhow::Result<ServeArgs> {
    let Some(path) = a.config.clone() else { return Ok(a) };
    let f = ServeFile::load(&path)?;
    let s = f.server;
    let p = Precedence { flag_given };
    p.apply("listen", &mut a.listen, s.http);
    p.apply("max_inflight", &mut a.max_inflight, s.max_inflight);
    p.apply("queue_target_ms", &mut a.queue_target_ms, s.queue_target_ms);
    p.apply("queue_interval_ms", &mut a.queue_interval_ms, s.queue_interval_ms);
    p.apply("drain_timeout_ms", &mut a.drain_timeout_ms, s.drain_timeout_ms);
    p.apply("runtime_threads", &mut a.runtime_threads, s.runtime_threads);
    p.apply("auth_token_file", &mut a.auth_token_file, s.auth_token_file.map(Some));
    p.apply("max_body_bytes", &mut a.max_body_bytes, s.max_body_bytes);
    p.apply("header_read_timeout_ms", &mut a.header_read_timeout_ms, s.header_read_timeout_ms);
    p.apply("body_read_timeout_ms", &mut a.body_read_timeout_ms, s.body_read_timeout_ms);
    p.apply("max_connections", &mut a.max_connections, s.max_connections);
    p.apply("idle_timeout_ms", &mut a.idle_timeout_ms, s.idle_timeout_ms);
    p.apply("grpc_listen", &mut a.grpc_listen, s.grpc);
    p.apply("metrics_listen", &mut a.metrics_listen, s.metrics.map(Some));
    p.apply("tls_cert", &mut a.tls.tls_cert, s.tls_cert.map(Some));
    p.apply("tls_key", &mut a.tls.tls_key, s.tls_key.map(Some));
    p.apply("tls_client_ca", &mut a.tls.tls_client_ca, s.tls_client_ca.map(Some));
    p.apply("instance_tls_ca", &mut a.instance_tls_ca, s.instance_tls_ca.map(Some));
    p.apply("instance_tls_cert", &mut a.instance_tls_cert, s.instance_tls_cert.map(Some));
    p.apply("instance_tls_key", &mut a.instance_tls_key, s.instance_tls_key.map(Some));
    p.apply("instance_tls_server_name", &mut a.instance_tls_server_name, s.instance_tls_server_name.map(Some));
    p.apply("instance_auth_token_file", &mut a.instance_auth_token_file, s.instance_auth_token_file.map(Some));
    let ServeFile { model, deadlines, preprocess, .. } = f;
    if a.model_repository.is_some() {
        let server_only = (model, deadlines, &preprocess) == (Default::default(), Default::default(), &None);
        anyhow::ensure!(
            server_only,
            "{}: with --model-repository, models are configured in their folders; this file may hold [server] only",
            path.display()
        );
        return Ok(a);
    }
    apply_model(&mut a, model, deadlines, &p);
    a.preprocess = preprocess;
    anyhow::ensure!(!a.deployed.is_empty(), "no deployed instances: give --deployed or model.deployed in {}", path.display());
    Ok(a)
}

/// `a` with one model's `[model]` and `[deadlines]` settings applied under `p`.
fn apply_model<F: Fn(&str) -> bool>(a: &mut ServeArgs, m: ModelSection, d: DeadlineSection, p: &Precedence<F>) {
    p.apply("model_name", &mut a.model_name, m.name.map(Some));
    p.apply("deployed_model", &mut a.deployed_model, m.deployed_model);
    p.apply("parity_model", &mut a.parity_model, m.parity_model);
    p.apply("deployed", &mut a.deployed, m.deployed);
    p.apply("parity", &mut a.parity, m.parity);
    p.apply("parities", &mut a.parities, m.parities.map(Some));
    p.apply("code", &mut a.code, m.code);
    p.apply("extra", &mut a.extra, m.extra.map(Some));
    p.apply("extra_instances", &mut a.extra_instances, m.extra_instances);
    p.apply("k", &mut a.k, m.k);
    p.apply("encoder", &mut a.encoder, m.encoder);
    p.apply("redundancy", &mut a.redundancy, m.redundancy);
    p.apply("lazy_parity", &mut a.lazy_parity, m.lazy_parity);
    p.apply("batch_coding", &mut a.batch_coding, m.batch_coding);
    p.apply("dispatch_max_batch", &mut a.dispatch_max_batch, m.dispatch_max_batch);
    p.apply("dispatch_max_in_flight", &mut a.dispatch_max_in_flight, m.dispatch_max_in_flight);
    p.apply("discovery_interval_ms", &mut a.discovery_interval_ms, m.discovery_interval_ms);
    p.apply("straggler_factor", &mut a.straggler_factor, m.straggler_factor);
    p.apply("straggler_min_us", &mut a.straggler_min_us, m.straggler_min_us);
    p.apply("check_outputs", &mut a.check_outputs, m.check_outputs);
    p.apply("check_threshold", &mut a.check_threshold, m.check_threshold);
    p.apply("check_window", &mut a.check_window, m.check_window);
    p.apply("eject_rate", &mut a.eject_rate, m.eject_rate);
    p.apply("check_any_change", &mut a.check_any_change, m.check_any_change);
    p.apply("eject_for_s", &mut a.eject_for_s, m.eject_for_s);
    p.apply("instance_auth_token_file", &mut a.instance_auth_token_file, m.instance_auth_token_file.map(Some));
    p.apply("instance_tls_ca", &mut a.instance_tls_ca, m.instance_tls_ca.map(Some));
    p.apply("instance_tls_cert", &mut a.instance_tls_cert, m.instance_tls_cert.map(Some));
    p.apply("instance_tls_key", &mut a.instance_tls_key, m.instance_tls_key.map(Some));
    p.apply("instance_tls_server_name", &mut a.instance_tls_server_name, m.instance_tls_server_name.map(Some));
    p.apply("group_timeout_ms", &mut a.group_timeout_ms, d.group_timeout_ms);
    p.apply("decode_grace_ms", &mut a.decode_grace_ms, d.decode_grace_ms.map(Some));
    p.apply("instance_timeout_ms", &mut a.instance_timeout_ms, d.instance_timeout_ms);
}

/// The models to serve, each as the settings of one frontend: with `--model-repository`, one
/// per folder, named after it, from its `config.toml` under the flags given on the command
/// line (`flag_given`); else the one model of `a`.
///
/// Errors: the repository's (see `parm_serve::server::config::load_repository`).
fn models(a: &ServeArgs, flag_given: impl Fn(&str) -> bool) -> anyhow::Result<Vec<ServeArgs>> {
    let Some(dir) = &a.model_repository else { return Ok(vec![a.clone()]) };
    let p = Precedence { flag_given };
    let mut models = Vec::new();
    for m in parm_serve::server::config::load_repository(dir)? {
        tracing::info!("model repository: serving '{}' from {}", m.name, m.path.display());
        let mut args = ServeArgs { model_name: Some(m.name), preprocess: m.file.preprocess, ..a.clone() };
        apply_model(&mut args, m.file.model, m.file.deadlines, &p);
        models.push(args);
    }
    Ok(models)
}

/// What `a`'s code flags ask for: the code, the instances of parity 0 (or the Berrut
/// code's extra instances) and the model they run.
///
/// Errors: flags that do not fit together, each with what to change: a number of --parity
/// lists or --parity-model names other than --parities, several parities with an encoder
/// other than addition, parity flags with --code berrut, Berrut flags with --code parity.
pub fn code_settings(a: &ServeArgs) -> anyhow::Result<(Code, Vec<String>, String)> {
    match a.code.as_str() {
        "parity" => parity_settings(a),
        "berrut" => {
            anyhow::ensure!(
                a.parity.is_empty() && a.parity_model.is_empty() && a.parities.is_none(),
                "--code berrut needs no parity model (its extra queries run the deployed model on --extra-instances): drop --parity, --parity-model and --parities"
            );
            anyhow::ensure!(a.encoder == "addition", "--code berrut blends queries itself: drop --encoder {}", a.encoder);
            let s = a.extra.unwrap_or(1);
            anyhow::ensure!(s >= 1, "--extra must be at least 1");
            anyhow::ensure!(
                !a.extra_instances.is_empty(),
                "--code berrut needs --extra-instances: instances serving the deployed model '{}' that run the {s} blended queries of each coding group",
                a.deployed_model
            );
            Ok((Code::Berrut { s }, a.extra_instances.clone(), a.deployed_model.clone()))
        }
        "collage" => {
            anyhow::ensure!(
                a.parities.is_none() && a.extra.is_none() && a.extra_instances.is_empty(),
                "--code collage has one collage model per coding group: drop --parities, --extra and --extra-instances"
            );
            anyhow::ensure!(
                matches!(a.encoder.as_str(), "addition" | "concatenation"),
                "--code collage tiles the queries itself (the concatenation encoder): drop --encoder {}",
                a.encoder
            );
            anyhow::ensure!(
                a.parity.len() <= 1 && a.parity_model.len() <= 1,
                "--code collage takes one --parity list and one --parity-model"
            );
            let name = a.parity_model.first().cloned().unwrap_or_else(|| parity_name(a.k, "collage"));
            Ok((Code::Parity, a.parity.first().cloned().unwrap_or_default(), name))
        }
        other => bail!("--code {other}: expected parity, collage or berrut"),
    }
}

/// The encoder of `a`'s parity queries: `--encoder`, or the concatenation encoder for
/// `--code collage`.
fn encoder_name(a: &ServeArgs) -> &str {
    if a.code == "collage" { "concatenation" } else { &a.encoder }
}

/// [`code_settings`] for `--code parity`: ParM's one parity, or r >= 2 parities.
fn parity_settings(a: &ServeArgs) -> anyhow::Result<(Code, Vec<String>, String)> {
    anyhow::ensure!(
        a.extra.is_none() && a.extra_instances.is_empty(),
        "--extra and --extra-instances are for --code berrut; parity models take --parities and --parity"
    );
    let r = a.parities.unwrap_or(1);
    anyhow::ensure!(r >= 1, "--parities must be at least 1");
    let (lists, n) = (&a.parity, a.parity.len());
    anyhow::ensure!(
        n == r || (r == 1 && n == 0),
        "--parities {r} needs {r} lists of parity instances, one --parity per parity index (e.g. --parity A --parity B), got {n}"
    );
    let names = match a.parity_model.len() {
        0 if r == 1 => vec![parity_name(a.k, &a.encoder)],
        0 => (0..r).map(|l| parity_name(a.k, &format!("linear-r{r}-p{l}"))).collect(),
        n if n == r => a.parity_model.clone(),
        n => bail!("--parities {r} needs {r} --parity-model names, one per parity index, got {n}"),
    };
    let first = lists.first().cloned().unwrap_or_default();
    if r == 1 {
        return Ok((Code::Parity, first, names[0].clone()));
    }
    anyhow::ensure!(
        a.encoder == "addition",
        "--parities {r} uses the r-parity linear code, whose parity 0 is the addition code: drop --encoder {}",
        a.encoder
    );
    let further = lists[1..].iter().zip(&names[1..]).map(|(i, m)| ParityInstances { instances: i.clone(), model: m.clone() }).collect();
    Ok((Code::Parities { further }, first, names[0].clone()))
}

/// The name clients call model `a` by.
fn served_name(a: &ServeArgs) -> &str {
    a.model_name.as_deref().unwrap_or(&a.deployed_model)
}

/// What model `a` waits for before it can be served (the reason it is listed unavailable).
fn waiting_for(a: &ServeArgs) -> String {
    format!("waiting for a deployed instance ({}) to serve model '{}'", a.deployed.join(", "), a.deployed_model)
}

/// How often [`remote_spec`] repeats its log line while no deployed instance answers.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// The model's metadata from the first of `a`'s deployed instances that says the model is
/// ready and answers `ModelMetadata`, asking each in turn (every second) for as long as it
/// takes; what it waits for is logged at once and every [`WAITING_LOG_EVERY`], with each
/// instance's last error.
///
/// Errors: metadata parm cannot serve (not one FP32 input and output with a batch dimension).
async fn remote_spec(a: &ServeArgs) -> anyhow::Result<ModelSpec> {
    let sources = parm_serve::upstream::discovery::sources(&a.deployed)?;
    let mut resolver = parm_serve::upstream::discovery::Resolver::new(sources);
    let options = upstream_options(a)?;
    let (model, timeout) = (&a.deployed_model, Duration::from_secs(2));
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        let mut errors = Vec::new();
        for addr in resolver.refresh().await {
            let c = InstanceClient::connect(&addr, &options)?;
            let e = match c.model_ready(model, timeout).await {
                true => match c.model_metadata(model, timeout).await {
                    Ok(spec) => return Ok(ModelSpec { name: served_name(a).to_string(), ..spec }),
                    Err(e @ InstanceError::BadResponse { .. }) => return Err(e.into()),
                    Err(e) => e.to_string(),
                },
                false => format!("{addr}: model not ready or no answer"),
            };
            errors.push(e);
        }
        if errors.is_empty() {
            errors.push("no instance found".into());
        }
        if logged.is_none_or(|t| t.elapsed() >= WAITING_LOG_EVERY) {
            tracing::warn!(
                "model '{}' is not ready: {} ({}; is '{model}' the model's name there? --deployed-model names it)",
                served_name(a),
                waiting_for(a),
                errors.join("; ")
            );
            logged = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The frontend config of model `a`, whose deployed instances serve `spec`.
///
/// Errors: flags that do not fit together (see [`code_settings`]), an unknown encoder or
/// redundancy.
pub fn frontend_config(a: &ServeArgs, spec: ModelSpec) -> anyhow::Result<FrontendConfig> {
    let (code, parity, parity_model) = code_settings(a)?;
    Ok(FrontendConfig {
        deployed_model: a.deployed_model.clone(),
        parity,
        parity_model,
        encoder: Arc::from(encoder_for_shape(
            encoder_name(a),
            a.k,
            &spec.input_shape.iter().map(|&d| d.max(1) as usize).collect::<Vec<_>>(),
        )?),
        code,
        group_timeout: Duration::from_millis(a.group_timeout_ms),
        straggler: parm_serve::coded::policy::StragglerPolicy {
            lazy_parity: a.lazy_parity,
            factor: a.straggler_factor,
            ..Default::default()
        }
        .with_min(Duration::from_micros(a.straggler_min_us)),
        instance_timeout: Duration::from_millis(a.instance_timeout_ms),
        decode_grace: a.decode_grace_ms.map(Duration::from_millis),
        redundancy: match a.redundancy.as_str() {
            "none" => Redundancy::None,
            "replication" => Redundancy::Replication { copies: 2 },
            "hedged" => Redundancy::hedged_p95(),
            other => bail!("--redundancy {other}: expected none, replication or hedged"),
        },
        dispatch: parm_serve::upstream::dispatch::DispatchBatching {
            max_batch: a.dispatch_max_batch,
            max_in_flight: a.dispatch_max_in_flight,
        },
        batch_coding: a.batch_coding,
        discovery_interval: Duration::from_millis(a.discovery_interval_ms),
        checks: a.check_outputs.then(|| output_checks(a)).transpose()?,
        upstream: upstream_options(a)?,
        ..FrontendConfig::new(spec, a.deployed.clone())
    })
}

/// How model `a`'s frontend reaches its instances: the token of --instance-auth-token-file,
/// else the clients' (--auth-token-file, $PARM_AUTH_TOKEN); TLS with --instance-tls-ca.
///
/// Errors: an unreadable token file, TLS flags that do not fit together, or TLS files that
/// cannot be used.
fn upstream_options(a: &ServeArgs) -> anyhow::Result<ClientOptions> {
    let token = match &a.instance_auth_token_file {
        Some(file) => Some(parm_serve::oip::security::AuthToken::from_file(file)?),
        None => parm_serve::oip::security::AuthToken::resolve(a.auth_token_file.as_deref())?,
    };
    let tls = parm_serve::oip::tls::ClientTls::from_flags(
        a.instance_tls_ca.clone(),
        a.instance_tls_cert.clone(),
        a.instance_tls_key.clone(),
        a.instance_tls_server_name.clone(),
    )?;
    Ok(ClientOptions::new(token, tls.as_ref())?)
}

/// The output-check settings of `a` (`--check-*`, `--eject-*`).
///
/// Errors: a negative or non-finite `--eject-for-s`.
fn output_checks(a: &ServeArgs) -> anyhow::Result<parm_serve::coded::OutputChecks> {
    anyhow::ensure!(
        a.eject_for_s.is_finite() && a.eject_for_s >= 0.0,
        "--eject-for-s must be a number of seconds >= 0, got {}",
        a.eject_for_s
    );
    Ok(parm_serve::coded::OutputChecks {
        threshold: a.check_threshold,
        window: a.check_window,
        eject_rate: a.eject_rate,
        any_change: a.check_any_change,
        eject_for: Duration::from_secs_f64(a.eject_for_s),
        ..Default::default()
    })
}

/// Loads model `a`'s in-process instances (`inproc:PATH` entries), takes its shapes from the
/// first in-process deployed instance or else waits for a remote one (see [`remote_spec`]),
/// starts its frontend and serves it on `serving`.
///
/// Errors: a model file that cannot be loaded, metadata parm cannot serve, settings that do
/// not fit the model (code flags, `[preprocess]` for its input shape), or an unparsable
/// address.
async fn serve_model(serving: &Serving, a: &ServeArgs) -> anyhow::Result<()> {
    let mut inproc = Inproc::default();
    let spec = match a.deployed.iter().find(|e| is_inproc(e)) {
        Some(entry) => ModelSpec { name: served_name(a).to_string(), ..inproc.load(entry, &a.deployed_model)?.spec().clone() },
        None => remote_spec(a).await?,
    };
    let mut cfg = frontend_config(a, spec)?;
    let lists = std::iter::once((cfg.deployed.clone(), cfg.deployed_model.clone()));
    for (entries, model) in lists.chain(cfg.parity_sets().into_iter().map(|p| (p.instances, p.model))) {
        for entry in entries.iter().filter(|e| is_inproc(e)) {
            inproc.load(entry, &model)?;
        }
    }
    cfg.inproc = inproc.0.into_iter().map(|(entry, (_, i))| (entry, i as Arc<dyn parm_serve::upstream::Instance>)).collect();
    let frontend = Frontend::start(cfg)?;
    frontend.warm_up().await;
    let transform = match &a.preprocess {
        Some(t) => Some(transform(t, &frontend.spec().input_shape)?),
        None => None,
    };
    serving.install(Model { frontend, preprocess: a.preprocess.clone(), transform }).await
}

/// A model's in-process instances (`inproc:PATH` entries), by entry, with the model name
/// each serves.
#[derive(Default)]
struct Inproc(std::collections::BTreeMap<String, (String, Arc<LocalInstance>)>);

impl Inproc {
    /// The in-process instance `entry` (`inproc:PATH`) serving `model`, loaded from PATH (a
    /// parm model, `.bpk` optional, on $PARM_DEVICE or the CPU; or an ONNX file run by tract)
    /// the first time it is named. Each distinct entry is one instance with its own compute
    /// lane.
    ///
    /// Errors: a model file that cannot be loaded, or an entry named for two models.
    fn load(&mut self, entry: &str, model: &str) -> anyhow::Result<&Arc<LocalInstance>> {
        let entry = entry.trim();
        if !self.0.contains_key(entry) {
            let path = super::bpk_path(std::path::Path::new(&entry[parm_serve::instance::local::INPROC.len()..]));
            let device = super::DeviceArg::default().choice()?;
            let backend = super::worker::open_model(&path, model, None, &parm_nn::onnx::OnnxRuntime::Tract, device)
                .with_context(|| format!("in-process instance '{entry}'"))?;
            let instance = LocalInstance::new(entry, backend, Default::default())?;
            tracing::info!(%entry, model, "in-process instance loaded");
            self.0.insert(entry.to_string(), (model.to_string(), Arc::new(instance)));
        }
        let (serves, instance) = &self.0[entry];
        anyhow::ensure!(serves == model, "in-process instance '{entry}' is listed for two models, '{serves}' and '{model}'");
        Ok(instance)
    }
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// `parm serve`; `flag_given` tells which flags were given on the command line (they beat
/// the `--config` file).
/// The `[preprocess]` table as the frontend's per-query [`Transform`] for queries of `shape`:
/// scale, mean and std by parm_data's `Preprocess`, the code `train-parity` and `eval` run on
/// files. A missing `scale` is 1 here (clients send values, not files of bytes).
///
/// # Errors
/// Unknown keys, `resize` or an NHWC `layout` (those describe files; queries arrive in the
/// model's input shape), or settings that do not fit `shape`.
fn transform(table: &toml::Table, shape: &[i64]) -> anyhow::Result<Transform> {
    let p: parm_data::Preprocess = toml::Value::Table(table.clone()).try_into().context("[preprocess]")?;
    anyhow::ensure!(
        p.resize.is_none() && p.layout == parm_data::Layout::Nchw,
        "[preprocess]: serving applies scale, mean and std; resize and layout describe files (send queries in the model's input shape)"
    );
    let p = parm_data::Preprocess { scale: Some(p.scale.unwrap_or(1.0)), ..p };
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(1) as usize).collect();
    p.apply(&vec![0.0; shape.iter().product()], &shape).context("[preprocess] for the model's input shape")?;
    Ok(Arc::new(move |row: &[f32]| p.apply(row, &shape).map(|(v, _)| v).map_err(|e| e.to_string())))
}

pub fn run(a: ServeArgs, flag_given: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let a = with_config(a, &flag_given)?;
    let models = models(&a, &flag_given)?;
    // Bad flags are refused before any instance is waited for.
    for m in &models {
        // Any image shape, so that a collage's encoder can be built; the real shape comes
        // from the instances.
        let any_spec = ModelSpec::fp32(served_name(m), vec![1, 32, 32], vec![1]);
        let checked = frontend_config(m, any_spec).and_then(|c| Ok(c.validate()?));
        checked.with_context(|| format!("model '{}'", served_name(m)))?;
    }
    let options = parm_serve::oip::security::ServeOptions {
        auth: parm_serve::oip::security::AuthToken::resolve(a.auth_token_file.as_deref())?,
        max_body_bytes: a.max_body_bytes,
        header_read_timeout: Duration::from_millis(a.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(a.body_read_timeout_ms),
        tls: a.tls.files()?,
        conn: conn_limits(a.max_connections, a.idle_timeout_ms)?,
    };
    anyhow::ensure!(a.max_inflight >= 1, "--max-inflight must be at least 1");
    let delay = delay_target(a.queue_target_ms, a.queue_interval_ms)?;
    let drain = Duration::from_millis(a.drain_timeout_ms);
    block_on_drained(a.runtime_threads, async move {
        let admission = parm_serve::server::admission::Admission::new(a.max_inflight).with_delay_target(delay);
        let pending = models.iter().map(|m| (served_name(m).to_string(), waiting_for(m))).collect();
        let serving = Serving::start_pending(pending, ServingOptions { admission, limits: options })?;
        let http = bind(&a.listen).await?;
        let grpc = match a.grpc_listen.as_str() {
            "off" => None,
            addr => Some(bind(addr).await?),
        };
        let metrics = match &a.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut lines = vec![format!("listening on {}", http.local_addr()?)];
        for (what, l) in [("grpc", &grpc), ("metrics", &metrics)] {
            if let Some(l) = l {
                lines.push(format!("{what} listening on {}", l.local_addr()?));
            }
        }
        // Listening (health probes answer "not ready") while the models wait for their
        // instances; stdout says `listening on` once every model is served.
        let listeners = parm_serve::server::listen::Listeners { http, grpc, metrics };
        let serve = parm_serve::server::listen::serve_all_draining(serving.clone(), listeners, shutdown_signal(), drain);
        tokio::pin!(serve);
        // Each model gets its own frontend: coding groups, statistics, instance pools.
        let started = models.iter().map(|m| serve_model(&serving, m).map(|r| r.with_context(|| format!("model '{}'", served_name(m)))));
        tokio::select! {
            r = &mut serve => return r,
            r = futures::future::try_join_all(started) => r?,
        };
        println!("{}", lines.join("\n"));
        serve.await
    })
}

/// `--max-connections` and `--idle-timeout-ms` as a listener's limits.
///
/// Errors: either is 0.
pub fn conn_limits(max_connections: usize, idle_timeout_ms: u64) -> anyhow::Result<parm_serve::server::conn::ConnLimits> {
    anyhow::ensure!(max_connections >= 1, "--max-connections must be at least 1");
    anyhow::ensure!(idle_timeout_ms >= 1, "--idle-timeout-ms must be at least 1");
    Ok(parm_serve::server::conn::ConnLimits { max_connections, idle_timeout: Duration::from_millis(idle_timeout_ms) })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[test]
    fn preprocess_tables_become_the_same_transform_as_for_files() {
        let table: toml::Table = toml::from_str("scale = 0.5\nmean = [1.0, 2.0]\nstd = [2.0, 4.0]").unwrap();
        let t = transform(&table, &[2, 1, 2]).unwrap();
        // Channel 0: (x * 0.5 - 1) / 2; channel 1: (x * 0.5 - 2) / 4.
        assert_eq!(t(&[2.0, 4.0, 4.0, 12.0]).unwrap(), vec![0.0, 0.5, 0.0, 1.0]);
        assert!(t(&[1.0]).is_err());
        for bad in ["resize = [4, 4]", "layout = \"nhwc\"", "scale = 1.0\ncolour = true", "mean = [1.0, 2.0, 3.0]"] {
            let table: toml::Table = toml::from_str(bad).unwrap();
            assert!(transform(&table, &[2, 1, 2]).is_err(), "{bad}");
        }
        let none: toml::Table = toml::from_str("").unwrap();
        assert_eq!(transform(&none, &[3]).unwrap()(&[1.0, 2.0, 3.0]).unwrap(), vec![1.0, 2.0, 3.0]);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Parses `args` as `parm serve` does and applies the config file.
    fn settle(args: &[&str]) -> ServeArgs {
        settle_models(args).unwrap().0
    }

    /// Parses `args` as `parm serve` does: the server's settings and every model's.
    fn settle_models(args: &[&str]) -> anyhow::Result<(ServeArgs, Vec<ServeArgs>)> {
        let m = Cli::command().try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))?;
        let a = Cli::from_arg_matches(&m)?.serve;
        let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let a = with_config(a, given)?;
        let models = models(&a, given)?;
        Ok((a, models))
    }

    #[test]
    fn a_model_repository_gives_one_model_per_folder_under_the_flags_given() {
        let dir = std::env::temp_dir().join(format!("parm-serve-repository-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in [
            (
                "b",
                "[model]\ndeployed = [\"10.0.0.2:9000\"]\nparity = [\"10.0.0.3:9000\"]\nk = 3\n[deadlines]\ngroup_timeout_ms = 9\n[preprocess]\nscale = 2.0\n",
            ),
            ("a", "[model]\ndeployed = [\"10.0.0.1:9000\"]\ndecode_grace_ms = 1\n"),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("config.toml"), text).unwrap();
        }
        let repo = dir.to_str().unwrap();
        // "a" has a key [model] does not know: the error names the file.
        let err = format!("{:#}", settle_models(&["--model-repository", repo]).err().unwrap());
        assert!(err.contains(&dir.join("a").join("config.toml").display().to_string()) && err.contains("decode_grace_ms"), "{err}");
        std::fs::write(dir.join("a").join("config.toml"), "[model]\ndeployed = [\"10.0.0.1:9000\"]\n").unwrap();

        let (_, models) = settle_models(&["--model-repository", repo, "--group-timeout-ms", "4"]).unwrap();
        let names: Vec<_> = models.iter().map(|m| m.model_name.clone().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
        let (a, b) = (&models[0], &models[1]);
        assert_eq!((a.deployed.as_slice(), a.parity.len(), a.k), (&["10.0.0.1:9000".to_string()][..], 0, 2));
        assert_eq!(
            (b.deployed.as_slice(), b.parity.as_slice(), b.k),
            (&["10.0.0.2:9000".to_string()][..], &[vec!["10.0.0.3:9000".to_string()]][..], 3)
        );
        assert_eq!((a.group_timeout_ms, b.group_timeout_ms), (4, 4), "a flag given beats every model's file");
        assert_eq!(settle_models(&["--model-repository", repo]).unwrap().1[1].group_timeout_ms, 9);
        assert_eq!(b.preprocess.as_ref().and_then(|p| p["scale"].as_float()), Some(2.0));
        assert!(a.preprocess.is_none());

        // One model's identity flags do not go with a repository, nor does a [model] in --config.
        assert!(settle_models(&["--model-repository", repo, "--deployed", "10.0.0.9:9000"]).is_err());
        let config = dir.join("parm.toml");
        std::fs::write(&config, "[model]\nk = 2\n").unwrap();
        let err = settle_models(&["--model-repository", repo, "--config", config.to_str().unwrap()]).err().unwrap().to_string();
        assert!(err.contains("[server] only"), "{err}");
        std::fs::write(&config, "[server]\nhttp = \"127.0.0.1:8100\"\n").unwrap();
        let (server, models) = settle_models(&["--model-repository", repo, "--config", config.to_str().unwrap()]).unwrap();
        assert_eq!((server.listen.as_str(), models.len()), ("127.0.0.1:8100", 2));
        // The single-model flags are a repository of one.
        let (_, one) = settle_models(&["--deployed", "10.0.0.1:9000", "--model-name", "m"]).unwrap();
        assert_eq!((one.len(), one[0].model_name.as_deref()), (1, Some("m")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn code_flags_that_do_not_fit_are_refused_with_what_to_change() {
        let d = ["--deployed", "10.0.0.1:9000"];
        let code = |extra: &[&str]| code_settings(&settle(&[&d[..], extra].concat()));
        let err = |extra: &[&str]| format!("{:#}", code(extra).unwrap_err());
        // r parities: one --parity list and one name per parity index.
        let (c, parity, model) = code(&["--parities", "2", "--parity", "a", "--parity", "b,c"]).unwrap();
        assert_eq!((parity, model.as_str()), (vec!["a".to_string()], "parity-k2-linear-r2-p0"));
        let Code::Parities { further } = c else { panic!("{c:?}") };
        assert_eq!(further, vec![ParityInstances { instances: vec!["b".into(), "c".into()], model: "parity-k2-linear-r2-p1".into() }]);
        assert!(err(&["--parities", "3", "--parity", "a", "--parity", "b"]).contains("--parities 3 needs 3 lists"));
        assert!(err(&["--parity", "a", "--parity", "b"]).contains("--parities 1 needs 1 lists"));
        let e = err(&["--parities", "2", "--parity", "a", "--parity", "b", "--parity-model", "x"]);
        assert!(e.contains("2 --parity-model names"), "{e}");
        let e = err(&["--parities", "2", "--parity", "a", "--parity", "b", "--encoder", "concatenation"]);
        assert!(e.contains("drop --encoder"), "{e}");
        assert_eq!(code(&["--parity", "a"]).unwrap(), (Code::Parity, vec!["a".to_string()], "parity-k2-addition".to_string()));
        // The Berrut code: no parity model, its own instances.
        let (c, extra, model) = code(&["--code", "berrut", "--extra", "2", "--extra-instances", "e1,e2"]).unwrap();
        assert_eq!((c, extra.len(), model.as_str()), (Code::Berrut { s: 2 }, 2, "deployed"));
        assert!(err(&["--code", "berrut", "--extra-instances", "e", "--parity", "p"]).contains("needs no parity model"));
        assert!(err(&["--code", "berrut"]).contains("needs --extra-instances"));
        assert!(err(&["--code", "berrut", "--extra", "0", "--extra-instances", "e"]).contains("at least 1"));
        assert!(err(&["--extra", "2"]).contains("for --code berrut"));
        assert!(err(&["--code", "rs"]).contains("expected parity, collage or berrut"));
    }

    #[test]
    fn command_line_beats_config_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("parm-serve-precedence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("parm.toml");
        std::fs::write(&file, "[model]\ndeployed = [\"10.0.0.1:9000\"]\nk = 3\n[deadlines]\ngroup_timeout_ms = 9\n").unwrap();
        let path = file.to_str().unwrap();
        let a = settle(&["--config", path, "--k", "4"]);
        assert_eq!(a.k, 4, "the flag given beats the file");
        assert_eq!(a.group_timeout_ms, 9, "the file beats the default");
        assert_eq!(a.decode_grace_ms, None, "neither: the default (the straggler threshold)");
        assert_eq!(a.deployed, vec!["10.0.0.1:9000".to_string()]);
        // A flag given with its default value still beats the file.
        assert_eq!(settle(&["--config", path, "--k", "2"]).k, 2);
        assert_eq!(settle(&["--config", path]).k, 3);
        // TLS keys of [server], under the same precedence.
        std::fs::write(
            &file,
            "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ninstance_tls_ca = \"ca.pem\"\n[model]\ndeployed = [\"10.0.0.1:9000\"]\n",
        )
        .unwrap();
        let a = settle(&["--config", path, "--tls-key", "other.pem"]);
        assert_eq!(
            (a.tls.tls_cert.as_deref(), a.tls.tls_key.as_deref()),
            (Some(std::path::Path::new("c.pem")), Some(std::path::Path::new("other.pem")))
        );
        assert_eq!(a.instance_tls_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        // A model's own fleet credentials beat [server]'s; a flag beats both.
        std::fs::write(
            &file,
            "[server]\ninstance_tls_ca = \"ca.pem\"\ninstance_auth_token_file = \"t\"\n[model]\ndeployed = [\"10.0.0.1:9000\"]\ninstance_tls_ca = \"fleet-ca.pem\"\n",
        )
        .unwrap();
        let a = settle(&["--config", path, "--instance-auth-token-file", "u"]);
        assert_eq!(a.instance_tls_ca.as_deref(), Some(std::path::Path::new("fleet-ca.pem")));
        assert_eq!(a.instance_auth_token_file.as_deref(), Some(std::path::Path::new("u")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
