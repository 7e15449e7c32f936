//! Uncoded protection against stragglers, the baselines parm is measured against:
//! replication and hedged requests.
//!
//! Sources: replication, "send to 2 instances, first answer wins" (ParM SOSP 2019 §2, the
//! 100%-overhead baseline); hedged requests, "send a backup after the p95 latency"
//! (Dean & Barroso, "The Tail at Scale", CACM 2013).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How each query is sent when it is not protected by a coding group.
#[derive(Clone, Debug, PartialEq)]
pub enum Redundancy {
    /// One copy, retried once on the next instance if the connection fails.
    None,
    /// `copies` instances at once; the first answer wins and the others are cancelled.
    Replication { copies: usize },
    /// One instance; if it has not answered after the `percentile`-th percentile of recent
    /// latencies (clamped to `[min_delay, max_delay]`), a backup goes to the next instance; the
    /// first answer wins and the other is cancelled.
    Hedged { percentile: f64, min_delay: Duration, max_delay: Duration },
}

impl Redundancy {
    /// Hedging after the p95 latency, as The Tail at Scale recommends.
    pub fn hedged_p95() -> Self {
        Self::hedged_at(95.0)
    }

    /// Hedging after the running `percentile`-th latency (0.5 ms to 1 s).
    pub fn hedged_at(percentile: f64) -> Self {
        Self::Hedged { percentile, min_delay: Duration::from_micros(500), max_delay: Duration::from_secs(1) }
    }
}

/// Recent request latencies, for the hedging delay.
#[derive(Debug)]
pub struct LatencyWindow {
    inner: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    recent: VecDeque<Duration>,
    since_update: usize,
    threshold: Option<Duration>,
}

/// Latencies kept, and how often the percentile is recomputed (in recorded requests).
const WINDOW: usize = 1000;
const UPDATE_EVERY: usize = 50;

impl Default for LatencyWindow {
    fn default() -> Self {
        Self { inner: Mutex::new(WindowState { recent: VecDeque::with_capacity(WINDOW), since_update: 0, threshold: None }) }
    }
}

impl LatencyWindow {
    /// Records one observed latency; every 50 records the percentile is recomputed.
    pub fn record(&self, latency: Duration, percentile: f64) {
        let mut s = self.inner.lock().expect("latency window lock");
        if s.recent.len() == WINDOW {
            s.recent.pop_front();
        }
        s.recent.push_back(latency);
        s.since_update += 1;
        if s.since_update >= UPDATE_EVERY || s.threshold.is_none() {
            s.since_update = 0;
            let mut sorted: Vec<Duration> = s.recent.iter().copied().collect();
            sorted.sort_unstable();
            let idx = ((percentile / 100.0) * (sorted.len() - 1) as f64).round() as usize;
            s.threshold = sorted.get(idx).copied();
        }
    }

    /// The current percentile latency, or `None` before any record.
    pub fn threshold(&self) -> Option<Duration> {
        self.inner.lock().expect("latency window lock").threshold
    }

    /// The delay before a hedge: the percentile clamped to `[min, max]` (`max` before data).
    pub fn hedge_delay(&self, min: Duration, max: Duration) -> Duration {
        self.threshold().map_or(max, |t| t.clamp(min, max))
    }
}

/// Measures a future's latency.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tracks_the_percentile() {
        let w = LatencyWindow::default();
        assert_eq!(w.hedge_delay(Duration::from_millis(1), Duration::from_millis(50)), Duration::from_millis(50));
        // The first record sets the threshold; it is recomputed every 50 records after that,
        // so after 101 records it is the p95 of 1..=101 ms.
        for i in 1..=101u64 {
            w.record(Duration::from_millis(i), 95.0);
        }
        let t = w.threshold().unwrap();
        assert!(t >= Duration::from_millis(95) && t <= Duration::from_millis(97), "{t:?}");
        assert_eq!(w.hedge_delay(Duration::from_millis(1), Duration::from_millis(50)), Duration::from_millis(50));
        assert_eq!(w.hedge_delay(Duration::from_millis(100), Duration::from_secs(1)), Duration::from_millis(100));
    }
}
