//! A discrete-event simulator of the serving setups `parm bench` runs, to project results past
//! one machine (issue 4, item 5).
//!
//! Model (every input is a measurement or a documented fact of the real system):
//! - Queries arrive as a Poisson process at the offered rate, as `parm bench` sends them.
//! - **Two measured distributions** ([`Base`], from real runs without instance faults, see
//!   `parm simulate`): the end-to-end latency `E` of one query (load generator, HTTP, frontend,
//!   one instance RPC) and the latency `R` of one instance RPC as the frontend sees it (direct
//!   gRPC probes beside that run). A query's own overhead outside its RPC is
//!   `O(u) = max(E(u) - R(u), 0)` for one uniform `u` per query, and its first RPC takes
//!   `R(u)`: overhead and RPC latency are taken as fully correlated (comonotone), because on
//!   this host both come from the same shared 2 cores; a query with one RPC then has exactly
//!   the measured `E`. Every further RPC of the query (replica, hedge, parity) draws its own
//!   `R(v)`, except the second copy of a replicated query: two RPCs sent at once share the
//!   host's state, so it takes the measured partner of `R(u)` (the probe's pairs of RPCs sent
//!   at once, matched by rank). Half of `O` is spent before the frontend, half after it.
//! - Arrivals: the same Poisson schedules as the real trials (`poisson_schedule` with each
//!   trial's seed), so rare events land as in the real runs; the other draws come from
//!   `SimSpec::draw`.
//! - Every instance is a FIFO single server: an RPC reaches it half of its network time
//!   (`R - compute`) after it is sent, holds it for `compute_ms` plus any injected delay, and
//!   its answer takes the other half back. Round-robin dispatch, as the frontend.
//! - Every timer of the frontend (group seal, decode grace, hedge delay, lazy parity trigger)
//!   fires late by a draw of the measured lateness of its timers (`Base::timer_late`, a 1 ms
//!   [`parm_serve::timer::sleep`] armed on an I/O event, as the frontend arms its own). Since
//!   the frontend moved from tokio's timers (whole milliseconds: 0 to 2 ms late, median
//!   1.06 ms) to async-io's, that is ~0.05 ms; calibrations measured before carry tokio's.
//! - The frontend's latency windows (straggler median, hedging percentile) see RPC latencies
//!   (frontend to instance and back), not end-to-end ones, as in `parm_serve::coded`.
//!
//! Setups:
//! - `none` / `equal-resources`: one RPC per query.
//! - `replication`: instances q and q+1 at once; the first answer wins (the loser still
//!   occupies its server). With a replication calibration ([`Replicated`]: the same
//!   fault-free run in replication mode) a query's overhead and its pair of RPCs come from
//!   that run instead, because on a shared host the second copy changes more than the race.
//! - `hedged`: a backup to the next instance after the running percentile of recent hedged-RPC
//!   latencies (`parm_serve::upstream::redundancy::LatencyWindow`, 0.5 ms to 1 s).
//! - `parm`: coding groups of k consecutive queries, with the frontend's straggler policy
//!   (`parm_serve::coded::policy`): a group is sealed when full or at `min(group_timeout,
//!   threshold)` after its first query, the threshold being `factor` x the running median of
//!   the RPC latencies of originals that answered their query; the parity RPC leaves at the
//!   seal (eager) or, with lazy parity, once a member has been outstanding for the threshold
//!   (never if all answer first); a query is answered at the earlier of its own answer and its
//!   reconstruction (parity and the other k-1 answers in), a reconstruction being held until
//!   the query has been out for the straggler threshold (or a shorter `decode_grace`). Queued
//!   originals are not cancelled here. A query sent to a known straggler
//!   (`policy::lagging`: its instance's last two RPCs, the later within 1 s, both longer than
//!   the threshold and factor x median) seals its group at once and takes its reconstruction
//!   without the grace, as the frontend does (the threshold and median as the group opened).
//!
//! Faults: per-instance `delay` and `episodes` (added to service), `stall` (the server does not
//! start work during the stall), `crash` (requests meanwhile fail at once and go to the next
//! instance). Host-wide faults (CPU burner, loopback shuffles) are not simulated: they are in
//! `Base` when the calibration run had them (`parm simulate` calibrates once per set of host
//! faults), and as they come in bursts that slow the whole host at once (a 128 MB shuffle
//! occupies the 2 cores for many ms), such a calibration also keeps its timeline
//! (`Base::timeline`): every query and every further RPC then takes the quantile `u` of the
//! calibration query nearest in time (from a random point of the timeline), instead of an
//! independent one.

use std::time::Duration;

use hdrhistogram::Histogram;
use parm_serve::coded::policy::{self, MEDIAN};
use parm_serve::upstream::redundancy::LatencyWindow;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

use crate::scenario::{Fault, Mode};
use crate::{Percentiles, percentiles};

/// The frontend's timers: each fires a measured lateness after its deadline.
struct Timers<'a> {
    late: &'a Empirical,
    rng: StdRng,
}

impl Timers<'_> {
    /// When a timer set for `deadline_ms` fires (ms, simulated time).
    fn fires(&mut self, deadline_ms: f64) -> f64 {
        deadline_ms + self.late.sample(&mut self.rng)
    }
}

/// The calibration's host timeline replayed from `phase` ms (see the module docs).
#[derive(Clone, Copy)]
struct Timeline<'a> {
    points: &'a [(f64, f64)],
    phase: f64,
}

impl Timeline<'_> {
    /// The quantile of the calibration query nearest to simulated time `t` (ms), or a fresh
    /// uniform draw without a timeline.
    fn u_at(&self, t: f64, rng: &mut StdRng) -> f64 {
        let (Some(first), Some(last)) = (self.points.first(), self.points.last()) else { return rng.random() };
        let at = first.0 + (t + self.phase).rem_euclid((last.0 - first.0).max(1.0));
        let i = self.points.partition_point(|p| p.0 < at).min(self.points.len() - 1);
        let nearer = if i > 0 && at - self.points[i - 1].0 < self.points[i].0 - at { i - 1 } else { i };
        self.points[nearer].1
    }
}

/// An empirical distribution given by its quantile function: `quantiles[i]` is the latency
/// (ms) at quantile `i / (len - 1)`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Empirical {
    pub quantiles: Vec<f64>,
}

impl Empirical {
    /// The distribution of `samples` (ms), as 1001 quantiles; `None` for fewer than 2 samples.
    pub fn from_samples(samples: &[f64]) -> Option<Self> {
        if samples.len() < 2 {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |i: usize| s[((i as f64 / 1000.0) * (s.len() - 1) as f64).round() as usize];
        Some(Self { quantiles: (0..=1000).map(at).collect() })
    }

    /// The value (ms) at quantile `u` in [0, 1] (linear between grid points).
    pub fn at(&self, u: f64) -> f64 {
        let q = &self.quantiles;
        let x = u.clamp(0.0, 1.0) * (q.len() - 1) as f64;
        let i = (x.floor() as usize).min(q.len() - 2);
        q[i] + (q[i + 1] - q[i]) * (x - i as f64)
    }

    /// Inverse-transform sample (ms).
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        self.at(rng.random::<f64>())
    }
}

/// The measured distributions the model runs on (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Base {
    /// End-to-end latency (ms) of one query without instance faults (`parm bench`'s measure:
    /// intended send time to the whole answer).
    pub end_to_end: Empirical,
    /// Latency (ms) of one instance RPC as the frontend sees it, compute included, measured
    /// in the same run.
    pub rpc: Empirical,
    /// Latency (ms) of the second of two RPCs sent at once to neighbouring instances, by the
    /// rank of the first: `partner[i]` goes with the i-th fastest first RPC (ascending).
    pub partner: Vec<f64>,
    /// How late (ms) a timer of the runtime fires after its deadline.
    pub timer_late: Empirical,
    /// Host-fault calibrations only: (intended send time in ms from the start, quantile of its
    /// end-to-end latency among the run's) of every timed calibration query, by time; runs
    /// laid end to end. Empty: independent draws.
    #[serde(default)]
    pub timeline: Vec<(f64, f64)>,
    /// Instance processes the calibration ran (`none` mode: N deployed instances).
    #[serde(default = "calibration_instances")]
    pub instances: usize,
    /// The same calibration on more instance processes: what each further instance costs
    /// every query on the shared host ([`Base::on_instances`]). `None`: no charge.
    #[serde(default)]
    pub busy: Option<Busy>,
    /// Replication's own calibration (see [`Replicated`]). `None`: replication is modelled
    /// from this base alone (one query's overhead, the faster of two RPCs).
    #[serde(default)]
    pub replicated: Option<Replicated>,
}

/// The same calibration run in `replication` mode: two copies of every query at once, on 2N
/// instance processes. On the shared 2-core host the second copy changes every query's
/// latency beyond the faster-of-two, and in opposite directions: without host faults
/// replication answered at p50 0.76-0.79 ms against `none`'s 0.86-0.90 (the faster of two
/// measured RPCs explains ~0.02 ms of that), under the CPU burner at 0.88-0.91 against
/// 0.52-0.67 (sessions 5-6, `bench/results/tail.json`). The model cannot derive that from
/// one-RPC runs, so it is measured; the simulator then only adds what the instance faults do
/// to either copy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Replicated {
    /// Instance processes it ran (2N); used as it is for any setup.
    pub instances: usize,
    /// End-to-end latency (ms) of one replicated query.
    pub end_to_end: Empirical,
    /// Pairs of RPC latencies (ms) sent at once to neighbouring instances during that run,
    /// ascending by their faster one.
    pub pairs: Vec<(f64, f64)>,
}

impl Replicated {
    /// From a replication-mode run: its end-to-end latencies and probe pairs (ms). `None`
    /// without pairs.
    pub fn measured(instances: usize, end_to_end: Empirical, pairs: &[(f64, f64)]) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let mut pairs = pairs.to_vec();
        pairs.sort_by(|a, b| a.0.min(a.1).total_cmp(&b.0.min(b.1)));
        Some(Self { instances, end_to_end, pairs })
    }

    /// The RPC pair at quantile `u` of the faster one (ms).
    fn pair(&self, u: f64) -> (f64, f64) {
        at_rank(&self.pairs, u)
    }

    /// A replicated query at quantile `u`: its overhead outside the RPCs and its two RPC
    /// latencies (ms), the overhead being `E(u)` minus the faster RPC, >= 0.
    fn split(&self, u: f64) -> (f64, (f64, f64)) {
        let (a, b) = self.pair(u);
        ((self.end_to_end.at(u) - a.min(b)).max(0.0), (a, b))
    }
}

/// The element of `sorted` (non-empty) nearest to rank `u` in [0, 1].
fn at_rank<T: Copy>(sorted: &[T], u: f64) -> T {
    let n = sorted.len();
    sorted[((u.clamp(0.0, 1.0) * (n - 1) as f64).round() as usize).min(n - 1)]
}

/// Instance processes of a calibration run (`none` mode), as the committed scenarios' N.
pub const CALIBRATION_INSTANCES: usize = 12;

fn calibration_instances() -> usize {
    CALIBRATION_INSTANCES
}

/// A calibration on more instances (see [`Base::busy`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Busy {
    /// Instance processes it ran.
    pub instances: usize,
    /// End-to-end latency (ms) of one query.
    pub end_to_end: Empirical,
    /// Latency (ms) of one instance RPC.
    pub rpc: Empirical,
}

impl Empirical {
    /// Quantile by quantile, `self + w x (other - self)`, kept non-decreasing and >= 0
    /// (w outside [0, 1] extrapolates).
    fn toward(&self, other: &Empirical, w: f64) -> Empirical {
        let mut floor = 0.0f64;
        let quantiles = self
            .quantiles
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let b = other.at(i as f64 / (self.quantiles.len() - 1).max(1) as f64);
                floor = floor.max(a + w * (b - a));
                floor
            })
            .collect();
        Empirical { quantiles }
    }
}

impl Base {
    /// The model's base from a calibration run: its end-to-end latencies and what its probe
    /// measured (pairs of RPCs sent at once, in ms; timer lateness, ms). `None` if the probe
    /// got fewer than 2 of either.
    pub fn measured(end_to_end: Empirical, pairs: &[(f64, f64)], timer_late: &[f64]) -> Option<Self> {
        let all: Vec<f64> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        let mut sorted = pairs.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let partner = sorted.iter().map(|p| p.1).collect();
        Some(Self {
            end_to_end,
            rpc: Empirical::from_samples(&all)?,
            partner,
            timer_late: Empirical::from_samples(timer_late)?,
            timeline: Vec::new(),
            instances: CALIBRATION_INSTANCES,
            busy: None,
            replicated: None,
        })
    }

    /// The base for a setup of `instances` instance processes on the calibrating host:
    /// end-to-end and RPC latency interpolated quantile by quantile, linearly in the number of
    /// instances, between this calibration and its [`Busy`] one. On 2 shared cores each idle
    /// process still wakes (runtime, health checks) and holds memory, and a query's processes
    /// wait behind them: under a CPU burner Equal-Resources' 18 instances answered at p50 0.70
    /// ms against `none`'s 0.60 on 12, and the calibration on 24 instances at 0.65 against
    /// 0.59 (session 5). Without a busy calibration: this base, not copied. Projections to
    /// separate machines leave the charge out (`busy: None`).
    pub fn on_instances(&self, instances: usize) -> std::borrow::Cow<'_, Base> {
        let Some(busy) = self.busy.as_ref().filter(|b| b.instances > self.instances) else { return std::borrow::Cow::Borrowed(self) };
        let w = (instances as f64 - self.instances as f64) / (busy.instances - self.instances) as f64;
        let rpc = self.rpc.toward(&busy.rpc, w);
        // A replica's partner RPC slows down as much as the RPC at its rank.
        let n = self.partner.len().max(2) - 1;
        let partner =
            self.partner.iter().enumerate().map(|(i, p)| p + rpc.at(i as f64 / n as f64) - self.rpc.at(i as f64 / n as f64)).collect();
        std::borrow::Cow::Owned(Base { end_to_end: self.end_to_end.toward(&busy.end_to_end, w), rpc, partner, ..self.clone() })
    }

    /// Appends one calibration run's trace ((intended send time, latency) in ms, see
    /// `RunReport::latency_trace_ms`) to the timeline, after the runs already there.
    pub fn push_timeline(&mut self, trace: &[(f64, f64)]) {
        let start = self.timeline.last().map_or(0.0, |p| p.0 + 1.0);
        let mut by_latency: Vec<usize> = (0..trace.len()).collect();
        by_latency.sort_by(|&a, &b| trace[a].1.total_cmp(&trace[b].1));
        let mut u = vec![0.0; trace.len()];
        for (rank, &i) in by_latency.iter().enumerate() {
            u[i] = rank as f64 / (trace.len().max(2) - 1) as f64;
        }
        let mut points: Vec<(f64, f64)> = trace.iter().zip(u).map(|(p, u)| (start + p.0, u)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.timeline.extend(points);
    }

    /// The second of two RPCs sent at once, the first being at quantile `u` (ms).
    fn partner(&self, u: f64) -> f64 {
        at_rank(&self.partner, u)
    }

    /// A query's overhead outside its instance RPC (ms) at quantile `u`: `E(u) - R(u)`, >= 0.
    pub fn overhead(&self, u: f64) -> f64 {
        (self.end_to_end.at(u) - self.rpc.at(u)).max(0.0)
    }
}

/// One simulated setup.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// The setup (`none`, `equal-resources`, `replication`, `hedged`, `parm`).
    pub mode: Mode,
    /// N: deployed instances of the baseline setup (the mode adds its own).
    pub instances: usize,
    /// Offered load, queries/s (Poisson).
    pub rate_qps: f64,
    /// Queries sent, warm-up included.
    pub queries: usize,
    /// Leading queries not timed.
    pub warmup: usize,
    /// Instance faults (delay, episodes, stall, crash; host faults are in [`Base`]), addressed
    /// to machines: deployed instances 0..D, then parity instances D..D+P.
    pub faults: Vec<Fault>,
    /// Compute time (ms) of one request on an instance.
    pub compute_ms: f64,
    /// Longest time (ms) a partly filled coding group stays open (`parm serve --group-timeout-ms`).
    pub group_timeout_ms: f64,
    /// How long (ms) a reconstruction is held for its original (`--decode-grace-ms`; `None`:
    /// the straggler threshold).
    pub decode_grace_ms: Option<f64>,
    /// The frontend's straggler policy (threshold and parity dispatch) for `parm` modes.
    pub straggler: parm_serve::coded::policy::StragglerPolicy,
    /// Hedged modes: backup after this percentile of recent latencies.
    pub hedge_percentile: f64,
    /// Seed of the arrival schedule (`poisson_schedule`, as the real trial).
    pub seed: u64,
    /// Which independent set of random draws (quantiles, timer lateness, episodes) to use
    /// with that schedule; averaging several gives the model's expectation.
    pub draw: u64,
}

struct Server {
    free_at: f64,
    delay_ms: f64,
    delay_prob: f64,
    episodes: Vec<(f64, f64, f64)>,
    stall: Option<(f64, f64)>,
    crash: Option<(f64, f64)>,
}

impl Server {
    fn crashed_at(&self, t: f64) -> bool {
        matches!(self.crash, Some((from, to)) if t >= from && t < to)
    }

    /// When work arriving at `arrive` starts, and how long it takes (ms).
    fn schedule(&self, arrive: f64, compute_ms: f64, coin: f64) -> (f64, f64) {
        let mut start = arrive.max(self.free_at);
        if let Some((from, to)) = self.stall
            && start >= from
            && start < to
        {
            start = to;
        }
        let mut service = compute_ms;
        if coin < self.delay_prob {
            service += self.delay_ms;
        }
        service += self.episodes.iter().filter(|(a, b, _)| start >= *a && start < *b).map(|(_, _, d)| d).sum::<f64>();
        (start, service)
    }
}

/// One pool of instances (deployed or parity) and its random draws.
struct Pool<'a> {
    servers: Vec<Server>,
    rpc: &'a Empirical,
    timeline: Timeline<'a>,
    compute_ms: f64,
    rng: StdRng,
}

impl Pool<'_> {
    /// Frontend time (ms) at which an RPC sent to server `i` at `t` answers, its RPC latency
    /// without queueing being `rpc_ms`; crashed servers pass it on to the next one.
    fn request(&mut self, i: usize, t: f64, rpc_ms: f64) -> f64 {
        self.serve(i, t, rpc_ms, true)
    }

    /// [`Self::request`] with a fresh RPC latency draw (from the host timeline, if any).
    fn request_fresh(&mut self, i: usize, t: f64) -> f64 {
        let r = self.rpc.at(self.timeline.u_at(t, &mut self.rng));
        self.serve(i, t, r, true)
    }

    /// Like `request_fresh`, but the server's queue is left as it was: for hedges, which are
    /// sent later than the queries simulated after them and are few (a few % of queries), so
    /// queueing them out of time order would distort the queue more than leaving them out.
    fn probe(&mut self, i: usize, t: f64) -> f64 {
        let r = self.rpc.at(self.timeline.u_at(t, &mut self.rng));
        self.serve(i, t, r, false)
    }

    fn serve(&mut self, mut i: usize, t: f64, rpc_ms: f64, occupy: bool) -> f64 {
        let n = self.servers.len();
        for _ in 0..n {
            if !self.servers[i % n].crashed_at(t) {
                break;
            }
            i += 1;
        }
        let half = (rpc_ms - self.compute_ms).max(0.0) / 2.0;
        let coin: f64 = self.rng.random();
        let s = &mut self.servers[i % n];
        let (start, service) = s.schedule(t + half, self.compute_ms, coin);
        if occupy {
            s.free_at = start + service;
        }
        start + service + half
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

/// One query as the frontend sees it: intended send time, arrival at the frontend, its own
/// overhead outside the instance RPC and its first RPC's latency without queueing (ms).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    sent: f64,
    at_frontend: f64,
    overhead: f64,
    rpc: f64,
}

impl Arrival {
    /// End-to-end latency (ms) of an answer ready at the frontend at `answer`.
    fn latency(&self, answer: f64) -> f64 {
        answer + self.overhead / 2.0 - self.sent
    }
}

/// The queries of one run, on the load generator's own schedule for `spec.seed`, and the
/// quantile `u` of each (see the module docs); `split(u)` gives a query's overhead outside its
/// RPC and its first RPC's latency (ms).
fn arrivals(spec: &SimSpec, split: impl Fn(f64) -> (f64, f64), timeline: Timeline, rng: &mut StdRng) -> (Vec<Arrival>, Vec<f64>) {
    let schedule = crate::poisson_schedule(spec.queries, spec.rate_qps, spec.seed).expect("positive rate");
    schedule
        .iter()
        .map(|at| {
            let t = at.as_secs_f64() * 1e3;
            let u = timeline.u_at(t, rng);
            let (overhead, rpc) = split(u);
            (Arrival { sent: t, at_frontend: t + overhead / 2.0, overhead, rpc }, u)
        })
        .unzip()
}

/// Simulates one setup; returns latency percentiles (ms) of the non-warm-up queries. The base
/// is taken at the setup's number of instances ([`Base::on_instances`]).
pub fn simulate(spec: &SimSpec, base: &Base) -> Percentiles {
    let (deployed, parity) = spec.mode.instances(spec.instances);
    let base = &base.on_instances(deployed + parity);
    let seed = spec.seed ^ spec.draw.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = StdRng::seed_from_u64(seed);
    let span = base.timeline.last().map_or(0.0, |p| p.0);
    let timeline = Timeline { points: &base.timeline, phase: rng.random::<f64>() * span };
    // Replication with its own calibration: overhead and both RPCs from that run.
    let own = base.replicated.as_ref().filter(|_| spec.mode == Mode::Replication);
    let (arrivals, ranks) = match own {
        Some(rep) => arrivals(
            spec,
            |u| {
                let (o, (a, _)) = rep.split(u);
                (o, a)
            },
            timeline,
            &mut rng,
        ),
        None => arrivals(spec, |u| (base.overhead(u), base.rpc.at(u)), timeline, &mut rng),
    };
    let mut timers = Timers { late: &base.timer_late, rng: StdRng::seed_from_u64(seed ^ 4) };
    let duration = arrivals.last().map_or(0.0, |a| a.sent) + 10_000.0;
    let pool = |count: usize, faults: &[Fault], seed: u64| {
        let mut r = StdRng::seed_from_u64(seed);
        Pool { servers: servers(count, faults, duration, &mut r), rpc: &base.rpc, timeline, compute_ms: spec.compute_ms, rng: r }
    };
    let mut sim = pool(deployed, &Fault::within(&spec.faults, 0..deployed), seed ^ 3);
    let mut parity_pool = pool(parity.max(1), &Fault::within(&spec.faults, deployed..deployed + parity), seed ^ 1);
    let answers = match spec.mode {
        Mode::None | Mode::EqualResources { .. } => single(&mut sim, &arrivals),
        Mode::Replication => match own {
            Some(rep) => replicated(&mut sim, &arrivals, &ranks, |u| rep.pair(u).1),
            None => replicated(&mut sim, &arrivals, &ranks, |u| base.partner(u)),
        },
        Mode::Hedged { .. } => hedged(&mut sim, &mut timers, &arrivals, spec.hedge_percentile),
        // The simulator models one parity per group; `parm simulate` leaves r >= 2 and cheap
        // backups (groups of one, a different model) out.
        Mode::Parm { k, .. } => coded(&mut sim, &mut parity_pool, &mut timers, &arrivals, k, spec),
        Mode::CheapBackup { .. } => coded(&mut sim, &mut parity_pool, &mut timers, &arrivals, 1, spec),
    };
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for l in answers.iter().skip(spec.warmup) {
        h.record((l * 1e3).max(1.0) as u64).expect("latency in range");
    }
    percentiles(&h)
}

fn single(sim: &mut Pool, arrivals: &[Arrival]) -> Vec<f64> {
    arrivals.iter().enumerate().map(|(q, a)| a.latency(sim.request(q, a.at_frontend, a.rpc))).collect()
}

/// Two copies sent at once, to instances q and q+1 (the frontend's round-robin cursor moves by
/// one per query); the second takes `partner(u)`, the measured partner of the first's RPC
/// latency.
fn replicated(sim: &mut Pool, arrivals: &[Arrival], ranks: &[f64], partner: impl Fn(f64) -> f64) -> Vec<f64> {
    arrivals
        .iter()
        .zip(ranks)
        .enumerate()
        .map(|(q, (a, &u))| {
            let first = sim.request(q, a.at_frontend, a.rpc);
            a.latency(first.min(sim.request(q + 1, a.at_frontend, partner(u))))
        })
        .collect()
}

fn hedged(sim: &mut Pool, timers: &mut Timers, arrivals: &[Arrival], percentile: f64) -> Vec<f64> {
    let mut window = Completions::new(percentile);
    let (min, max) = (Duration::from_micros(500), Duration::from_secs(1));
    arrivals
        .iter()
        .enumerate()
        .map(|(q, a)| {
            let t = a.at_frontend;
            let backup_at = timers.fires(t + window.at(t).hedge_delay(min, max).as_secs_f64() * 1e3);
            let primary = sim.request(q, t, a.rpc);
            let answer = if primary > backup_at { primary.min(sim.probe(q + 1, backup_at)) } else { primary };
            window.push(answer, answer - t);
            a.latency(answer)
        })
        .collect()
}

/// The frontend's latency window as it stands at a given time: RPC latencies enter it when
/// their answer arrives (completion order), as `parm_serve::coded` records them.
struct Completions {
    window: LatencyWindow,
    percentile: f64,
    /// (answer time, latency), in ns, not yet in the window.
    pending: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
}

impl Completions {
    fn new(percentile: f64) -> Self {
        Self { window: LatencyWindow::default(), percentile, pending: Default::default() }
    }

    /// An RPC latency (ms) that the frontend learns at `answer` (ms).
    fn push(&mut self, answer: f64, latency: f64) {
        let ns = |ms: f64| (ms.max(0.0) * 1e6) as u64;
        self.pending.push(std::cmp::Reverse((ns(answer), ns(latency))));
    }

    /// The window holding every latency answered by `t` (ms).
    fn at(&mut self, t: f64) -> &LatencyWindow {
        while let Some(std::cmp::Reverse((answer, latency))) = self.pending.peek().copied() {
            if answer as f64 / 1e6 > t {
                break;
            }
            self.pending.pop();
            self.window.record(Duration::from_nanos(latency), self.percentile);
        }
        &self.window
    }
}

fn coded(sim: &mut Pool, parity: &mut Pool, timers: &mut Timers, arrivals: &[Arrival], k: usize, spec: &SimSpec) -> Vec<f64> {
    let own: Vec<f64> = arrivals.iter().enumerate().map(|(q, a)| sim.request(q, a.at_frontend, a.rpc)).collect();
    let recent = Recent::new(arrivals, &own, sim.servers.len());
    // The frontend's own threshold rule over the simulated RPC latencies.
    let mut window = Completions::new(MEDIAN);
    let mut out = Vec::with_capacity(arrivals.len());
    let (mut q, mut group) = (0, 0);
    while q < arrivals.len() {
        let opened = window.at(arrivals[q].at_frontend);
        let threshold = spec.straggler.threshold(opened).as_secs_f64() * 1e3;
        let lag: Vec<bool> =
            (q..arrivals.len().min(q + k)).map(|j| spec.straggler.lagging(recent.at(j, arrivals[j].at_frontend), opened)).collect();
        let deadline = timers.fires(arrivals[q].at_frontend + policy::seal_after(spec.group_timeout_ms, threshold));
        let (end, sealed) = members(arrivals, q, k, deadline, |j| lag[j - q]);
        let fp = parity_answer(parity, timers, &arrivals[q..end], &own[q..end], (sealed, threshold), &lag, spec, group);
        for j in q..end {
            let others = (q..end).filter(|&i| i != j).map(|i| own[i]).fold(fp, f64::max);
            let t = arrivals[j].at_frontend;
            let grace = policy::decode_grace(spec.decode_grace_ms, threshold);
            let held_until = timers.fires(t + grace);
            let reconstructed = if lag[j - q] || others >= t + grace { others } else { held_until };
            if own[j] <= reconstructed {
                // Only originals that answer their query are timed (the others are cancelled).
                window.push(own[j], own[j] - t);
            }
            out.push(arrivals[j].latency(own[j].min(reconstructed)));
        }
        q = end;
        group += 1;
    }
    out
}

/// The coding group opened by query `first`: (one past its last member, when it is sealed).
/// It takes later queries that reach the frontend by `deadline`, up to k, and is sealed at
/// once when a member goes to a known straggler (`lagging(query)`; the frontend's
/// `protect_now`).
fn members(arrivals: &[Arrival], first: usize, k: usize, deadline: f64, lagging: impl Fn(usize) -> bool) -> (usize, f64) {
    let mut end = first;
    loop {
        end += 1;
        let last = end - 1;
        if end - first == k || lagging(last) {
            return (end, arrivals[last].at_frontend);
        }
        if end == arrivals.len() || arrivals[end].at_frontend > deadline {
            return (end, deadline);
        }
    }
}

/// Each deployed instance's RPCs in the order they answered (answer time, latency; ms), for
/// the frontend's recent latency per instance ([`policy::lagging`]). Every RPC counts, also
/// one whose query a reconstruction answered (the frontend lets it finish). Query q goes to
/// instance q mod n (a crashed instance's reroutes are not followed).
struct Recent {
    answered: Vec<Vec<(f64, f64)>>,
}

impl Recent {
    fn new(arrivals: &[Arrival], own: &[f64], n: usize) -> Self {
        let n = n.max(1);
        let mut answered = vec![Vec::new(); n];
        for (q, (a, &done)) in arrivals.iter().zip(own).enumerate() {
            answered[q % n].push((done, done - a.at_frontend));
        }
        for v in &mut answered {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Recent { answered }
    }

    /// Query `q`'s instance's recent latency when `q` is sent at `t` (ms): the shorter of
    /// its last two RPCs answered by then, if the later answered within [`policy::RECENT_FOR`].
    fn at(&self, q: usize, t: f64) -> Option<Duration> {
        let done = &self.answered[q % self.answered.len()];
        let i = done.partition_point(|d| d.0 <= t);
        let window = policy::RECENT_FOR.as_secs_f64() * 1e3;
        (i >= 2 && t - done[i - 1].0 <= window).then(|| Duration::from_secs_f64(done[i - 1].1.min(done[i - 2].1).max(0.0) / 1e3))
    }
}

/// When the group's parity answer reaches the frontend (infinity if no parity RPC is sent).
/// Eager: at the seal if a member is still out. Lazy: once the first member still out has been
/// outstanding for the threshold (a timer), or at the seal for a member sent to a known
/// straggler (`lag`, per member).
/// `(sealed, threshold)`: when the group was sealed and its straggler threshold (ms).
#[allow(clippy::too_many_arguments)]
fn parity_answer(
    parity: &mut Pool,
    timers: &mut Timers,
    arrivals: &[Arrival],
    own: &[f64],
    (sealed, threshold): (f64, f64),
    lag: &[bool],
    spec: &SimSpec,
    group: usize,
) -> f64 {
    let lazy = spec.straggler.lazy_parity;
    let due: Vec<f64> = arrivals
        .iter()
        .zip(lag)
        .map(|(a, &lagging)| match policy::parity_due_after(lazy && !lagging, threshold) {
            Some(after) => sealed.max(timers.fires(a.at_frontend + after)),
            None => sealed,
        })
        .collect();
    let at = due.iter().zip(own).filter(|(d, o)| *o > *d).map(|(d, _)| *d).fold(f64::INFINITY, f64::min);
    if at.is_finite() { parity.request_fresh(group, at) } else { f64::INFINITY }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base {
        let pairs: Vec<(f64, f64)> = (0..=100).map(|i| (0.4 + i as f64 / 500.0, 0.4 + (100 - i) as f64 / 500.0)).collect();
        let late: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
        let e2e = Empirical { quantiles: (0..=100).map(|i| 1.0 + i as f64 / 100.0).collect() };
        Base::measured(e2e, &pairs, &late).unwrap()
    }

    fn spec(mode: Mode, faults: Vec<Fault>) -> SimSpec {
        SimSpec {
            mode,
            instances: 4,
            rate_qps: 100.0,
            queries: 20_000,
            warmup: 100,
            faults,
            compute_ms: 0.1,
            group_timeout_ms: 5.0,
            decode_grace_ms: None,
            straggler: Default::default(),
            hedge_percentile: 95.0,
            seed: 1,
            draw: 0,
        }
    }

    #[test]
    fn a_busy_calibration_charges_every_instance() {
        let mut b = Base { instances: 4, ..base() };
        // The busy calibration: every query and RPC 0.3 ms slower on 8 instances than on 4.
        let slower = |e: &Empirical| Empirical { quantiles: e.quantiles.iter().map(|x| x + 0.3).collect() };
        b.busy = Some(Busy { instances: 8, end_to_end: slower(&b.end_to_end), rpc: slower(&b.rpc) });
        assert!((b.on_instances(6).end_to_end.at(0.5) - b.end_to_end.at(0.5) - 0.15).abs() < 1e-9, "linear in instances");
        let plain = Base { busy: None, ..b.clone() };
        let p50 = |mode, base: &Base| simulate(&spec(mode, vec![]), base).p50;
        assert!((p50(Mode::None, &b) - p50(Mode::None, &plain)).abs() < 0.01, "the calibration's 4 instances: no charge");
        // spec(): N = 4, so replication runs 8 instances and Equal-Resources 6.
        let charged = p50(Mode::Replication, &b) - p50(Mode::Replication, &plain);
        assert!((charged - 0.3).abs() < 0.05, "replication: 8 instances, charged {charged:.3} ms");
        let charged = p50(Mode::EqualResources { k: 2 }, &b) - p50(Mode::EqualResources { k: 2 }, &plain);
        assert!((charged - 0.15).abs() < 0.05, "Equal-Resources: 6 instances, charged {charged:.3} ms");
    }

    #[test]
    fn no_fault_latency_is_the_end_to_end_base() {
        let p = simulate(&spec(Mode::None, vec![]), &base());
        assert!((p.p50 - 1.5).abs() < 0.05, "{p:?}");
        assert!((p.p99 - 1.99).abs() < 0.05, "{p:?}");
    }

    #[test]
    fn replication_only_shortens_the_rpc_part() {
        let none = simulate(&spec(Mode::None, vec![]), &base());
        let rep = simulate(&spec(Mode::Replication, vec![]), &base());
        assert!(rep.p50 <= none.p50 && rep.p50 > none.p50 - 0.2, "{none:?} {rep:?}");
    }

    #[test]
    fn replication_follows_its_own_calibration() {
        // A replication run that answered 0.3 ms faster than `none` at every quantile, its
        // probe pairs those of `base()`.
        let mut b = base();
        let pairs: Vec<(f64, f64)> = (0..=100).map(|i| (0.4 + i as f64 / 500.0, 0.4 + (100 - i) as f64 / 500.0)).collect();
        let faster = Empirical { quantiles: b.end_to_end.quantiles.iter().map(|x| x - 0.3).collect() };
        b.replicated = Replicated::measured(8, faster, &pairs);
        let rep = simulate(&spec(Mode::Replication, vec![]), &b);
        assert!((rep.p50 - 1.2).abs() < 0.05, "fault-free: the measured 1.2 ms, {rep:?}");
        // One copy of every query to instance 0 slowed by 20 ms: the other copy answers.
        let slow = vec![Fault::Delay { instance: 0, delay_ms: 20.0, prob: 1.0 }];
        let hit = simulate(&spec(Mode::Replication, slow), &b);
        assert!(hit.p99 < 3.0, "{hit:?}");
        // Other modes keep the one-RPC base.
        assert!((simulate(&spec(Mode::None, vec![]), &b).p50 - 1.5).abs() < 0.05);
    }

    #[test]
    fn partner_follows_the_rank_of_the_first() {
        let b = base();
        assert!((b.partner(0.0) - 0.6).abs() < 1e-9 && (b.partner(1.0) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn empirical_from_samples_keeps_the_quantiles() {
        let e = Empirical::from_samples(&(0..=1000).map(|i| i as f64).collect::<Vec<_>>()).unwrap();
        assert_eq!(e.at(0.5), 500.0);
        assert!(Empirical::from_samples(&[1.0]).is_none());
    }

    #[test]
    fn the_window_holds_only_latencies_answered_by_then() {
        let mut w = Completions::new(MEDIAN);
        w.push(20.0, 20.0); // a slow first query, answered at 20 ms
        w.push(2.0, 0.5); // a fast second one, answered first
        assert_eq!(w.at(1.0).threshold(), None);
        assert_eq!(w.at(5.0).threshold(), Some(Duration::from_micros(500)));
    }

    #[test]
    fn hedging_is_not_stuck_behind_a_slow_first_query() {
        let slow = vec![Fault::Delay { instance: 0, delay_ms: 20.0, prob: 1.0 }];
        // As `one-slow`: 18 instances (the slowed one has 5.6% of requests), 20 s at 200/s.
        // The p95 starts low and creeps up; recorded in arrival order, it would start (and
        // stay) at the first query's 20 ms.
        let s = SimSpec { instances: 12, rate_qps: 200.0, queries: 4000, warmup: 300, ..spec(Mode::Hedged { k: 2 }, slow) };
        let p = simulate(&s, &base());
        assert!(p.p99 < 20.0, "{p:?}");
    }

    #[test]
    fn a_group_is_sealed_when_a_member_goes_to_a_known_straggler() {
        let arrivals: Vec<Arrival> = (0..6).map(|i| Arrival { sent: i as f64, at_frontend: i as f64, overhead: 0.0, rpc: 1.0 }).collect();
        assert_eq!(members(&arrivals, 0, 4, 10.0, |_| false), (4, 3.0), "full at its fourth member");
        assert_eq!(members(&arrivals, 0, 4, 1.5, |_| false), (2, 1.5), "sealed at its deadline");
        assert_eq!(members(&arrivals, 0, 4, 10.0, |j| j == 1), (2, 1.0), "sealed as its second member is sent");
        assert_eq!(members(&arrivals, 4, 4, 10.0, |_| false), (6, 10.0), "the last queries");
    }

    #[test]
    fn recent_latency_is_the_shorter_of_an_instance_s_last_two_answers_while_fresh() {
        // Two instances: queries 0, 2, 4 on instance 0, answered at 5, 9 and 2000 ms.
        let arrivals: Vec<Arrival> = (0..5).map(|i| Arrival { sent: i as f64, at_frontend: i as f64, overhead: 0.0, rpc: 1.0 }).collect();
        let own = [5.0, 1.5, 9.0, 3.5, 2000.0];
        let r = Recent::new(&arrivals, &own, 2);
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        assert_eq!(ms(r.at(0, 8.0)), None, "one answer in");
        assert_eq!(ms(r.at(0, 10.0)), Some(5.0), "min(5 - 0, 9 - 2)");
        assert_eq!(ms(r.at(0, 1500.0)), None, "stale");
        assert_eq!(ms(r.at(1, 10.0)), Some(0.5), "instance 1: min(0.5, 0.5)");
    }

    #[test]
    fn a_slow_instance_hurts_none_and_parm_hides_it() {
        let slow = vec![Fault::Delay { instance: 0, delay_ms: 20.0, prob: 1.0 }];
        let none = simulate(&spec(Mode::None, slow.clone()), &base());
        let parm = simulate(&spec(Mode::Parm { k: 2, r: 1, checked: false }, slow), &base());
        assert!(none.p99 > 20.0, "{none:?}");
        assert!(parm.p99 < 10.0, "{parm:?}");
    }
}
