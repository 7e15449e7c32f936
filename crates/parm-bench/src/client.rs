//! The load generator as a process of its own (issue 17; scenario key `client_process`).
//!
//! In process, the load generator shares the benchmark process with the frontend and, across
//! emulated hosts, with every link's proxy: one scheduler, one async-io timer thread for every
//! send time, straggler timer and delayed chunk. Across 20 emulated hosts it then fell 25-50
//! ms behind its Poisson schedule at 200 queries/s (BENCHMARKS.md, "Across emulated hosts"),
//! and that lag is in every setup's latencies. Here the same [`run_open_loop`] runs in a child
//! `parm loadgen` process, started in the client host's namespace and, when the run is
//! pinned, on a CPU of its own ([`crate::cpus::Pinning`]), as a load generator on a machine
//! of its own would be.
//!
//! The trial goes to the child as two files in a fresh temporary directory: `job.json` (the
//! [`LoadSpec`], the queries' shape and labels) and `inputs.f32` (every query's input, FP32
//! little-endian, query after query). The child prints its [`RunReport`] as one JSON object on
//! stdout, the simulator's latency trace and quantiles included.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};

use crate::{LoadSpec, Query, RunReport, run_open_loop};

/// Where the load generator process runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Network namespace (the client's emulated host); `None`: this one.
    pub netns: Option<String>,
    /// CPUs, `taskset -c` syntax; `None`: any.
    pub cpus: Option<String>,
}

/// One trial as the child reads it (`job.json`).
#[derive(Serialize, Deserialize)]
struct Job {
    spec: LoadSpec,
    /// Every query's shape (batch included); all queries have it.
    shape: Vec<i64>,
    labels: Vec<Option<usize>>,
}

/// What the child prints: the report and the fields it does not serialise.
#[derive(Serialize, Deserialize)]
struct Answer {
    report: RunReport,
    latency_quantiles_ms: Vec<f64>,
    latency_trace_ms: Vec<(f64, f64)>,
}

/// Runs one open-loop trial ([`run_open_loop`]) in a `parm loadgen` child process (the `parm`
/// binary at `exe`) placed at `place`, and returns its report.
///
/// Errors: queries of different shapes, the job cannot be written, the child cannot start,
/// fails (its stderr is inherited), or prints no report.
pub async fn run_open_loop_in_child(exe: &Path, place: &Placement, spec: &LoadSpec, queries: &[Query]) -> anyhow::Result<RunReport> {
    let dir = JobDir::write(spec, queries)?;
    let mut cmd = crate::cluster::placed(exe, place.netns.as_deref(), place.cpus.as_deref());
    cmd.arg("loadgen").arg("--job").arg(&dir.0);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let out = cmd.output().await.with_context(|| format!("cannot start {} loadgen", exe.display()))?;
    ensure!(out.status.success(), "the load generator process failed ({})", out.status);
    let answer: Answer = serde_json::from_slice(&out.stdout).context("the load generator process printed no report")?;
    Ok(RunReport { latency_quantiles_ms: answer.latency_quantiles_ms, latency_trace_ms: answer.latency_trace_ms, ..answer.report })
}

/// The child's side (`parm loadgen --job DIR`): reads the trial from `dir`, runs it, and
/// returns the report as the parent reads it (one line of JSON).
///
/// Errors: missing or malformed files, an input file whose size is not queries x shape, or
/// [`run_open_loop`]'s.
pub async fn run_job(dir: &Path) -> anyhow::Result<String> {
    let job: Job = serde_json::from_slice(&std::fs::read(dir.join("job.json")).context("job.json")?).context("job.json")?;
    let bytes = std::fs::read(dir.join("inputs.f32")).context("inputs.f32")?;
    let dim = job.shape.iter().product::<i64>().max(0) as usize;
    ensure!(
        dim > 0 && bytes.len() == job.labels.len() * dim * 4,
        "inputs.f32 has {} bytes, not {} queries x {dim} FP32 values",
        bytes.len(),
        job.labels.len()
    );
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let queries: Vec<Query> = values
        .chunks_exact(dim)
        .zip(&job.labels)
        .map(|(input, &label)| Query { input: input.to_vec(), shape: job.shape.clone(), label })
        .collect();
    let mut report = run_open_loop(&job.spec, &queries).await?;
    let answer = Answer {
        latency_quantiles_ms: std::mem::take(&mut report.latency_quantiles_ms),
        latency_trace_ms: std::mem::take(&mut report.latency_trace_ms),
        report,
    };
    Ok(serde_json::to_string(&answer)?)
}

/// A trial's files, removed when dropped.
struct JobDir(PathBuf);

impl JobDir {
    fn write(spec: &LoadSpec, queries: &[Query]) -> anyhow::Result<JobDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let shape = queries.first().map(|q| q.shape.clone()).context("no queries to send")?;
        let dim = shape.iter().product::<i64>();
        ensure!(
            queries.iter().all(|q| q.shape == shape && q.input.len() as i64 == dim),
            "a load generator process needs queries of one shape, each with as many values"
        );
        let path = std::env::temp_dir().join(format!("parm-loadgen-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = JobDir(path);
        let job = Job { spec: spec.clone(), shape, labels: queries.iter().map(|q| q.label).collect() };
        std::fs::write(dir.0.join("job.json"), serde_json::to_vec(&job)?)?;
        let bytes: Vec<u8> = queries.iter().flat_map(|q| q.input.iter().flat_map(|v| v.to_le_bytes())).collect();
        std::fs::write(dir.0.join("inputs.f32"), bytes)?;
        Ok(dir)
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
