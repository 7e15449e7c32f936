//! Seeded fault injection, to turn a worker into a reproducible straggler, or into an instance
//! that returns wrong outputs.
//!
//! Wrong outputs (`wrong=PROB`): each row of an output is, with probability PROB, replaced
//! after the model computed it, as a corrupted model file, a bit flip or a faulty accelerator
//! would: `wrong_kind=random` (uniform values in the row's own range), `permute` (every class's
//! score moves to the next class, so the top-1 class changes), `scale` (the row times
//! `wrong_scale`, default 10: top-1 kept, confidences wrong) or `mixed` (one of the three at
//! random). These draws come from their own seeded stream, so adding them does not change
//! which requests are delayed.
//!
//! Each request, with probability `delay_prob`, takes `delay_ms` longer *while it holds the
//! worker's compute lane*: the delay is added to the compute time, not to the network, so a
//! slow instance also builds a queue behind it, as a real straggler (contended CPU/GPU/NIC)
//! does in ParM's experiments (Kosaian et al., SOSP'19). The coin flips come from a seeded
//! SplitMix64 stream, one draw per executed request, in execution order.
//!
//! Emulated compute (`service_ms=M[,service_cv=C]`, not a fault): every executed request also
//! holds the compute lane for a service time drawn from a lognormal distribution with mean M
//! ms and coefficient of variation C (default 0: exactly M), waiting rather than computing. The
//! real model still computes the real outputs (for parm's MLP, tens of microseconds), so N
//! workers with an emulated 2 ms service time on one machine behave like N machines serving a
//! 2 ms model, instead of contending for its cores (issue 17). Its draws have their own
//! seeded stream as well.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// Slowdown settings for one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Extra time (milliseconds, >= 0) added to a delayed request's compute.
    pub delay_ms: f64,
    /// Probability in [0, 1] that a request is delayed.
    pub delay_prob: f64,
    /// Seed of the coin flips (same seed, same sequence of delayed requests).
    pub seed: u64,
    /// Slowdown episodes: mean seconds between episode starts (exponential gaps from the
    /// seed; 0 = no episodes), measured from the worker's start.
    pub episode_every_s: f64,
    /// Length of each episode, seconds.
    pub episode_len_s: f64,
    /// Extra ms every request takes while an episode lasts (on top of `delay_ms`).
    pub episode_delay_ms: f64,
    /// Probability in [0, 1] that an output row is replaced by a wrong one.
    pub wrong_prob: f64,
    /// How a wrong row is made.
    pub wrong_kind: WrongKind,
    /// The factor of [`WrongKind::Scale`].
    pub wrong_scale: f64,
    /// Emulated compute: mean service time per executed request, ms (0: none).
    pub service_ms: f64,
    /// Emulated compute: coefficient of variation of the lognormal service time (0: fixed).
    pub service_cv: f64,
}

/// How [`FaultInjector::corrupt`] makes a row wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongKind {
    /// Uniform values between the row's own minimum and maximum.
    Random,
    /// Every value moves to the next position (class c's score becomes class c+1's).
    Permute,
    /// The row times `wrong_scale`.
    Scale,
    /// One of the three, drawn per row.
    Mixed,
}

impl FromStr for WrongKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "random" => WrongKind::Random,
            "permute" => WrongKind::Permute,
            "scale" => WrongKind::Scale,
            "mixed" => WrongKind::Mixed,
            _ => return Err(format!("unknown kind {s:?} (known: random, permute, scale, mixed)")),
        })
    }
}

impl fmt::Display for WrongKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WrongKind::Random => "random",
            WrongKind::Permute => "permute",
            WrongKind::Scale => "scale",
            WrongKind::Mixed => "mixed",
        })
    }
}

impl Default for FaultConfig {
    /// No delay (`delay_ms = 0`), `delay_prob = 1.0`, `seed = 0`.
    fn default() -> Self {
        FaultConfig {
            delay_ms: 0.0,
            delay_prob: 1.0,
            seed: 0,
            episode_every_s: 0.0,
            episode_len_s: 0.0,
            episode_delay_ms: 0.0,
            wrong_prob: 0.0,
            wrong_kind: WrongKind::Random,
            wrong_scale: 10.0,
            service_ms: 0.0,
            service_cv: 0.0,
        }
    }
}

/// Why a fault string was rejected; the message names the offending part.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "invalid fault spec {spec:?}: {reason} (expected e.g. \"delay_ms=20,prob=0.5,seed=7\", \"wrong=0.1,wrong_kind=permute\" or \"none\")"
)]
pub struct FaultParseError {
    /// The whole string given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FaultConfig {
    /// Whether this config ever delays anything.
    pub fn is_active(&self) -> bool {
        (self.delay_ms > 0.0 && self.delay_prob > 0.0) || self.has_episodes() || self.service_ms > 0.0
    }

    /// Whether this config ever makes an output wrong.
    pub fn corrupts(&self) -> bool {
        self.wrong_prob > 0.0
    }

    /// Whether slowdown episodes are configured.
    pub fn has_episodes(&self) -> bool {
        self.episode_every_s > 0.0 && self.episode_len_s > 0.0 && self.episode_delay_ms > 0.0
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.delay_ms.is_finite() && self.delay_ms >= 0.0) {
            return Err(format!("delay_ms must be a finite number >= 0, got {}", self.delay_ms));
        }
        for (name, v) in
            [("episode_every_s", self.episode_every_s), ("episode_len_s", self.episode_len_s), ("episode_delay_ms", self.episode_delay_ms)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a finite number >= 0, got {v}"));
            }
        }
        for (key, v) in [("service_ms", self.service_ms), ("service_cv", self.service_cv)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} must be a finite number >= 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.delay_prob) {
            return Err(format!("prob must be in [0, 1], got {}", self.delay_prob));
        }
        if !(0.0..=1.0).contains(&self.wrong_prob) {
            return Err(format!("wrong must be a probability in [0, 1], got {}", self.wrong_prob));
        }
        if !self.wrong_scale.is_finite() {
            return Err(format!("wrong_scale must be finite, got {}", self.wrong_scale));
        }
        Ok(())
    }
}

impl FromStr for FaultConfig {
    type Err = FaultParseError;

    /// Parses comma-separated `key=value` pairs: `delay_ms` (ms, f64), `prob` or `delay_prob`
    /// (f64 in [0, 1]), `seed` (u64). Missing keys keep their defaults; `""` and `"none"`
    /// give the default (no delay).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FaultParseError { spec: s.to_owned(), reason };
        let mut cfg = FaultConfig::default();
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
            return Ok(cfg);
        }
        for part in trimmed.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            let bad = |e: &dyn fmt::Display| err(format!("{key}={value:?}: {e}"));
            match key {
                "delay_ms" => cfg.delay_ms = value.parse().map_err(|e| bad(&e))?,
                "prob" | "delay_prob" => cfg.delay_prob = value.parse().map_err(|e| bad(&e))?,
                "seed" => cfg.seed = value.parse().map_err(|e| bad(&e))?,
                "episode_every_s" => cfg.episode_every_s = value.parse().map_err(|e| bad(&e))?,
                "episode_len_s" => cfg.episode_len_s = value.parse().map_err(|e| bad(&e))?,
                "episode_delay_ms" => cfg.episode_delay_ms = value.parse().map_err(|e| bad(&e))?,
                "wrong" => cfg.wrong_prob = value.parse().map_err(|e| bad(&e))?,
                "wrong_kind" => cfg.wrong_kind = value.parse().map_err(|e: String| bad(&e))?,
                "wrong_scale" => cfg.wrong_scale = value.parse().map_err(|e| bad(&e))?,
                "service_ms" => cfg.service_ms = value.parse().map_err(|e| bad(&e))?,
                "service_cv" => cfg.service_cv = value.parse().map_err(|e| bad(&e))?,
                _ => {
                    return Err(err(format!(
                        "unknown key {key:?} (known: delay_ms, prob, seed, episode_every_s, episode_len_s, episode_delay_ms, wrong, wrong_kind, wrong_scale, service_ms, service_cv)"
                    )));
                }
            }
        }
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }
}

impl fmt::Display for FaultConfig {
    /// The inverse of `from_str`: `delay_ms=20,prob=1,seed=7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay_ms={},prob={},seed={},episode_every_s={},episode_len_s={},episode_delay_ms={}",
            self.delay_ms, self.delay_prob, self.seed, self.episode_every_s, self.episode_len_s, self.episode_delay_ms
        )?;
        if self.wrong_prob > 0.0 {
            write!(f, ",wrong={},wrong_kind={},wrong_scale={}", self.wrong_prob, self.wrong_kind, self.wrong_scale)?;
        }
        if self.service_ms > 0.0 {
            write!(f, ",service_ms={},service_cv={}", self.service_ms, self.service_cv)?;
        }
        Ok(())
    }
}

/// Draws the per-request delays of a [`FaultConfig`]; shared by all requests of one worker.
#[derive(Debug)]
pub struct FaultInjector {
    config: FaultConfig,
    state: Mutex<u64>,
    /// The stream of wrong-output draws (separate, so delays stay as they were).
    wrong_state: Mutex<u64>,
    /// The stream of emulated service times (separate, likewise).
    service_state: Mutex<u64>,
    started: std::time::Instant,
    /// (start, end) of the current or next episode, seconds since `started`.
    episode: Mutex<(f64, f64)>,
}

impl FaultInjector {
    /// Starts the seeded stream of coin flips.
    pub fn new(config: FaultConfig) -> Self {
        let state = Mutex::new(config.seed);
        let wrong_state = Mutex::new(config.seed ^ 0x5752_4f4e_475f_4f55); // "WRONG_OU"
        let service_state = Mutex::new(config.seed ^ 0x5345_5256_4943_455f); // "SERVICE_"
        let injector = FaultInjector {
            config,
            state,
            wrong_state,
            service_state,
            started: std::time::Instant::now(),
            episode: Mutex::new((f64::INFINITY, f64::INFINITY)),
        };
        if injector.config.has_episodes() {
            let start = injector.exponential(injector.config.episode_every_s);
            *injector.episode.lock().unwrap_or_else(|p| p.into_inner()) = (start, start + injector.config.episode_len_s);
        }
        injector
    }

    /// True if a slowdown episode lasts at `t` seconds after the worker started; episodes
    /// start at exponential gaps (mean `episode_every_s`) after the previous one ended.
    fn in_episode(&self, t: f64) -> bool {
        let mut ep = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        while t >= ep.1 {
            let start = ep.1 + self.exponential(self.config.episode_every_s);
            *ep = (start, start + self.config.episode_len_s);
        }
        t >= ep.0
    }

    fn exponential(&self, mean: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        -mean * (1.0 - u).ln()
    }

    /// The config this injector draws from.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// The extra compute delay for the next executed request, or `None`.
    pub fn next_delay(&self) -> Option<Duration> {
        if !self.config.is_active() {
            return None;
        }
        // 53 random bits -> uniform in [0, 1); prob 1.0 always delays, 0.0 never.
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut ms = if u < self.config.delay_prob { self.config.delay_ms } else { 0.0 };
        if self.config.has_episodes() && self.in_episode(self.started.elapsed().as_secs_f64()) {
            ms += self.config.episode_delay_ms;
        }
        if self.config.service_ms > 0.0 {
            ms += self.service_time_ms();
        }
        (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
    }

    /// One emulated service time, ms: lognormal with mean `service_ms` and coefficient of
    /// variation `service_cv` (sigma^2 = ln(1 + cv^2), mu = ln(mean) - sigma^2 / 2), the normal
    /// drawn by Box-Muller from the service stream.
    fn service_time_ms(&self) -> f64 {
        let (mean, cv) = (self.config.service_ms, self.config.service_cv);
        if cv == 0.0 {
            return mean;
        }
        let sigma2 = (1.0 + cv * cv).ln();
        let (u1, u2) = (1.0 - self.uniform(&self.service_state), self.uniform(&self.service_state));
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (mean.ln() - sigma2 / 2.0 + sigma2.sqrt() * z).exp()
    }

    /// Makes rows of `output` (`[rows, m]`, row-major) wrong as the config says; returns how
    /// many rows it changed.
    pub fn corrupt(&self, output: &mut [f32], rows: usize) -> usize {
        if !self.config.corrupts() || rows == 0 || !output.len().is_multiple_of(rows) {
            return 0;
        }
        let m = output.len() / rows;
        let mut changed = 0;
        for row in output.chunks_mut(m.max(1)) {
            if self.uniform(&self.wrong_state) >= self.config.wrong_prob {
                continue;
            }
            let kind = match self.config.wrong_kind {
                WrongKind::Mixed => {
                    [WrongKind::Random, WrongKind::Permute, WrongKind::Scale][(self.uniform(&self.wrong_state) * 3.0) as usize % 3]
                }
                kind => kind,
            };
            match kind {
                WrongKind::Permute => row.rotate_right(1),
                WrongKind::Scale => row.iter_mut().for_each(|v| *v *= self.config.wrong_scale as f32),
                _ => {
                    let (lo, hi) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    for v in row.iter_mut() {
                        *v = lo + (hi - lo) * self.uniform(&self.wrong_state) as f32;
                    }
                }
            }
            changed += 1;
        }
        changed
    }

    fn uniform(&self, state: &Mutex<u64>) -> f64 {
        (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_u64(&self) -> u64 {
        splitmix(&self.state)
    }
}

/// The next draw of a SplitMix64 stream (Steele, Lea, Flood 2014): tiny, seedable, good
/// enough for coin flips.
fn splitmix(state: &Mutex<u64>) -> u64 {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let cfg = FaultConfig::from_str("delay_ms=20, prob=0.25,seed=7").unwrap();
        assert_eq!(cfg, FaultConfig { delay_ms: 20.0, delay_prob: 0.25, seed: 7, ..FaultConfig::default() });
        assert_eq!(cfg.to_string().parse::<FaultConfig>().unwrap(), cfg);
        assert_eq!("none".parse::<FaultConfig>().unwrap(), FaultConfig::default());
        assert_eq!("".parse::<FaultConfig>().unwrap(), FaultConfig::default());
        assert_eq!("delay_ms=5".parse::<FaultConfig>().unwrap().delay_prob, 1.0);
    }

    #[test]
    fn wrong_outputs_are_seeded_and_of_their_kind() {
        let cfg: FaultConfig = "wrong=0.5,wrong_kind=permute,seed=3".parse().unwrap();
        assert_eq!(cfg.to_string().parse::<FaultConfig>().unwrap(), cfg);
        assert!(!cfg.is_active() && cfg.corrupts());
        let row: Vec<f32> = (0..10).map(|c| c as f32).collect();
        let run = |cfg: &FaultConfig| {
            let inj = FaultInjector::new(cfg.clone());
            let mut out = row.repeat(1000);
            let changed = inj.corrupt(&mut out, 1000);
            (out, changed)
        };
        let (out, changed) = run(&cfg);
        assert_eq!(run(&cfg).0, out, "same seed, same corruption");
        assert!((400..600).contains(&changed), "{changed} of 1000 rows");
        for r in out.chunks(10) {
            assert!(r == row.as_slice() || (r[0] == 9.0 && r[1] == 0.0), "{r:?}");
        }
        assert_eq!(out.chunks(10).filter(|r| *r != row.as_slice()).count(), changed);
        let scaled = run(&"wrong=1,wrong_kind=scale,wrong_scale=2".parse().unwrap()).0;
        assert_eq!(&scaled[..10], &row.iter().map(|v| v * 2.0).collect::<Vec<_>>()[..]);
        let random = run(&"wrong=1,wrong_kind=random".parse().unwrap()).0;
        assert!(random.iter().all(|v| (0.0..=9.0).contains(v)) && random[..10] != row[..]);
        assert_eq!(FaultInjector::new(FaultConfig::default()).corrupt(&mut row.clone(), 1), 0);
        assert!("wrong=2".parse::<FaultConfig>().unwrap_err().to_string().contains("[0, 1]"));
        assert!("wrong_kind=flip".parse::<FaultConfig>().unwrap_err().to_string().contains("unknown kind"));
    }

    #[test]
    fn episodes_come_and_go() {
        let cfg: FaultConfig = "episode_every_s=0.01,episode_len_s=0.01,episode_delay_ms=5,seed=3".parse().unwrap();
        let inj = FaultInjector::new(cfg);
        let (mut inside, mut outside) = (0, 0);
        for i in 0..2000 {
            if inj.in_episode(i as f64 * 0.001) {
                inside += 1;
            } else {
                outside += 1;
            }
        }
        // Half the time in episodes on average (mean gap = length); generous bounds.
        assert!(inside > 400 && outside > 400, "inside {inside} outside {outside}");
    }

    #[test]
    fn rejects_bad_strings_with_reasons() {
        for (bad, needle) in [
            ("delay_ms=abc", "delay_ms"),
            ("prob=1.5", "[0, 1]"),
            ("delay_ms=-3", ">= 0"),
            ("delay_ms", "key=value"),
            ("speed=2", "unknown key"),
            ("seed=-1", "seed"),
        ] {
            let e = bad.parse::<FaultConfig>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn seeded_draws_are_reproducible_and_match_prob() {
        let cfg = FaultConfig { delay_ms: 10.0, delay_prob: 0.3, seed: 42, ..FaultConfig::default() };
        let draws = |c: &FaultConfig| {
            let inj = FaultInjector::new(c.clone());
            (0..10_000).map(|_| inj.next_delay().is_some()).collect::<Vec<_>>()
        };
        let a = draws(&cfg);
        assert_eq!(a, draws(&cfg));
        let frac = a.iter().filter(|&&d| d).count() as f64 / a.len() as f64;
        assert!((frac - 0.3).abs() < 0.03, "fraction delayed {frac}");
        let always = FaultInjector::new(FaultConfig { delay_prob: 1.0, ..cfg.clone() });
        assert_eq!(always.next_delay(), Some(Duration::from_millis(10)));
        // Emulated compute: a fixed service time, and a lognormal one with the asked mean and
        // spread (20,000 draws: within 3% of the mean, cv within 10%).
        let fixed = FaultInjector::new("service_ms=2".parse().unwrap());
        assert_eq!(fixed.next_delay(), Some(Duration::from_millis(2)));
        let spread = FaultInjector::new("service_ms=2,service_cv=0.5,seed=3".parse().unwrap());
        let ms: Vec<f64> = (0..20_000).map(|_| spread.next_delay().unwrap().as_secs_f64() * 1e3).collect();
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let sd = (ms.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / ms.len() as f64).sqrt();
        assert!((mean - 2.0).abs() < 0.06 && (sd / mean - 0.5).abs() < 0.05, "mean {mean}, cv {}", sd / mean);
        assert!("service_ms=-1".parse::<FaultConfig>().is_err());
        assert_eq!(FaultInjector::new(FaultConfig::default()).next_delay(), None);
    }
}
