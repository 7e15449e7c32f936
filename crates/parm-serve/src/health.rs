//! Instance health as the frontend sees it: every deployed and parity instance is probed with
//! OIP `ModelReady`; a healthy instance every [`PROBE_EVERY`], a failing one with exponential
//! backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], so a dead instance costs little and a
//! recovered one is noticed within seconds. Readiness (`/v2/health/ready`, gRPC `ServerReady`,
//! `grpc.health.v1`) is true while at least one deployed instance answered its last probe.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::InstanceClient;
use crate::metrics::InstanceGauge;

/// Probe period of an instance that answered its last probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// First retry delay after a failed probe; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Longest wait for one probe answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Health of a frontend's instances; cheap to clone.
#[derive(Clone)]
pub struct Health {
    gauges: Arc<Vec<InstanceGauge>>,
}

impl Health {
    /// Probes every instance once (concurrently), then keeps probing in background tasks that
    /// end when the last clone of the returned handle is dropped.
    ///
    /// `instances`: (role `"deployed"` or `"parity"`, address, model name on the instance).
    /// Errors: an address that cannot be parsed.
    pub async fn start(instances: &[(&'static str, String, String)]) -> anyhow::Result<Self> {
        let gauges: Vec<InstanceGauge> = instances
            .iter()
            .map(|(role, addr, _)| InstanceGauge { role, addr: addr.clone(), up: false.into() })
            .collect();
        let gauges = Arc::new(gauges);
        let clients = instances
            .iter()
            .map(|(_, addr, model)| Ok((InstanceClient::connect_lazy(addr)?, model.clone())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first = clients.iter().map(|(c, m)| c.model_ready(m, PROBE_TIMEOUT));
        for (i, up) in futures::future::join_all(first).await.into_iter().enumerate() {
            gauges[i].up.store(up, Ordering::Relaxed);
        }
        for (i, (client, model)) in clients.into_iter().enumerate() {
            tokio::spawn(probe_loop(Arc::downgrade(&gauges), i, client, model));
        }
        Ok(Self { gauges })
    }

    /// True while at least one deployed instance answered its last probe.
    pub fn ready(&self) -> bool {
        self.gauges.iter().any(|g| g.role == "deployed" && g.up.load(Ordering::Relaxed))
    }

    /// Every instance's last probe result.
    pub fn instances(&self) -> &[InstanceGauge] {
        &self.gauges
    }
}

async fn probe_loop(gauges: std::sync::Weak<Vec<InstanceGauge>>, i: usize, client: InstanceClient, model: String) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let up = match gauges.upgrade() {
            Some(g) => g[i].up.load(Ordering::Relaxed),
            None => return,
        };
        tokio::time::sleep(if up { PROBE_EVERY } else { backoff }).await;
        let now_up = client.model_ready(&model, PROBE_TIMEOUT).await;
        let Some(g) = gauges.upgrade() else { return };
        if up != now_up {
            tracing::warn!(instance = %g[i].addr, role = g[i].role, up = now_up, "instance health changed");
        }
        g[i].up.store(now_up, Ordering::Relaxed);
        backoff = if now_up { BACKOFF_MIN } else { (backoff * 2).min(BACKOFF_MAX) };
    }
}
