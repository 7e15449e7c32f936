//! Open-loop (Poisson) load generation against an Open Inference Protocol HTTP endpoint.
//!
//! Method (docs/PROTOCOL.md, "Load generation norms"): arrival times are drawn up front from a
//! Poisson process; each query is sent at its intended time by its own task, regardless of
//! whether earlier queries have returned; latency is measured from the **intended** send time.
//! Measuring from the actual send time, or waiting for an answer before sending the next
//! query (closed loop), hides server stalls: the load generator politely stops sending while
//! the server is stuck, so the stall shows up in one sample instead of in every query that was
//! due during it. Gil Tene calls this *coordinated omission*; wrk2 and the HdrHistogram
//! documentation correct it exactly this way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::report::{RunReport, percentiles};

/// How many error messages a [`RunReport`] keeps.
const MAX_ERROR_SAMPLES: usize = 5;
/// How much of an error response body is kept in an error message (characters).
const MAX_ERROR_BODY_CHARS: usize = 300;

/// One query: a flat FP32 input and its true label (for the accuracy of the answers).
#[derive(Clone, Debug)]
pub struct Query {
    /// Row-major FP32 input, flattened.
    pub input: Vec<f32>,
    /// Open Inference Protocol shape, batch dimension included, e.g. `[1, 784]`.
    /// The predicted class is the argmax over all of `outputs[0].data`, so queries are
    /// meant to be batch 1.
    pub shape: Vec<i64>,
    /// The true class, if known; unlabelled queries count as answered but not in `accuracy`.
    pub label: Option<usize>,
}

/// What to send, where, and how fast.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LoadSpec {
    /// Server base URL, without a trailing path, e.g. `"http://127.0.0.1:8000"`.
    pub base_url: String,
    /// Further replicas of the server, base URLs as `base_url`: query i goes to replica
    /// i mod (1 + replicas), `base_url` being replica 0, as a round-robin load balancer in
    /// front of them would send it. Empty: every query to `base_url`.
    pub replicas: Vec<String>,
    /// Model name; requests go to `POST {base_url}/v2/models/{model}/infer`.
    pub model: String,
    /// Name of the (single) input tensor.
    pub input_name: String,
    /// Mean arrival rate of the Poisson process, in queries per second (qps). Must be > 0
    /// and finite.
    pub rate_qps: f64,
    /// Seed of the `StdRng` drawing the inter-arrival gaps: the same seed gives the same
    /// schedule. Use a different seed per trial.
    pub seed: u64,
    /// The first `warmup` queries are sent on the same schedule (and their answers are
    /// counted and checked) but their latency is not recorded. Must be `< queries.len()`.
    pub warmup: usize,
    /// Per-request timeout, counted by the HTTP client from when the request is actually
    /// started to when the whole response body has arrived. A timed-out query is an error.
    pub request_timeout: Duration,
    /// Show an `indicatif` progress bar on stderr.
    pub progress: bool,
}

/// Intended send offsets (from the start of the run) of `n` queries arriving as a Poisson
/// process at `rate_qps` queries per second.
///
/// Inter-arrival gaps are i.i.d. exponential with mean `1 / rate_qps` seconds, drawn from a
/// `StdRng` seeded with `seed` (deterministic for a given `rand` version). The first query is
/// due at offset 0 and query `i` at the sum of the first `i` gaps, so the offsets are
/// non-decreasing and `offsets[n-1] / (n-1)` is about `1 / rate_qps`.
pub fn poisson_schedule(n: usize, rate_qps: f64, seed: u64) -> anyhow::Result<Vec<Duration>> {
    ensure!(rate_qps.is_finite() && rate_qps > 0.0, "rate_qps must be positive and finite, got {rate_qps}");
    let exp = Exp::new(rate_qps).context("exponential distribution")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0f64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 {
            t += exp.sample(&mut rng);
        }
        out.push(Duration::from_secs_f64(t));
    }
    Ok(out)
}

/// Runs one open-loop trial: sends every query of `queries` at its intended time and collects
/// the answers.
///
/// * **Schedule**: [`poisson_schedule`]`(queries.len(), spec.rate_qps, spec.seed)`, computed
///   before the first send; query `i` is due at `start + offsets[i]`.
/// * **Open loop**: a dispatcher sleeps until each intended time ([`parm_serve::timer`], ~50 us
///   late at p50, not tokio's whole milliseconds) and spawns one task per
///   query, which sends it whether or not earlier queries have returned. All tasks share one
///   `reqwest::Client` (HTTP/1.1, keep-alive connection pool with no idle cap, `TCP_NODELAY`);
///   concurrent queries open extra connections rather than wait for one.
/// * **Request**: `POST {base_url}/v2/models/{model}/infer` with the Open Inference Protocol
///   JSON body `{"id": "<i>", "inputs": [{"name": input_name, "shape": shape,
///   "datatype": "FP32", "data": [...]}]}`, `i` being the query's index in `queries`.
/// * **Answer**: HTTP 200 whose JSON body echoes `"id": "<i>"` and has an `outputs[0].data`
///   (flat or nested) with at least one number. The predicted class is its argmax (first
///   maximum on ties); `reconstructed` is `parameters.parm_reconstructed == true`.
///   A missing or different `id` is an **error** (an answer must never reach the wrong
///   request), and so are a non-200 status, a timeout, a transport error and an unparsable
///   body; the first 5 error messages (status and body included) are kept.
/// * **Latency** (no coordinated omission, wrk2 / HdrHistogram practice): from the
///   **intended** send time to the arrival of the whole response body, recorded in
///   microseconds in an `hdrhistogram::Histogram<u64>` with 3 significant digits, for
///   answered queries after the first `spec.warmup` only; errors are counted, not recorded.
///   If the dispatcher itself falls behind schedule (an overloaded client), that delay is in
///   the latency too, and a warning is logged through `tracing`.
/// * **Counts** (`answered`, `reconstructed`, `errors`, `correct`, `accuracy`) cover all
///   queries, warm-up included; `latency_ms`, `throughput_qps` and `wall_s` cover the
///   measured (post-warm-up) part only. See [`RunReport`].
///
/// Use a multi-threaded tokio runtime for high rates: the response tasks then run in parallel.
///
/// Errors (as `Err`) only for an invalid spec: no queries, `warmup >= queries.len()`, a rate
/// that is not positive and finite, or an HTTP client that cannot be built.
pub async fn run_open_loop(spec: &LoadSpec, queries: &[Query]) -> anyhow::Result<RunReport> {
    let n = queries.len();
    if n == 0 {
        bail!("no queries to send");
    }
    ensure!(spec.warmup < n, "warmup ({}) must be smaller than the number of queries ({n})", spec.warmup);
    let schedule = poisson_schedule(n, spec.rate_qps, spec.seed)?;
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(spec.request_timeout)
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let urls: Vec<Arc<str>> = std::iter::once(&spec.base_url)
        .chain(&spec.replicas)
        .map(|base| format!("{}/v2/models/{}/infer", base.trim_end_matches('/'), spec.model).into())
        .collect();
    let input_name: Arc<str> = spec.input_name.as_str().into();

    let pb = if spec.progress {
        let pb = ProgressBar::new(n as u64);
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec}) {msg}") {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let warmup = spec.warmup;
    let measured_start = start + schedule[warmup];

    let dispatch = async move {
        for (i, q) in queries.iter().enumerate() {
            let intended = start + schedule[i];
            // Precise: tokio's timers would send each query ~1 ms late, and that lateness
            // counts in its latency (measured from the intended time).
            parm_serve::timer::sleep_until(intended).await;
            let (client, url, input_name, tx) = (client.clone(), urls[i % urls.len()].clone(), input_name.clone(), tx.clone());
            let (input, shape) = (q.input.clone(), q.shape.clone());
            tokio::spawn(async move {
                // When the request task first runs: the dispatcher's lateness and the
                // runtime's, as oip-load measures it.
                let sent = Instant::now();
                let result = infer_one(&client, &url, &input_name, i, &input, &shape).await;
                // The receiver only goes away if the run itself was dropped.
                let _ = tx.send(Outcome { index: i, intended, sent, done: result.0, result: result.1 });
            });
        }
    };

    let collect = async {
        let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
        let mut lag = hist.clone();
        let mut acc = Acc::default();
        while let Some(o) = rx.recv().await {
            acc.received += 1;
            let measured = o.index >= warmup;
            if measured {
                acc.last_done = Some(acc.last_done.map_or(o.done, |d: Instant| d.max(o.done)));
            }
            match o.result {
                Ok(answer) => {
                    acc.answered += 1;
                    acc.reconstructed += answer.reconstructed as usize;
                    if let Some(label) = queries[o.index].label {
                        acc.labelled += 1;
                        acc.correct += (answer.predicted == label) as usize;
                    }
                    if measured {
                        acc.measured_answered += 1;
                        let us = o.done.saturating_duration_since(o.intended).as_micros();
                        hist.record(u64::try_from(us).unwrap_or(u64::MAX)).expect("auto-resizing histogram");
                        let late_us = o.sent.saturating_duration_since(o.intended).as_micros();
                        lag.record(u64::try_from(late_us).unwrap_or(u64::MAX)).expect("auto-resizing histogram");
                        let sent = o.intended.saturating_duration_since(start).as_secs_f64() * 1e3;
                        acc.trace.push((sent, us as f64 / 1e3));
                    }
                }
                Err(msg) => {
                    acc.errors += 1;
                    pb.set_message(format!("{} errors", acc.errors));
                    if acc.error_samples.len() < MAX_ERROR_SAMPLES {
                        acc.error_samples.push(msg);
                    }
                }
            }
            pb.inc(1);
        }
        (hist, lag, acc)
    };

    let ((), (hist, lag, mut acc)) = tokio::join!(dispatch, collect);
    pb.finish_and_clear();

    if acc.received < n {
        // A request task panicked: count its query as an error.
        let missing = n - acc.received;
        acc.errors += missing;
        if acc.error_samples.len() < MAX_ERROR_SAMPLES {
            acc.error_samples.push(format!("{missing} request task(s) ended without an outcome"));
        }
    }
    let max_lag_ms = lag.max() as f64 / 1e3;
    if max_lag_ms > 50.0 {
        tracing::warn!(
            max_lag_ms,
            rate_qps = spec.rate_qps,
            "load generator fell behind its schedule; the delay is included in the latencies"
        );
    } else {
        tracing::debug!(max_lag_ms, "dispatch lag");
    }

    let wall_s = acc.last_done.map_or(0.0, |d| d.saturating_duration_since(measured_start).as_secs_f64());
    let throughput_qps = if wall_s > 0.0 { acc.measured_answered as f64 / wall_s } else { 0.0 };
    let accuracy = if acc.labelled > 0 { acc.correct as f64 / acc.labelled as f64 } else { f64::NAN };
    Ok(RunReport {
        requests: n,
        answered: acc.answered,
        reconstructed: acc.reconstructed,
        errors: acc.errors,
        correct: acc.correct,
        accuracy,
        latency_ms: percentiles(&hist),
        send_lag_ms: percentiles(&lag),
        throughput_qps,
        wall_s,
        error_samples: acc.error_samples,
        latency_trace_ms: acc.trace,
        latency_quantiles_ms: if hist.is_empty() {
            Vec::new()
        } else {
            (0..=1000).map(|i| hist.value_at_quantile(i as f64 / 1000.0) as f64 / 1e3).collect()
        },
    })
}

#[derive(Default)]
struct Acc {
    /// (intended send offset, latency) in ms of each timed answered query.
    trace: Vec<(f64, f64)>,
    received: usize,
    answered: usize,
    measured_answered: usize,
    reconstructed: usize,
    labelled: usize,
    correct: usize,
    errors: usize,
    error_samples: Vec<String>,
    last_done: Option<Instant>,
}

struct Outcome {
    index: usize,
    intended: Instant,
    /// When the load generator actually started it (at or after `intended`).
    sent: Instant,
    /// When the whole response body had arrived (or the request failed).
    done: Instant,
    result: Result<Answer, String>,
}

#[derive(Debug)]
struct Answer {
    predicted: usize,
    reconstructed: bool,
}

#[derive(Serialize)]
struct InferRequest<'a> {
    id: &'a str,
    inputs: [InferInput<'a>; 1],
}

#[derive(Serialize)]
struct InferInput<'a> {
    name: &'a str,
    shape: &'a [i64],
    datatype: &'static str,
    data: &'a [f32],
}

/// Sends query `index` and returns when its response body had fully arrived, with the parsed
/// answer or an error message.
async fn infer_one(
    client: &reqwest::Client,
    url: &str,
    input_name: &str,
    index: usize,
    input: &[f32],
    shape: &[i64],
) -> (Instant, Result<Answer, String>) {
    let id = index.to_string();
    let body = match serde_json::to_vec(&InferRequest {
        id: &id,
        inputs: [InferInput { name: input_name, shape, datatype: "FP32", data: input }],
    }) {
        Ok(b) => b,
        Err(e) => {
            return (Instant::now(), Err(format!("query {index}: encoding request: {e}")));
        }
    };
    let sent = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return (Instant::now(), Err(format!("query {index}: {}", describe(&e))));
        }
    };
    let status = resp.status();
    let bytes = resp.bytes().await;
    let done = Instant::now();
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            return (done, Err(format!("query {index}: HTTP {status}, reading body: {}", describe(&e))));
        }
    };
    if status != reqwest::StatusCode::OK {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.chars().take(MAX_ERROR_BODY_CHARS).collect();
        return (done, Err(format!("query {index}: HTTP {status}: {text}")));
    }
    (done, parse_answer(&bytes, &id).map_err(|e| format!("query {index}: {e}")))
}

/// Parses an Open Inference Protocol response and checks that it answers request `id`.
fn parse_answer(bytes: &[u8], id: &str) -> Result<Answer, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("unparsable response: {e}"))?;
    match v.get("id") {
        Some(Value::String(got)) if got == id => {}
        Some(got) => return Err(format!("id mismatch: sent \"{id}\", response has {got}")),
        None => return Err(format!("id mismatch: sent \"{id}\", response has no id")),
    }
    let data =
        v.get("outputs").and_then(|o| o.get(0)).and_then(|o| o.get("data")).ok_or_else(|| "response has no outputs[0].data".to_string())?;
    let mut best: Option<(usize, f64)> = None;
    let mut k = 0usize;
    let mut bad = false;
    visit_numbers(data, &mut |x| {
        match x {
            Some(x) => {
                if best.is_none_or(|(_, b)| x > b) {
                    best = Some((k, x));
                }
            }
            None => bad = true,
        }
        k += 1;
    });
    if bad {
        return Err("outputs[0].data holds a non-number".into());
    }
    let (predicted, _) = best.ok_or_else(|| "outputs[0].data is empty".to_string())?;
    let reconstructed = v.get("parameters").and_then(|p| p.get("parm_reconstructed")).and_then(Value::as_bool).unwrap_or(false);
    Ok(Answer { predicted, reconstructed })
}

/// Calls `f` on every leaf of a flat or nested JSON array in row-major order: `Some(x)` for a
/// number (or a bool, as 0/1), `None` for anything else.
fn visit_numbers(v: &Value, f: &mut impl FnMut(Option<f64>)) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| visit_numbers(x, f)),
        Value::Number(x) => f(x.as_f64()),
        Value::Bool(b) => f(Some(*b as u8 as f64)),
        _ => f(None),
    }
}

/// A reqwest error with its source chain, and "timed out" spelled out.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() { format!("timed out: {e}") } else { e.to_string() };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = parse_answer(
            br#"{"model_name":"m","id":"7","parameters":{"parm_reconstructed":true},
                "outputs":[{"name":"o","shape":[1,3],"datatype":"FP32","data":[[0.1,0.9,0.3]]}]}"#,
            "7",
        )
        .unwrap();
        assert_eq!(a.predicted, 1);
        assert!(a.reconstructed);
        let a = parse_answer(br#"{"id":"1","outputs":[{"data":[2,2,1]}]}"#, "1").unwrap();
        assert_eq!(a.predicted, 0, "first maximum on ties");
        assert!(!a.reconstructed);
        assert!(parse_answer(br#"{"id":"2","outputs":[{"data":[1]}]}"#, "1").unwrap_err().contains("id mismatch"));
        assert!(parse_answer(br#"{"outputs":[{"data":[1]}]}"#, "1").unwrap_err().contains("no id"));
        assert!(parse_answer(br#"{"id":"1","outputs":[]}"#, "1").is_err());
        assert!(parse_answer(br#"{"id":"1","outputs":[{"data":[]}]}"#, "1").is_err());
        assert!(parse_answer(br#"{"id":"1","outputs":[{"data":["a"]}]}"#, "1").is_err());
        assert!(parse_answer(b"not json", "1").is_err());
    }

    #[test]
    fn schedule_rejects_bad_rates() {
        assert!(poisson_schedule(3, 0.0, 1).is_err());
        assert!(poisson_schedule(3, -1.0, 1).is_err());
        assert!(poisson_schedule(3, f64::INFINITY, 1).is_err());
        assert!(poisson_schedule(3, f64::NAN, 1).is_err());
    }
}
