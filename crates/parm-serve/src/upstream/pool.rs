//! One pool per kind of instance (deployed, parity): round-robin over its instances, skipping
//! those out of rotation, one retry on the next instance after a connection failure, and the
//! redundancy baselines: replication (ParM SOSP 2019 §2, the 100%-overhead baseline) and
//! hedged requests (Dean & Barroso, "The Tail at Scale", CACM 2013). The instances may change
//! while it serves ([`Pool::update`], from [`crate::upstream::discovery`]): each call takes a
//! snapshot of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::timer;
use crate::upstream::dispatch::{Coalescer, DispatchBatching};
use crate::upstream::redundancy::{LatencyWindow, Redundancy, timed};
use crate::upstream::{Instance, InstanceError};

/// The percentile the straggler window tracks (see [`crate::coded::policy`]).
pub const MEDIAN: f64 = 50.0;

/// One instance of a pool, with its dispatcher when dispatch batching is on.
struct Member {
    instance: Arc<dyn Instance>,
    coalescer: Option<Coalescer>,
    /// Out of rotation until then, microseconds since [`epoch_us`]'s epoch (its outputs
    /// disagreed with the code, see [`crate::coded::check`]); 0: never ejected. An atomic: every
    /// call reads it.
    ejected_until: AtomicU64,
    /// Its recent latency.
    recent: Recent,
}

/// An instance's recent latency: the shorter of its last two calls' durations (answers and
/// failures alike), if the later one finished within the last [`RECENT_FOR`]. So a slowed
/// instance shows after two slow calls, one fast call clears it, and an instance that was
/// slow before a pause is not held against it. Calls cancelled before they finish are not in
/// it; the coded path lets a member's call finish after its reconstruction answered, so that
/// a straggler's latency is seen ([`crate::coded::policy::lagging`]).
#[derive(Default)]
struct Recent {
    /// The last two durations, microseconds (0: none yet), written in turn.
    last: [AtomicU64; 2],
    next: AtomicUsize,
    /// When the last one was recorded ([`epoch_us`]).
    at: AtomicU64,
}

/// How long an instance's last calls count as its recent latency.
pub const RECENT_FOR: Duration = Duration::from_secs(1);

impl Recent {
    /// A call that took `took` and finished at `done`.
    fn record(&self, took: Duration, done: std::time::Instant) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % 2;
        self.last[i].store((took.as_micros() as u64).max(1), Ordering::Relaxed);
        self.at.store(epoch_us(done), Ordering::Relaxed);
    }

    fn get(&self) -> Option<Duration> {
        let at = self.at.load(Ordering::Relaxed);
        if at == 0 || epoch_us(std::time::Instant::now()) > at + RECENT_FOR.as_micros() as u64 {
            return None;
        }
        let us = self.last.iter().map(|a| a.load(Ordering::Relaxed)).min().unwrap_or(0);
        (us > 0).then(|| Duration::from_micros(us))
    }
}

impl Member {
    fn is_ejected(&self) -> bool {
        // Never ejected (the common case) costs no clock read.
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && epoch_us(std::time::Instant::now()) < until
    }
}

/// `t` in microseconds since the first call (at least 1, so that 0 means "never").
fn epoch_us(t: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    t.saturating_duration_since(epoch).as_micros() as u64 + 1
}

/// An instance's output, with the instance that computed it.
pub type Served = (Vec<f32>, Arc<dyn Instance>);

/// Told each instance a call goes to, as it is chosen ([`Pool::infer_noting`]), with its
/// recent latency (`Recent`: the shorter of its last two calls, `None` if they are older
/// than `RECENT_FOR` or not yet in).
pub type Picked<'a> = &'a (dyn Fn(&dyn Instance, Option<Duration>) + Sync);

/// `instances` in rotation order spread over their hosts: one instance of each host in turn
/// (hosts in the order they first appear), so that neighbours in the rotation are on distinct
/// hosts where there are enough. An instance without a host label counts as a host of its
/// own, so that a list without labels keeps its order.
fn spread_over_hosts(instances: Vec<Arc<dyn Instance>>) -> Vec<Arc<dyn Instance>> {
    let n = instances.len();
    type Queue = std::collections::VecDeque<Arc<dyn Instance>>;
    let mut hosts: Vec<(Option<String>, Queue)> = Vec::new();
    for i in instances {
        match i.host().map(str::to_string) {
            Some(h) => match hosts.iter_mut().find(|(k, _)| k.as_deref() == Some(h.as_str())) {
                Some((_, q)) => q.push_back(i),
                None => hosts.push((Some(h), [i].into())),
            },
            None => hosts.push((None, [i].into())),
        }
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(hosts.iter_mut().filter_map(|(_, q)| q.pop_front()));
    }
    out
}

/// Instances of one kind and a round-robin cursor over them.
pub struct Pool {
    /// The instances now in the pool, in rotation order; replaced whole by [`Pool::update`].
    members: RwLock<Arc<Vec<Arc<Member>>>>,
    dispatch: DispatchBatching,
    timeout: Duration,
    model: String,
    next: AtomicUsize,
    redundancy: Redundancy,
    /// Recent latencies for the hedging delay (its percentile).
    latencies: LatencyWindow,
    /// Recent latencies of successful calls without redundancy, for the straggler threshold
    /// (their median).
    pub medians: LatencyWindow,
    /// Extra copies sent by replication and hedging (backup requests).
    backups: Arc<AtomicU64>,
}

impl Pool {
    /// A pool over `instances` serving `model`. With dispatch batching enabled, starts one
    /// dispatcher task per instance (needs a tokio runtime).
    /// Backup requests are counted in `backups`.
    pub fn new(
        instances: Vec<Arc<dyn Instance>>,
        model: &str,
        redundancy: Redundancy,
        dispatch: DispatchBatching,
        timeout: Duration,
        backups: Arc<AtomicU64>,
    ) -> Self {
        let pool = Self {
            members: Default::default(),
            dispatch,
            timeout,
            model: model.to_string(),
            next: AtomicUsize::new(0),
            redundancy,
            latencies: Default::default(),
            medians: Default::default(),
            backups,
        };
        pool.update(instances);
        pool
    }

    /// The instances now, in rotation order.
    pub fn instances(&self) -> Vec<Arc<dyn Instance>> {
        self.members().iter().map(|m| m.instance.clone()).collect()
    }

    fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `instances` the pool's instances, in this order, except that instances with host
    /// labels ([`Instance::host`]) are spread over their hosts: one of each host in turn, so
    /// that consecutive calls (a coding group's members) go to distinct hosts where there are
    /// enough. Those already in the pool (same address) stay as they are, with their
    /// connection, breaker and dispatcher; the calls held by those that left finish. Returns
    /// the addresses (added, removed).
    pub fn update(&self, instances: Vec<Arc<dyn Instance>>) -> (Vec<String>, Vec<String>) {
        let instances = spread_over_hosts(instances);
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let old: std::collections::HashMap<&str, &Arc<Member>> = members.iter().map(|m| (m.instance.addr(), m)).collect();
        let mut added = Vec::new();
        let next: Vec<Arc<Member>> = instances
            .into_iter()
            .map(|i| match old.get(i.addr()) {
                Some(m) => Arc::clone(m),
                None => {
                    added.push(i.addr().to_string());
                    let coalescer =
                        self.dispatch.enabled().then(|| Coalescer::start(i.clone(), self.model.clone(), self.dispatch, self.timeout));
                    Arc::new(Member { instance: i, coalescer, ejected_until: AtomicU64::new(0), recent: Recent::default() })
                }
            })
            .collect();
        let kept: std::collections::HashSet<&str> = next.iter().map(|m| m.instance.addr()).collect();
        let removed = members.iter().map(|m| m.instance.addr()).filter(|a| !kept.contains(a)).map(String::from).collect();
        *members = Arc::new(next);
        (added, removed)
    }

    /// Takes the instance at `addr` out of rotation until `until`; false if it is not in the
    /// pool or already out.
    pub fn eject(&self, addr: &str, until: std::time::Instant) -> bool {
        let members = self.members();
        let Some(m) = members.iter().find(|m| m.instance.addr() == addr) else { return false };
        let (now, until) = (epoch_us(std::time::Instant::now()), epoch_us(until));
        m.ejected_until.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t <= now).then_some(until)).is_ok()
    }

    /// The addresses of the instances out of rotation now (see [`Self::eject`]).
    pub fn ejected(&self) -> Vec<String> {
        self.members().iter().filter(|m| m.is_ejected()).map(|m| m.instance.addr().to_string()).collect()
    }

    /// True if the instance at `addr` is out of rotation now (see [`Self::eject`]).
    pub fn is_ejected(&self, addr: &str) -> bool {
        self.members().iter().any(|m| m.instance.addr() == addr && m.is_ejected())
    }

    /// How many instances the pool has now.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// True while the pool has no instance (discovery found none).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The error of a call to a pool without instances.
    fn no_instance(&self) -> InstanceError {
        let message = format!("no instance of '{}' is known now (instance discovery found none)", self.model);
        InstanceError::Unavailable { addr: "(none)".into(), message }
    }

    /// The model name the instances serve.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Runs one block `input` of `shape` `[b, ...]` as the pool's [`Redundancy`] says; returns
    /// `[b, output_len]`.
    ///
    /// Errors: the last instance error when every attempt failed.
    pub async fn infer(&self, input: &Arc<[f32]>, shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        self.infer_served(input, shape, timeout).await.map(|(out, _)| out)
    }

    /// [`Self::infer`], with the instance whose output it is.
    pub async fn infer_served(&self, input: &Arc<[f32]>, shape: &[i64], timeout: Duration) -> Result<Served, InstanceError> {
        self.infer_noting(input, shape, timeout, &|_, _| {}).await
    }

    /// [`Self::infer_served`], telling `picked` each instance a call goes to as it is chosen
    /// (before its answer), so that a coding group knows its members' hosts.
    pub async fn infer_noting(
        &self,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        picked: Picked<'_>,
    ) -> Result<Served, InstanceError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.redundancy {
            Redundancy::None => {
                let (out, took) = timed(self.infer_with_retry(first, input, shape, timeout, picked)).await;
                if out.is_ok() {
                    self.medians.record(took, MEDIAN);
                }
                out
            }
            Redundancy::Replication { copies } => {
                let n = (*copies).clamp(1, self.len().max(1));
                self.backups.fetch_add(n as u64 - 1, Ordering::Relaxed);
                let calls = (0..n).map(|i| Box::pin(self.call(first + i, input, shape, timeout, picked)));
                futures::future::select_ok(calls).await.map(|(out, _)| out)
            }
            Redundancy::Hedged { percentile, min_delay, max_delay } => {
                let delay = self.latencies.hedge_delay(*min_delay, *max_delay);
                let (out, took) = timed(self.hedged(first, input, shape, timeout, delay, picked)).await;
                if out.is_ok() {
                    self.latencies.record(took, *percentile);
                }
                out
            }
        }
    }

    /// Runs `input` on every instance at once; the first answer wins and the other calls are
    /// cancelled. For a rare call that must not wait on a slow instance (F(0) for padding).
    ///
    /// Errors: the last instance error when every call failed.
    pub async fn infer_first(&self, input: &Arc<[f32]>, shape: &[i64], timeout: Duration) -> Result<Vec<f32>, InstanceError> {
        let members = self.members();
        if members.is_empty() {
            return Err(self.no_instance());
        }
        let calls = members.iter().map(|m| m.instance.infer(&self.model, input, shape, timeout));
        futures::future::select_ok(calls).await.map(|(out, _)| out)
    }

    /// [`Self::infer`] on an instance whose host is none of `avoid` where one is usable (the
    /// next such in rotation), else as [`Self::infer`]: a coding group's parity query away
    /// from its members' hosts, so that one host lost does not take a member and its parity.
    pub async fn infer_avoiding(
        &self,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        avoid: &[Arc<str>],
    ) -> Result<Vec<f32>, InstanceError> {
        let mut first = self.next.fetch_add(1, Ordering::Relaxed);
        if !avoid.is_empty() {
            let members = self.members();
            let n = members.len();
            let away = |m: &Member| m.instance.host().is_none_or(|h| !avoid.iter().any(|a| &**a == h));
            let fits = |m: &Member| m.instance.usable() && !m.is_ejected() && away(m);
            first = (first..first + n).find(|&i| fits(&members[i % n])).unwrap_or(first);
        }
        self.infer_with_retry(first, input, shape, timeout, &|_, _| {}).await.map(|(out, _)| out)
    }

    /// Runs on instance `index` (mod n), or, if it is out of rotation (its breaker is open, see
    /// [`crate::upstream::health::Breaker`], or it is ejected), on the next one in rotation
    /// (the original if none is). An instance ejected while the call was out answers
    /// `Unavailable` (retryable), whatever it returned.
    async fn call(
        &self,
        index: usize,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        picked: Picked<'_>,
    ) -> Result<Served, InstanceError> {
        let members = self.members();
        let n = members.len();
        if n == 0 {
            return Err(self.no_instance());
        }
        let usable = |m: &Member| m.instance.usable() && !m.is_ejected();
        let i = (0..n).map(|j| (index + j) % n).find(|&i| usable(&members[i])).unwrap_or(index % n);
        let m = &members[i];
        picked(&*m.instance, m.recent.get());
        let in_rotation = !m.is_ejected();
        let started = std::time::Instant::now();
        let out = match &m.coalescer {
            Some(c) => c.infer(input.clone(), shape, timeout).await,
            None => m.instance.infer(&self.model, input, shape, timeout).await,
        };
        let done = std::time::Instant::now();
        m.recent.record(done - started, done);
        // Ejected while this call was out: its outputs disagreed with the code, so this one is
        // not trusted either, and the caller retries it on an instance in rotation (an
        // instance chosen although ejected, because none was in rotation, is used as it is).
        if out.is_ok() && in_rotation && m.is_ejected() {
            return Err(InstanceError::Unavailable {
                addr: m.instance.addr().to_string(),
                message: "out of rotation: its outputs disagreed with the code".into(),
            });
        }
        out.map(|o| (o, m.instance.clone()))
    }

    /// One instance; on a connection failure, once more on the next one.
    async fn infer_with_retry(
        &self,
        first: usize,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        picked: Picked<'_>,
    ) -> Result<Served, InstanceError> {
        let mut result = self.call(first, input, shape, timeout, picked).await;
        if let Err(e) = &result
            && e.is_retryable()
            && self.len() > 1
        {
            tracing::debug!("retrying after: {e}");
            result = self.call(first + 1, input, shape, timeout, picked).await;
        }
        result
    }

    /// The primary; after `delay` without an answer (or at once if it failed), a backup on the
    /// next instance; the first answer wins.
    async fn hedged(
        &self,
        first: usize,
        input: &Arc<[f32]>,
        shape: &[i64],
        timeout: Duration,
        delay: Duration,
        picked: Picked<'_>,
    ) -> Result<Served, InstanceError> {
        let primary = self.call(first, input, shape, timeout, picked);
        tokio::pin!(primary);
        let failed = tokio::select! {
            r = &mut primary => match r {
                Ok(out) => return Ok(out),
                Err(e) => Some(e),
            },
            _ = timer::sleep(delay) => None,
        };
        if self.len() < 2 {
            return match failed {
                Some(e) => Err(e),
                None => primary.await,
            };
        }
        self.backups.fetch_add(1, Ordering::Relaxed);
        let backup = self.call(first + 1, input, shape, timeout, picked);
        if failed.is_some() {
            return backup.await;
        }
        type Call<'a> = Pin<Box<dyn Future<Output = Result<Served, InstanceError>> + Send + 'a>>;
        let calls: [Call<'_>; 2] = [Box::pin(primary), Box::pin(backup)];
        futures::future::select_ok(calls).await.map(|(out, _)| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use futures::future::BoxFuture;

    /// Answers its own name's length after 50 ms (so a call can be overtaken by an ejection).
    struct Slow(String);

    impl Instance for Slow {
        fn addr(&self) -> &str {
            &self.0
        }

        fn infer<'a>(&'a self, _: &'a str, _: &'a [f32], _: &'a [i64], _: Duration) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(vec![self.0.len() as f32])
            })
        }
    }

    /// The failure this guards against: with output checks, two instances ejected at once
    /// (false ejections at a low threshold) left a coding group with both members' outputs
    /// refused and nothing to decode them from, so a query failed although three instances
    /// were in rotation (`parm bench --wrong-outputs`, r = 1, threshold 3).
    #[tokio::test]
    async fn an_output_from_an_instance_ejected_meanwhile_is_retried_in_rotation() {
        let names = ["a", "bb", "ccc"].map(|n| Arc::new(Slow(n.into())) as Arc<dyn Instance>).to_vec();
        let pool =
            Pool::new(names, "m", Redundancy::None, DispatchBatching::default(), Duration::from_secs(1), Arc::new(AtomicU64::new(0)));
        let input: Arc<[f32]> = Arc::from(vec![0.0f32]);
        // Round-robin: the first call goes to "a", which is ejected while the call is out.
        let call = pool.infer_served(&input, &[1, 1], Duration::from_secs(1));
        let eject = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(pool.eject("a", Instant::now() + Duration::from_secs(30)));
        };
        let (served, ()) = tokio::join!(call, eject);
        let (out, by) = served.unwrap();
        assert_eq!((out, by.addr()), (vec![2.0], "bb"), "answered by the next instance in rotation");
        // An instance chosen although ejected (none in rotation) answers as it is.
        assert!(pool.eject("bb", Instant::now() + Duration::from_secs(30)));
        assert!(pool.eject("ccc", Instant::now() + Duration::from_secs(30)));
        assert!(pool.infer(&input, &[1, 1], Duration::from_secs(1)).await.is_ok());
    }

    #[test]
    fn recent_latency_is_the_shorter_of_the_last_two_calls_while_fresh() {
        let ms = Duration::from_millis;
        let r = Recent::default();
        assert_eq!(r.get(), None, "no call yet");
        r.record(ms(20), Instant::now());
        assert_eq!(r.get(), None, "one call is not enough");
        r.record(ms(22), Instant::now());
        assert_eq!(r.get(), Some(ms(20)), "two slow calls: a straggler");
        r.record(ms(1), Instant::now());
        assert_eq!(r.get(), Some(ms(1)), "one fast call clears it");
        r.record(ms(30), Instant::now());
        r.record(ms(30), Instant::now());
        std::thread::sleep(RECENT_FOR + ms(100));
        assert_eq!(r.get(), None, "slow calls before a pause are forgotten");
    }
}
