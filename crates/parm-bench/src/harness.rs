//! One benchmark run: start a loopback cluster for a setup, put the coded (or baseline)
//! frontend in front of it, inject faults, send open-loop load, tear everything down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use parm_codes::encoder_for_shape;
use parm_serve::coded::{Code, Frontend, FrontendConfig, OutputChecks, ParityInstances};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::client::InstanceClient;
use parm_serve::upstream::redundancy::Redundancy;
use serde::Serialize;

use crate::chaos::{Chaos, Target};
use crate::client::{Placement, run_open_loop_in_child};
use crate::cluster::{Instance, InstanceSpec, start_instances};
use crate::network::{CLIENT, FRONTEND, Network, NetworkSpec};
use crate::scenario::{Fault, Mode};
use crate::{LoadSpec, Query, RunReport, run_open_loop};

/// Name deployed-model instances serve under.
pub const DEPLOYED: &str = "deployed";

/// The weights a run may need: the deployed model and one parity model per k.
#[derive(Debug, Clone)]
pub struct Models {
    pub deployed: PathBuf,
    pub parity: BTreeMap<usize, PathBuf>,
    /// What the parity models are: ParM's learned parity models, or collage models.
    pub code: ParityCode,
    /// For `parm-kK-rR` modes with R >= 2: the R parity models of the r-parity linear code,
    /// by (k, r), parity 0 first.
    pub linear: BTreeMap<(usize, usize), Vec<PathBuf>>,
    /// For `cheap-backup-kK` modes: the cheap backup model for k (a small deployed model).
    pub backup: BTreeMap<usize, PathBuf>,
}

/// The code of a run's parity models ([`Models::code`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParityCode {
    /// ParM's addition encoder and parity model (SOSP 2019 §3): Fp(X1 + .. + Xk) ~= sum F(Xj),
    /// decoded by subtraction.
    #[default]
    Addition,
    /// Collage (Narra et al., "Collage Inference", arXiv 1904.12222): the concatenation
    /// encoder tiles the k queries, downsampled, into one input; a per-query (cell-wise)
    /// model answers each cell, and a missing prediction is its cell's answer.
    Collage,
}

impl ParityCode {
    /// The name in model files and flags: `addition` or `collage`.
    pub fn name(self) -> &'static str {
        match self {
            ParityCode::Addition => "addition",
            ParityCode::Collage => "collage",
        }
    }

    /// The encoder that builds its parity queries (`parm_codes` names).
    pub fn encoder(self) -> &'static str {
        match self {
            ParityCode::Addition => "addition",
            ParityCode::Collage => "concatenation",
        }
    }
}

/// Everything that defines one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub mode: Mode,
    /// N deployed instances of the baseline setup.
    pub instances: usize,
    pub rate_qps: f64,
    pub seed: u64,
    pub warmup: usize,
    /// Faults, instance faults addressed to machines: deployed instances 0..D, then parity
    /// instances D..D+P ([`crate::scenario::Scenario::trial_faults`]).
    pub faults: Vec<Fault>,
    /// `parm worker --fault` string per machine, numbered as in `faults` (missing: none).
    pub worker_faults: Vec<String>,
    pub group_timeout: Duration,
    /// `None`: the straggler threshold (`parm serve --decode-grace-ms`).
    pub decode_grace: Option<Duration>,
    /// Hedged mode: the backup goes after this percentile of recent latencies (95: The Tail
    /// at Scale's choice).
    pub hedge_percentile: f64,
    /// Straggler threshold and parity dispatch (parm modes).
    pub straggler: parm_serve::coded::policy::StragglerPolicy,
    /// Name clients use for the model.
    pub model_name: String,
    pub progress: bool,
    /// Emulated hosts and links ([`crate::network`]); `None`: every process on loopback.
    pub network: Option<NetworkSpec>,
    /// Frontend replicas (>= 1), each with its own coding groups; the load generator sends
    /// them queries in turn.
    pub frontends: usize,
    /// The benchmark process on one CPU, the instances on the others ([`crate::cpus`]).
    pub pin: bool,
    /// The load generator as a `parm loadgen` process of its own ([`crate::client`]) on the
    /// client's host (with `pin`, on a CPU of its own), not a runtime of this process.
    pub client_process: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub mode: String,
    pub k: usize,
    /// Parity models per coding group (parm; 1 otherwise).
    pub r: usize,
    /// [`Mode::code`]: `parity`, `parity-checked`, or None for the baselines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub rate_qps: f64,
    pub seed: u64,
    /// Extra instances over N, fraction of N.
    pub extra_resources: f64,
    /// Extra requests over one per query (replication and hedging copies, parity queries),
    /// fraction of queries.
    pub extra_requests: f64,
    /// Emulated hosts the run spread over (1: everything on this host's loopback).
    pub hosts: usize,
    /// What carried the traffic between hosts, with its delay (`loopback` on one host).
    pub link: String,
    /// Frontend replicas the load was spread over.
    pub frontends: usize,
    /// CPU pinning ([`crate::cpus::Pinning::name`]); `shared` when every process could run
    /// on every CPU.
    pub cpus: String,
    /// Fraction (0 to 1) of the machine's CPU time the hypervisor took while the load ran
    /// ([`crate::steal`]); `None` where it cannot be read.
    pub cpu_stolen: Option<f64>,
    pub report: RunReport,
}

/// Parity model name for k under `code`: `parity-k{K}-addition` or `parity-k{K}-collage`.
pub fn parity_name(k: usize, code: ParityCode) -> String {
    format!("parity-k{k}-{}", code.name())
}

/// The model name of the cheap backup model sized for k: `backup-k{K}`.
pub fn backup_name(k: usize) -> String {
    format!("backup-k{k}")
}

/// The model name of parity `l` of the r-parity linear code for k: `parity-k{K}-linear-r{R}-p{L}`.
pub fn linear_name(k: usize, r: usize, l: usize) -> String {
    format!("parity-k{k}-linear-r{r}-p{l}")
}

/// Runs one setup end to end with the `parm` binary at `exe`.
pub async fn run_once(exe: &Path, models: &Models, spec: &RunSpec, queries: &[Query]) -> anyhow::Result<RunResult> {
    Ok(run_probed(exe, models, spec, queries, None).await?.0)
}

/// Direct instance RPCs sent beside a run's load, to measure what the simulator needs
/// (`crate::sim::Base`) under the same host load and faults: the latency of one RPC as the
/// frontend sees it (gRPC client in the same process and runtime, timed from the call to the
/// answer), of two RPCs sent at once to neighbouring instances (as replication sends them),
/// and how late a timer of the runtime fires when it is armed as the frontend arms its own
/// (right after an I/O event: here a 1 ms sleep started when a pair's answers arrive).
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// Poisson rate of probe pairs, pairs/s (each adds two RPCs to the instances' load).
    pub rate_qps: f64,
    pub seed: u64,
}

/// What a [`Probe`] measured, all in ms.
#[derive(Debug, Clone, Default)]
pub struct ProbeData {
    /// Latencies of the two RPCs of each pair (both answered; pairs still out when the load
    /// ends are dropped).
    pub pairs: Vec<(f64, f64)>,
    /// How much later than asked a 1 ms [`parm_serve::timer::sleep`] (the frontend's straggler
    /// timers) armed on a pair's answers returned.
    pub timer_late: Vec<f64>,
}

/// [`run_once`], plus what `probe` measured meanwhile (empty without a probe).
pub async fn run_probed(
    exe: &Path,
    models: &Models,
    spec: &RunSpec,
    queries: &[Query],
    probe: Option<Probe>,
) -> anyhow::Result<(RunResult, ProbeData)> {
    let (deployed, parity) = spec.mode.instances(spec.instances);
    let k = spec.mode.k();
    let fault = |m: usize| spec.worker_faults.get(m).cloned().unwrap_or_default();
    let mut specs: Vec<InstanceSpec> = (0..deployed).map(|m| InstanceSpec::new(&models.deployed, DEPLOYED, &fault(m))).collect();
    // Parity instances: parity index 0's, then index 1's, ... (N/K each).
    let files: Vec<(PathBuf, String)> = match spec.mode {
        Mode::Parm { r: r @ 2.., .. } => {
            let paths = models.linear.get(&(k, r)).with_context(|| format!("no parity models for k={k}, r={r}"))?;
            paths.iter().enumerate().map(|(l, p)| (p.clone(), linear_name(k, r, l))).collect()
        }
        Mode::CheapBackup { k } => {
            let path = models.backup.get(&k).with_context(|| format!("no cheap backup model for k={k}"))?;
            vec![(path.clone(), backup_name(k))]
        }
        _ if parity > 0 => {
            let path = models.parity.get(&k).with_context(|| format!("no parity model for k={k}"))?;
            vec![(path.clone(), parity_name(k, models.code))]
        }
        _ => Vec::new(),
    };
    let per_index = parity / files.len().max(1);
    specs.extend((0..parity).map(|j| InstanceSpec::new(&files[j / per_index].0, &files[j / per_index].1, &fault(deployed + j))));
    let network = spec.network.map(Network::create).transpose()?.map(Arc::new);
    if let Some(net) = &network {
        for (m, s) in specs.iter_mut().enumerate() {
            s.netns = Some(net.netns(net.host_of(m)));
        }
    }
    let pinning = spec.pin.then(|| crate::cpus::Pinning::split(spec.client_process)).transpose()?;
    for s in &mut specs {
        s.cpus = pinning.as_ref().map(|p| p.instances.clone());
    }
    let client = spec
        .client_process
        .then(|| Placement { netns: network.as_ref().map(|n| n.netns(CLIENT)), cpus: pinning.as_ref().and_then(|p| p.client.clone()) });
    let mut instances = start_instances(exe, specs).await?;
    let layout = Layout { network: network.clone(), client };
    let result = drive(exe, spec, models.code, &instances, layout, queries, probe).await;
    for i in &mut instances {
        i.kill().await;
    }
    let cpus = pinning.as_ref().map_or_else(|| "shared".to_string(), |p| p.name.clone());
    result.map(|(r, p)| (RunResult { cpus, ..r }, p))
}

/// Runs `f` on `host`'s runtime when the run has an emulated network (so that its sockets
/// belong to that host), else on the current runtime.
async fn on<F>(network: Option<&Arc<Network>>, host: usize, f: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = network.map_or_else(tokio::runtime::Handle::current, |n| n.handle(host));
    Ok(handle.spawn(f).await?)
}

/// The frontend of a run, serving HTTP at `base_url` until `stop` is sent.
struct Served {
    frontend: Frontend,
    base_url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Where a run's roles are: its emulated hosts, and the load generator process's place (`None`:
/// the load generator runs in this process).
struct Layout {
    network: Option<Arc<Network>>,
    client: Option<Placement>,
}

async fn drive(
    exe: &Path,
    spec: &RunSpec,
    code: ParityCode,
    instances: &[Instance],
    Layout { network, client }: Layout,
    queries: &[Query],
    probe: Option<Probe>,
) -> anyhow::Result<(RunResult, ProbeData)> {
    let k = spec.mode.k();
    // Where the frontend calls each instance: through its host's proxy, or its own address.
    let mut public = Vec::new();
    for (m, i) in instances.iter().enumerate() {
        public.push(match &network {
            Some(net) => net.expose(net.host_of(m), &i.addr).await?,
            None => i.addr.clone(),
        });
    }
    let addrs = |want: &str| instances.iter().zip(&public).filter(|(i, _)| i.spec.name == want).map(|(_, a)| a.clone()).collect::<Vec<_>>();
    let names: Vec<(String, String)> = instances.iter().zip(&public).map(|(i, a)| (a.clone(), i.spec.name.clone())).collect();
    let remote = on(network.as_ref(), FRONTEND, async move {
        for (addr, name) in &names {
            InstanceClient::connect_lazy(addr)?.wait_ready(name, Duration::from_secs(30)).await?;
        }
        anyhow::Ok(InstanceClient::connect_lazy(&names[0].0)?.model_metadata(DEPLOYED, Duration::from_secs(10)).await?)
    })
    .await??;
    let model = ModelSpec { name: spec.model_name.clone(), ..remote };
    let cfg = frontend_config(spec, code, &model, &addrs)?;
    // Frontend replicas, each reached through its host's proxy when the run has hosts.
    let mut served = Vec::new();
    let mut base_urls = Vec::new();
    for f in 0..spec.frontends.max(1) {
        let host = network.as_ref().map_or(FRONTEND, |n| n.frontend_host(f));
        let s = on(network.as_ref(), host, serve(cfg.clone())).await??;
        base_urls.push(match &network {
            Some(net) => format!("http://{}", net.expose(host, s.base_url.trim_start_matches("http://")).await?),
            None => s.base_url.clone(),
        });
        served.push(s);
    }
    // Machines in start order: deployed instances, then parity instances.
    let targets: Vec<Target> = instances
        .iter()
        .enumerate()
        .map(|(m, i)| Target {
            pid: i.pid(),
            addr: i.addr.clone(),
            spec: i.spec.clone(),
            host: network.as_ref().map(|n| (n.clone(), n.host_of(m))),
        })
        .collect();
    let chaos = Chaos::start(&spec.faults, &targets, exe.to_path_buf());
    let load = LoadSpec {
        base_url: base_urls[0].clone(),
        replicas: base_urls[1..].to_vec(),
        model: model.name.clone(),
        input_name: model.input_name.clone(),
        rate_qps: spec.rate_qps,
        seed: spec.seed,
        warmup: spec.warmup,
        request_timeout: Duration::from_secs(30),
        progress: spec.progress,
    };
    let probes = {
        let frontend_host = network.as_ref().map(|n| n.handle(FRONTEND));
        let _on_it = frontend_host.as_ref().map(|h| h.enter());
        probe.map(|p| ProbeRun::start(p, &addrs(DEPLOYED), &queries[0]))
    };
    let stolen = crate::steal::StealMeter::start();
    let report = match client {
        Some(place) => run_open_loop_in_child(exe, &place, &load, queries).await,
        None => {
            let owned = queries.to_vec();
            on(network.as_ref(), CLIENT, async move { run_open_loop(&load, &owned).await }).await.and_then(|r| r)
        }
    };
    let cpu_stolen = stolen.fraction();
    let probed = match probes {
        Some(p) => p.stop().await,
        None => ProbeData::default(),
    };
    chaos.stop().await;
    let mut extra = 0;
    for s in served {
        let _ = s.stop.send(());
        let _ = s.server.await;
        let stats = s.frontend.stats();
        extra += stats.backups.load(Ordering::Relaxed) + stats.parity_queries.load(Ordering::Relaxed);
    }
    let report = report?;
    let result = RunResult {
        mode: spec.mode.family().to_string(),
        k,
        r: match spec.mode {
            Mode::Parm { r, .. } => r,
            _ => 1,
        },
        code: spec.mode.code(),
        rate_qps: spec.rate_qps,
        seed: spec.seed,
        extra_resources: spec.mode.extra_resources(spec.instances),
        extra_requests: extra as f64 / queries.len().max(1) as f64,
        hosts: network.as_ref().map_or(1, |n| n.hosts()),
        link: network.as_ref().map_or_else(|| "loopback".to_string(), |n| n.link_name()),
        cpus: String::new(),
        frontends: spec.frontends.max(1),
        cpu_stolen,
        report,
    };
    Ok((result, probed))
}

/// The coded (or baseline) frontend's configuration for `spec`, over the instances that
/// `addrs` lists by model name.
fn frontend_config(
    spec: &RunSpec,
    code: ParityCode,
    model: &ModelSpec,
    addrs: &dyn Fn(&str) -> Vec<String>,
) -> anyhow::Result<FrontendConfig> {
    let k = spec.mode.k();
    let redundancy = match spec.mode {
        Mode::Replication => Redundancy::Replication { copies: 2 },
        Mode::Hedged { .. } => Redundancy::hedged_at(spec.hedge_percentile),
        _ => Redundancy::None,
    };
    let shape: Vec<usize> = model.input_shape.iter().map(|&d| d.max(1) as usize).collect();
    let (parity_addrs, parity_model, parity_code) = match spec.mode {
        Mode::Parm { r: 1, .. } => (addrs(&parity_name(k, code)), parity_name(k, code), Code::Parity),
        Mode::Parm { r, .. } => {
            let further =
                (1..r).map(|l| ParityInstances { instances: addrs(&linear_name(k, r, l)), model: linear_name(k, r, l) }).collect();
            (addrs(&linear_name(k, r, 0)), linear_name(k, r, 0), Code::Parities { further })
        }
        // Groups of one: the redundant query is the query itself, run by the backup model.
        Mode::CheapBackup { k } => (addrs(&backup_name(k)), backup_name(k), Code::Parity),
        _ => (Vec::new(), parity_name(k, code), Code::Parity),
    };
    let encoder = if matches!(spec.mode, Mode::Parm { r: 2.., .. } | Mode::CheapBackup { .. }) { "addition" } else { code.encoder() };
    let group = if matches!(spec.mode, Mode::CheapBackup { .. }) { 1 } else { k.max(1) };
    Ok(FrontendConfig {
        deployed_model: DEPLOYED.into(),
        parity: parity_addrs,
        parity_model,
        encoder: Arc::from(encoder_for_shape(encoder, group, &shape)?),
        code: parity_code,
        group_timeout: spec.group_timeout,
        instance_timeout: Duration::from_secs(5),
        decode_grace: spec.decode_grace,
        straggler: spec.straggler.clone(),
        redundancy,
        checks: matches!(spec.mode, Mode::Parm { checked: true, .. }).then(OutputChecks::default),
        ..FrontendConfig::new(model.clone(), addrs(DEPLOYED))
    })
}

/// Starts the frontend for `cfg`, warms it up and serves it over HTTP on a free loopback port
/// of the current runtime's host.
async fn serve(cfg: FrontendConfig) -> anyhow::Result<Served> {
    let frontend = Frontend::start(cfg)?;
    frontend.warm_up().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(parm_serve::server::http::serve(listener, frontend.clone(), async {
        let _ = stopped.await;
    }));
    Ok(Served { frontend, base_url, stop, server })
}

/// A running [`Probe`]: one dispatcher task, one task per pair.
struct ProbeRun {
    dispatcher: tokio::task::JoinHandle<()>,
    data: Arc<std::sync::Mutex<ProbeData>>,
}

impl ProbeRun {
    fn start(p: Probe, addrs: &[String], query: &Query) -> Self {
        let clients: Vec<InstanceClient> = addrs.iter().filter_map(|a| InstanceClient::connect_lazy(a).ok()).collect();
        let data = Arc::new(std::sync::Mutex::new(ProbeData::default()));
        let (out, query) = (data.clone(), query.clone());
        let dispatcher = tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(p.seed);
            let gap = rand_distr::Exp::new(p.rate_qps).expect("positive probe rate");
            for i in 0usize.. {
                tokio::time::sleep(Duration::from_secs_f64(rand_distr::Distribution::sample(&gap, &mut rng))).await;
                let pair = [clients[i % clients.len()].clone(), clients[(i + 1) % clients.len()].clone()];
                tokio::spawn(probe_pair(pair, query.clone(), out.clone()));
            }
        });
        Self { dispatcher, data }
    }

    async fn stop(self) -> ProbeData {
        self.dispatcher.abort();
        let _ = self.dispatcher.await;
        std::mem::take(&mut *self.data.lock().expect("probe lock"))
    }
}

/// Two RPCs at once; records both latencies (ms) if both answered, then how late a 1 ms timer
/// armed right then fires.
async fn probe_pair(clients: [InstanceClient; 2], query: Query, out: Arc<std::sync::Mutex<ProbeData>>) {
    let one = |c: InstanceClient| {
        let query = &query;
        async move {
            let start = tokio::time::Instant::now();
            c.infer(DEPLOYED, &query.input, &query.shape, Duration::from_secs(5)).await.ok().map(|_| start.elapsed().as_secs_f64() * 1e3)
        }
    };
    let [a, b] = clients;
    if let (Some(x), Some(y)) = futures::join!(one(a), one(b)) {
        out.lock().expect("probe lock").pairs.push((x, y));
        let (armed, want) = (tokio::time::Instant::now(), Duration::from_millis(1));
        parm_serve::timer::sleep(want).await;
        let late = armed.elapsed().saturating_sub(want).as_secs_f64() * 1e3;
        out.lock().expect("probe lock").timer_late.push(late);
    }
}
