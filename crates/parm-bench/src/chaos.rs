//! Faults injected from outside the instances while a run lasts: stalls (SIGSTOP/SIGCONT),
//! crashes (SIGKILL) with restart, CPU contention and loopback network contention.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cluster::{start_instance, Instance, InstanceSpec};
use crate::scenario::Fault;

/// Background faults of one run; [`Chaos::stop`] ends them and undoes what they did
/// (continues stalled processes, kills restarted ones).
pub struct Chaos {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    burner: Arc<AtomicBool>,
    burners: Vec<std::thread::JoinHandle<()>>,
}

/// What a fault needs to know about the deployed instance it targets.
#[derive(Clone)]
pub struct Target {
    pub pid: Option<u32>,
    pub addr: String,
    pub spec: InstanceSpec,
}

impl Chaos {
    /// Starts the faults that act from outside; `targets[i]` is deployed instance i.
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
                Fault::Delay { .. } | Fault::Episodes { .. } => {} // injected by the worker itself
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
