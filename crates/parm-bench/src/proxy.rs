//! A TCP proxy in front of one model instance that chaos tests can switch to cut the instance
//! off the network, on loopback, without root (no network namespaces or firewall rules).
//!
//! Modes ([`ProxyMode`]):
//! * `Pass`: bytes flow both ways.
//! * `Blackhole`: a network partition. Nothing is forwarded in either direction, but every
//!   connection stays open and new ones are accepted and held, so callers see silence (no
//!   error) until their own timeouts fire. Back in `Pass`, held connections resume, as TCP
//!   does after a partition heals within its retransmission window.
//! * `Reset`: every connection is closed at once and new ones are closed as soon as they are
//!   accepted, like a host whose connections were reset.
//!
//! A [`Link`] emulates the network in user space where the kernel has no `tc netem`: every
//! chunk of bytes read from one side is written to the other `delay_ms` later (plus uniform
//! jitter, keeping TCP's in-order delivery), and with probability `loss` a chunk waits one
//! retransmission timeout more, as TCP recovers a lost segment. Placed in front of a server on
//! its own host it delays both directions of every connection to it: what `tc netem delay` on
//! that host's interface does to a request and its answer. Delays run on
//! [`parm_serve::timer`]'s sub-millisecond timers: tokio's round up to whole milliseconds.

use std::io;
use std::net::SocketAddr;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// An emulated network link (see the module docs); the default adds nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// One-way delay added to every chunk, ms.
    #[serde(default)]
    pub delay_ms: f64,
    /// Uniform jitter around the delay, +- ms (netem's default distribution).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that a chunk is lost once and retransmitted after [`Link::RTO_MS`].
    #[serde(default)]
    pub loss: f64,
}

impl Link {
    /// What a lost chunk costs: Linux's minimum TCP retransmission timeout (`TCP_RTO_MIN`),
    /// ms. A request or answer fits in a few segments, too few for fast retransmit.
    pub const RTO_MS: f64 = 200.0;

    /// Whether the link adds nothing (bytes are forwarded as they come).
    pub fn is_none(&self) -> bool {
        self.delay_ms <= 0.0 && self.jitter_ms <= 0.0 && self.loss <= 0.0
    }

    /// Errors: a negative delay, jitter above the delay, or a loss outside [0, 1).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.delay_ms >= 0.0 && self.jitter_ms >= 0.0 && self.jitter_ms <= self.delay_ms) {
            return Err(format!("link: need 0 <= jitter_ms <= delay_ms, got delay {} jitter {}", self.delay_ms, self.jitter_ms));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(format!("link: loss must be in [0, 1), got {}", self.loss));
        }
        Ok(())
    }

    /// How the link is emulated, for results: `user-space proxy, delay D ms +- J ms[, loss P]`.
    pub fn describe(&self) -> String {
        let mut s = format!("user-space proxy, delay {:.2} ms +- {:.2} ms", self.delay_ms, self.jitter_ms);
        if self.loss > 0.0 {
            s += &format!(", loss {} (each a {} ms retransmission)", self.loss, Self::RTO_MS);
        }
        s
    }

    /// When a chunk read at `now` is due on the other side: after its delay, jitter and any
    /// loss, and never before the chunk read before it (`last`).
    fn due(&self, now: Instant, last: Instant, rng: &mut impl Rng) -> Instant {
        let mut ms = self.delay_ms;
        if self.jitter_ms > 0.0 {
            ms += rng.random_range(-self.jitter_ms..=self.jitter_ms);
        }
        if self.loss > 0.0 && rng.random_bool(self.loss) {
            ms += Self::RTO_MS;
        }
        (now + Duration::from_secs_f64(ms.max(0.0) / 1e3)).max(last)
    }
}

/// What the proxy does with traffic (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    Blackhole,
    Reset,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    upstream: String,
    mode: watch::Sender<ProxyMode>,
    link: watch::Sender<Link>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `upstream`
    /// (`host:port`), in mode `Pass`. Must be called inside a tokio runtime.
    ///
    /// Errors: the listening socket cannot be bound.
    pub async fn start(upstream: &str) -> io::Result<Self> {
        Self::start_at("127.0.0.1:0".parse().expect("an address"), upstream, Link::default()).await
    }

    /// Listens on `listen` (port 0: a free one) and forwards every connection to `upstream`
    /// through `link`, in mode `Pass`. Must be called inside a tokio runtime; the proxy's tasks
    /// and sockets belong to that runtime (and so to its threads' network namespace).
    ///
    /// Errors: the listening socket cannot be bound.
    pub async fn start_at(listen: SocketAddr, upstream: &str, link: Link) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        let (link, link_rx) = watch::channel(link);
        let up = upstream.to_string();
        let accept = tokio::spawn(async move {
            for seed in 0u64.. {
                let Ok((sock, _)) = listener.accept().await else { break };
                tokio::spawn(connection(sock, up.clone(), rx.clone(), link_rx.clone(), seed));
            }
        });
        Ok(Self { addr, upstream: upstream.to_string(), mode, link, accept })
    }

    /// Changes the link of every connection, open and future (a slowed link, a lossy one).
    pub fn set_link(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// The current link.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance behind the proxy.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Switches every connection, open and future, to `mode`.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(ProxyMode::Reset);
    }
}

/// Waits while the mode is `Blackhole`; returns the first other mode (or `Reset` if the
/// proxy is gone).
async fn wait_not_blackhole(mode: &mut watch::Receiver<ProxyMode>) -> ProxyMode {
    match mode.wait_for(|m| *m != ProxyMode::Blackhole).await {
        Ok(m) => *m,
        Err(_) => ProxyMode::Reset,
    }
}

async fn connection(client: TcpStream, upstream: String, mut mode: watch::Receiver<ProxyMode>, link: watch::Receiver<Link>, seed: u64) {
    if wait_not_blackhole(&mut mode).await == ProxyMode::Reset {
        return; // dropping the socket closes it
    }
    let server = tokio::select! {
        s = TcpStream::connect(&upstream) => match s {
            Ok(s) => s,
            Err(_) => return, // instance down: the caller sees its connection closed
        },
        _ = mode.wait_for(|m| *m == ProxyMode::Reset) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending (EOF, error, Reset) ends the connection.
    tokio::select! {
        _ = forward(cr, sw, mode.clone(), link.clone(), seed * 2) => {}
        _ = forward(sr, cw, mode, link, seed * 2 + 1) => {}
    }
}

/// Forwards one direction: reads chunks, and writes each when its link says it is due.
async fn forward(from: OwnedReadHalf, to: OwnedWriteHalf, mode: watch::Receiver<ProxyMode>, link: watch::Receiver<Link>, seed: u64) {
    let (tx, rx) = mpsc::unbounded_channel();
    // The writer drains what was read before an end of file, so both run to their end.
    tokio::join!(read_chunks(from, tx, mode.clone(), link, seed), write_when_due(to, rx, mode));
}

async fn write_when_due(
    mut to: OwnedWriteHalf,
    mut chunks: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut mode: watch::Receiver<ProxyMode>,
) {
    while let Some((due, bytes)) = chunks.recv().await {
        if Instant::now() < due {
            parm_serve::timer::sleep_until(due).await;
        }
        if wait_not_blackhole(&mut mode).await == ProxyMode::Reset || to.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

async fn read_chunks(
    mut from: OwnedReadHalf,
    to: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    mut mode: watch::Receiver<ProxyMode>,
    link: watch::Receiver<Link>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Reset => return,
            ProxyMode::Blackhole => {
                if wait_not_blackhole(&mut mode).await == ProxyMode::Reset {
                    return;
                }
            }
            ProxyMode::Pass => {
                tokio::select! {
                    r = from.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            last = link.borrow().due(Instant::now(), last, &mut rng);
                            if to.send((last, buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    },
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn pass_blackhole_heal_and_reset() {
        let proxy = Proxy::start(&echo_server().await.to_string()).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"ping", Duration::from_secs(5)).await.as_deref(), Some(&b"ping"[..]));

        proxy.set(ProxyMode::Blackhole);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(roundtrip(&mut s, b"lost", Duration::from_millis(300)).await, None, "blackholed traffic got through");
        // A connection made during the partition is accepted but silent too.
        let mut held = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut held, b"held", Duration::from_millis(300)).await, None);

        proxy.set(ProxyMode::Pass); // the partition heals: held bytes flow on
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"lost");
        tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"held");

        proxy.set(ProxyMode::Reset);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("reset closes the connection");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        proxy.set(ProxyMode::Pass);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"back", Duration::from_secs(5)).await.as_deref(), Some(&b"back"[..]));
    }

    /// A link's delay is added to each direction, within a timer's lateness, and can be
    /// changed on an open connection; order is kept.
    #[tokio::test]
    async fn link_delays_both_directions_and_can_change() {
        let link = Link { delay_ms: 3.0, jitter_ms: 1.0, loss: 0.0 };
        let proxy = Proxy::start_at("127.0.0.1:0".parse().unwrap(), &echo_server().await.to_string(), link).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        for i in 0..20u8 {
            let start = Instant::now();
            assert_eq!(roundtrip(&mut s, &[i; 100], Duration::from_secs(5)).await, Some(vec![i; 100]));
            rtts.push(start.elapsed());
        }
        rtts.sort();
        // Two one-way delays of 2-4 ms each.
        assert!(rtts[0] >= Duration::from_millis(4), "{rtts:?}");
        assert!(rtts[10] < Duration::from_millis(20), "{rtts:?}");
        proxy.set_link(Link { delay_ms: 25.0, ..Link::default() });
        let start = Instant::now();
        roundtrip(&mut s, b"slow", Duration::from_secs(5)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50), "{:?}", start.elapsed());
        proxy.set_link(Link::default());
        let start = Instant::now();
        roundtrip(&mut s, b"fast", Duration::from_secs(5)).await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(40), "{:?}", start.elapsed());
    }

    #[test]
    fn link_settings_are_checked_and_described() {
        assert!(Link { delay_ms: 0.2, jitter_ms: 0.05, loss: 0.01 }.validate().is_ok());
        assert!(Link { delay_ms: 0.2, jitter_ms: 0.3, loss: 0.0 }.validate().is_err());
        assert!(Link { loss: 1.0, ..Link::default() }.validate().is_err());
        assert!(Link { delay_ms: -1.0, ..Link::default() }.validate().is_err());
        assert!(Link::default().is_none());
        assert_eq!(Link { delay_ms: 0.2, jitter_ms: 0.05, loss: 0.0 }.describe(), "user-space proxy, delay 0.20 ms +- 0.05 ms");
    }
}
