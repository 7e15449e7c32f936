//! Hosts emulated with Linux network namespaces: each host has its own network stack (its own
//! loopback, its own address, its own TCP state), and every host is joined by a veth pair to
//! one bridge, so traffic between them crosses a real (virtual) link instead of loopback.
//!
//! Layout for `n` hosts made by process `pid` (its `s`-th set, so that tests of one process can
//! run at once): namespaces `parm-PID-S-h0` .. `parm-PID-S-h{n-1}`, and `parm-PID-S-sw` holding
//! the bridge `br0`. Host `i` has `eth0` with address
//! `198.18.N.(i+2)/24`: the benchmarking range of RFC 2544, N = pid % 256 so that two runs on
//! one machine do not share a subnet. No namespace has a default route: nothing leaves the
//! machine. Everything is removed when [`Hosts`] is dropped (also when a test panics), and
//! [`Hosts::create`] first removes what a killed earlier run left behind (namespaces
//! `parm-PID-*` whose process is gone).
//!
//! Needs root (`CAP_NET_ADMIN`) and iproute2's `ip`; [`Hosts::available`] says whether this
//! machine can, so callers skip instead of failing where it cannot.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Namespaces of one run; removed on drop.
pub struct Hosts {
    prefix: String,
    hosts: Vec<Host>,
}

/// One emulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace (`ip netns exec NAME ...`).
    pub netns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl Hosts {
    /// Whether network namespaces can be made here: Ok, or the reason they cannot (not root,
    /// no `ip`, a kernel or container without them).
    pub fn available() -> Result<(), String> {
        let probe = format!("parm-{}-{}-probe", std::process::id(), next_set());
        ip(&["netns", "add", &probe]).map_err(|e| format!("{e:#}"))?;
        let _ = ip(&["netns", "del", &probe]);
        Ok(())
    }

    /// Makes `n` hosts on one bridge (see the module docs).
    ///
    /// # Errors
    /// Any `ip` command that fails (with its message); what was made is removed again.
    pub fn create(n: usize) -> anyhow::Result<Hosts> {
        anyhow::ensure!((1..=250).contains(&n), "1 to 250 hosts, not {n}");
        remove_stale();
        let pid = std::process::id();
        let mut hosts = Hosts { prefix: format!("parm-{pid}-{}", next_set()), hosts: Vec::new() };
        let switch = hosts.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let subnet = (pid % 256) as u8;
        for i in 0..n {
            let host = Host { netns: format!("{}-h{i}", hosts.prefix), ip: Ipv4Addr::new(198, 18, subnet, i as u8 + 2) };
            ip(&["netns", "add", &host.netns])?;
            hosts.hosts.push(host.clone());
            let port = format!("p{i}");
            // Both ends are made inside the switch namespace, then one moves to the host.
            ip(&["-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.netns])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&["-n", &host.netns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Host `i`.
    ///
    /// # Panics
    /// If there is no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Takes host `i`'s link to the bridge down (`up = false`: a partition; nothing reaches
    /// the host or leaves it, and open connections see silence) or back up.
    ///
    /// # Errors
    /// The `ip` command fails.
    pub fn set_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &format!("p{i}"), if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Writes host `i`'s `/etc/hosts` as programs started on it see it: `ip netns exec` mounts
    /// `/etc/netns/NETNS/hosts` over `/etc/hosts` when the file exists, so it must be written
    /// before the program starts. Later writes replace the content in place (same file), and
    /// the running program's next lookup sees them: the system resolver (getaddrinfo) reads
    /// `/etc/hosts` on every call. A name's answer that changes, as a DNS answer does.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn set_hosts_file(&self, i: usize, content: &str) -> anyhow::Result<()> {
        let dir = Path::new(ETC_NETNS).join(&self.hosts[i].netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("hosts"), content).with_context(|| format!("writing {}/hosts", dir.display()))
    }

    /// `program` to be run on host `i` (`ip netns exec NETNS program`); add arguments and
    /// spawn it like any command.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).arg(program);
        c
    }

    /// As [`Hosts::command`], for tokio.
    pub fn tokio_command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(i, program))
    }

    /// A tokio runtime whose threads live in host `i`'s network stack: every socket its tasks
    /// open belongs to that host. One worker thread, as `parm serve`'s default runtime.
    /// Drop it with `shutdown_background` when inside another runtime.
    ///
    /// # Errors
    /// The namespace cannot be entered, or the runtime cannot be built.
    pub fn runtime(&self, i: usize) -> anyhow::Result<tokio::runtime::Runtime> {
        let name = format!("host{i}");
        let rt =
            self.run_on(i, move || tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(name).enable_all().build())?;
        rt.context("building a runtime on an emulated host")
    }

    /// Puts `tc netem` on host `i`'s link (delay, jitter, loss on everything it sends).
    ///
    /// # Errors
    /// `tc` fails: typically a kernel without the netem queueing discipline (`sch_netem`),
    /// as on parm's development machine; callers then emulate the link in user space.
    pub fn netem(&self, i: usize, link: &crate::proxy::Link) -> anyhow::Result<()> {
        let (delay, jitter, loss) = (format!("{}ms", link.delay_ms), format!("{}ms", link.jitter_ms), format!("{}%", link.loss * 100.0));
        let args =
            ["-n", &self.hosts[i].netns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, &jitter, "loss", &loss];
        let out = Command::new("tc").args(args).output().context("running `tc` (iproute2)")?;
        if !out.status.success() {
            bail!("tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Removes what [`Hosts::netem`] put on host `i`'s link.
    pub fn clear_netem(&self, i: usize) {
        let _ = Command::new("tc").args(["-n", &self.hosts[i].netns, "qdisc", "del", "dev", "eth0", "root"]).output();
    }

    /// Runs `f` on a thread of its own inside host `i`'s network stack (`setns`), so that every
    /// socket `f` opens (a tokio runtime built inside `f`, a client) belongs to that host, and
    /// returns its result. The calling thread is untouched.
    ///
    /// # Errors
    /// The namespace cannot be entered; `f`'s panic is resumed on the caller.
    pub fn run_on<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = Path::new("/var/run/netns").join(&self.hosts[i].netns);
        std::thread::scope(|s| {
            let t = s.spawn(move || -> anyhow::Result<T> {
                enter(&path)?;
                Ok(f())
            });
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// Where `ip netns exec` finds a namespace's own `/etc` files.
const ETC_NETNS: &str = "/etc/netns";

/// A number for the next set of namespaces of this process.
fn next_set() -> usize {
    static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid namespace file descriptor only changes this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({}): {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes namespaces `parm-PID-*` whose process PID no longer runs (a run killed before its
/// drop), and with them their veth pairs.
fn remove_stale() {
    let Ok(out) = ip(&["netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("parm-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
            let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(name));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and so the pair.
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.netns]);
            let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(&h.netns));
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hosts reach each other over the bridge, each from its own address; everything is
    /// gone after the drop.
    #[test]
    fn hosts_talk_over_the_bridge_and_are_removed_on_drop() {
        if let Err(why) = Hosts::available() {
            eprintln!("skipped: no network namespaces here ({why})");
            return;
        }
        let hosts = Hosts::create(2).unwrap();
        let server = hosts.host(1).clone();
        let listener = hosts.run_on(1, || std::net::TcpListener::bind((server.ip, 0)).unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer.ip()));
        let got = hosts.run_on(0, || std::net::TcpStream::connect((server.ip, port)).map(|s| s.local_addr().unwrap().ip())).unwrap();
        assert_eq!(got.unwrap(), std::net::IpAddr::V4(hosts.host(0).ip));
        assert_eq!(accept.join().unwrap().unwrap(), std::net::IpAddr::V4(hosts.host(0).ip));
        let names: Vec<String> = (0..2).map(|i| hosts.host(i).netns.clone()).collect();
        drop(hosts);
        let list = String::from_utf8_lossy(&ip(&["netns", "list"]).unwrap().stdout).to_string();
        assert!(names.iter().all(|n| !list.contains(n.as_str())), "{list}");
    }
}
