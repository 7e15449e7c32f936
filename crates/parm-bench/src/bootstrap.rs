//! Confidence intervals for latency percentiles: Efron's bootstrap, resampling hierarchically
//! over trials, then over queries within each drawn trial.
//!
//! A scenario row pools several trials (runs with different seeds, minutes apart). Its tail
//! percentiles vary for two reasons: which queries a run happened to see (a p99.9 of 10,000
//! queries rests on the 10 slowest) and how the run as a whole went (host drift, which machine
//! a fault landed on). A bootstrap that resampled only queries would ignore the second; one
//! that resampled only trials would have, with 2 to 6 trials, too few distinct outcomes. So
//! each bootstrap replicate (Efron 1979; the two-level scheme of Davison & Hinkley 1997,
//! ch. 3.8, "Hierarchical data"):
//!
//! 1. draws as many trials as there are, uniformly with replacement;
//! 2. for each drawn trial with n queries, draws n of its latencies uniformly with replacement;
//! 3. pools the drawn latencies of all drawn trials and takes their percentile
//!    (nearest rank, as [`percentile`] and HdrHistogram's `value_at_quantile` do).
//!
//! The interval is the percentile interval of the replicates: for a 95% level, their 2.5th and
//! 97.5th percentiles. Everything is seeded, so the same latencies, quantiles and
//! [`Bootstrap`] give the same interval on every run (with the same `rand` version: `StdRng`'s
//! algorithm may change between `rand` releases).
//!
//! With one trial only the queries are resampled (the run-to-run part of the spread is then
//! unknown and not in the interval). With few trials the interval is coarse: with 2 trials a
//! quarter of the replicates hold only trial 0 and a quarter only trial 1, so the interval
//! spans roughly from one trial's percentile to the other's.

use anyhow::{bail, ensure};
use rand::SeedableRng;
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;

/// Settings of [`percentile_ci`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Bootstrap replicates (default 1,000).
    pub resamples: usize,
    /// Coverage of the interval, a fraction in (0, 1) (default 0.95).
    pub level: f64,
    /// Seed of the resampling RNG (`rand::rngs::StdRng`; default 0).
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self { resamples: 1000, level: 0.95, seed: 0 }
    }
}

/// The `q` quantile (a fraction in (0, 1]; 0 gives the minimum) of `sorted` (ascending) by
/// nearest rank: the smallest value with at least `ceil(q * n)` values at or below it, as
/// HdrHistogram's `value_at_quantile` picks it. Units are those of the values (ms here).
///
/// Panics if `sorted` is empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[rank(sorted.len(), q) - 1]
}

/// Nearest rank (1-based) of quantile `q` among `n` values.
fn rank(n: usize, q: f64) -> usize {
    ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n)
}

/// Bootstrap confidence intervals `[lo, hi]` (ms) of latency percentiles.
///
/// `trials` holds each trial's per-query latencies in **milliseconds** (any order; one inner
/// list per trial, e.g. the latencies of `RunReport::latency_trace_ms`); `quantiles` the
/// percentiles wanted as fractions (0.5 for p50, 0.99 for p99, 0.999 for p99.9). Returns one
/// interval per quantile, in the order given, each `[lo, hi]` in ms with `lo <= hi`.
///
/// Method: Efron's bootstrap with hierarchical resampling, see the [module docs](self): each
/// of `b.resamples` replicates draws trials with replacement, then queries with replacement
/// within each drawn trial, and takes the nearest-rank percentile of the pooled draw; the
/// interval is the central `b.level` part of the replicates (percentile interval). All
/// quantiles share the same replicates. Deterministic for a given `b.seed`.
///
/// Trials without latencies (every query failed) are left out: they hold no latency to draw.
///
/// Errors (never panics): no trial with a latency, a latency that is not finite, a quantile
/// outside [0, 1], `b.resamples == 0`, `b.level` outside (0, 1).
///
/// Cost: O(resamples x (total latencies + trials)) time after one sort, O(total latencies)
/// memory; 1,000 replicates of 6 trials x 10,000 queries take a fraction of a second.
pub fn percentile_ci<T: AsRef<[f64]>>(trials: &[T], quantiles: &[f64], b: &Bootstrap) -> anyhow::Result<Vec<[f64; 2]>> {
    ensure!(b.resamples > 0, "bootstrap: resamples must be positive");
    ensure!(b.level > 0.0 && b.level < 1.0, "bootstrap: level {} must lie in (0, 1)", b.level);
    if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        bail!("bootstrap: quantile {q} must lie in [0, 1]");
    }
    let trials: Vec<&[f64]> = trials.iter().map(|t| t.as_ref()).filter(|t| !t.is_empty()).collect();
    if trials.is_empty() {
        bail!("bootstrap: no latencies to resample");
    }
    if let Some(x) = trials.iter().flat_map(|t| t.iter()).find(|x| !x.is_finite()) {
        bail!("bootstrap: latency {x} is not finite");
    }

    // Every latency once, ascending; each trial's latencies as positions in that order. A
    // replicate is then a count per position, and its percentiles a walk over the counts:
    // no sorting per replicate.
    let mut all: Vec<(f64, usize, usize)> =
        trials.iter().enumerate().flat_map(|(t, xs)| xs.iter().enumerate().map(move |(i, &x)| (x, t, i))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut positions: Vec<Vec<u32>> = trials.iter().map(|t| vec![0; t.len()]).collect();
    for (pos, &(_, t, i)) in all.iter().enumerate() {
        positions[t][i] = u32::try_from(pos)?;
    }
    let sorted: Vec<f64> = all.into_iter().map(|(x, _, _)| x).collect();

    // Quantiles visited in ascending order during the walk; results put back in given order.
    let mut order: Vec<usize> = (0..quantiles.len()).collect();
    order.sort_by(|&i, &j| quantiles[i].total_cmp(&quantiles[j]));

    let mut rng = StdRng::seed_from_u64(b.seed);
    let pick_trial = Uniform::new(0, trials.len())?;
    let pick_query: Vec<Uniform<usize>> = trials.iter().map(|t| Uniform::new(0, t.len())).collect::<Result<_, _>>()?;
    let mut counts = vec![0u32; sorted.len()];
    let mut replicates: Vec<Vec<f64>> = vec![Vec::with_capacity(b.resamples); quantiles.len()];
    for _ in 0..b.resamples {
        counts.iter_mut().for_each(|c| *c = 0);
        let mut n = 0usize;
        for _ in 0..trials.len() {
            let t = pick_trial.sample(&mut rng);
            let pos = &positions[t];
            for _ in 0..pos.len() {
                counts[pos[pick_query[t].sample(&mut rng)] as usize] += 1;
            }
            n += pos.len();
        }
        // Walk the counts once, meeting the ranks in ascending order.
        let (mut seen, mut at) = (0usize, 0usize);
        for &qi in &order {
            let want = rank(n, quantiles[qi]);
            while seen + (counts[at] as usize) < want {
                seen += counts[at] as usize;
                at += 1;
            }
            replicates[qi].push(sorted[at]);
        }
    }
    let tail = (1.0 - b.level) / 2.0;
    Ok(replicates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            [percentile(&r, tail), percentile(&r, 1.0 - tail)]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::Exp1;

    /// `trials` x `n` latencies (ms) drawn from an exponential distribution with mean 1 ms,
    /// whose q quantile is -ln(1 - q).
    fn exponential(trials: usize, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..trials).map(|_| (0..n).map(|_| Exp1.sample(&mut rng)).collect()).collect()
    }

    fn true_quantile(q: f64) -> f64 {
        -(1.0 - q).ln()
    }

    const QS: [f64; 3] = [0.5, 0.99, 0.999];

    #[test]
    fn percentile_is_nearest_rank_as_hdrhistogram() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 1000.0);
        assert_eq!(percentile(&v[..10], 0.999), 10.0, "fewer than 1,000 values: p99.9 is the max");
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let us: Vec<u64> = (0..12_345u64).map(|i| 500 + (i * 7919) % 3001).collect();
        us.iter().for_each(|&x| h.record(x).unwrap());
        let mut ms: Vec<f64> = us.iter().map(|&x| x as f64 / 1e3).collect();
        ms.sort_by(f64::total_cmp);
        for q in QS {
            // Below 2048 us HdrHistogram (3 digits) is exact; above, within 0.1%.
            let hdr = h.value_at_quantile(q) as f64 / 1e3;
            assert!((percentile(&ms, q) - hdr).abs() <= hdr * 1e-3, "q {q}: {} vs {hdr}", percentile(&ms, q));
        }
    }

    #[test]
    fn intervals_cover_the_true_percentiles() {
        // 20 independent data sets of 4 trials x 10,000 queries: each 95% interval should miss
        // about once in 20 (more often would mean intervals too narrow).
        let b = Bootstrap::default();
        let mut covered = [0usize; 3];
        let runs = 20;
        for seed in 0..runs {
            let data = exponential(4, 10_000, 100 + seed);
            let ci = percentile_ci(&data, &QS, &Bootstrap { seed, ..b }).unwrap();
            for (j, (q, [lo, hi])) in QS.iter().zip(&ci).enumerate() {
                assert!(lo <= hi);
                covered[j] += (*lo <= true_quantile(*q) && true_quantile(*q) <= *hi) as usize;
            }
        }
        for (q, c) in QS.iter().zip(covered) {
            assert!(c >= 17, "p{}: true value inside {c} of {runs} intervals", q * 100.0);
        }
    }

    #[test]
    fn interval_brackets_the_pooled_sample_percentile() {
        let data = exponential(3, 5_000, 7);
        let mut pooled: Vec<f64> = data.concat();
        pooled.sort_by(f64::total_cmp);
        let ci = percentile_ci(&data, &QS, &Bootstrap::default()).unwrap();
        for (q, [lo, hi]) in QS.iter().zip(ci) {
            let p = percentile(&pooled, *q);
            assert!(lo <= p && p <= hi, "q {q}: {p} outside [{lo}, {hi}]");
            assert!(lo < hi, "q {q}: a degenerate interval from 15,000 continuous values");
        }
    }

    #[test]
    fn interval_narrows_with_more_samples() {
        let b = Bootstrap::default();
        let width = |n: usize| {
            let ci = percentile_ci(&exponential(4, n, 3), &QS, &b).unwrap();
            ci.iter().map(|[lo, hi]| hi - lo).collect::<Vec<_>>()
        };
        let (small, large) = (width(1_000), width(25_000));
        // 25 x the samples: about 1/5 the width; demand at least halving.
        for (q, (s, l)) in QS.iter().zip(small.iter().zip(&large)) {
            assert!(*l < s / 2.0, "q {q}: width {s} with 4 x 1,000 samples, {l} with 4 x 25,000");
        }
    }

    #[test]
    fn same_seed_same_interval_other_seed_other_interval() {
        let data = exponential(3, 2_000, 11);
        let b = Bootstrap { seed: 42, ..Bootstrap::default() };
        let a = percentile_ci(&data, &QS, &b).unwrap();
        assert_eq!(a, percentile_ci(&data, &QS, &b).unwrap());
        assert_ne!(a, percentile_ci(&data, &QS, &Bootstrap { seed: 43, ..b }).unwrap());
        // Trials given as slices or vectors, quantiles in any order: the same replicates.
        let slices: Vec<&[f64]> = data.iter().map(|t| t.as_slice()).collect();
        let reversed = percentile_ci(&slices, &[0.999, 0.99, 0.5], &b).unwrap();
        assert_eq!(reversed, vec![a[2], a[1], a[0]]);
    }

    #[test]
    fn spread_between_trials_widens_the_interval() {
        // Two trials whose medians differ by 1 ms (0.69 vs 1.69): resampling trials must put
        // that difference into the p50 interval; resampling queries alone would give a
        // narrow interval around the pooled median.
        let mut data = exponential(2, 5_000, 5);
        data[1].iter_mut().for_each(|x| *x += 1.0);
        let [lo, hi] = percentile_ci(&data, &[0.5], &Bootstrap::default()).unwrap()[0];
        assert!(lo < 0.75 && hi > 1.6, "[{lo}, {hi}] does not span both trials' medians");
        let one = vec![data.concat()];
        let [lo1, hi1] = percentile_ci(&one, &[0.5], &Bootstrap::default()).unwrap()[0];
        assert!(hi1 - lo1 < (hi - lo) / 5.0, "queries only: [{lo1}, {hi1}]");
    }

    #[test]
    fn one_trial_resamples_queries() {
        let data = exponential(1, 10_000, 9);
        let ci = percentile_ci(&data, &QS, &Bootstrap::default()).unwrap();
        for (q, [lo, hi]) in QS.iter().zip(&ci) {
            assert!(lo < hi && *lo <= true_quantile(*q) * 1.3 && *hi >= true_quantile(*q) / 1.3, "q {q}: [{lo}, {hi}]");
        }
        let constant = [vec![2.5; 100]];
        assert_eq!(percentile_ci(&constant, &QS, &Bootstrap::default()).unwrap(), vec![[2.5, 2.5]; 3]);
        let single = [vec![1.25]];
        assert_eq!(percentile_ci(&single, &[0.999], &Bootstrap::default()).unwrap(), vec![[1.25, 1.25]]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let b = Bootstrap::default();
        let none: [Vec<f64>; 0] = [];
        assert!(percentile_ci(&none, &QS, &b).is_err(), "no trials");
        assert!(percentile_ci(&[Vec::<f64>::new(), Vec::new()], &QS, &b).is_err(), "trials without latencies");
        assert!(percentile_ci(&[vec![1.0, f64::NAN]], &QS, &b).is_err(), "NaN latency");
        assert!(percentile_ci(&[vec![1.0, f64::INFINITY]], &QS, &b).is_err(), "infinite latency");
        assert!(percentile_ci(&[vec![1.0]], &[1.5], &b).is_err(), "quantile above 1");
        assert!(percentile_ci(&[vec![1.0]], &[-0.1], &b).is_err(), "negative quantile");
        assert!(percentile_ci(&[vec![1.0]], &QS, &Bootstrap { resamples: 0, ..b }).is_err());
        assert!(percentile_ci(&[vec![1.0]], &QS, &Bootstrap { level: 1.0, ..b }).is_err());
        assert!(percentile_ci(&[vec![1.0]], &QS, &Bootstrap { level: f64::NAN, ..b }).is_err());
        // An empty trial beside others is left out, not an error.
        let ci = percentile_ci(&[vec![], vec![1.0, 2.0]], &[0.5], &b).unwrap();
        assert!(ci[0][0] >= 1.0 && ci[0][1] <= 2.0);
        // No quantiles: nothing to estimate, nothing to return.
        assert!(percentile_ci(&[vec![1.0]], &[], &b).unwrap().is_empty());
    }
}
