//! One coding group: members join, the group is sealed (full, or on its seal time), padded
//! if needed, encoded into its parity query, and decoded as outputs arrive.
//!
//! A member is one unit of coding: a single query `[1, d]` or a request's batch coded as one
//! block `[b, d]`. Each member runs its own instance call in its caller's task
//! ([`Member::run`]); the parity query runs in a task of the group's ([`run_parity`]). The
//! decoding rules are [`parm_codes::GroupState`]'s; the timing rules are
//! [`crate::coded::policy`]'s.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use parm_codes::{Answer, GroupState, Slot, encode_rows};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::coded::{FrontendError, Prediction, Shared, policy};
use crate::timer;
use crate::upstream::InstanceError;
use crate::upstream::pool::Served;

/// One coding group, shared by its members' tasks and its parity task.
pub(crate) struct Group {
    pub(crate) id: u64,
    /// The straggler threshold when the group was opened (see [`crate::coded::policy`]).
    threshold: Duration,
    /// The group takes members until this instant; then it is sealed, padded if needed.
    pub(crate) seal_at: Instant,
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    state: GroupState,
    /// Each member's block of rows, `[b_j, d]`.
    inputs: Vec<Arc<[f32]>>,
    /// Where a member's answer goes when another task settles it (a reconstruction, or
    /// unavailable); taken when sent.
    notify: Vec<Option<oneshot::Sender<Answer>>>,
    sealed: bool,
    /// Lazy parity: the parity query is wanted (a straggler or a failure) but the group is not
    /// sealed yet.
    parity_wanted: bool,
    /// The parity task, once started.
    parity: Option<AbortHandle>,
    /// Output checks are on: every group gets its redundant queries, kept until their outputs
    /// are in ([`crate::coded::check`]).
    checking: bool,
    /// The instance that returned each member's prediction (with output checks).
    served_by: Vec<Option<String>>,
    /// The host labels of the instances the members' calls went to (`ADDR@HOST` entries):
    /// the parity query avoids them.
    hosts: Vec<Arc<str>>,
    /// The group was checked against its code.
    checked: bool,
}

impl Group {
    pub(crate) fn open(shared: &Shared, k: usize) -> Arc<Self> {
        // Read once per group: it sets how long the group stays open for members and, with
        // lazy parity, when its parity query goes.
        let threshold = shared.cfg.straggler.threshold(&shared.deployed.medians);
        Arc::new(Group {
            id: shared.next_group.fetch_add(1, Ordering::Relaxed),
            threshold,
            seal_at: Instant::now() + policy::seal_after(shared.cfg.group_timeout, threshold),
            inner: Mutex::new(GroupInner {
                state: GroupState::coded(k, shared.code.clone()),
                inputs: Vec::with_capacity(k),
                notify: Vec::with_capacity(k),
                sealed: false,
                parity_wanted: false,
                parity: None,
                checking: shared.checker.is_some(),
                served_by: Vec::with_capacity(k),
                hosts: Vec::new(),
                checked: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a member of `rows` rows; returns its slot and where its answer will be sent.
    fn add(&self, input: Arc<[f32]>, rows: usize) -> (usize, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let mut g = self.lock();
        let slot = g.inputs.len();
        g.state.set_rows(slot, rows);
        g.inputs.push(input);
        g.notify.push(Some(tx));
        g.served_by.push(None);
        (slot, rx)
    }
}

impl GroupInner {
    /// Sends `answers` to their members, except `me`'s, which is returned; stops a parity
    /// query nobody needs any more once every member is answered.
    fn deliver(&mut self, answers: Vec<Answer>, me: Option<usize>) -> Option<Answer> {
        let mut mine = None;
        for answer in answers {
            let slot = answer_slot(&answer);
            if Some(slot) == me {
                mine = Some(answer);
            } else if let Some(tx) = self.notify.get_mut(slot).and_then(Option::take) {
                let _ = tx.send(answer);
            }
        }
        if self.sealed
            && self.state.is_done()
            && !self.checking
            && let Some(task) = &self.parity
        {
            task.abort(); // frees the parity instance's queue
        }
        mine
    }

    /// With output checks: once every output is in, checks the group against its code and
    /// hands the verdict to the checker (which may eject an instance).
    fn check(&mut self, shared: &Shared, group: u64) {
        let Some(checker) = &shared.checker else { return };
        if self.checked {
            return;
        }
        let Some(check) = self.state.check() else { return };
        self.checked = true;
        let k = self.state.k();
        let instances = (0..k).map(|j| self.served_by.get(j).cloned().flatten()).collect();
        checker.record(group, check, shared.code.redundancy(), instances, &shared.deployed, &shared.stats);
    }

    fn all_answered(&self) -> bool {
        (0..self.inputs.len()).all(|j| self.state.is_answered(j))
    }

    /// Closes the group without a parity query; its failed members become unavailable.
    fn close_unprotected(&mut self) {
        let answers = self.state.close_without_parity(self.inputs.len());
        self.deliver(answers, None);
    }
}

fn answer_slot(answer: &Answer) -> usize {
    match answer {
        Answer::Original { slot, .. } | Answer::Reconstructed { slot, .. } | Answer::Unavailable { slot } => *slot,
    }
}

/// Closes the open coding group if it is `group` and seals it.
fn expire(shared: &Arc<Shared>, group: &Arc<Group>) {
    let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
    if open.as_ref().is_some_and(|(g, _)| Arc::ptr_eq(g, group)) {
        *open = None;
    }
    drop(open);
    seal(shared, group);
}

/// Stops `group` taking members and sends its parity query (ParM: eager; with lazy parity
/// only once wanted), unless every member already has its prediction: a parity query would
/// protect nothing (most partly filled groups at moderate load, where the group timeout
/// outlives the healthy instances' latency). Idempotent.
fn seal(shared: &Arc<Shared>, group: &Arc<Group>) {
    let mut g = group.lock();
    if g.sealed {
        return;
    }
    g.sealed = true;
    if g.all_answered() && !g.checking {
        shared.stats.parity_skipped.fetch_add(1, Ordering::Relaxed);
        g.close_unprotected();
        return;
    }
    if shared.cfg.straggler.lazy_parity && !g.parity_wanted && !g.checking {
        return;
    }
    start_parity(shared, group, &mut g);
}

/// Lazy parity: a member straggles or failed, so the group's parity query should go (as soon
/// as the group is sealed).
fn want_parity(shared: &Arc<Shared>, group: &Arc<Group>, g: &mut GroupInner) {
    if g.parity.is_some() {
        return;
    }
    if !g.sealed {
        g.parity_wanted = true;
    } else if !g.state.is_done() {
        start_parity(shared, group, g);
    }
}

/// A member's call went to a known straggler ([`policy::lagging`]): its group stops waiting
/// for group-mates and its parity query goes now (padded if the group is not full), so that
/// the reconstruction comes one parity call after the query, not after the group's seal time
/// as well (up to the straggler threshold at low load). Costs one parity query per such
/// group: extra work only for the straggler's share of the queries. parm's refinement.
fn protect_now(shared: &Arc<Shared>, group: &Arc<Group>) {
    let mut g = group.lock();
    if !g.sealed {
        shared.stats.sealed_for_straggler.fetch_add(1, Ordering::Relaxed);
    }
    want_parity(shared, group, &mut g);
    drop(g);
    expire(shared, group);
}

fn start_parity(shared: &Arc<Shared>, group: &Arc<Group>, g: &mut GroupInner) {
    let task = shared.runtime.spawn(run_parity(shared.clone(), group.clone()));
    g.parity = Some(task.abort_handle());
}

/// The parity task of a sealed group: pads the group where members are missing or shorter
/// than the longest (with all-zero rows, whose prediction F(0) is then subtracted like any
/// other available output), encodes its redundant queries row by row
/// ([`parm_codes::encode_rows`]; one per parity, or per Berrut-blended query), runs them
/// all at once and decodes each output as it arrives. Without F(0), or if an encoder fails,
/// the group is closed unprotected.
async fn run_parity(shared: Arc<Shared>, group: Arc<Group>) {
    let Some((queries, rows)) = pad_and_encode(&shared, &group).await else { return };
    shared.stats.parity_queries.fetch_add(queries.len() as u64, Ordering::Relaxed);
    shared.stats.parity_rows.fetch_add((rows * queries.len()) as u64, Ordering::Relaxed);
    let (shape, timeout) = (shared.shape(rows), shared.cfg.instance_timeout);
    let (shape, s) = (&shape, &*shared);
    let avoid = group.lock().hosts.clone();
    let mut calls: futures::stream::FuturesUnordered<_> = queries
        .into_iter()
        .zip(&s.redundant)
        .enumerate()
        .map(|(l, (query, r))| {
            let (pool, query, avoid) = (&s.parity[r.pool], Arc::<[f32]>::from(query), &avoid);
            async move { (l, pool.infer_avoiding(&query, shape, timeout, avoid).await) }
        })
        .collect();
    while let Some((l, out)) = futures::StreamExt::next(&mut calls).await {
        if let Err(e) = &out {
            tracing::debug!("parity query {l} failed: {e}");
        }
        let mut g = group.lock();
        let answers = g.state.on_output(Slot::Parity(l), out.ok());
        g.deliver(answers, None);
        g.check(s, group.id);
    }
}

/// Pads the group (fetching F(0) if needed) and builds its redundant queries; returns them
/// with their rows, or `None` if the group was settled or closed unprotected meanwhile.
async fn pad_and_encode(shared: &Shared, group: &Group) -> Option<(Vec<Vec<f32>>, usize)> {
    let needs_padding = {
        let g = group.lock();
        g.state.needs_padding(g.inputs.len())
    };
    let zero = if needs_padding { shared.zero_output().await } else { None };
    let mut g = group.lock();
    let m = g.inputs.len();
    if needs_padding {
        let Some(z) = zero else {
            shared.stats.unprotected_groups.fetch_add(1, Ordering::Relaxed);
            g.close_unprotected();
            return None;
        };
        shared.stats.padded_groups.fetch_add(1, Ordering::Relaxed);
        let answers = g.state.fill_padding(m, &z);
        g.deliver(answers, None);
    }
    if g.state.is_done() && !g.checking {
        return None;
    }
    let blocks: Vec<&[f32]> = g.inputs.iter().map(|v| &v[..]).collect();
    let encoded: Result<Vec<Vec<f32>>, _> =
        shared.redundant.iter().map(|r| encode_rows(&*r.encoder, &blocks, shared.cfg.spec.input_len())).collect();
    match encoded {
        Ok(queries) => Some((queries, g.state.parity_rows(m))),
        Err(e) => {
            tracing::warn!("encoder failed: {e}");
            g.close_unprotected();
            None
        }
    }
}

/// One member's place in a coding group, held by the caller's task. If the caller goes away
/// before its prediction arrived, the member counts as lost for its group (so group-mates
/// lose it as a decoding input, exactly as a failed instance).
pub(crate) struct Member {
    shared: Arc<Shared>,
    group: Arc<Group>,
    slot: usize,
    rows: usize,
    reported: bool,
    /// Why its own instance call failed, for the error if it cannot be reconstructed.
    failure: Option<InstanceError>,
    /// When its own instance call went out ([`Prediction::waited`] counts from here).
    sent_at: Instant,
}

impl Member {
    /// Joins the open coding group (opening one if needed, sealing one that is full or past
    /// its time) with a block of `rows` rows; returns where the group sends this member's
    /// answer if another task settles it.
    pub(crate) fn join(shared: &Arc<Shared>, input: Arc<[f32]>, rows: usize) -> (Self, oneshot::Receiver<Answer>) {
        let k = shared.cfg.encoder.k();
        let now = Instant::now();
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        let expired = match open.take() {
            Some((g, _)) if g.seal_at <= now => Some(g),
            other => {
                *open = other;
                None
            }
        };
        let (group, count) = open.get_or_insert_with(|| (Group::open(shared, k), 0));
        let group = group.clone();
        let (slot, rx) = group.add(input, rows);
        *count += 1;
        let full = *count == k;
        if full {
            *open = None;
        }
        drop(open);
        if let Some(old) = expired {
            seal(shared, &old);
        }
        if full {
            seal(shared, &group);
        }
        (Member { shared: shared.clone(), group, slot, rows, reported: false, failure: None, sent_at: now }, rx)
    }

    /// Runs the member on a deployed instance and answers with its prediction, or with the
    /// reconstruction the group delivers first (ParM §4.2, eager decoding), held back for the
    /// decode grace so that an original about to arrive wins, unless the instance is a known
    /// straggler ([`policy::lagging`]): then no original is about to arrive, and the
    /// reconstruction answers at once. Meanwhile seals the group when
    /// its time is up and, with lazy parity, asks for the parity query once this member has
    /// been outstanding for the straggler threshold.
    pub(crate) async fn run(mut self, input: &Arc<[f32]>, mut answer: oneshot::Receiver<Answer>) -> Result<Prediction, FrontendError> {
        let shared = self.shared.clone();
        self.sent_at = Instant::now();
        let sent_at = self.sent_at;
        // Whether the instance the call went to was a known straggler as it was picked.
        let lagging = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rpc = {
            let (shared, input, shape, group, lagging) =
                (shared.clone(), input.clone(), shared.shape(self.rows), self.group.clone(), lagging.clone());
            async move {
                let note = |i: &dyn crate::upstream::Instance, latency: Option<Duration>| {
                    if let Some(h) = i.host() {
                        group.lock().hosts.push(h.into());
                    }
                    let lags = shared.cfg.straggler.lagging(latency, &shared.deployed.medians);
                    lagging.store(lags, Ordering::Relaxed);
                    if lags {
                        protect_now(&shared, &group);
                    }
                };
                shared.deployed.infer_noting(&input, &shape, shared.cfg.instance_timeout, &note).await
            }
        };
        // Boxed: a call still out when a reconstruction answered the member finishes in a task
        // of its own (see `report_later`).
        let mut rpc = Box::pin(rpc);
        let mut rpc_done = false;
        // The last member seals a full group as it joins; nobody else needs the seal timer then.
        let mut seal_at = (!self.group.lock().sealed).then_some(self.group.seal_at);
        let threshold = self.group.threshold;
        let mut straggler_at = policy::parity_due_after(shared.cfg.straggler.lazy_parity, threshold).map(|d| sent_at + d);
        let grace = policy::decode_grace(shared.cfg.decode_grace, threshold);
        loop {
            tokio::select! {
                out = &mut rpc, if !rpc_done => {
                    rpc_done = true;
                    if let Some(a) = self.report(out) {
                        return self.finish(a);
                    }
                }
                a = &mut answer => {
                    let Ok(a) = a else { return Err(FrontendError::Closed) };
                    if let Answer::Reconstructed { .. } = a
                        && !rpc_done && !lagging.load(Ordering::Relaxed) {
                            // Decode grace: the original may still win.
                            tokio::select! {
                                out = &mut rpc => {
                                    rpc_done = true;
                                    if let Some(a) = self.report(out).filter(|a| matches!(a, Answer::Original { .. })) {
                                        return self.finish(a);
                                    }
                                },
                                _ = timer::sleep_until(sent_at + grace) => {}
                            }
                        }
                    let answer = self.finish(a);
                    if !rpc_done && shared.stats.take_late_call(MAX_LATE_CALLS) {
                        // Its output still goes to the group's check, and its latency to the
                        // instance's recent latency (`policy::lagging`).
                        self.report_later(rpc);
                    } else if !rpc_done {
                        // Dropping the call takes it out of its instance's queue (ParM §4).
                        shared.stats.cancelled_originals.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.reported = true; // the answer is settled; a late output changes nothing
                    }
                    return answer;
                }
                _ = timer::sleep_until_opt(seal_at) => {
                    seal_at = None;
                    expire(&shared, &self.group);
                }
                _ = timer::sleep_until_opt(straggler_at) => {
                    straggler_at = None;
                    let mut g = self.group.lock();
                    want_parity(&shared, &self.group, &mut g);
                }
            }
        }
    }

    /// The member is answered (by a reconstruction) but its own call is still out; it finishes
    /// in a task of its own: with output checks its output goes to the group's check, so that
    /// the group's other outputs are still checked; and its latency is recorded as its
    /// instance's, so that a straggler is known as one ([`policy::lagging`]). The instance
    /// does the work an uncoded frontend would have asked of it anyway.
    ///
    /// The caller holds one of [`MAX_LATE_CALLS`] (`Stats::take_late_call`); it is given back
    /// when the call ends.
    fn report_later(mut self, rpc: std::pin::Pin<Box<impl std::future::Future<Output = Result<Served, InstanceError>> + Send + 'static>>) {
        let runtime = self.shared.runtime.clone();
        runtime.spawn(async move {
            let _late = LateCall(self.shared.clone());
            let out = rpc.await;
            self.report(out);
        });
    }

    /// Records this member's output (`Err`: its call failed) with the group; returns its
    /// answer if that settles it (its original, or unavailable). A failure asks for the
    /// parity query at once (lazy parity). With output checks, an instance ejected while the
    /// member's call was out has had it retried elsewhere by the pool
    /// ([`crate::upstream::pool::Pool::infer_noting`]).
    fn report(&mut self, out: Result<Served, InstanceError>) -> Option<Answer> {
        self.reported = true;
        let checking = self.shared.checker.is_some();
        let served_by = out.as_ref().ok().filter(|_| checking).map(|(_, i)| i.addr().to_string());
        let out = out.map(|(o, _)| o).map_err(|e| self.failure = Some(e)).ok();
        let mine = out.clone().map(|output| Answer::Original { slot: self.slot, output });
        let failed = out.is_none();
        let mut g = self.group.lock();
        if served_by.is_some() {
            g.served_by[self.slot] = served_by;
        }
        let answers = g.state.on_output(Slot::Data(self.slot), out);
        let settled = g.deliver(answers, Some(self.slot));
        g.check(&self.shared, self.group.id);
        if failed && g.parity.is_none() && !g.state.is_done() {
            want_parity(&self.shared, &self.group, &mut g);
        }
        // An original that arrived is this member's answer even if a reconstruction was made
        // meanwhile (it is exact, and in time: the member is still waiting).
        mine.or(settled.filter(|a| !matches!(a, Answer::Original { .. })))
    }

    fn finish(&mut self, answer: Answer) -> Result<Prediction, FrontendError> {
        let (group, position, waited) = (self.group.id, self.slot, self.sent_at.elapsed());
        match answer {
            Answer::Original { output, .. } => Ok(Prediction { output, reconstructed: false, group, position, waited }),
            Answer::Reconstructed { output, .. } => Ok(Prediction { output, reconstructed: true, group, position, waited }),
            Answer::Unavailable { .. } => Err(FrontendError::NotReconstructed(self.failure.take().unwrap_or_else(lost))),
        }
    }
}

/// Most calls of one frontend kept running after their queries were answered by
/// reconstructions ([`Member::report_later`]); past it such a call is dropped, which takes it
/// out of its instance's queue, as ParM cancels the queued original (§4). Without a bound, a
/// deployed instance past its capacity keeps a queue that admission does not see: its
/// queries are answered by reconstructions, so they leave admission's count while their
/// calls still wait. Measured with in-process instances at 1.5x the 5 ms objective rate
/// (`bench/efficiency/slo.sh`, parm-inproc-coded): the deployed lane's queue reached its
/// 1,024 places and 808 queries failed. 64 keeps the lagging rule's and the output checks'
/// samples of a straggler coming.
pub(crate) const MAX_LATE_CALLS: u64 = 64;

/// One of [`MAX_LATE_CALLS`], given back on drop.
struct LateCall(Arc<Shared>);

impl Drop for LateCall {
    fn drop(&mut self) {
        self.0.stats.late_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cause recorded when a member is unavailable without a failure of its own call.
fn lost() -> InstanceError {
    InstanceError::Unavailable { addr: "frontend".into(), message: "the query's instance call was cancelled".into() }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.reported {
            self.report(Err(lost()));
        }
    }
}
