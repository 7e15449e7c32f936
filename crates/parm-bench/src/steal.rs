//! CPU time the hypervisor took from this machine during a run ("steal" in `/proc/stat`).
//!
//! On a virtual machine the host may deschedule a virtual CPU to run other guests; every
//! process on that CPU, the load generator's clock included, then stops for that time. On the
//! 2-core development VM, an otherwise quiet Equal-Resources run (85% idle) saw 4.5% of CPU
//! time stolen on average and up to 15% in single seconds (`vmstat 1`), and its load generator
//! fell 18 ms behind its schedule: tens of ms of a p99.9 that no serving code caused. So each
//! run reports the fraction stolen beside its tail.

use procfs::{CurrentSI, KernelStats};

/// The stolen and total CPU ticks, summed over all CPUs, at one instant.
fn ticks() -> Option<(u64, u64)> {
    let t = KernelStats::current().ok()?.total;
    let steal = t.steal?;
    let busy_or_idle = t.user + t.nice + t.system + t.idle;
    let other = [t.iowait, t.irq, t.softirq].iter().map(|v| v.unwrap_or(0)).sum::<u64>();
    Some((steal, busy_or_idle + other + steal))
}

/// Measures the stolen fraction of CPU time from [`StealMeter::start`] to
/// [`StealMeter::fraction`].
pub struct StealMeter {
    start: Option<(u64, u64)>,
}

impl StealMeter {
    /// Starts measuring (reads `/proc/stat`).
    pub fn start() -> Self {
        Self { start: ticks() }
    }

    /// The fraction (0 to 1) of all CPUs' time stolen since `start`. `None` where `/proc/stat`
    /// cannot be read or has no steal column (not Linux, or a kernel before 2.6.11), or when no
    /// tick has passed.
    pub fn fraction(&self) -> Option<f64> {
        let ((s0, t0), (s1, t1)) = (self.start?, ticks()?);
        let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
        Some(s1.saturating_sub(s0) as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_over_a_busy_interval() {
        let meter = StealMeter::start();
        // Burn a little CPU so that ticks pass (USER_HZ is 100: 10 ms each).
        let until = std::time::Instant::now() + std::time::Duration::from_millis(60);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        if ticks().is_some() {
            let f = meter.fraction().expect("ticks passed");
            assert!((0.0..=1.0).contains(&f), "{f}");
        }
    }
}
