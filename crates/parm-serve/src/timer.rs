//! Sub-millisecond timers for the latency-critical waits: the coding group's seal, the
//! straggler threshold, the decode grace, the hedging delay, and the load generator's send
//! times.
//!
//! tokio's timer wheel rounds every deadline up to a whole millisecond and its driver sleeps in
//! whole milliseconds. Measured on the 2-core dev machine (a 0.7-1.6 ms sleep, 400 samples), a
//! `tokio::time::sleep` returns **1.08 ms late at p50 and 1.7 ms at p90**: as long as the 1 ms
//! straggler threshold it implements. async-io's timers (smol-rs; on Linux a timerfd under
//! epoll, driven by async-io's own thread, usable from any executor) return **45 us late at
//! p50** (p99 0.2-0.3 ms), and arming plus cancelling one costs under 1 us. Everything else
//! (RPC timeouts, health probes, drains) stays on tokio's timers, where a millisecond is noise.

use std::time::Duration;

use tokio::time::Instant;

/// Completes at `deadline` (typically within ~50 us after it; at once if it has passed).
pub async fn sleep_until(deadline: Instant) {
    async_io::Timer::at(deadline.into_std()).await;
}

/// Completes after `duration` (typically within ~50 us after it).
pub async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

/// [`sleep_until`] `deadline`, or never if there is none (a branch of `select!` that is off).
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason this module exists: a sub-millisecond wait must not round up to a whole
    /// millisecond or more. Generous bound (a loaded CI machine), still below tokio's floor.
    #[tokio::test]
    async fn a_short_sleep_is_not_rounded_up_to_milliseconds() {
        let mut late = Vec::new();
        for _ in 0..20 {
            let start = Instant::now();
            sleep(Duration::from_micros(300)).await;
            late.push(start.elapsed().saturating_sub(Duration::from_micros(300)));
        }
        late.sort();
        assert!(late[10] < Duration::from_micros(800), "median lateness {:?}", late[10]);
        let start = Instant::now();
        sleep_until(start + Duration::from_micros(200)).await;
        assert!(start.elapsed() >= Duration::from_micros(200), "never early");
    }
}
