//! When the frontend treats a query as a straggler, and what the coded path does about it.
//!
//! ParM (SOSP 2019 §4.2) sends a coding group's parity query as soon as the group has k
//! queries, and has no answer for a group that never fills. parm adds two things, both driven
//! by one straggler threshold derived from the deployed instances' recent latency:
//!
//! - **adaptive group timeout**: a partly filled group is sealed after
//!   `min(group_timeout, threshold)`, so a query stuck behind a slow instance waits for the
//!   threshold, not for the (longer, load-dependent) group timeout, before its padded parity
//!   query goes out;
//! - **parity on straggler** (`lazy_parity`, optional): a sealed group's parity query is sent
//!   only once one of its queries has been outstanding for the threshold (or has failed), and
//!   never if every prediction arrives first. This trades the threshold in reconstruction
//!   latency for far fewer parity queries: the same trigger as a hedged request (Dean &
//!   Barroso, "The Tail at Scale", 2013), but the backup work is shared by k queries.
//!
//! The threshold is `factor` x the running median of deployed-instance RPC latency, clamped to
//! `[min, max]`. A median, not the p95 a hedge uses, because one slow instance out of twelve
//! already owns 8% of the requests and drags a p95 up to its own latency.

use std::time::Duration;

use crate::coded::config::ConfigError;
use crate::upstream::redundancy::LatencyWindow;

/// The straggler policy of the coded path (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct StragglerPolicy {
    /// Send parity queries only for groups with a straggler (true) or for every sealed group
    /// with an unanswered query (false, ParM's eager dispatch).
    pub lazy_parity: bool,
    /// Threshold = `factor` x median deployed RPC latency, clamped to `[min, max]`.
    pub factor: f64,
    pub min: Duration,
    pub max: Duration,
}

impl Default for StragglerPolicy {
    /// Eager parity (ParM), threshold 2 x median latency within [1 ms, 5 ms].
    fn default() -> Self {
        Self { lazy_parity: false, factor: 2.0, min: Duration::from_millis(1), max: Duration::from_millis(5) }
    }
}

pub use crate::upstream::pool::{MEDIAN, RECENT_FOR};

/// How long a coding group takes members: the group timeout, or the straggler threshold if
/// shorter (its first member may be a straggler, and would wait for group-mates otherwise).
/// Generic so that the simulator (ms as `f64`) applies the same rule as the frontend.
pub fn seal_after<T: PartialOrd>(group_timeout: T, threshold: T) -> T {
    if threshold < group_timeout { threshold } else { group_timeout }
}

/// How long a reconstruction is held back after its original was sent, so that an original
/// about to arrive wins: the decode grace, capped at the straggler threshold (a query judged
/// a straggler does not then wait for its original; with precise timers, a 2 ms grace held
/// every eager reconstruction past the ~1 ms threshold plus the parity RPC: one-slow p99
/// 2.6 ms eager vs 2.1 ms lazy, BENCHMARKS.md). `None`: the threshold itself, so that only a
/// straggler is answered by its reconstruction. A fixed 2 ms grace, shorter than the RPCs
/// themselves when instances take 4-5 ms, let reconstructions answer a quarter of all queries
/// (accuracy 0.863 against F's 0.888; BENCHMARKS.md "Across emulated hosts").
pub fn decode_grace<T: PartialOrd>(grace: Option<T>, threshold: T) -> T {
    match grace {
        Some(grace) => seal_after(grace, threshold),
        None => threshold,
    }
}

/// Whether the instance a query went to is a straggler now, so that the query takes its
/// reconstruction as soon as there is one, without the decode grace: the instance's recent
/// latency (`recent`: the shorter of its last two calls, if within the last second;
/// [`crate::upstream::pool`]) is above the
/// straggler threshold and above `factor` x the median (`slow`). The grace exists so that an
/// original about to arrive wins over a less accurate reconstruction; from an instance whose
/// last calls both took longer than the threshold no original is about to arrive, and its
/// queries would be reconstructed anyway, one threshold later. The second bound keeps the
/// threshold's cap out of it: with instances whose median is near the cap, every healthy one
/// would otherwise count as lagging. The same rule seals the query's coding group at once
/// (`coded/group.rs:protect_now`), so that its parity query does not wait for group-mates.
/// parm's refinement, not in ParM, which decodes eagerly without a grace (§4.2).
pub fn lagging<T: PartialOrd>(recent: Option<T>, threshold: T, slow: T) -> bool {
    recent.is_some_and(|r| r > threshold && r > slow)
}

/// With lazy parity, how long after a query was sent its group's parity query is wanted
/// (the straggler threshold); `None` with ParM's eager parity (sent at the seal).
pub fn parity_due_after<T>(lazy_parity: bool, threshold: T) -> Option<T> {
    lazy_parity.then_some(threshold)
}

impl StragglerPolicy {
    /// The current straggler threshold; `max` until latencies have been recorded.
    pub fn threshold(&self, window: &LatencyWindow) -> Duration {
        self.threshold_at(window.threshold())
    }

    fn threshold_at(&self, median: Option<Duration>) -> Duration {
        match median {
            Some(median) => median.mul_f64(self.factor.max(0.0)).clamp(self.min, self.max.max(self.min)),
            None => self.max.max(self.min),
        }
    }

    /// [`lagging`] for an instance whose recent latency is `recent`, against `window`'s median
    /// (read once; not at all without a recent latency).
    pub fn lagging(&self, recent: Option<Duration>, window: &LatencyWindow) -> bool {
        let Some(recent) = recent else { return false };
        let median = window.threshold();
        let slow = median.map_or(Duration::MAX, |median| median.mul_f64(self.factor.max(0.0)));
        lagging(Some(recent), self.threshold_at(median), slow)
    }

    /// With the threshold's floor at `min`; a floor above the cap raises the cap with it
    /// (asking for a 150 ms floor means a 150 ms threshold, not a refused setting).
    pub fn with_min(self, min: Duration) -> Self {
        Self { min, max: self.max.max(min), ..self }
    }

    /// Checks the settings: `factor` finite and positive, `min <= max`.
    ///
    /// Errors: [`ConfigError::StragglerFactor`], [`ConfigError::StragglerBounds`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.factor.is_finite() && self.factor > 0.0) {
            return Err(ConfigError::StragglerFactor(self.factor));
        }
        if self.min > self.max {
            return Err(ConfigError::StragglerBounds { min: self.min, max: self.max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_follows_the_median_within_bounds() {
        let p = StragglerPolicy::default();
        let w = LatencyWindow::default();
        assert_eq!(p.threshold(&w), Duration::from_millis(5), "no data yet: the cap");
        // 90 fast requests and 10 very slow ones: the median ignores the slow instance.
        for i in 0..100u64 {
            let ms = if i % 10 == 0 { 40 } else { 1 };
            w.record(Duration::from_micros(ms * 1000 + i), MEDIAN);
        }
        let t = p.threshold(&w);
        assert!(t >= Duration::from_millis(2) && t < Duration::from_micros(2300), "{t:?}");
        let tight = StragglerPolicy { factor: 0.1, ..p.clone() };
        assert_eq!(tight.threshold(&w), Duration::from_millis(1), "clamped to min");
        let loose = StragglerPolicy { factor: 100.0, ..p };
        assert_eq!(loose.threshold(&w), Duration::from_millis(5), "clamped to max");
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(StragglerPolicy { factor: f64::NAN, ..Default::default() }.validate().is_err());
        assert!(StragglerPolicy { factor: 0.0, ..Default::default() }.validate().is_err());
        let inverted = StragglerPolicy { min: Duration::from_millis(9), ..Default::default() };
        assert!(inverted.validate().is_err());
        assert!(StragglerPolicy::default().validate().is_ok());
        let high = StragglerPolicy::default().with_min(Duration::from_millis(150));
        assert_eq!((high.min, high.max), (Duration::from_millis(150), Duration::from_millis(150)));
        assert!(high.validate().is_ok());
        let low = StragglerPolicy::default().with_min(Duration::from_micros(250));
        assert_eq!((low.min, low.max), (Duration::from_micros(250), Duration::from_millis(5)));
    }

    #[test]
    fn an_instance_lags_when_its_recent_latency_is_above_the_threshold_and_factor_x_median() {
        assert!(!lagging(None, 1.0, 1.0), "no latency on record");
        assert!(lagging(Some(22.0), 2.0, 2.0));
        assert!(!lagging(Some(1.5), 2.0, 2.0));
        assert!(!lagging(Some(6.0), 5.0, 8.0), "above the capped threshold, not above 2 x a 4 ms median");
        let p = StragglerPolicy::default();
        let w = LatencyWindow::default();
        assert!(!p.lagging(Some(Duration::from_millis(50)), &w), "no median yet: nobody lags");
        for _ in 0..50 {
            w.record(Duration::from_millis(4), MEDIAN);
        }
        assert_eq!(p.threshold(&w), Duration::from_millis(5), "2 x 4 ms, capped");
        assert!(!p.lagging(Some(Duration::from_millis(6)), &w), "a healthy instance near the cap");
        assert!(p.lagging(Some(Duration::from_millis(24)), &w), "a slowed one");
    }

    #[test]
    fn the_decode_grace_is_the_threshold_unless_set_shorter() {
        assert_eq!(decode_grace(None, 4.0), 4.0, "default: the threshold");
        assert_eq!(decode_grace(Some(2.0), 4.0), 2.0);
        assert_eq!(decode_grace(Some(0.0), 4.0), 0.0, "ParM's pure eager decoding");
        assert_eq!(decode_grace(Some(9.0), 4.0), 4.0, "capped at the threshold");
    }
}
