//! A discrete-event simulator of the serving setups `parm bench` runs, to project results past
//! one machine (issue 4, item 5).
//!
//! Model. Queries arrive as a Poisson process. A query's latency without queueing is a sample
//! of `base` (the end-to-end latency that a real run without faults measured: network,
//! frontend, load generator and compute). Every instance is a FIFO single server: a request
//! reaches it half a base sample after it is sent, holds it for `compute_ms` plus any injected
//! delay, and its answer arrives the other half later. Round-robin dispatch, as the frontend.
//! - `none` / `equal-resources`: one request per query.
//! - `replication`: two instances; the first answer wins (the loser still occupies its server).
//! - `hedged`: a backup to the next instance after the running p95 of answered latencies.
//! - `parm`: coding groups of k consecutive queries, with the frontend's straggler policy
//!   (parm_serve::straggler): a group is sealed when full or `min(group_timeout, threshold)`
//!   after its first query, the threshold being `factor` x the running median of answer times
//!   within `[min, max]`; the parity request leaves at the seal (eager) or, with lazy parity,
//!   once a member has been outstanding for the threshold (never if all answer first); a query
//!   is answered at the earlier of its own answer and (parity and the other k-1 answers in,
//!   but not before `decode_grace`).
//!   Queued originals are not cancelled here, which makes the model slightly pessimistic.
//! Faults: per-instance `delay` and `episodes` (added to service), `stall` (the server does not
//! start work during the stall), `crash` (requests meanwhile fail at once and go to the next
//! instance). CPU and network contention are not modelled.

use std::time::Duration;

use hdrhistogram::Histogram;
use parm_serve::redundancy::LatencyWindow;
use parm_serve::straggler::MEDIAN;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

use crate::scenario::{Fault, Mode};
use crate::{percentiles, Percentiles};

/// An empirical distribution given by its quantile function: `quantiles[i]` is the latency
/// (ms) at quantile `i / (len - 1)`.
#[derive(Debug, Clone)]
pub struct Empirical {
    pub quantiles: Vec<f64>,
}

impl Empirical {
    /// Inverse-transform sample (linear between grid points).
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        let q = &self.quantiles;
        let x = rng.random::<f64>() * (q.len() - 1) as f64;
        let i = (x.floor() as usize).min(q.len() - 2);
        q[i] + (q[i + 1] - q[i]) * (x - i as f64)
    }
}

/// One simulated setup.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub mode: Mode,
    pub instances: usize,
    pub rate_qps: f64,
    pub queries: usize,
    pub warmup: usize,
    pub faults: Vec<Fault>,
    pub compute_ms: f64,
    pub group_timeout_ms: f64,
    pub decode_grace_ms: f64,
    /// The frontend's straggler policy (threshold and parity dispatch) for `parm` modes.
    pub straggler: parm_serve::straggler::StragglerPolicy,
    /// Hedged modes: backup after this percentile of recent latencies.
    pub hedge_percentile: f64,
    pub seed: u64,
}

struct Server {
    free_at: f64,
    delay_ms: f64,
    delay_prob: f64,
    episodes: Vec<(f64, f64, f64)>,
    stall: Option<(f64, f64)>,
    crash: Option<(f64, f64)>,
}

struct Sim<'a> {
    servers: Vec<Server>,
    base: &'a Empirical,
    compute_ms: f64,
    rng: StdRng,
}

impl Sim<'_> {
    /// Answer time (ms) of a request sent to server `i` at `t`; crashed servers pass it on.
    fn request(&mut self, i: usize, t: f64) -> f64 {
        self.serve(i, t, true)
    }

    /// Like `request`, but the server's queue is left as it was: for hedges, which are sent
    /// later than the queries simulated after them and are few (a few % of queries), so
    /// queueing them out of time order would distort the queue more than leaving them out.
    fn probe(&mut self, i: usize, t: f64) -> f64 {
        self.serve(i, t, false)
    }

    fn serve(&mut self, mut i: usize, t: f64, occupy: bool) -> f64 {
        let n = self.servers.len();
        for _ in 0..n {
            let s = &self.servers[i % n];
            match s.crash {
                Some((from, to)) if t >= from && t < to => i += 1,
                _ => break,
            }
        }
        let (go, back) = (self.base.sample(&mut self.rng) / 2.0, self.base.sample(&mut self.rng) / 2.0);
        let coin: f64 = self.rng.random();
        let s = &mut self.servers[i % n];
        let arrive = t + go;
        let mut start = arrive.max(s.free_at);
        if let Some((from, to)) = s.stall {
            if start >= from && start < to {
                start = to;
            }
        }
        let mut service = self.compute_ms;
        if coin < s.delay_prob {
            service += s.delay_ms;
        }
        service += s.episodes.iter().filter(|(a, b, _)| start >= *a && start < *b).map(|(_, _, d)| d).sum::<f64>();
        if occupy {
            s.free_at = start + service;
        }
        start + service + back
    }
}

fn servers(count: usize, faults: &[Fault], duration_ms: f64, rng: &mut StdRng) -> Vec<Server> {
    let mut v: Vec<Server> = (0..count)
        .map(|_| Server { free_at: 0.0, delay_ms: 0.0, delay_prob: 0.0, episodes: Vec::new(), stall: None, crash: None })
        .collect();
    for f in faults {
        match *f {
            Fault::Delay { instance, delay_ms, prob } if instance < count => {
                v[instance].delay_ms = delay_ms;
                v[instance].delay_prob = prob;
            }
            Fault::Episodes { instance, every_s, len_s, delay_ms } if instance < count => {
                let exp = Exp::new(1.0 / (every_s * 1e3)).expect("positive rate");
                let mut t = exp.sample(rng);
                while t < duration_ms {
                    v[instance].episodes.push((t, t + len_s * 1e3, delay_ms));
                    t += len_s * 1e3 + exp.sample(rng);
                }
            }
            Fault::Stall { instance, at_s, duration_s } if instance < count => {
                v[instance].stall = Some((at_s * 1e3, (at_s + duration_s) * 1e3));
            }
            Fault::Crash { instance, at_s, restart_after_s } if instance < count => {
                v[instance].crash = Some((at_s * 1e3, (at_s + restart_after_s) * 1e3));
            }
            _ => {}
        }
    }
    v
}

/// Simulates one setup; returns latency percentiles (ms) of the non-warm-up queries.
pub fn simulate(spec: &SimSpec, base: &Empirical) -> Percentiles {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let gap = Exp::new(spec.rate_qps / 1e3).expect("positive rate");
    let mut t = 0.0;
    let arrivals: Vec<f64> = (0..spec.queries)
        .map(|_| {
            let now = t;
            t += gap.sample(&mut rng);
            now
        })
        .collect();
    let (deployed, parity) = spec.mode.instances(spec.instances);
    let duration = t + 10_000.0;
    let mut sim = Sim { servers: servers(deployed, &spec.faults, duration, &mut rng), base, compute_ms: spec.compute_ms, rng };
    let mut parity_sim = Sim { servers: servers(parity.max(1), &[], duration, &mut StdRng::seed_from_u64(spec.seed ^ 1)), base, compute_ms: spec.compute_ms, rng: StdRng::seed_from_u64(spec.seed ^ 2) };
    let answers = match spec.mode {
        Mode::None | Mode::EqualResources { .. } => arrivals.iter().enumerate().map(|(q, &t)| sim.request(q, t) - t).collect(),
        Mode::Replication => arrivals.iter().enumerate().map(|(q, &t)| sim.request(2 * q, t).min(sim.request(2 * q + 1, t)) - t).collect(),
        Mode::Hedged { .. } => hedged(&mut sim, &arrivals, spec.hedge_percentile),
        Mode::Parm { k } => coded(&mut sim, &mut parity_sim, &arrivals, k, spec),
    };
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for l in answers.iter().skip(spec.warmup) {
        h.record((l * 1e3).max(1.0) as u64).expect("latency in range");
    }
    percentiles(&h)
}

fn hedged(sim: &mut Sim, arrivals: &[f64], percentile: f64) -> Vec<f64> {
    let mut recent: Vec<f64> = Vec::new();
    let mut delay = 1000.0;
    arrivals
        .iter()
        .enumerate()
        .map(|(q, &t)| {
            let primary = sim.request(q, t) - t;
            let latency = if primary > delay { primary.min(sim.probe(q + 1, t + delay) - t) } else { primary };
            recent.push(latency);
            if recent.len() % 50 == 0 {
                let mut w: Vec<f64> = recent.iter().rev().take(1000).copied().collect();
                w.sort_by(f64::total_cmp);
                delay = w[(percentile / 100.0 * (w.len() - 1) as f64).round() as usize].clamp(0.5, 1000.0);
            }
            latency
        })
        .collect()
}

fn coded(sim: &mut Sim, parity: &mut Sim, arrivals: &[f64], k: usize, spec: &SimSpec) -> Vec<f64> {
    let (timeout, grace) = (spec.group_timeout_ms, spec.decode_grace_ms);
    let own: Vec<f64> = arrivals.iter().enumerate().map(|(q, &t)| sim.request(q, t)).collect();
    // The frontend's own threshold rule over the simulated answer times.
    let window = LatencyWindow::default();
    let mut out = Vec::with_capacity(arrivals.len());
    let mut q = 0;
    let mut group = 0;
    while q < arrivals.len() {
        let first = arrivals[q];
        let d = spec.straggler.threshold(&window).as_secs_f64() * 1e3;
        let open_for = timeout.min(d);
        let mut end = q + 1;
        while end < arrivals.len() && end - q < k && arrivals[end] <= first + open_for {
            end += 1;
        }
        let sealed = if end - q == k { arrivals[end - 1] } else { first + open_for };
        // Eager: parity at the seal if a member is still out. Lazy: once the first member
        // still out has been outstanding for the threshold.
        let wait = if spec.straggler.lazy_parity { d } else { 0.0 };
        let due = |j: usize| sealed.max(arrivals[j] + wait);
        let parity_at = (q..end).filter(|&j| own[j] > due(j)).map(due).fold(f64::INFINITY, f64::min);
        let fp = if parity_at.is_finite() { parity.request(group, parity_at) } else { f64::INFINITY };
        for j in q..end {
            window.record(Duration::from_secs_f64((own[j] - arrivals[j]).max(0.0) / 1e3), MEDIAN);
        }
        for j in q..end {
            let others = (q..end).filter(|&i| i != j).map(|i| own[i]).fold(fp, f64::max);
            let decoded = others.max(arrivals[j] + grace);
            out.push(own[j].min(decoded) - arrivals[j]);
        }
        q = end;
        group += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Empirical {
        Empirical { quantiles: (0..=100).map(|i| 1.0 + i as f64 / 100.0).collect() }
    }

    fn spec(mode: Mode, faults: Vec<Fault>) -> SimSpec {
        SimSpec { mode, instances: 4, rate_qps: 100.0, queries: 20_000, warmup: 100, faults, compute_ms: 0.1, group_timeout_ms: 5.0, decode_grace_ms: 2.0, straggler: Default::default(), hedge_percentile: 95.0, seed: 1 }
    }

    #[test]
    fn no_fault_latency_is_the_base() {
        let p = simulate(&spec(Mode::None, vec![]), &base());
        assert!((p.p50 - 1.6).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn a_slow_instance_hurts_none_and_parm_hides_it() {
        let slow = vec![Fault::Delay { instance: 0, delay_ms: 20.0, prob: 1.0 }];
        let none = simulate(&spec(Mode::None, slow.clone()), &base());
        let parm = simulate(&spec(Mode::Parm { k: 2 }, slow), &base());
        assert!(none.p99 > 20.0, "{none:?}");
        assert!(parm.p99 < 10.0, "{parm:?}");
    }
}
