//! Run results, latency percentiles and a plain-text table for them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize};

/// Latency percentiles of one run, in **milliseconds**.
///
/// Computed from an HdrHistogram of latencies recorded in **microseconds** with 3 significant
/// digits, so every value is exact to within 0.1 % (plus the 1 us recording resolution).
/// All fields are 0 when nothing was recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Percentiles {
    /// Median latency (ms).
    pub p50: f64,
    /// 90th percentile latency (ms).
    pub p90: f64,
    /// 99th percentile latency (ms).
    pub p99: f64,
    /// 99.9th percentile latency (ms).
    pub p99_9: f64,
    /// Largest recorded latency (ms).
    pub max: f64,
    /// Mean latency (ms).
    pub mean: f64,
}

/// The outcome of one open-loop run (one trial), see [`crate::run_open_loop`].
///
/// Counting scopes differ on purpose:
/// * `requests`, `answered`, `reconstructed`, `errors`, `correct` and `accuracy` count **all**
///   queries, warm-up included (every answer must be right, warm or not);
/// * `latency_ms`, `throughput_qps` and `wall_s` cover only the **measured** part, i.e. the
///   queries after the first `warmup`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunReport {
    /// Queries sent: `queries.len()`, warm-up included.
    pub requests: usize,
    /// Queries answered: HTTP 200 with a parsable output and the right echoed `id`.
    pub answered: usize,
    /// Answered queries whose response had `parameters.parm_reconstructed == true` (the answer
    /// was decoded from parity rather than computed by the deployed model itself).
    pub reconstructed: usize,
    /// Queries not answered: non-200 status, timeout, transport error, unparsable body, or an
    /// echoed `id` that differs from the one sent. `answered + errors == requests`.
    pub errors: usize,
    /// Answered queries with a label whose predicted class (argmax of `outputs[0].data`)
    /// equals the label.
    pub correct: usize,
    /// `correct / (answered queries with a label)`; NaN (serialised as JSON `null`) when no
    /// answered query had a label.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Latency percentiles (ms) of answered, non-warm-up queries, measured from the intended
    /// send time to the arrival of the whole response body.
    pub latency_ms: Percentiles,
    /// How late (ms) the load generator started each answered, non-warm-up query against its
    /// schedule. A property of the machine running the benchmark, not of the server: the lag
    /// counts in that query's latency (measured from the intended time, so that a stalled
    /// load generator cannot hide a stalled server), and a lag of tens of ms says the
    /// harness, not the system under test, made that part of the tail.
    pub send_lag_ms: Percentiles,
    /// Answered non-warm-up queries divided by `wall_s` (queries per second).
    pub throughput_qps: f64,
    /// Wall time (seconds) of the measured part: from the intended send time of the first
    /// non-warm-up query to the completion (answer or error) of the last non-warm-up query.
    pub wall_s: f64,
    /// The first few (at most 5) error messages, with HTTP status and body where there was one.
    pub error_samples: Vec<String>,
    /// The latency distribution (ms) at quantiles 0, 0.001, ..., 1 (1001 values; empty if
    /// nothing was answered), for the simulator. Not serialised.
    #[serde(skip)]
    pub latency_quantiles_ms: Vec<f64>,
    /// Every timed answered query as (intended send offset from the start of the run,
    /// latency), both in ms, in the order the answers arrived; for the simulator. Not
    /// serialised.
    #[serde(skip)]
    pub latency_trace_ms: Vec<(f64, f64)>,
}

/// JSON writes NaN as `null`; read it back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Percentiles (ms) of a histogram of latencies recorded in **microseconds**.
///
/// Returns all zeros for an empty histogram.
pub fn percentiles(hist: &Histogram<u64>) -> Percentiles {
    if hist.is_empty() {
        return Percentiles { p50: 0.0, p90: 0.0, p99: 0.0, p99_9: 0.0, max: 0.0, mean: 0.0 };
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p99: ms(hist.value_at_quantile(0.99)),
        p99_9: ms(hist.value_at_quantile(0.999)),
        max: ms(hist.max()),
        mean: hist.mean() / 1000.0,
    }
}

/// A plain, space-aligned text table, one row per `(mode, report)`, with columns
/// `mode, requests, answered, reconstructed, errors, accuracy, p50, p99, p99.9` (latencies in
/// ms, accuracy as a fraction with 4 decimals, `n/a` when undefined). Ends with a newline.
pub fn format_table(rows: &[(String, RunReport)]) -> String {
    let header: Vec<String> = ["mode", "requests", "answered", "reconstructed", "errors", "accuracy", "p50_ms", "p99_ms", "p99.9_ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut table = vec![header];
    for (mode, r) in rows {
        let accuracy = if r.accuracy.is_finite() { format!("{:.4}", r.accuracy) } else { "n/a".into() };
        table.push(vec![
            mode.clone(),
            r.requests.to_string(),
            r.answered.to_string(),
            r.reconstructed.to_string(),
            r.errors.to_string(),
            accuracy,
            format!("{:.3}", r.latency_ms.p50),
            format!("{:.3}", r.latency_ms.p99),
            format!("{:.3}", r.latency_ms.p99_9),
        ]);
    }
    let ncols = table[0].len();
    let widths: Vec<usize> = (0..ncols).map(|c| table.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                // Mode left-aligned, numbers right-aligned.
                if c == 0 { format!("{cell:<w$}", w = widths[c]) } else { format!("{cell:>w$}", w = widths[c]) }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_ms() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..=1000 ms
        }
        let p = percentiles(&h);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p90 - 900.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_9 - 999.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert!((p.mean - 500.5).abs() < 1.0, "{p:?}");
        let empty = percentiles(&Histogram::<u64>::new(3).unwrap());
        assert_eq!(empty.max, 0.0);
    }

    #[test]
    fn table_is_aligned() {
        let r = RunReport {
            requests: 1000,
            answered: 990,
            reconstructed: 12,
            errors: 10,
            correct: 980,
            accuracy: 980.0 / 990.0,
            latency_ms: Percentiles { p50: 1.5, p90: 2.0, p99: 10.25, p99_9: 50.0, max: 60.0, mean: 2.0 },
            send_lag_ms: Percentiles { p50: 0.05, p90: 0.1, p99: 0.2, p99_9: 1.0, max: 2.0, mean: 0.06 },
            throughput_qps: 99.0,
            wall_s: 10.0,
            error_samples: vec![],
            latency_quantiles_ms: Vec::new(),
            latency_trace_ms: Vec::new(),
        };
        let mut nan = r.clone();
        nan.accuracy = f64::NAN;
        let t = format_table(&[("parm".into(), r), ("equal-resources".into(), nan)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("mode"));
        assert!(lines[0].contains("reconstructed") && lines[0].contains("p99.9_ms"));
        assert!(lines[1].contains("0.9899") && lines[1].contains("10.250"));
        assert!(lines[2].contains("n/a"));
        // Right-aligned numeric columns end at the same place.
        assert_eq!(lines[0].len(), lines[1].len());
        assert_eq!(lines[1].len(), lines[2].len());
    }
}
