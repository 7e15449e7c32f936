//! Admission control: the frontend's bounds on work in progress.
//!
//! Every inference request must hold a [`Permit`] for its queries (rows) while the frontend
//! works on it. Two bounds decide whether a request is admitted, over HTTP and gRPC together:
//!
//! 1. **A count**: at most [`Admission::limit`] queries in flight (`--max-inflight`). This
//!    bounds memory however hard clients push.
//! 2. **Queueing delay** (CoDel-style, [`DelayTarget`]): a count alone lets latency grow to
//!    `limit / throughput` before anything is shed (1,024 queries in flight at 4,000 queries/s
//!    is 256 ms). So the frontend also watches each request's sojourn (admission to answer).
//!    Once per interval (100 ms) it takes the *minimum* sojourn of the requests finished in it:
//!    a minimum above the latency floor by more than the target (5 ms) means a standing queue,
//!    not a burst (CoDel's test; Nichols & Jacobson, "Controlling Queue Delay", ACM Queue
//!    2012; applied to RPC queues in Maurer, "Fail at Scale", ACM Queue 2015). The frontend
//!    then caps queries in flight at what its instances finish within floor + target / 2
//!    (Little's law: the last interval's completions per second x (floor + target / 2), never
//!    below [`MIN_DELAY_BOUND`]), so admitted queries wait about half the target and the rest
//!    are shed at once. Half, because CoDel drives the queue *below* its target: a bound aimed
//!    at the target itself puts the median admitted query there and half of them above it
//!    (measured at 3x capacity: admitted p99 9-13 ms aimed at the target, 5-6.5 ms aimed at
//!    half of it). It stops when, for 10 intervals, the queue is gone (minimum sojourn within
//!    half the target of the floor) and the bound did not both bind (queries in flight
//!    averaging half of it or more) and turn requests away, and the bound then doubles per
//!    interval back to the limit rather than jumping there (see [`Window::roll`]: both keep a
//!    load still past capacity from refilling the queue, while a load under capacity that a
//!    pause set shedding off gets back to shedding nothing within about 2 s). The floor
//!    is the lowest interval minimum of the last 60 s outside shedding: the instances' own
//!    latency, so a model that takes 20 ms per query is not taken for a queue.
//!
//! A request past either bound is **shed** at once with HTTP 503 + `Retry-After` (gRPC
//! `UNAVAILABLE` with `retry-after` and `grpc-retry-pushback-ms` metadata) instead of waiting
//! in a queue. Since nothing downstream of admission (coding groups, instance RPCs, worker
//! queues) holds more than the admitted queries, memory and queueing delay stay bounded.
//!
//! A batch request of B queries costs min(B, bound) permits, so a batch larger than the
//! bound is still served when the frontend is otherwise idle.
//!
//! [`Admission::close`] (graceful shutdown) makes every later request fail the same way, with
//! the message "shutting down", while the admitted ones finish.
//!
//! Measured (BENCHMARKS.md, "Overload"): see there for p99 of admitted queries and the
//! fraction shed at 1.5x and 3x the throughput at the latency objective.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::server::error::{ApiError, ErrorKind};

/// Default most queries in flight at the frontend (`parm serve --max-inflight`).
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;

/// Default `Retry-After` sent with a shed request.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Shedding by queueing delay: the standing queueing delay the frontend tolerates, and how
/// often it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayTarget {
    /// Queueing delay above the latency floor that counts as a standing queue
    /// (`--queue-target-ms`, default 5 ms).
    pub target: Duration,
    /// How long the minimum sojourn must stay above it (`--queue-interval-ms`, default 100 ms).
    pub interval: Duration,
}

impl Default for DelayTarget {
    fn default() -> Self {
        Self { target: Duration::from_millis(5), interval: Duration::from_millis(100) }
    }
}

/// The delay bound never caps queries in flight below this. A handful of queries is not a
/// standing queue (CoDel does not drop from a queue shorter than one packet); and at low load
/// the completions per second measure the offered load, not the capacity, so Little's law
/// alone would cap 4 concurrent clients behind a straggler at 2.
pub const MIN_DELAY_BOUND: usize = 16;

/// Intervals the queue must stay gone before shedding stops.
const CALM_INTERVALS: u32 = 10;
/// How far back the latency floor looks.
const FLOOR_WINDOW: Duration = Duration::from_secs(60);

/// One interval's sojourns and the shedding state (see the module docs).
#[derive(Debug)]
struct Window {
    start: Instant,
    min: Option<Duration>,
    done: u64,
    /// The sojourns of the interval summed: over its length, the mean queries in flight.
    busy: Duration,
    /// Interval minima outside shedding, for the floor.
    minima: VecDeque<(Instant, Duration)>,
    floor: Option<Duration>,
    shedding: bool,
    /// Requests shed before this interval (the admission's total then).
    shed_before: u64,
    /// When the queueing delay last reached half the target.
    last_high: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            min: None,
            done: 0,
            busy: Duration::ZERO,
            minima: VecDeque::new(),
            floor: None,
            shedding: false,
            shed_before: 0,
            last_high: now,
        }
    }

    /// Closes the interval ending `now`, with `current` the bound in force and `shed` the
    /// admission's requests shed so far; returns the bound on queries in flight for the next
    /// one, at most `limit`.
    ///
    /// Shedding stops only after 10 intervals with no queue in which the bound did not both
    /// bind and turn requests away. A bound that binds (queries in flight averaged half of it
    /// or more) and still turns requests away means a load past capacity, whose queue looks
    /// gone only because of the bound (measured at 3x capacity, the bound was lifted every
    /// 1.1 s and the queue rebuilt each time). A bound that turns requests away without
    /// binding only clips the bursts of a load under capacity, after a pause set shedding off:
    /// holding it then (as any request turned away did before) kept it for good; at 6,000
    /// req/s, half of capacity, a bound of 16-35 shed about 1,000 requests/s for the rest of
    /// the run. Little's law keeps adapting the bound meanwhile: with no queue it grows by
    /// (floor + target / 2) / sojourn per interval.
    ///
    /// Once shedding stops, the bound doubles per interval back to `limit` rather than jumping
    /// there: measured with `oip-load` at 3x capacity, a jump let 1,024 queries in at once
    /// (about 150 ms of work at 7,000 queries/s) every time the queue looked gone, and p99 of
    /// admitted queries was 204 ms; doubling overshoots a good bound by 2x at most before the
    /// next interval sees the queue.
    fn roll(&mut self, now: Instant, t: DelayTarget, limit: usize, current: usize, shed: u64) -> usize {
        let elapsed = now.saturating_duration_since(self.start).max(t.interval);
        let (min, done, busy) = (self.min.take(), std::mem::take(&mut self.done), std::mem::take(&mut self.busy));
        let turned_away = shed > std::mem::replace(&mut self.shed_before, shed);
        self.start = now;
        let Some(min) = min else { return current };
        let floor = *self.floor.get_or_insert(min);
        let queue = min.saturating_sub(floor);
        if queue > t.target {
            self.shedding = true;
        }
        let binding = busy.as_secs_f64() / elapsed.as_secs_f64() >= current as f64 / 2.0;
        if queue >= t.target / 2 || (self.shedding && turned_away && binding) {
            self.last_high = now;
        } else if self.shedding && now.duration_since(self.last_high) >= t.interval * CALM_INTERVALS {
            self.shedding = false;
        }
        if !self.shedding {
            self.update_floor(now, min);
            return current.saturating_mul(2).min(limit);
        }
        let per_s = done as f64 / elapsed.as_secs_f64();
        ((per_s * (floor + t.target / 2).as_secs_f64()) as usize).clamp(MIN_DELAY_BOUND.min(limit), limit)
    }

    fn update_floor(&mut self, now: Instant, min: Duration) {
        self.minima.push_back((now, min));
        while self.minima.front().is_some_and(|&(at, _)| now.duration_since(at) > FLOOR_WINDOW) {
            self.minima.pop_front();
        }
        self.floor = self.minima.iter().map(|&(_, m)| m).min();
    }
}

/// Counts queries in flight against the count bound and, with a [`DelayTarget`], the
/// queueing-delay bound.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    /// The bound in force: `limit`, or less while shedding by queueing delay.
    bound: AtomicUsize,
    delay: Option<DelayTarget>,
    window: Mutex<Window>,
    in_flight: AtomicUsize,
    closed: AtomicBool,
    shed: AtomicU64,
    peak: AtomicUsize,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_INFLIGHT)
    }
}

impl Admission {
    /// At most `limit` queries in flight (a limit of 0 is taken as 1), no queueing-delay
    /// bound. Shed requests carry the hint [`DEFAULT_RETRY_AFTER`].
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            bound: AtomicUsize::new(limit),
            delay: None,
            window: Mutex::new(Window::new(Instant::now())),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            shed: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Also sheds by queueing delay (see the module docs); `None` keeps the count bound only.
    pub fn with_delay_target(mut self, delay: Option<DelayTarget>) -> Self {
        self.delay = delay.filter(|d| !d.target.is_zero() && !d.interval.is_zero());
        self
    }

    /// Most queries in flight (`--max-inflight`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bound in force now: [`Self::limit`], or less while shedding by queueing delay.
    pub fn bound(&self) -> usize {
        self.bound.load(Ordering::Relaxed)
    }

    /// True while the queueing-delay bound is in force.
    pub fn is_shedding(&self) -> bool {
        self.bound() < self.limit
    }

    /// Queries in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Most queries that were ever in flight at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Requests shed so far (over a bound, or after [`Self::close`]).
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// True when no further query would be admitted now (full or closed): lets an interface
    /// shed a request before reading its body.
    pub fn is_full(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.in_flight() >= self.bound()
    }

    /// True after [`Self::close`].
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Admits nothing more (graceful shutdown); permits already held stay valid.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Admits `queries` queries (a request's rows), or sheds the request.
    ///
    /// Errors: [`ErrorKind::Overloaded`] when admitting would pass a bound or the frontend
    /// is shutting down; the caller answers it at once (503 + `Retry-After` / `UNAVAILABLE`).
    pub fn try_acquire(&self, queries: usize) -> Result<Permit<'_>, ApiError> {
        let bound = self.bound();
        let cost = queries.clamp(1, bound);
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.reject("the frontend is shutting down"));
        }
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur + cost > bound {
                return Err(self.reject(&self.overloaded(cur, queries)));
            }
            match self.in_flight.compare_exchange_weak(cur, cur + cost, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.peak.fetch_max(cur + cost, Ordering::Relaxed);
        Ok(Permit { admission: self, cost, since: Instant::now() })
    }

    fn overloaded(&self, in_flight: usize, queries: usize) -> String {
        match (self.is_shedding(), self.delay) {
            (true, Some(d)) => format!(
                "overloaded: queries have waited over {} ms at the frontend for {} ms or more; {in_flight} queries in flight, \
                 bound {} (request of {queries}); retry later",
                d.target.as_millis(),
                d.interval.as_millis(),
                self.bound()
            ),
            _ => format!("overloaded: {in_flight} queries in flight, limit {} (request of {queries}); retry later", self.limit),
        }
    }

    /// Counts one request shed before it reached [`Self::try_acquire`] (e.g. before its body
    /// was read) and returns its error.
    pub fn shed_now(&self) -> ApiError {
        let why = if self.is_closed() { "the frontend is shutting down".to_string() } else { self.overloaded(self.in_flight(), 1) };
        self.reject(&why)
    }

    fn reject(&self, message: &str) -> ApiError {
        self.shed.fetch_add(1, Ordering::Relaxed);
        ApiError::new(ErrorKind::Overloaded, message)
    }

    /// Records one request's sojourn (admission to answer), `now` its end.
    fn finished(&self, sojourn: Duration, now: Instant) {
        let Some(t) = self.delay else { return };
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(w.start) >= t.interval {
            let bound = w.roll(now, t, self.limit, self.bound(), self.shed());
            self.bound.store(bound, Ordering::Relaxed);
        }
        w.min = Some(w.min.map_or(sojourn, |m| m.min(sojourn)));
        w.done += 1;
        w.busy += sojourn;
    }
}

/// Admitted queries; released when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    admission: &'a Admission,
    cost: usize,
    since: Instant,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(self.cost, Ordering::AcqRel);
        let now = Instant::now();
        self.admission.finished(now.duration_since(self.since), now);
    }
}

/// `Retry-After` header value: whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_sheds_and_permits_release() {
        let a = Admission::new(3);
        let p1 = a.try_acquire(2).unwrap();
        assert_eq!(a.in_flight(), 2);
        let e = a.try_acquire(2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.http_status(), 503);
        let p2 = a.try_acquire(1).unwrap();
        assert!(a.is_full());
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        drop(p2);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.shed(), 1);
        assert_eq!(a.peak(), 3);
    }

    #[test]
    fn big_batch_fits_an_idle_frontend_only() {
        let a = Admission::new(4);
        let p = a.try_acquire(100).unwrap(); // costs the whole limit
        assert_eq!(a.in_flight(), 4);
        assert!(a.try_acquire(1).is_err());
        drop(p);
        assert!(a.try_acquire(0).is_ok(), "an empty request still costs one permit while it runs");
    }

    #[test]
    fn closed_admits_nothing_but_keeps_permits() {
        let a = Admission::new(10);
        let p = a.try_acquire(1).unwrap();
        a.close();
        assert!(a.try_acquire(1).unwrap_err().message.contains("shutting down"));
        assert!(a.is_full());
        drop(p);
        assert_eq!(a.in_flight(), 0);
    }

    /// Feeds `per_interval` sojourns of `sojourn` in each of `intervals` 100 ms intervals from
    /// `*t`, advancing `*t`.
    fn feed(a: &Admission, t: &mut Instant, intervals: u32, per_interval: u32, sojourn: Duration) {
        for _ in 0..intervals {
            for i in 0..per_interval {
                a.finished(sojourn, *t + Duration::from_millis(100) * i / per_interval);
            }
            *t += Duration::from_millis(100);
        }
    }

    fn with_delay() -> (Admission, Instant) {
        let a = Admission::new(1024).with_delay_target(Some(DelayTarget::default()));
        let t = a.window.lock().unwrap().start;
        (a, t)
    }

    #[test]
    fn a_standing_queue_caps_in_flight_by_littles_law_then_lifts() {
        let (a, mut t) = with_delay();
        feed(&a, &mut t, 5, 1000, Duration::from_millis(1)); // floor 1 ms, 10,000 queries/s
        assert_eq!(a.bound(), 1024);
        feed(&a, &mut t, 2, 1000, Duration::from_millis(20)); // every query waited 19 ms
        assert!(a.is_shedding());
        // 10,000/s x (1 ms floor + 5 ms target / 2) = 35 queries in flight.
        assert!((33..=37).contains(&a.bound()), "bound {}", a.bound());
        let held: Vec<_> = (0..a.bound()).map(|_| a.try_acquire(1).unwrap()).collect();
        let e = a.try_acquire(1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert!(e.message.contains("waited over 5 ms"), "{}", e.message);
        drop(held);
        // The queue is gone: shedding holds for 10 calm intervals, then the bound doubles per
        // interval back to the limit, never jumping there (a load still past capacity would
        // fill 1,024 at once).
        feed(&a, &mut t, 5, 1000, Duration::from_millis(1));
        assert!(a.is_shedding());
        let mut bounds = vec![a.bound()];
        for _ in 0..12 {
            feed(&a, &mut t, 1, 1000, Duration::from_millis(1));
            bounds.push(a.bound());
        }
        assert_eq!(bounds.last(), Some(&1024), "{bounds:?}");
        assert!(bounds.windows(2).all(|w| w[0] <= w[1] && (w[1] == 1024 || w[1] <= 2 * w[0])), "at most doubling: {bounds:?}");
        assert!(bounds.iter().filter(|&&b| b > 37 && b < 1024).count() >= 3, "grows in steps: {bounds:?}");
        // Past capacity again while growing: Little's law again.
        feed(&a, &mut t, 2, 1000, Duration::from_millis(20));
        assert!((33..=37).contains(&a.bound()), "bound {}", a.bound());
    }

    /// Past capacity the bound keeps the queue short, so the queue alone would soon look gone:
    /// as long as the bound binds and still turns requests away, shedding holds. The model: an
    /// instance finishing 10,000 queries/s, the bound always full, so queries wait about
    /// bound / 10,000 s (here 80% of that: the queue under half the target).
    #[test]
    fn shedding_holds_while_the_bound_binds_and_turns_requests_away() {
        let (a, mut t) = with_delay();
        feed(&a, &mut t, 5, 1000, Duration::from_millis(1));
        feed(&a, &mut t, 2, 1000, Duration::from_millis(20));
        assert!(a.is_shedding());
        for _ in 0..20 {
            let held: Vec<_> = (0..a.bound()).map_while(|_| a.try_acquire(1).ok()).collect();
            assert!(a.try_acquire(1).is_err());
            drop(held);
            let sojourn = Duration::from_micros(80 * a.bound() as u64).max(Duration::from_millis(1));
            feed(&a, &mut t, 1, 1000, sojourn);
        }
        assert!(a.is_shedding(), "still turning requests away: bound {}", a.bound());
        feed(&a, &mut t, 20, 1000, Duration::from_millis(1));
        assert_eq!(a.bound(), 1024, "the load fits: lifted");
    }

    /// Under capacity, a pause sets shedding off; afterwards the bound clips some of the
    /// load's bursts (requests turned away) without binding: queries in flight average far
    /// under it. That is not a load past capacity, so shedding stops after the calm intervals.
    #[test]
    fn a_bound_that_only_clips_bursts_does_not_hold_shedding() {
        let (a, mut t) = with_delay();
        feed(&a, &mut t, 5, 600, Duration::from_millis(1)); // 6,000 queries/s, 6 in flight
        feed(&a, &mut t, 2, 600, Duration::from_millis(20)); // a pause
        assert!(a.is_shedding());
        for _ in 0..20 {
            let held: Vec<_> = (0..a.bound()).map_while(|_| a.try_acquire(1).ok()).collect();
            assert!(a.try_acquire(1).is_err(), "a burst turned away");
            drop(held);
            feed(&a, &mut t, 1, 600, Duration::from_millis(1));
        }
        assert_eq!(a.bound(), 1024, "back to the limit");
    }

    #[test]
    fn a_slow_model_is_not_a_queue_and_bursts_are_not_shed() {
        let (a, mut t) = with_delay();
        feed(&a, &mut t, 20, 50, Duration::from_millis(20)); // 20 ms per query from the start
        assert!(!a.is_shedding());
        // A burst: one interval whose slowest queries waited long, but not its fastest.
        for i in 0..100u32 {
            a.finished(Duration::from_millis(20 + u64::from(i)), t + Duration::from_micros(u64::from(i)));
        }
        t += Duration::from_millis(100);
        feed(&a, &mut t, 2, 50, Duration::from_millis(20));
        assert!(!a.is_shedding());
    }

    #[test]
    fn a_few_concurrent_queries_behind_a_straggler_are_not_shed() {
        let (a, mut t) = with_delay();
        feed(&a, &mut t, 5, 40, Duration::from_millis(1)); // floor 1 ms, 400 queries/s
        feed(&a, &mut t, 3, 40, Duration::from_millis(9)); // a straggler: every query 9 ms
        // Little's law alone: 400/s x 3.5 ms = 1.4 queries; four clients must still get in.
        assert_eq!(a.bound(), MIN_DELAY_BOUND);
        let held: Vec<_> = (0..4).map(|_| a.try_acquire(1).unwrap()).collect();
        drop(held);
    }

    #[test]
    fn without_a_delay_target_only_the_count_bounds() {
        let a = Admission::new(8);
        let mut t = a.window.lock().unwrap().start;
        feed(&a, &mut t, 3, 100, Duration::from_millis(1));
        feed(&a, &mut t, 5, 100, Duration::from_millis(500));
        assert_eq!(a.bound(), 8);
        assert!(Admission::new(8).with_delay_target(Some(DelayTarget { target: Duration::ZERO, ..Default::default() })).delay.is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_seconds() {
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
