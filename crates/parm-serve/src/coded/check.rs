//! Wrong outputs caught: each complete coding group is checked against its code, instances
//! whose outputs keep disagreeing with it leave the rotation.
//!
//! The code's redundancy, spent by ParM on missing predictions, also exposes wrong ones. Once
//! every prediction and redundant output of a group is in, [`parm_codes::GroupState::check`]
//! gives the syndrome and its size (RMS per value) and, with r >= 2 parities, the member whose
//! single error explains it. Learned parity models are approximate, so the syndrome of a
//! healthy group is not zero. Its score is the syndrome whitened by the covariance of healthy
//! groups' syndromes ([`parm_codes::NoiseModel`]) once 64 groups of a size were seen (the RMS
//! before, and where the syndrome never varies): at the same threshold it halved the false
//! alarms of the RMS in `parm bench --wrong-outputs` (BENCHMARKS.md). A group is **flagged**
//! when its score exceeds
//! [`OutputChecks::threshold`] times the running median score of recent groups with as many
//! members (a median, so a minority of wrong groups does not move the yardstick; per number of
//! members, because a group sealed partly filled by its timeout is padded, and the parity
//! model's error on padding differs: in a test where F is its own parity model, healthy full
//! groups scored 0.05 and a padded one 2.8, and a padded group's only member was blamed alone)
//! **and** the code disputes some member's top-1 class ([`parm_codes::Check::disputed`]: the
//! member's output corrected by the syndrome, as ParM's decoder would rebuild it, has another
//! largest value). A wrong output that changes a client's answer is disputed almost always; a
//! healthy group over the threshold only in about 60% of cases, so the gate removes about 40%
//! of the false alarms at the same threshold (`--check-any-change` turns it off, for models
//! whose outputs are not class scores).
//!
//! A flagged group **blames** instances: with r >= 2 the located member's instance alone (when
//! it explains at least [`OutputChecks::min_share`] of the syndrome). Otherwise (r = 1 cannot
//! tell which member is wrong) only disputed members are suspects, and among them the
//! instances' history decides: a wrong instance is in every one
//! of its flagged groups, a healthy one only in those it shares with a wrong one, so a member
//! whose instance was blamed at least twice, and at least twice as often as each group-mate's,
//! is blamed alone; failing that, every suspect is. Each deployed
//! instance keeps its last [`OutputChecks::window`] checks; one blamed in at least
//! [`OutputChecks::eject_rate`] x window of them (2 at least), whose blamed share is the highest
//! and at least three times the median share of the others, is **ejected**: out of the
//! rotation for [`OutputChecks::eject_for`], then back on probation; every instance's window
//! starts again then (the suspicion the ejected one cast on its group-mates goes with it).
//! An output that an instance returns after its ejection (a call in flight) is refused and the
//! query retried on an instance in rotation ([`crate::upstream::pool::Pool`]); its coding
//! group may answer it from the code first. At most half the deployed instances are out at
//! once.
//!
//! The check needs every output, so with checks on every group gets its redundant queries
//! (none skipped, none cancelled once the members are answered); a wrong output that arrives
//! before its group is complete still reaches its client, and only later ones are stopped.
//!
//! Source of the idea: Kosaian et al. (ParM, SOSP 2019) leave wrong outputs aside; ApproxIFER
//! (Soleymani et al., AAAI 2022, arXiv 2109.09868) corrects them with more redundant queries;
//! here r >= 2 learned parities locate one wrong member per group by syndrome decoding
//! ([`parm_codes::check_rows`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parm_codes::{Check, NoiseModel};

use crate::coded::Stats;
use crate::upstream::pool::Pool;

/// Settings of output checking (`parm serve --check-outputs`).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputChecks {
    /// A group is flagged when its syndrome score exceeds this many times the running median
    /// score (default 2.5: in `parm bench --wrong-outputs` one parity at k = 2 caught 95-98% of
    /// the wrong outputs that changed the top-1 class at 0.4-0.5% false alarms, and no healthy
    /// instance was ejected in 12 healthy runs; 4 catches about 73% at under 0.1%).
    pub threshold: f32,
    /// With r >= 2: the least share of a flagged group's syndrome its located member must
    /// explain to be blamed alone (default 0.8; otherwise the members a group can suspect are,
    /// as with r = 1).
    pub min_share: f32,
    /// Checks per instance that ejection looks at (default 100).
    pub window: usize,
    /// Blamed checks, as a share of a full window, that eject an instance (at least 2 checks),
    /// if its share of its own window is also at least three times the median share of the
    /// other instances (default 0.05: a healthy instance is blamed in well under 1% of its
    /// checks, see BENCHMARKS.md).
    pub eject_rate: f64,
    /// How long an ejected instance stays out of rotation (default 30 s).
    pub eject_for: Duration,
    /// Flag a group by its score alone (`--check-any-change`), for models whose outputs are not
    /// class scores. By default (false) a group is flagged only if the code also disputes a
    /// member's top-1 class ([`parm_codes::Check::disputed`]), and only disputed members are
    /// blamed: a wrong output that changes no answer's class is not worth an ejection, and at
    /// the same threshold the false alarms fall by about 40% for 0.2 points of catch rate
    /// (BENCHMARKS.md).
    pub any_change: bool,
}

impl Default for OutputChecks {
    fn default() -> Self {
        OutputChecks {
            threshold: 2.5,
            min_share: 0.8,
            window: 100,
            eject_rate: 0.05,
            eject_for: Duration::from_secs(30),
            any_change: false,
        }
    }
}

impl OutputChecks {
    /// Errors: a threshold or window that would never (or always) flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold.is_finite() && self.threshold > 1.0) {
            return Err(format!("the check threshold must be above 1 (times the median score), got {}", self.threshold));
        }
        let rate_ok = self.eject_rate > 0.0 && self.eject_rate <= 1.0;
        if !((0.0..=1.0).contains(&self.min_share) && rate_ok) {
            return Err(format!("min_share must be in [0, 1] and eject_rate in (0, 1], got {} and {}", self.min_share, self.eject_rate));
        }
        if self.window < 4 {
            return Err(format!("the check window must hold at least 4 checks, got {}", self.window));
        }
        Ok(())
    }
}

/// One checked group, as [`crate::coded::Frontend::subscribe_checks`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckVerdict {
    /// The coding group ([`crate::coded::Prediction::group`]).
    pub group: u64,
    /// The running median of scores the group's score ([`Check::score`]) was compared with
    /// (of recent groups with as many members, padding not counted); 0 while fewer than 8 such
    /// groups were seen (the warm-up, when no group is flagged).
    pub median: f32,
    /// The group's [`parm_codes::Check`], its `score` the one compared with `median`: the
    /// whitened score once the noise model of groups this size answers, the RMS before.
    pub check: Check,
    /// Score above threshold x median, and (unless [`OutputChecks::any_change`]) some member's
    /// top-1 class disputed.
    pub flagged: bool,
    /// Positions blamed ([`crate::coded::Prediction::position`]); empty unless flagged.
    pub blamed: Vec<usize>,
    /// The instance that returned each member's prediction (`None`: padding).
    pub instances: Vec<Option<String>>,
}

/// Scores seen before any group can be flagged.
const WARM_UP: usize = 8;
/// Recent scores the median is taken over.
const SCORES: usize = 255;
/// Fewest blamed checks that eject an instance, whatever the window: a healthy group's
/// syndrome now and then exceeds the threshold, and one such group must not eject anyone.
const MIN_BLAMED: usize = 2;

/// The running state of output checking of one frontend.
pub(crate) struct Checker {
    cfg: OutputChecks,
    state: Mutex<CheckerState>,
    verdicts: tokio::sync::broadcast::Sender<CheckVerdict>,
}

#[derive(Default)]
struct CheckerState {
    /// Recent RMS scores, per number of members (padding not counted).
    scores: HashMap<usize, VecDeque<f32>>,
    /// Recent whitened scores, per number of members, since that size's noise model answers.
    white_scores: HashMap<usize, VecDeque<f32>>,
    /// The healthy syndrome per number of members.
    noise: HashMap<usize, NoiseModel>,
    /// Per deployed instance: its last checks (true: blamed).
    windows: HashMap<String, VecDeque<bool>>,
}

impl CheckerState {
    /// Of the `candidates` (members that could be blamed), the one whose instance has been
    /// blamed in at least [`MIN_BLAMED`] of its window's checks and in at least twice as many
    /// as any other candidate's: a flagged group the code cannot
    /// locate (r = 1, or r >= 2 with the located member under `min_share`) is then put on it
    /// alone. A wrong instance is in every flagged group it joins and a healthy one only in
    /// those it shares with a wrong one, so after a wrong instance's first few flagged groups
    /// its group-mates are no longer blamed with it.
    fn most_blamed(&self, instances: &[Option<String>], candidates: &[usize]) -> Option<usize> {
        let count = |j: usize| instances[j].as_ref().and_then(|a| self.windows.get(a)).map_or(0, blamed);
        let (top, most) = candidates.iter().map(|&j| (j, count(j))).max_by_key(|(_, c)| *c)?;
        let mut mates = candidates.iter().filter(|&&j| j != top);
        (most >= MIN_BLAMED && mates.all(|&j| most >= 2 * count(j).max(1))).then_some(top)
    }
}

impl Checker {
    pub(crate) fn new(cfg: OutputChecks) -> Self {
        Checker { cfg, state: Default::default(), verdicts: tokio::sync::broadcast::channel(4096).0 }
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<CheckVerdict> {
        self.verdicts.subscribe()
    }

    /// Takes the verdict on group `group`, whose members' predictions came from `instances`
    /// (`None`: padding), and ejects from `pool` an instance that keeps being blamed.
    pub(crate) fn record(&self, group: u64, mut check: Check, r: usize, instances: Vec<Option<String>>, pool: &Pool, stats: &Stats) {
        stats.checks.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let size = instances.iter().flatten().count();
        let noise = st.noise.entry(size).or_insert_with(|| NoiseModel::new(check.row_len, check.syndrome.len()));
        let whitened = noise.score(&check);
        // Both yardsticks stay current; the whitened one is used once it has its own warm-up
        // (WARM_UP scores before this one), so that no group goes unjudged while it starts.
        let raw_score = check.score;
        if let Some(w) = whitened {
            push(st.white_scores.entry(size).or_default(), w);
        }
        let white = whitened.zip(st.white_scores.get(&size)).filter(|(_, ws)| ws.len() > WARM_UP);
        let (score, median) = match white {
            Some((w, ws)) => (w, median(ws.iter().rev().skip(1).copied())),
            None => (raw_score, median(st.scores.get(&size).into_iter().flatten().copied())),
        };
        check.score = score;
        // Before the yardstick exists no group can be flagged, so none counts in the windows
        // either (a wrong instance's unblamed early checks would hide it behind its group-mates).
        let warm = st.scores.get(&size).is_some_and(|s| s.len() >= WARM_UP);
        let over = warm && check.score > self.cfg.threshold * median;
        // The members that could be blamed: present, and (by default) whose class is disputed.
        let candidates: Vec<usize> = (0..instances.len())
            .filter(|&j| instances[j].is_some() && (self.cfg.any_change || check.disputed.get(j).copied().unwrap_or(true)))
            .collect();
        let flagged = over && !candidates.is_empty();
        push(st.scores.entry(size).or_default(), raw_score);
        // A group over the threshold may hold a wrong output: the noise model learns from the others.
        if !over && let Some(n) = st.noise.get_mut(&size) {
            n.observe(&check);
        }
        // A member from an instance already ejected explains the disagreement (its outputs
        // still in flight were checked after it left): its group-mates are not blamed.
        let out = |j: &usize| instances[*j].as_deref().is_some_and(|a| pool.is_ejected(a));
        let blamed: Vec<usize> = match check.located {
            _ if !flagged => Vec::new(),
            _ if (0..instances.len()).any(|j| out(&j)) => (0..instances.len()).filter(out).collect(),
            Some((j, share)) if r >= 2 && share >= self.cfg.min_share => vec![j],
            _ => st.most_blamed(&instances, &candidates).map_or(candidates, |j| vec![j]),
        };
        if flagged {
            stats.flagged.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(group, score = check.score, median, flagged, ?blamed, ?instances, "output check");
        let mut suspects = Vec::new();
        for (j, addr) in instances.iter().enumerate().filter(|_| warm) {
            let Some(addr) = addr else { continue };
            let w = st.windows.entry(addr.clone()).or_default();
            if w.len() == self.cfg.window {
                w.pop_front();
            }
            w.push_back(blamed.contains(&j));
            if blamed.contains(&j) {
                suspects.push(addr.clone());
            }
        }
        for addr in suspects {
            if self.should_eject(&st, &addr, pool) && pool.eject(&addr, Instant::now() + self.cfg.eject_for) {
                // Every window starts again: the suspicion the ejected instance cast on its
                // group-mates (r = 1 blames them all) must not eject them next.
                st.windows.clear();
                stats.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    instance = %addr,
                    model = pool.model(),
                    "instance out of rotation for {:?}: its outputs keep disagreeing with the code",
                    self.cfg.eject_for
                );
            }
        }
        drop(st);
        if self.verdicts.receiver_count() > 0 {
            let median = if warm { median } else { 0.0 };
            let _ = self.verdicts.send(CheckVerdict { group, median, check, flagged, blamed, instances });
        }
    }

    /// An instance is ejected when its window is at least half full, it was blamed in at least
    /// `eject_rate` x `window` checks (and never fewer than [`MIN_BLAMED`]), its blamed share
    /// is the highest of all and three times the median share of the pool's other instances
    /// (with r = 1 a healthy instance shares the blame of the groups it has in common with a
    /// wrong one), and fewer than half the pool's instances are out.
    fn should_eject(&self, st: &CheckerState, addr: &str, pool: &Pool) -> bool {
        let share = |w: &VecDeque<bool>| blamed(w) as f64 / w.len().max(1) as f64;
        let Some(w) = st.windows.get(addr) else { return false };
        // A count, not a share of a partly filled window: just after the windows start again, one
        // flagged healthy group would otherwise be a share of 1/5 or more for both its members.
        let needed = ((self.cfg.eject_rate * self.cfg.window as f64).ceil() as usize).max(MIN_BLAMED);
        if w.len() < self.cfg.window / 2 || blamed(w) < needed {
            return false;
        }
        let others: Vec<f32> = st.windows.iter().filter(|(a, _)| a.as_str() != addr).map(|(_, w)| share(w) as f32).collect();
        let mine = share(w) as f32;
        // The most blamed goes first: with r = 1 a wrong instance's group-mates share its blame.
        let most = others.iter().all(|&o| mine > o);
        most && mine >= 3.0 * median(others) && (pool.ejected().len() + 1) * 2 <= pool.len()
    }
}

/// Appends a score to a yardstick of the last [`SCORES`].
fn push(scores: &mut VecDeque<f32>, score: f32) {
    if scores.len() == SCORES {
        scores.pop_front();
    }
    scores.push_back(score);
}

/// How many of a window's checks blamed its instance.
fn blamed(window: &VecDeque<bool>) -> usize {
    window.iter().filter(|b| **b).count()
}

/// The median of `values` (0 if empty).
fn median(values: impl IntoIterator<Item = f32>) -> f32 {
    let mut v: Vec<f32> = values.into_iter().collect();
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use futures::future::BoxFuture;

    use super::*;
    use crate::upstream::dispatch::DispatchBatching;
    use crate::upstream::redundancy::Redundancy;
    use crate::upstream::{Instance, InstanceError};

    struct Named(String);

    impl Instance for Named {
        fn addr(&self) -> &str {
            &self.0
        }

        fn infer<'a>(&'a self, _: &'a str, _: &'a [f32], _: &'a [i64], _: Duration) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn check(score: f32) -> Check {
        Check { score, per_output: vec![score], located: None, syndrome: vec![vec![score]], row_len: 1, disputed: vec![true; 2] }
    }

    /// Seven instances "a".."g" behind a checker with a window of 10, warmed up.
    fn setup() -> (Checker, Pool, Stats) {
        let names = "abcdefg".chars().map(|c| Arc::new(Named(c.to_string())) as Arc<dyn Instance>).collect();
        let pool =
            Pool::new(names, "m", Redundancy::None, DispatchBatching::default(), Duration::from_secs(1), Arc::new(AtomicU64::new(0)));
        let checker = Checker::new(OutputChecks { window: 10, ..Default::default() });
        let stats = Stats::default();
        for g in 0..WARM_UP as u64 {
            checker.record(g, check(1.0), 1, vec![Some("a".into()), Some("b".into())], &pool, &stats);
        }
        (checker, pool, stats)
    }

    fn group(checker: &Checker, pool: &Pool, stats: &Stats, score: f32, a: &str, b: &str) {
        checker.record(0, check(score), 1, vec![Some(a.into()), Some(b.into())], pool, stats);
    }

    /// The flake this guards against: a window only half full where one flagged healthy group
    /// is a blamed share of 1/5 for its members, the others at 0.
    #[test]
    fn one_flagged_group_ejects_nobody() {
        let (checker, pool, stats) = setup();
        for _ in 0..5 {
            for (a, b) in [("d", "e"), ("f", "g"), ("a", "d"), ("b", "c")] {
                group(&checker, &pool, &stats, 1.0, a, b);
            }
        }
        // c's window one longer than b's: b's share is the strict highest.
        group(&checker, &pool, &stats, 1.0, "c", "d");
        group(&checker, &pool, &stats, 100.0, "b", "c");
        assert_eq!(stats.flagged.load(Ordering::Relaxed), 1);
        assert!(pool.ejected().is_empty(), "{:?}", pool.ejected());
    }

    /// A padded group's syndrome is of another size than a full one's (here 50x): compared with
    /// full groups, every padded group would be flagged and its only member blamed alone.
    #[test]
    fn padded_groups_are_compared_with_padded_groups() {
        let (checker, pool, stats) = setup();
        let names: Vec<String> = "abcdefg".chars().map(String::from).collect();
        for i in 0..60 {
            group(&checker, &pool, &stats, 0.05 + 0.001 * (i % 3) as f32, &names[i % 7], &names[(i + 1) % 7]);
            if i % 4 == 0 {
                checker.record(0, check(2.8 + 0.01 * (i % 3) as f32), 1, vec![Some("b".into()), None], &pool, &stats);
            }
        }
        assert_eq!(stats.flagged.load(Ordering::Relaxed), 0);
        assert!(pool.ejected().is_empty(), "{:?}", pool.ejected());
    }

    /// With r = 1 a wrong instance's group-mates share the blame of its first flagged groups
    /// only: once it was blamed twice, and twice as often as a mate, it is blamed alone.
    #[test]
    fn an_unlocated_group_is_blamed_on_the_instance_blamed_before() {
        let (checker, pool, stats) = setup();
        let mut verdicts = checker.subscribe();
        for (i, mate) in ["b", "c", "d", "e"].into_iter().enumerate() {
            group(&checker, &pool, &stats, 100.0, "a", mate);
            let blamed = verdicts.try_recv().unwrap().blamed;
            assert_eq!(blamed, if i < 2 { vec![0, 1] } else { vec![0] }, "flagged group {i}, with {mate}");
        }
        // A healthy pair's flagged group: neither was blamed before, both are suspected.
        group(&checker, &pool, &stats, 100.0, "f", "g");
        assert_eq!(verdicts.try_recv().unwrap().blamed, vec![0, 1]);
        assert!(pool.ejected().is_empty(), "a's window is not half full yet");
    }

    /// A syndrome over the threshold that disputes no member's top-1 class flags nothing by
    /// default, and only the disputed member is blamed; `any_change` flags by the score alone.
    #[test]
    fn only_a_disputed_class_flags_a_group_unless_any_change() {
        let (checker, pool, stats) = setup();
        let mut verdicts = checker.subscribe();
        let undisputed = Check { disputed: vec![false, false], ..check(100.0) };
        checker.record(0, undisputed.clone(), 1, vec![Some("a".into()), Some("b".into())], &pool, &stats);
        assert!(!verdicts.try_recv().unwrap().flagged, "no class in doubt");
        checker.record(
            0,
            Check { disputed: vec![false, true], ..check(100.0) },
            1,
            vec![Some("a".into()), Some("b".into())],
            &pool,
            &stats,
        );
        assert_eq!(verdicts.try_recv().unwrap().blamed, vec![1], "the disputed member alone");

        let any = Checker::new(OutputChecks { window: 10, any_change: true, ..Default::default() });
        let mut verdicts = any.subscribe();
        for g in 0..=WARM_UP as u64 {
            any.record(
                g,
                if g < WARM_UP as u64 { check(1.0) } else { undisputed.clone() },
                1,
                vec![Some("a".into()), Some("b".into())],
                &pool,
                &stats,
            );
        }
        let v = std::iter::from_fn(|| verdicts.try_recv().ok()).last().unwrap();
        assert!(v.flagged && v.blamed == vec![0, 1], "{v:?}");
    }

    /// An instance in every flagged group (r = 1 blames each member) is out after its second.
    #[test]
    fn an_instance_blamed_twice_and_most_is_ejected() {
        let (checker, pool, stats) = setup();
        let names: Vec<String> = "bcdefg".chars().map(String::from).collect();
        for (i, mate) in names.iter().cycle().take(12).enumerate() {
            group(&checker, &pool, &stats, 1.0, &names[i % 6], &names[(i + 1) % 6]);
            group(&checker, &pool, &stats, if i < 5 { 1.0 } else { 100.0 }, "a", mate);
            if i == 5 {
                assert!(pool.ejected().is_empty(), "one blamed check is not enough");
            }
        }
        assert_eq!(pool.ejected(), vec!["a".to_string()]);
        assert_eq!(stats.ejections.load(Ordering::Relaxed), 1);
    }
}
