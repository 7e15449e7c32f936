//! What the HTTP and gRPC client interfaces share: the served models by name (the model
//! repository at run time, [`Serving`]), one inference call with its deadline and statistics,
//! Triton's repository index, model config and statistics documents, and the error kinds with
//! their HTTP and gRPC codes.
//!
//! Error mapping (Triton): invalid argument -> 400 / INVALID_ARGUMENT, unknown model -> 404 /
//! NOT_FOUND, no prediction -> 503 / UNAVAILABLE, deadline expired -> 504 / DEADLINE_EXCEEDED,
//! internal -> 500 / INTERNAL.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::coded::{Frontend, FrontendError, Prediction};
use crate::server::error::{ApiError, ErrorKind};
use crate::server::metrics::{FailReason, Prometheus, RequestStats};
use crate::upstream::health::Health;

/// Most queries (rows) one request may carry.
pub const MAX_BATCH_SIZE: usize = 1024;

/// One served model: its frontend (own coding groups, coded-path statistics and instance
/// pools), its request statistics, its metrics labels and its instances' health.
pub struct ServedModel {
    pub frontend: Frontend,
    pub stats: RequestStats,
    /// This model's view of the server's Prometheus registry (labels `model`, `version`).
    pub prometheus: Prometheus,
    pub health: Health,
    /// The model config's `[preprocess]` table: shown in model metadata and configuration.
    pub preprocess: Option<toml::Table>,
    /// Applied to every query before it is coded (see [`Transform`]).
    pub transform: Option<Transform>,
}

/// A per-query transform applied to each row of a request before it joins a coding group:
/// the model's preprocessing (scale, mean, std; the same function `parm train-parity` and
/// `parm eval` apply to files), so that clients send raw values. `Err(message)` answers the
/// request with 400. Input and output are one query's values in the model's input shape.
pub type Transform = Arc<dyn Fn(&[f32]) -> Result<Vec<f32>, String> + Send + Sync>;

/// The models behind the client interfaces, with the server-wide admission bound and limits;
/// shared by both interfaces. Serving one model (`parm serve --deployed ...`) is a repository
/// of one.
///
/// A model may be named before it can be served ([`Self::start_pending`]): until
/// [`Self::install`] gives it its frontend (once its deployed instances answered), it is
/// listed as unavailable with what it waits for, its calls get 503 / UNAVAILABLE, and the
/// server is not ready. So the server listens, and answers health probes, before any instance
/// does (a Kubernetes frontend that starts before its workers is not restarted in a loop).
pub struct Serving {
    /// Every model by the name clients use (sorted, so listings are stable).
    models: BTreeMap<String, Slot>,
    /// The Prometheus registry every model's metrics go to.
    registry: Prometheus,
    /// The bound on queries in flight, over every model (see [`crate::server::admission`]).
    pub admission: crate::server::admission::Admission,
    /// Authentication and request limits of the client interfaces (see [`crate::oip::security`]).
    pub options: crate::oip::security::ServeOptions,
}

/// Shared handle.
pub type Shared = Arc<Serving>;

/// One named model: served once installed, else what it waits for.
struct Slot {
    served: OnceLock<ServedModel>,
    waiting: String,
}

/// How the client-facing server runs its frontends.
#[derive(Default)]
pub struct ServingOptions {
    /// The bound on queries in flight (see [`crate::server::admission`]).
    pub admission: crate::server::admission::Admission,
    /// Authentication and request limits (see [`crate::oip::security`]).
    pub limits: crate::oip::security::ServeOptions,
}

/// A model to serve, as [`Serving::start_models`] takes it.
pub struct Model {
    pub frontend: Frontend,
    /// `[preprocess]` settings of its config (see [`ServedModel::preprocess`]).
    pub preprocess: Option<toml::Table>,
    /// See [`ServedModel::transform`].
    pub transform: Option<Transform>,
}

impl From<Frontend> for Model {
    fn from(frontend: Frontend) -> Self {
        Self { frontend, preprocess: None, transform: None }
    }
}

/// One accepted inference request, from accept time on.
pub struct Accepted<'a> {
    serving: &'a Serving,
    model: &'a ServedModel,
    at: Instant,
    done: bool,
}

impl Drop for Accepted<'_> {
    /// A request dropped unanswered (client went away) still leaves the pending gauge.
    fn drop(&mut self) {
        if !self.done {
            self.model.stats.failed(self.at.elapsed(), FailReason::Canceled);
        }
    }
}

impl Accepted<'_> {
    /// Records a failure found before dispatch (bad request) and returns it.
    pub fn reject(mut self, e: ApiError) -> ApiError {
        self.done = true;
        self.model.stats.failed(self.at.elapsed(), e.fail_reason());
        e
    }

    /// Predicts every row, within `timeout` of the accept time if given, and encodes the
    /// answers with `respond`; records statistics, and the frontend's own time for the request
    /// (accept to `respond` done, less the longest [`Prediction::waited`]) in the
    /// `parm_frontend_time_seconds` histogram.
    ///
    /// Errors: 400 for a bad row count, 503 when a row got no prediction, 504 when the
    /// deadline passed first (the outstanding queries are then dropped, see
    /// [`Frontend::predict`]).
    pub async fn run<T>(
        self,
        rows: Vec<Vec<f32>>,
        timeout: Option<Duration>,
        respond: impl FnOnce(&[Prediction]) -> T,
    ) -> Result<T, ApiError> {
        let (at, model) = (self.at, self.model);
        let preds = self.predict(rows, timeout).await?;
        let out = respond(&preds);
        let waited = preds.iter().map(|p| p.waited).max().unwrap_or_default();
        model.prometheus.frontend_time(at.elapsed().saturating_sub(waited));
        Ok(out)
    }

    async fn predict(mut self, rows: Vec<Vec<f32>>, timeout: Option<Duration>) -> Result<Vec<Prediction>, ApiError> {
        let s = self.model;
        let rows = match &s.transform {
            Some(t) => match rows.iter().map(|r| t(r)).collect::<Result<Vec<_>, _>>() {
                Ok(rows) => rows,
                Err(e) => return Err(self.reject(ApiError::bad(format!("preprocessing: {e}")))),
            },
            None => rows,
        };
        let _permit = match self.serving.admission.try_acquire(rows.len()) {
            Ok(p) => p,
            Err(e) => return Err(self.reject(e)),
        };
        let dispatched = Instant::now();
        let n = rows.len();
        let calls = async {
            match s.frontend.config().batch_coding && n > 1 {
                true => timed_block(s, rows).await,
                false => futures::future::join_all(rows.into_iter().map(|r| timed_predict(s, r))).await,
            }
        };
        // tokio's timers tick in whole milliseconds, so the deadline is also checked exactly
        // after the answers are in: an answer that came too late is never sent.
        let result = match timeout {
            Some(t) => {
                let late = || ApiError::new(ErrorKind::DeadlineExceeded, format!("deadline of {} us exceeded", t.as_micros()));
                match tokio::time::timeout_at(self.at + t, calls).await {
                    Ok(_) if self.at.elapsed() > t => Err(late()),
                    Ok(r) => collect(r),
                    Err(_) => Err(late()),
                }
            }
            None => collect(calls.await),
        };
        self.done = true;
        match &result {
            Ok(_) => s.stats.succeeded(self.at.elapsed(), dispatched - self.at, dispatched.elapsed(), n),
            Err(e) => s.stats.failed(self.at.elapsed(), e.fail_reason()),
        }
        result
    }
}

async fn timed_predict(s: &ServedModel, row: Vec<f32>) -> Result<Prediction, FrontendError> {
    let start = Instant::now();
    let p = s.frontend.predict(row).await?;
    let source = if p.reconstructed { "reconstructed" } else { "original" };
    s.prometheus.answer_latency(source, start.elapsed());
    Ok(p)
}

/// A request's rows coded as one block (`--batch-coding`, see [`Frontend::predict_block`]),
/// answered row by row, with the per-row answer metrics.
async fn timed_block(s: &ServedModel, rows: Vec<Vec<f32>>) -> Vec<Result<Prediction, FrontendError>> {
    let start = Instant::now();
    let n = rows.len();
    let block = match s.frontend.predict_block(rows.concat(), n).await {
        Ok(p) => p,
        Err(e) => return vec![Err(e); n],
    };
    let source = if block.reconstructed { "reconstructed" } else { "original" };
    let m = block.output.len() / n;
    block
        .output
        .chunks_exact(m.max(1))
        .map(|row| {
            s.prometheus.answer_latency(source, start.elapsed());
            Ok(Prediction { output: row.to_vec(), ..block.clone() })
        })
        .collect()
}

fn collect(results: Vec<Result<Prediction, FrontendError>>) -> Result<Vec<Prediction>, ApiError> {
    results.into_iter().collect::<Result<Vec<_>, _>>().map_err(ApiError::from)
}

impl Serving {
    /// Serves one started frontend with `options` (admission limit, authentication, request
    /// limits; `Default::default()` for the defaults): [`Self::start_models`] with one model.
    ///
    /// Errors: as [`Self::start_models`].
    pub async fn start(frontend: Frontend, options: ServingOptions) -> anyhow::Result<Shared> {
        Self::start_models(vec![frontend.into()], options).await
    }

    /// Serves every model of `models` behind one server, each under its spec's name; probes
    /// their instances (see [`Health`]). One registry holds every model's metrics.
    ///
    /// Errors: no model, two models with the same name, or an unparsable instance address.
    pub async fn start_models(models: Vec<Model>, options: ServingOptions) -> anyhow::Result<Shared> {
        let names = models.iter().map(|m| (m.frontend.spec().name.clone(), String::new())).collect();
        let serving = Self::start_pending(names, options)?;
        for model in models {
            serving.install(model).await?;
        }
        Ok(serving)
    }

    /// A server for the models `pending` names, none served yet: each is `(name, what it
    /// waits for)`, the reason given while it is unavailable. [`Self::install`] serves them.
    ///
    /// Errors: no model, or two models with the same name.
    pub fn start_pending(pending: Vec<(String, String)>, options: ServingOptions) -> anyhow::Result<Shared> {
        let ServingOptions { admission, limits: options } = options;
        anyhow::ensure!(!pending.is_empty(), "no model to serve");
        let mut models = BTreeMap::new();
        for (name, waiting) in pending {
            let slot = Slot { served: OnceLock::new(), waiting };
            anyhow::ensure!(models.insert(name.clone(), slot).is_none(), "two models are named '{name}'");
        }
        Ok(Arc::new(Self { models, registry: Prometheus::registry(), admission, options }))
    }

    /// Serves `model` under its spec's name, one of those [`Self::start_pending`] named, and
    /// starts probing its instances (see [`Health`]).
    ///
    /// Errors: a name not given to [`Self::start_pending`] or already served, or an
    /// unparsable instance address.
    pub async fn install(&self, model: Model) -> anyhow::Result<()> {
        let Model { frontend, preprocess, transform } = model;
        let spec = frontend.spec().clone();
        let slot = self.models.get(&spec.name).ok_or_else(|| anyhow::anyhow!("no model '{}' was named to serve", spec.name))?;
        anyhow::ensure!(slot.served.get().is_none(), "two models are named '{}'", spec.name);
        let health = Health::start(&frontend.instances(), &frontend.config().upstream).await?;
        if frontend.is_discovering() {
            health.follow(frontend.config().discovery_interval, frontend.instances_while_running());
        }
        let prometheus = self.registry.for_model(&spec.name, &spec.version);
        let model = ServedModel { frontend, stats: RequestStats::default(), prometheus, health, preprocess, transform };
        slot.served.set(model).map_err(|_| anyhow::anyhow!("two models are named '{}'", spec.name))
    }

    /// The names of the models not served yet, with what each waits for.
    pub fn pending(&self) -> impl Iterator<Item = (&str, &str)> {
        self.models.iter().filter(|(_, s)| s.served.get().is_none()).map(|(n, s)| (n.as_str(), s.waiting.as_str()))
    }

    /// Every served model, by name.
    pub fn models(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values().filter_map(|s| s.served.get())
    }

    /// The model clients call `name`, if `version` is empty, absent or its version.
    ///
    /// Errors: NOT_FOUND (404) for any other name or version; UNAVAILABLE (503) for a model
    /// not served yet (see [`Self::start_pending`]).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<&ServedModel, ApiError> {
        let version = version.filter(|v| !v.is_empty());
        let slot = self.models.get(name);
        match slot.map(|s| (s.served.get(), s)) {
            Some((Some(m), _)) if version.is_none_or(|v| v == m.frontend.spec().version) => Ok(m),
            Some((None, s)) => Err(ApiError::new(ErrorKind::Unavailable, format!("model '{name}' is not ready: {}", s.waiting))),
            _ => {
                let v = version.map(|v| format!(" version {v}")).unwrap_or_default();
                Err(ApiError::new(ErrorKind::NotFound, format!("unknown model '{name}'{v}")))
            }
        }
    }

    /// Starts timing one inference request for `model` (one of [`Self::models`]).
    pub fn accept<'a>(&'a self, model: &'a ServedModel) -> Accepted<'a> {
        model.stats.accepted();
        Accepted { serving: self, model, at: Instant::now(), done: false }
    }

    /// True while every model is served and ready (see [`Self::model_ready`]).
    pub fn ready(&self) -> bool {
        self.models.values().all(|s| s.served.get().is_some_and(|m| self.model_ready(m)))
    }

    /// True while at least one of `model`'s deployed instances is healthy and the server is
    /// not shutting down.
    pub fn model_ready(&self, model: &ServedModel) -> bool {
        self.unavailable_reason(model).is_none()
    }

    /// Why `model` is not ready, if it is not.
    fn unavailable_reason(&self, model: &ServedModel) -> Option<&'static str> {
        if self.admission.is_closed() {
            Some("the server is shutting down")
        } else if !model.health.ready() {
            Some("no deployed instance is healthy")
        } else {
            None
        }
    }

    /// Triton's repository index (`POST /v2/repository/index`): every model with its version
    /// and state, `READY` or `UNAVAILABLE` with the reason; with `ready_only`, ready models only.
    pub fn index_json(&self, ready_only: bool) -> Value {
        let entries = self.models.iter().filter_map(|(name, slot)| {
            let (version, reason) = match slot.served.get() {
                Some(m) => (m.frontend.spec().version.as_str(), self.unavailable_reason(m).unwrap_or_default()),
                None => ("", slot.waiting.as_str()),
            };
            let ready = slot.served.get().is_some() && reason.is_empty();
            let state = if ready { "READY" } else { "UNAVAILABLE" };
            let mut entry = json!({"name": name, "version": version, "state": state, "reason": reason});
            // Deployed instances out of rotation for wrong outputs (see crate::coded::check).
            if let Some(ejected) = slot.served.get().map(|m| m.frontend.ejected()).filter(|e| !e.is_empty()) {
                entry["ejected_instances"] = json!(ejected);
            }
            (!ready_only || ready).then_some(entry)
        });
        Value::Array(entries.collect())
    }

    /// Triton's statistics document for every model (`{"model_stats": [...]}`, by name).
    pub fn stats_json(&self) -> Value {
        let stats = self.models().flat_map(|m| m.stats_json()["model_stats"].as_array().cloned().unwrap_or_default());
        json!({"model_stats": stats.collect::<Vec<_>>()})
    }

    /// Prometheus text format of every metric: every model's, labelled `model` and `version`,
    /// then the server's admission gauges.
    pub fn render_metrics(&self) -> String {
        for m in self.models() {
            m.prometheus.refresh(&m.stats, m.frontend.stats(), &m.health.instances(), &m.frontend.ejected());
        }
        let mut text = self.registry.render();
        let a = &self.admission;
        text.push_str(&format!(
            "# HELP parm_inflight_queries Queries in flight at the frontend (admission control)\n# TYPE parm_inflight_queries gauge\nparm_inflight_queries {}\n\
             # HELP parm_inflight_limit Most queries admitted at once (--max-inflight)\n# TYPE parm_inflight_limit gauge\nparm_inflight_limit {}\n\
             # HELP parm_inflight_bound Most queries admitted at once now: the limit, or less while shedding by queueing delay\n# TYPE parm_inflight_bound gauge\nparm_inflight_bound {}\n\
             # HELP parm_shed_requests_total Requests shed with 503 / UNAVAILABLE by admission control\n# TYPE parm_shed_requests_total counter\nparm_shed_requests_total {}\n",
            a.in_flight(),
            a.limit(),
            a.bound(),
            a.shed()
        ));
        text
    }
}

impl ServedModel {
    /// Splits `values` (shape `shape`) into per-query rows of the model's input length.
    ///
    /// Errors: element count not matching the shape, not a whole number (>= 1) of queries,
    /// more than [`MAX_BATCH_SIZE`] queries, or a value that is not finite.
    pub fn rows(&self, input: &str, shape: &[usize], values: Vec<f32>) -> Result<Vec<Vec<f32>>, ApiError> {
        crate::server::request::rows(self.frontend.spec(), input, shape, values)
    }

    /// The `[preprocess]` table as JSON, if the model's config has one.
    pub fn preprocess_json(&self) -> Option<Value> {
        self.preprocess.as_ref().and_then(|t| serde_json::to_value(t).ok())
    }

    /// Triton's model configuration (JSON form of `model_config.proto`'s `ModelConfig`).
    pub fn config_json(&self) -> Value {
        let s = self.frontend.spec();
        let cfg = self.frontend.config();
        let k = if cfg.parity.is_empty() { 1 } else { cfg.encoder.k() };
        let now = self.frontend.instances();
        let count = |role: &str| now.iter().filter(|(r, _, _)| *r == role).count();
        let param = |v: String| json!({"string_value": v});
        let mut parameters = json!({
            "parm_k": param(k.to_string()),
            "parm_deployed_instances": param(count("deployed").to_string()),
            "parm_parity_instances": param(count("parity").to_string()),
        });
        if let Some(p) = self.preprocess_json() {
            parameters["parm_preprocess"] = param(p.to_string());
        }
        json!({
            "name": s.name, "platform": s.platform, "backend": "parm", "max_batch_size": MAX_BATCH_SIZE,
            "input": [{"name": s.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": s.input_shape}],
            "output": [{"name": s.output_name, "data_type": "TYPE_FP32", "dims": s.output_shape}],
            "instance_group": [{"name": s.name, "kind": "KIND_MODEL", "count": count("deployed")}],
            "parameters": parameters,
        })
    }

    /// Triton's model statistics document (`{"model_stats": [...]}`; counts and ns totals).
    pub fn stats_json(&self) -> Value {
        let s = self.frontend.spec();
        let st = &self.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let d = |d: &crate::server::metrics::StatDuration| {
            let (count, ns) = d.get();
            json!({"count": count, "ns": ns})
        };
        let zero = json!({"count": 0, "ns": 0});
        json!({"model_stats": [{
            "name": s.name, "version": s.version,
            "last_inference": l(&st.last_inference_ms),
            "inference_count": l(&st.inference_count),
            "execution_count": RequestStats::exec_count(self.frontend.stats()),
            "inference_stats": {
                "success": d(&st.success), "fail": d(&st.fail), "queue": d(&st.queue),
                "compute_input": zero, "compute_infer": d(&st.compute_infer), "compute_output": zero,
            },
            "batch_stats": [],
        }]})
    }
}

/// Reads a request-level `timeout` parameter: microseconds (Triton's clients send an integer).
///
/// Errors: a value that is not a non-negative integer.
pub fn timeout_param(v: Option<&Value>) -> Result<Option<Duration>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|us| (us > 0).then(|| Duration::from_micros(us)))
            .ok_or_else(|| ApiError::bad("parameter 'timeout' must be a non-negative integer (microseconds)")),
    }
}
