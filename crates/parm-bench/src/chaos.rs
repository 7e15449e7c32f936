//! Faults injected from outside the instances while a run lasts: stalls (SIGSTOP/SIGCONT),
//! crashes (SIGKILL) with restart, CPU contention and loopback network contention.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cluster::{Instance, InstanceSpec, start_instance};
use crate::scenario::Fault;

/// Background faults of one run; [`Chaos::stop`] ends them and undoes what they did
/// (continues stalled processes, kills restarted ones).
pub struct Chaos {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    burner: Arc<AtomicBool>,
    burners: Vec<std::thread::JoinHandle<()>>,
}

/// What a fault needs to know about the machine (deployed or parity instance) it targets.
#[derive(Clone)]
pub struct Target {
    pub pid: Option<u32>,
    pub addr: String,
    pub spec: InstanceSpec,
    /// Its emulated network and host, when the run has one.
    pub host: Option<(Arc<crate::network::Network>, usize)>,
}

impl Chaos {
    /// Starts the faults that act from outside; `targets[i]` is machine i (deployed instances,
    /// then parity instances).
    pub fn start(faults: &[Fault], targets: &[Target], exe: PathBuf) -> Self {
        let (stop, rx) = watch::channel(false);
        let burner = Arc::new(AtomicBool::new(true));
        let mut chaos = Chaos { stop, tasks: Vec::new(), burner: burner.clone(), burners: Vec::new() };
        for f in faults {
            match f.clone() {
                Fault::Stall { instance, at_s, duration_s } => {
                    let pid = targets[instance].pid;
                    chaos.tasks.push(tokio::spawn(stall(pid, at_s, duration_s, rx.clone())));
                }
                Fault::Crash { instance, at_s, restart_after_s } => {
                    let t = targets[instance].clone();
                    chaos.tasks.push(tokio::spawn(crash(t, at_s, restart_after_s, exe.clone(), rx.clone())));
                }
                Fault::Partition { instance, at_s, duration_s } => {
                    let host = targets[instance].host.clone();
                    chaos.tasks.push(tokio::spawn(partition(host, at_s, duration_s, rx.clone())));
                }
                Fault::SlowLink { instance, delay_ms } => {
                    if let Some((net, h)) = &targets[instance].host {
                        net.slow_link(*h, delay_ms);
                    }
                }
                Fault::CpuBurn { threads } => {
                    for _ in 0..threads {
                        let on = burner.clone();
                        chaos.burners.push(std::thread::spawn(move || {
                            let mut x = 0u64;
                            while on.load(Ordering::Relaxed) {
                                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                            }
                        }));
                    }
                }
                Fault::Network { megabytes, concurrent, gap_ms } => {
                    chaos.tasks.push(tokio::spawn(shuffles(megabytes, concurrent, gap_ms, rx.clone())));
                }
                Fault::Delay { .. } | Fault::Episodes { .. } | Fault::Wrong { .. } => {} // injected by the worker itself
            }
        }
        chaos
    }

    /// Ends every fault and waits for the clean-up.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.burner.store(false, Ordering::Relaxed);
        for b in self.burners {
            let _ = b.join();
        }
    }
}

fn signal(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a pid we started ourselves; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Sleeps `secs`, returning false early if the run stops first.
async fn wait(secs: f64, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

async fn stall(pid: Option<u32>, at_s: f64, duration_s: f64, mut stop: watch::Receiver<bool>) {
    if !wait(at_s, &mut stop).await {
        return;
    }
    signal(pid, libc::SIGSTOP);
    wait(duration_s, &mut stop).await;
    signal(pid, libc::SIGCONT);
}

/// Takes the host's link down at `at_s` and up `duration_s` later (also when the run stops
/// first, so that nothing stays cut off).
async fn partition(host: Option<(Arc<crate::network::Network>, usize)>, at_s: f64, duration_s: f64, mut stop: watch::Receiver<bool>) {
    let Some((net, h)) = host else { return };
    if !wait(at_s, &mut stop).await {
        return;
    }
    if let Err(e) = net.set_link(h, false) {
        tracing::warn!("partition of host {h} failed: {e:#}");
        return;
    }
    wait(duration_s, &mut stop).await;
    if let Err(e) = net.set_link(h, true) {
        tracing::warn!("healing host {h} failed: {e:#}");
    }
}

async fn crash(t: Target, at_s: f64, restart_after_s: f64, exe: PathBuf, mut stop: watch::Receiver<bool>) {
    if !wait(at_s, &mut stop).await {
        return;
    }
    signal(t.pid, libc::SIGKILL);
    if !wait(restart_after_s, &mut stop).await {
        return;
    }
    let spec = InstanceSpec { listen: Some(t.addr.clone()), ..t.spec };
    let restarted: Option<Instance> = match start_instance(&exe, spec).await {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!("restart of {} failed: {e:#}", t.addr);
            None
        }
    };
    let _ = stop.wait_for(|s| *s).await;
    if let Some(mut i) = restarted {
        i.kill().await;
    }
}

/// Bulk transfers to a sink on loopback, `concurrent` at a time, until the run stops.
async fn shuffles(megabytes: usize, concurrent: usize, gap_ms: u64, stop: watch::Receiver<bool>) {
    let Ok(sink) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { return };
    let Ok(addr) = sink.local_addr() else { return };
    let drain = tokio::spawn(async move {
        while let Ok((mut sock, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let senders: Vec<_> = (0..concurrent)
        .map(|_| {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let chunk = vec![7u8; 1 << 20];
                while !*stop.borrow() {
                    if let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await {
                        for _ in 0..megabytes {
                            if *stop.borrow() || sock.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                    }
                    wait(gap_ms as f64 / 1e3, &mut stop).await;
                }
            })
        })
        .collect();
    for s in senders {
        let _ = s.await;
    }
    drain.abort();
}

/// One kind of fault of a [`ChaosEvent`] schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ChaosKind {
    /// SIGKILL the instance's process; restart it on the same address when the event ends.
    Kill,
    /// SIGSTOP the process; SIGCONT when the event ends.
    Stall,
    /// Partition: its [`crate::proxy::Proxy`] forwards nothing (connections stay open).
    Blackhole,
    /// Its proxy closes every connection and refuses new ones.
    Reset,
}

impl ChaosKind {
    pub const ALL: [ChaosKind; 4] = [ChaosKind::Kill, ChaosKind::Stall, ChaosKind::Blackhole, ChaosKind::Reset];
}

/// One fault: `kind` on instance `target` from `at` (after the schedule starts) for `length`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ChaosEvent {
    pub at: Duration,
    pub target: usize,
    pub kind: ChaosKind,
    pub length: Duration,
}

/// A seeded random schedule over `window`: a new fault starts every `gap` (uniform in the
/// range) on an instance that is not already faulty, of a random kind, lasting `length`
/// (uniform in the range) but ending within `window`; at most `max_concurrent` instances are
/// faulty at once. The same seed gives the same schedule.
pub fn chaos_schedule(
    seed: u64,
    targets: usize,
    window: Duration,
    gap: std::ops::Range<Duration>,
    length: std::ops::Range<Duration>,
    max_concurrent: usize,
) -> Vec<ChaosEvent> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events: Vec<ChaosEvent> = Vec::new();
    let mut t = Duration::ZERO;
    loop {
        t += rng.random_range(gap.clone());
        if t >= window {
            break;
        }
        let busy: Vec<usize> = events.iter().filter(|e| e.at + e.length > t).map(|e| e.target).collect();
        if busy.len() >= max_concurrent.max(1) {
            continue;
        }
        let free: Vec<usize> = (0..targets).filter(|i| !busy.contains(i)).collect();
        if free.is_empty() {
            continue;
        }
        let target = free[rng.random_range(0..free.len())];
        let kind = ChaosKind::ALL[rng.random_range(0..ChaosKind::ALL.len())];
        let len = rng.random_range(length.clone()).min(window - t);
        events.push(ChaosEvent { at: t, target, kind, length: len });
    }
    events
}

/// An instance that chaos may hit, behind its proxy (callers use `proxy.addr()`).
pub struct ChaosTarget {
    pub instance: Instance,
    pub proxy: crate::proxy::Proxy,
}

/// What a schedule did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ChaosCounts {
    pub kills: usize,
    pub stalls: usize,
    pub blackholes: usize,
    pub resets: usize,
    /// Restarts after a kill that failed (the instance then stays down).
    pub failed_restarts: usize,
}

/// Plays `schedule` against `targets` (index = [`ChaosEvent::target`]) in real time, each
/// event in its own task, and returns when every event has ended and been undone (stalled
/// processes continued, killed ones restarted on their address with the `parm` binary `exe`,
/// proxies passing again).
pub async fn run_chaos(schedule: &[ChaosEvent], targets: &[tokio::sync::Mutex<ChaosTarget>], exe: &std::path::Path) -> ChaosCounts {
    let start = tokio::time::Instant::now();
    let results = futures::future::join_all(schedule.iter().map(|e| async move {
        tokio::time::sleep_until(start + e.at).await;
        let mut t = targets[e.target].lock().await;
        tracing::info!(target_instance = e.target, kind = ?e.kind, ms = e.length.as_millis() as u64, "chaos");
        match e.kind {
            ChaosKind::Stall => {
                signal(t.instance.pid(), libc::SIGSTOP);
                tokio::time::sleep(e.length).await;
                signal(t.instance.pid(), libc::SIGCONT);
                true
            }
            ChaosKind::Blackhole | ChaosKind::Reset => {
                let mode = if e.kind == ChaosKind::Blackhole { crate::proxy::ProxyMode::Blackhole } else { crate::proxy::ProxyMode::Reset };
                t.proxy.set(mode);
                tokio::time::sleep(e.length).await;
                t.proxy.set(crate::proxy::ProxyMode::Pass);
                true
            }
            ChaosKind::Kill => {
                t.instance.kill().await;
                tokio::time::sleep(e.length).await;
                restart(&mut t.instance, exe).await
            }
        }
    }))
    .await;
    let mut c = ChaosCounts::default();
    for (e, ok) in schedule.iter().zip(results) {
        match e.kind {
            ChaosKind::Kill => c.kills += 1,
            ChaosKind::Stall => c.stalls += 1,
            ChaosKind::Blackhole => c.blackholes += 1,
            ChaosKind::Reset => c.resets += 1,
        }
        c.failed_restarts += usize::from(!ok);
    }
    c
}

/// Starts a killed instance again on its address (a few tries: the port may linger briefly).
async fn restart(instance: &mut Instance, exe: &std::path::Path) -> bool {
    let spec = InstanceSpec { listen: Some(instance.addr.clone()), ..instance.spec.clone() };
    for _ in 0..10 {
        match start_instance(exe, spec.clone()).await {
            Ok(i) => {
                *instance = i;
                return true;
            }
            Err(e) => {
                tracing::warn!("restart of {} failed: {e:#}", instance.addr);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    false
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn schedule_is_seeded_bounded_and_never_doubles_up_on_a_target() {
        let ms = Duration::from_millis;
        let s = chaos_schedule(3, 5, ms(30_000), ms(300)..ms(1500), ms(500)..ms(3000), 2);
        assert_eq!(s, chaos_schedule(3, 5, ms(30_000), ms(300)..ms(1500), ms(500)..ms(3000), 2));
        assert_ne!(s, chaos_schedule(4, 5, ms(30_000), ms(300)..ms(1500), ms(500)..ms(3000), 2));
        assert!(s.len() >= 10, "{}", s.len());
        for (i, e) in s.iter().enumerate() {
            assert!(e.at + e.length <= ms(30_000) && e.target < 5);
            // Faults under way when this one starts (itself included).
            let active: Vec<_> = s.iter().filter(|o| o.at <= e.at && e.at < o.at + o.length).collect();
            assert!(active.len() <= 2, "event {i}: {} at once", active.len());
            assert_eq!(active.iter().filter(|o| o.target == e.target).count(), 1, "event {i}: target faulted twice at once");
        }
        for k in ChaosKind::ALL {
            assert!(s.iter().any(|e| e.kind == k), "no {k:?} in the schedule");
        }
    }
}
