//! Request statistics of the frontend: Triton's model statistics (`GET /v2/models/{m}/stats`,
//! gRPC `ModelStatistics`) and Prometheus metrics (`GET /metrics`).
//!
//! Sources: Triton's metrics documentation (names `nv_inference_*`, labels `model`, `version`;
//! durations are cumulative microsecond counters; failures carry `reason` = `REJECTED` for
//! requests refused as invalid, `CANCELED` for deadlines that expired, `BACKEND` for instances
//! that failed) and `grpc_service.proto` (`ModelStatistics`: counts and nanosecond totals).
//!
//! What the durations mean in parm, per request: `request` = accept to answer; `queue` =
//! accept to dispatch of the request's queries into coding groups (parsing, decoding the
//! tensor); `compute_infer` = dispatch to the last query's answer (instance RPCs and decoding).
//! `exec_count` counts model executions requested from instances: one per query, one per
//! parity query, one per backup copy (replication / hedging).
//!
//! Every model behind a server has its own statistics; its metrics carry its `model` and
//! `version` labels. The values live in atomics; the Prometheus registry (crate
//! `metrics-exporter-prometheus`, one registry per server, shared by its models, rather than a
//! process-global recorder, so several servers can run in one process) is refreshed from them
//! at scrape time, except the answer-latency histogram, which is recorded as answers are
//! served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::coded::Stats;
use crate::upstream::health::InstanceGauge;

/// Why a request failed (Triton's `reason` label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Invalid request (4xx).
    Rejected,
    /// Deadline expired (504 / DEADLINE_EXCEEDED).
    Canceled,
    /// No prediction could be produced (503) or an internal failure (500).
    Backend,
}

impl FailReason {
    fn label(self) -> &'static str {
        match self {
            Self::Rejected => "REJECTED",
            Self::Canceled => "CANCELED",
            Self::Backend => "BACKEND",
        }
    }
}

/// A count and a cumulative duration (ns), as in Triton's `StatisticDuration`.
#[derive(Debug, Default)]
pub struct StatDuration {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

impl StatDuration {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// `(count, ns)`.
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// Request statistics of one served model.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub success: StatDuration,
    pub fail: StatDuration,
    pub fail_rejected: AtomicU64,
    pub fail_canceled: AtomicU64,
    pub fail_backend: AtomicU64,
    pub queue: StatDuration,
    pub compute_infer: StatDuration,
    /// Queries (rows) answered successfully.
    pub inference_count: AtomicU64,
    /// Requests accepted and not answered yet.
    pub pending: AtomicU64,
    /// Wall-clock time of the last inference request, ms since the Unix epoch.
    pub last_inference_ms: AtomicU64,
}

impl RequestStats {
    /// Counts a newly accepted request.
    pub fn accepted(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms.store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records an answered request: `total` from accept to answer, `queue` accept to
    /// dispatch, `compute` dispatch to answer, `rows` queries answered.
    pub fn succeeded(&self, total: Duration, queue: Duration, compute: Duration, rows: usize) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.success.add(total);
        self.queue.add(queue);
        self.compute_infer.add(compute);
        self.inference_count.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Records a failed request (`total` from accept to the error).
    pub fn failed(&self, total: Duration, reason: FailReason) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.fail.add(total);
        let c = match reason {
            FailReason::Rejected => &self.fail_rejected,
            FailReason::Canceled => &self.fail_canceled,
            FailReason::Backend => &self.fail_backend,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Model executions requested from instances (see the module docs).
    pub fn exec_count(stats: &Stats) -> u64 {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        l(&stats.queries) + l(&stats.parity_queries) + l(&stats.backups)
    }
}

/// The Prometheus side: a private registry shared by every model of one server, and one
/// model's labels (`model`, `version`). Cheap to clone.
#[derive(Clone)]
pub struct Prometheus {
    recorder: Arc<PrometheusRecorder>,
    model: String,
    version: String,
}

/// Buckets of the answer-latency histogram (seconds): 100 us to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 10.0];

/// `# HELP` text of every metric.
/// Buckets of the frontend's own time per request (seconds): 2 us to 10 ms.
const FRONTEND_TIME_BUCKETS: [f64; 16] =
    [2e-6, 5e-6, 1e-5, 1.5e-5, 2e-5, 2.5e-5, 3e-5, 4e-5, 5e-5, 7.5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 1e-2];

const HELP: [(&str, &str); 26] = [
    ("nv_inference_request_success", "Number of successful inference requests"),
    ("nv_inference_request_failure", "Number of failed inference requests, by reason (REJECTED, CANCELED, BACKEND)"),
    ("nv_inference_count", "Number of inferences (queries, batch rows) answered"),
    ("nv_inference_exec_count", "Model executions requested from instances (queries, parity queries, backups)"),
    ("nv_inference_request_duration_us", "Cumulative request duration, accept to answer (us)"),
    ("nv_inference_queue_duration_us", "Cumulative time from accept to dispatch into coding groups (us)"),
    ("nv_inference_compute_infer_duration_us", "Cumulative time from dispatch to the last answer (us)"),
    ("nv_inference_pending_request_count", "Requests accepted and not yet answered"),
    ("parm_queries_total", "Units (queries, or batches coded as one block) sent into coding groups"),
    ("parm_query_rows_total", "Queries (rows) in the units sent into coding groups"),
    ("parm_parity_queries_total", "Parity queries sent to parity instances"),
    ("parm_reconstructions_total", "Queries answered with a reconstruction by the decoder"),
    ("parm_unavailable_total", "Queries neither predicted nor reconstructable"),
    ("parm_straggler_sealed_groups_total", "Coding groups sealed before their time because a query went to a known straggler"),
    ("parm_padded_groups_total", "Coding groups whose parity query was zero-padded (partly filled, or blocks of different lengths)"),
    ("parm_unprotected_groups_total", "Coding groups closed without a parity query"),
    ("parm_backup_requests_total", "Extra copies sent by replication and hedging"),
    ("parm_answer_latency_seconds", "Latency of each answered query from dispatch, by source (original or reconstructed)"),
    (
        "parm_frontend_time_seconds",
        "The frontend's own time per answered request: accept to response encoded, less the wait for the instances",
    ),
    ("parm_instance_up", "1 if the instance answered its last ModelReady probe"),
    ("parm_output_checks_total", "Coding groups checked against their code (--check-outputs)"),
    ("parm_flagged_groups_total", "Checked coding groups whose outputs disagreed with the code"),
    ("parm_ejections_total", "Deployed instances taken out of rotation because their outputs disagreed with the code"),
    ("parm_instance_ejected", "1 while the deployed instance is out of rotation for wrong outputs"),
    ("parm_late_calls", "Instance calls still running although their queries were answered by reconstructions"),
    ("parm_cancelled_originals_total", "Instance calls dropped once their queries were answered by reconstructions"),
];

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Prometheus {
    /// A new registry, with no model labels yet (see [`Self::for_model`]).
    pub fn registry() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("parm_frontend_time_seconds".into()), &FRONTEND_TIME_BUCKETS))
            .expect("non-empty buckets")
            .build_recorder();
        for (name, help) in HELP {
            recorder.describe_counter(name.into(), None, help.into()); // HELP lines, any kind
        }
        Self { recorder: Arc::new(recorder), model: String::new(), version: String::new() }
    }

    /// The same registry, recording under the labels `model` / `version`: several models'
    /// metrics render as one text, each metric family once.
    pub fn for_model(&self, model: &str, version: &str) -> Self {
        Self { recorder: self.recorder.clone(), model: model.to_string(), version: version.to_string() }
    }

    fn key(&self, name: &'static str, extra: &[(&'static str, String)]) -> Key {
        let mut labels = vec![Label::new("model", self.model.clone()), Label::new("version", self.version.clone())];
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, extra: &[(&'static str, String)], value: u64) {
        self.recorder.register_counter(&self.key(name, extra), &META).absolute(value);
    }

    fn gauge(&self, name: &'static str, extra: &[(&'static str, String)], value: f64) {
        self.recorder.register_gauge(&self.key(name, extra), &META).set(value);
    }

    /// Records the latency of one answered query, `source` = `original` or `reconstructed`.
    pub fn answer_latency(&self, source: &'static str, latency: Duration) {
        let key = self.key("parm_answer_latency_seconds", &[("source", source.to_string())]);
        self.recorder.register_histogram(&key, &META).record(latency.as_secs_f64());
    }

    /// Records the frontend's own time for one answered request (see
    /// [`crate::server::api::Accepted::run`]).
    pub fn frontend_time(&self, own: Duration) {
        let key = self.key("parm_frontend_time_seconds", &[]);
        self.recorder.register_histogram(&key, &META).record(own.as_secs_f64());
    }

    /// Refreshes this model's counters from `req`, `coded` and `instances` (see [`Self::render`]),
    /// `ejected` the deployed instances out of rotation for wrong outputs.
    pub fn refresh(&self, req: &RequestStats, coded: &Stats, instances: &[std::sync::Arc<InstanceGauge>], ejected: &[String]) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let us = |d: &StatDuration| d.get().1 / 1000;
        self.counter("nv_inference_request_success", &[], l(&req.success.count));
        for (reason, c) in [
            (FailReason::Rejected, &req.fail_rejected),
            (FailReason::Canceled, &req.fail_canceled),
            (FailReason::Backend, &req.fail_backend),
        ] {
            self.counter("nv_inference_request_failure", &[("reason", reason.label().into())], l(c));
        }
        self.counter("nv_inference_count", &[], l(&req.inference_count));
        self.counter("nv_inference_exec_count", &[], RequestStats::exec_count(coded));
        self.counter("nv_inference_request_duration_us", &[], us(&req.success) + us(&req.fail));
        self.counter("nv_inference_queue_duration_us", &[], us(&req.queue));
        self.counter("nv_inference_compute_infer_duration_us", &[], us(&req.compute_infer));
        self.gauge("nv_inference_pending_request_count", &[], l(&req.pending) as f64);
        self.counter("parm_queries_total", &[], l(&coded.queries));
        self.counter("parm_query_rows_total", &[], l(&coded.rows));
        self.counter("parm_parity_queries_total", &[], l(&coded.parity_queries));
        self.counter("parm_reconstructions_total", &[], l(&coded.reconstructed));
        self.counter("parm_unavailable_total", &[], l(&coded.unavailable));
        self.counter("parm_padded_groups_total", &[], l(&coded.padded_groups));
        self.counter("parm_straggler_sealed_groups_total", &[], l(&coded.sealed_for_straggler));
        self.counter("parm_unprotected_groups_total", &[], l(&coded.unprotected_groups));
        self.counter("parm_backup_requests_total", &[], l(&coded.backups));
        self.counter("parm_output_checks_total", &[], l(&coded.checks));
        self.counter("parm_flagged_groups_total", &[], l(&coded.flagged));
        self.counter("parm_ejections_total", &[], l(&coded.ejections));
        self.gauge("parm_late_calls", &[], l(&coded.late_calls) as f64);
        self.counter("parm_cancelled_originals_total", &[], l(&coded.cancelled_originals));
        for i in instances {
            let up = if i.up.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
            self.gauge("parm_instance_up", &[("role", i.role.into()), ("instance", i.addr.clone())], up);
            if i.role == "deployed" {
                let out = if ejected.contains(&i.addr) { 1.0 } else { 0.0 };
                self.gauge("parm_instance_ejected", &[("instance", i.addr.clone())], out);
            }
        }
    }

    /// The text format of the whole registry (every model's metrics as last refreshed).
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}
