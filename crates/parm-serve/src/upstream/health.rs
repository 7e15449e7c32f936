//! Instance health as the frontend sees it: every deployed and parity instance is probed with
//! OIP `ModelReady`; a healthy instance every [`PROBE_EVERY`], a failing one with exponential
//! backoff from [`BACKOFF_MIN`] to [`PROBE_BACKOFF_MAX`] and over a new connection each time, so a
//! dead instance costs one connection attempt a second and a recovered one is noticed within
//! about a second. The new connection matters after a partition: the old one's TCP
//! retransmissions back off exponentially while the network is down, and measured across
//! emulated hosts (`crates/parm/tests/cross_host.rs`) readiness came back 5.5 s after a 5 s
//! partition healed when probes reused it (with backoff up to 8 s). A model is ready while at least one of its deployed
//! instances answered its last probe; the server (`/v2/health/ready`, gRPC `ServerReady`,
//! `grpc.health.v1`) while every model is (`server::api::Serving::ready`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::upstream::client::{ClientOptions, InstanceClient};

/// Per-instance health as last probed.
#[derive(Debug)]
pub struct InstanceGauge {
    pub role: &'static str,
    pub addr: String,
    pub up: AtomicBool,
}

/// Probe period of an instance that answered its last probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// First retry delay after a failed probe; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The circuit breaker's longest backoff ([`Breaker`]).
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// The longest wait between probes of a failing instance.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest wait for one probe answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Health of a frontend's instances; cheap to clone. The set of instances may change
/// ([`Self::sync`], as instance discovery finds them).
#[derive(Clone)]
pub struct Health {
    gauges: Arc<std::sync::Mutex<Vec<Arc<InstanceGauge>>>>,
    /// How probes reach the instances (the frontend's token and TLS).
    options: ClientOptions,
}

impl Health {
    /// Probes every instance once (concurrently), then keeps probing in background tasks that
    /// end when the last clone of the returned handle is dropped, or the instance leaves
    /// ([`Self::sync`]).
    ///
    /// `instances`: (role `"deployed"` or `"parity"`, address, model name on the instance),
    /// reached with `options`.
    /// Errors: an address that cannot be parsed.
    pub async fn start(instances: &[(&'static str, String, String)], options: &ClientOptions) -> anyhow::Result<Self> {
        let health = Self { gauges: Default::default(), options: options.clone() };
        health.sync(instances).await?;
        Ok(health)
    }

    /// Makes `instances` the probed set: instances already probed (same role and address)
    /// keep their state; new ones are probed once (concurrently) before this returns, then in
    /// the background; those not in `instances` are no longer probed.
    ///
    /// Errors: an address that cannot be parsed (the set is then left unchanged).
    pub async fn sync(&self, instances: &[(&'static str, String, String)]) -> anyhow::Result<()> {
        let old = self.instances();
        let (mut next, mut fresh): (Vec<Arc<InstanceGauge>>, Vec<_>) = (Vec::new(), Vec::new());
        for (role, addr, model) in instances {
            let same = |g: &&Arc<InstanceGauge>| g.role == *role && g.addr == *addr;
            if next.iter().any(|g| same(&g)) {
                continue;
            }
            let gauge = match old.iter().find(same) {
                Some(g) => g.clone(),
                // An in-process instance is up while this process is: nothing to probe.
                None if crate::instance::local::is_inproc(addr) => Arc::new(InstanceGauge { role, addr: addr.clone(), up: true.into() }),
                None => {
                    let g = Arc::new(InstanceGauge { role, addr: addr.clone(), up: false.into() });
                    fresh.push((g.clone(), InstanceClient::connect(addr, &self.options)?, model.clone()));
                    g
                }
            };
            next.push(gauge);
        }
        let first = fresh.iter().map(|(_, c, m)| c.model_ready(m, PROBE_TIMEOUT));
        for (up, (g, _, _)) in futures::future::join_all(first).await.into_iter().zip(&fresh) {
            g.up.store(up, Ordering::Relaxed);
        }
        for (gauge, client, model) in fresh {
            tokio::spawn(probe_loop(Arc::downgrade(&gauge), client, model));
        }
        *self.gauges.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Keeps the probed set at what `instances` gives (see [`Self::sync`]), every `every`,
    /// until this health handle is dropped or `instances` gives `None`.
    pub fn follow(&self, every: Duration, instances: impl Fn() -> Option<Vec<(&'static str, String, String)>> + Send + 'static) {
        let (gauges, options) = (Arc::downgrade(&self.gauges), self.options.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(gauges), Some(list)) = (gauges.upgrade(), instances()) else { return };
                if let Err(e) = (Health { gauges, options: options.clone() }).sync(&list).await {
                    tracing::warn!("instance health: {e:#}");
                }
            }
        });
    }

    /// True while at least one deployed instance answered its last probe.
    pub fn ready(&self) -> bool {
        self.instances().iter().any(|g| g.role == "deployed" && g.up.load(Ordering::Relaxed))
    }

    /// Every instance's last probe result.
    pub fn instances(&self) -> Vec<Arc<InstanceGauge>> {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Probes one instance until its gauge is dropped (the instance left, or the frontend ended).
async fn probe_loop(gauge: std::sync::Weak<InstanceGauge>, mut client: InstanceClient, model: String) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let up = match gauge.upgrade() {
            Some(g) => g.up.load(Ordering::Relaxed),
            None => return,
        };
        tokio::time::sleep(if up { PROBE_EVERY } else { backoff }).await;
        let now_up = client.model_ready(&model, PROBE_TIMEOUT).await;
        let Some(g) = gauge.upgrade() else { return };
        if up != now_up {
            tracing::warn!(instance = %g.addr, role = g.role, up = now_up, "instance health changed");
        }
        g.up.store(now_up, Ordering::Relaxed);
        backoff = if now_up { BACKOFF_MIN } else { (backoff * 2).min(PROBE_BACKOFF_MAX) };
        if !now_up {
            // A fresh connection, not one stuck in TCP's retransmission backoff.
            client = client.reconnected().unwrap_or(client);
        }
    }
}

/// Consecutive failures (connection errors, timeouts) that take an instance out of rotation.
pub const BREAKER_THRESHOLD: u32 = 2;

/// Passive health of one instance as its callers see it: a circuit breaker. After
/// [`BREAKER_THRESHOLD`] consecutive failures the instance is out of rotation for a backoff
/// that starts at [`BACKOFF_MIN`] and doubles per further failure up to [`BACKOFF_MAX`]; when
/// it expires, the next request tries the instance again (a success puts it back, a failure
/// doubles the backoff). Cancelled calls count as neither.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    /// Out of rotation until this many ms after [`epoch`].
    open_until_ms: std::sync::atomic::AtomicU64,
}

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Breaker {
    /// Records a successful call: back in rotation.
    pub fn success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed call; may take the instance out of rotation (see the type docs).
    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            let doublings = (n - BREAKER_THRESHOLD).min(16);
            let backoff = (BACKOFF_MIN * 2u32.pow(doublings)).min(BACKOFF_MAX);
            self.open_until_ms.store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// True unless the instance is out of rotation.
    pub fn usable(&self) -> bool {
        now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_failures_and_closes_on_success() {
        let b = Breaker::default();
        assert!(b.usable());
        b.failure();
        assert!(b.usable(), "one failure is not enough");
        b.failure();
        assert!(!b.usable(), "two consecutive failures take it out of rotation");
        b.success();
        assert!(b.usable());
        b.failure();
        assert!(b.usable(), "the count restarted after the success");
    }

    #[test]
    fn breaker_backoff_expires() {
        let b = Breaker::default();
        b.failure();
        b.failure();
        assert!(!b.usable());
        std::thread::sleep(BACKOFF_MIN + Duration::from_millis(20));
        assert!(b.usable(), "retried after the backoff");
        b.failure(); // third failure: backoff doubles
        std::thread::sleep(BACKOFF_MIN + Duration::from_millis(20));
        assert!(!b.usable());
    }
}
