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

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `upstream`
    /// (`host:port`), in mode `Pass`. Must be called inside a tokio runtime.
    ///
    /// Errors: the listening socket cannot be bound.
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        let up = upstream.to_string();
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(connection(sock, up.clone(), rx.clone()));
            }
        });
        Ok(Self { addr, upstream: upstream.to_string(), mode, accept })
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

async fn connection(client: TcpStream, upstream: String, mut mode: watch::Receiver<ProxyMode>) {
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
        _ = forward(cr, sw, mode.clone()) => {}
        _ = forward(sr, cw, mode) => {}
    }
}

async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<ProxyMode>) {
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
                            if to.write_all(&buf[..n]).await.is_err() {
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
}
