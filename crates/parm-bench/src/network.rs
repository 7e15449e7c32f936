//! The network of one benchmark run across emulated hosts (issue 17): every role on a host of
//! its own ([`crate::netns::Hosts`]), links between them delayed as a scenario's `[link]` says.
//!
//! Roles: host [`CLIENT`] runs the load generator, hosts `1..=F` the F coded frontends
//! ([`Network::frontend_host`]; [`FRONTEND`] is the first), and machine `m` (deployed
//! instances, then parity instances, as [`crate::scenario::Fault`]s number them) runs on host
//! `1 + F + m mod (hosts - 1 - F)`: with `hosts = machines + F + 1` every model instance has a
//! host to itself. The load generator and the frontend run in this process on
//! runtimes whose threads live in their hosts' namespaces; instances are `parm worker`
//! processes started in theirs.
//!
//! Every server (the frontend and each instance) listens on its host's loopback and is reached
//! through a [`Proxy`] on its host's address. The proxy is where the link is emulated where
//! the kernel has no `tc netem` (this machine's has not): it adds the link's one-way delay to
//! each direction of every connection to the server, as netem on the server host's interface
//! would. Where netem works it is used instead, on every host, and the proxies pass bytes
//! untouched. [`Network::link_name`] says which, for every result. A slowed link (one host's
//! extra delay) always goes through its proxies; a partition takes a host's link down.
//!
//! The emulated hosts still share this machine's cores: scenarios with `[compute]` emulate the
//! instances' compute so that they do not burn them.

use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};

use crate::netns::Hosts;
use crate::proxy::{Link, Proxy};

/// Host of the load generator.
pub const CLIENT: usize = 0;
/// Host of the (first) frontend.
pub const FRONTEND: usize = 1;

/// A scenario's emulated network: `hosts = N` and an optional `[link]` table.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    /// Emulated hosts, at least `frontends + 2` (client, frontends, one for the instances).
    pub hosts: usize,
    /// Frontends, each on a host of its own.
    pub frontends: usize,
    /// Every host's link.
    pub link: Link,
}

/// The running network of one run; everything is torn down when it is dropped.
pub struct Network {
    spec: NetworkSpec,
    /// Whether `tc netem` carries the link (else the proxies do).
    netem: bool,
    runtimes: Vec<Runtime>,
    /// The proxies in front of each host's servers, by host.
    proxies: Mutex<Vec<(usize, Proxy)>>,
    // Dropped last: the runtimes' sockets go before their namespaces.
    hosts: Hosts,
}

impl Network {
    /// Makes the hosts, a runtime on each, and the link: `tc netem` where it works, else the
    /// proxies' user-space delay.
    ///
    /// # Errors
    /// Fewer than 3 hosts, a bad link, or namespaces that cannot be made (with the reason).
    pub fn create(spec: NetworkSpec) -> anyhow::Result<Network> {
        anyhow::ensure!(
            spec.frontends >= 1 && spec.hosts >= spec.frontends + 2,
            "hosts = {}: an emulated network with {} frontends needs at least {} (client, frontends, instances)",
            spec.hosts,
            spec.frontends,
            spec.frontends + 2
        );
        spec.link.validate().map_err(anyhow::Error::msg)?;
        Hosts::available().map_err(|why| anyhow::anyhow!("cannot emulate hosts with network namespaces here: {why}"))?;
        let hosts = Hosts::create(spec.hosts)?;
        let netem = !spec.link.is_none() && netem_everywhere(&hosts, &spec.link);
        let runtimes = (0..hosts.len()).map(|i| hosts.runtime(i)).collect::<anyhow::Result<_>>()?;
        Ok(Network { spec, netem, runtimes, proxies: Mutex::new(Vec::new()), hosts })
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.spec.hosts
    }

    /// The host of machine `m` (deployed instances first, then parity instances).
    pub fn host_of(&self, machine: usize) -> usize {
        let first = 1 + self.spec.frontends;
        first + machine % (self.spec.hosts - first)
    }

    /// The host of frontend `f` (0-based).
    pub fn frontend_host(&self, f: usize) -> usize {
        FRONTEND + f
    }

    /// The network namespace of host `h`, to start processes in.
    pub fn netns(&self, h: usize) -> String {
        self.hosts.host(h).netns.clone()
    }

    /// A handle to host `h`'s runtime: tasks spawned on it open their sockets on that host.
    pub fn handle(&self, h: usize) -> Handle {
        self.runtimes[h].handle().clone()
    }

    /// What carries the links, for results: `netem, delay D ms +- J ms` or the proxies'.
    pub fn link_name(&self) -> String {
        let l = &self.spec.link;
        if self.netem { format!("tc netem, delay {:.2} ms +- {:.2} ms, loss {}", l.delay_ms, l.jitter_ms, l.loss) } else { l.describe() }
    }

    /// Makes the server at `local` (an address on host `h`'s loopback) reachable from the
    /// other hosts: a proxy on host `h`'s address, carrying the link unless netem does.
    /// Returns the address to call it at.
    ///
    /// # Errors
    /// The proxy cannot listen.
    pub async fn expose(&self, h: usize, local: &str) -> anyhow::Result<String> {
        let listen = SocketAddr::from((self.hosts.host(h).ip, 0));
        let link = if self.netem { Link::default() } else { self.spec.link };
        let upstream = local.to_string();
        let proxy = self.handle(h).spawn(async move { Proxy::start_at(listen, &upstream, link).await }).await?.context("proxy")?;
        let addr = proxy.addr().to_string();
        self.proxies.lock().expect("proxies").push((h, proxy));
        Ok(addr)
    }

    /// Adds `extra_ms` of one-way delay to host `h`'s link (a slowed link), on top of the
    /// scenario's; 0 restores it.
    pub fn slow_link(&self, h: usize, extra_ms: f64) {
        let base = if self.netem { Link::default() } else { self.spec.link };
        let link = Link { delay_ms: base.delay_ms + extra_ms, ..base };
        for (_, p) in self.proxies.lock().expect("proxies").iter().filter(|(host, _)| *host == h) {
            p.set_link(link);
        }
    }

    /// Takes host `h`'s link down (`up = false`: a partition) or back up.
    ///
    /// # Errors
    /// The `ip` command fails.
    pub fn set_link(&self, h: usize, up: bool) -> anyhow::Result<()> {
        self.hosts.set_link(h, up)
    }
}

/// Puts `link` on every host with `tc netem`; where one host refuses, takes it off the others
/// again (the proxies then carry the link, and no host may carry it twice).
fn netem_everywhere(hosts: &Hosts, link: &Link) -> bool {
    for i in 0..hosts.len() {
        if hosts.netem(i, link).is_err() {
            (0..i).for_each(|j| hosts.clear_netem(j));
            return false;
        }
    }
    true
}

impl Drop for Network {
    fn drop(&mut self) {
        self.proxies.lock().map(|mut p| p.clear()).ok();
        // Dropping a runtime blocks, which panics inside another runtime.
        for rt in self.runtimes.drain(..) {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on one host, exposed with a 2 ms link, is reached from another host's runtime
    /// and no sooner than the link allows; a partition silences it and healing restores it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosts_reach_an_exposed_server_through_the_link() {
        if let Err(why) = Hosts::available() {
            eprintln!("skipped: no network namespaces here ({why})");
            return;
        }
        let link = Link { delay_ms: 2.0, jitter_ms: 0.0, loss: 0.0 };
        let net = Network::create(NetworkSpec { hosts: 3, frontends: 1, link }).unwrap();
        assert_eq!((net.host_of(0), net.host_of(1)), (2, 2));
        let local = net
            .handle(2)
            .spawn(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap().to_string();
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = l.accept().await {
                        tokio::spawn(async move {
                            let mut b = [0u8; 4];
                            while s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {}
                        });
                    }
                });
                addr
            })
            .await
            .unwrap();
        let public = net.expose(2, &local).await.unwrap();
        assert!(public.starts_with("198.18."), "{public}");
        let ping = |wait: Duration| {
            let public = public.clone();
            net.handle(CLIENT).spawn(async move {
                let start = Instant::now();
                let mut s = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&public)).await.ok()?.ok()?;
                s.write_all(b"ping").await.ok()?;
                let mut b = [0u8; 4];
                tokio::time::timeout(wait, s.read_exact(&mut b)).await.ok()?.ok()?;
                Some(start.elapsed())
            })
        };
        let rtt = ping(Duration::from_secs(5)).await.unwrap().expect("an answer across hosts");
        assert!(rtt >= Duration::from_millis(4), "{rtt:?}: the link's delay each way");
        net.set_link(2, false).unwrap();
        assert_eq!(ping(Duration::from_millis(500)).await.unwrap(), None, "a partitioned host answered");
        net.set_link(2, true).unwrap();
        assert!(ping(Duration::from_secs(5)).await.unwrap().is_some());
        assert!(net.link_name().contains("delay 2.00 ms"));
    }
}
