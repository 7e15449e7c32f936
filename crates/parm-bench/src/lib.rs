//! `parm-bench`: an open-loop load generator for Open Inference Protocol (KServe v2 / Triton)
//! HTTP servers, used to measure parm against its baselines.
//!
//! It follows the load generation norms of `docs/PROTOCOL.md`:
//!
//! * **Open loop**: arrival times form a Poisson process at a fixed rate (queries per second,
//!   qps), computed up front from a seeded RNG, and every query is sent at its intended time
//!   whether or not earlier ones have been answered.
//! * **No coordinated omission**: latency is measured from the *intended* send time, not the
//!   time the request actually left, as in wrk2 (Gil Tene) and the HdrHistogram documentation.
//!   A server (or a client) that stalls therefore shows the stall in the recorded latency of
//!   every query that was due during it.
//! * **Warm-up discarded**: the first `warmup` queries are sent (on the same schedule) but
//!   their latency is not recorded.
//! * Percentiles p50 / p90 / p99 / p99.9 / max / mean (milliseconds) and throughput (answered
//!   queries per second) are reported, as Triton's `perf_analyzer` does.
//!
//! Run several trials (different seeds) and report their spread; one run is one trial.
//! [`bootstrap::percentile_ci`] gives percentiles pooled over trials a confidence interval.
//!
//! ```no_run
//! # async fn demo(queries: Vec<parm_bench::Query>) -> anyhow::Result<()> {
//! use parm_bench::{LoadSpec, run_open_loop, format_table};
//! let spec = LoadSpec {
//!     base_url: "http://127.0.0.1:8000".into(),
//!     replicas: Vec::new(),
//!     model: "mnist".into(),
//!     input_name: "input".into(),
//!     rate_qps: 200.0,
//!     seed: 1,
//!     warmup: 100,
//!     request_timeout: std::time::Duration::from_secs(5),
//!     progress: true,
//! };
//! let report = run_open_loop(&spec, &queries).await?;
//! println!("{}", format_table(&[("parm".to_string(), report)]));
//! # Ok(()) }
//! ```

pub mod bootstrap;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod cpus;
pub mod grpc_call;
pub mod harness;
pub mod loadgen;
pub mod netns;
pub mod network;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod steal;

pub use loadgen::{LoadSpec, Query, poisson_schedule, run_open_loop};
pub use report::{Percentiles, RunReport, format_table, percentiles};
