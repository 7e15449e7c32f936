//! Where a pool's instances are: each entry of an instance list is a [`Source`], either a
//! fixed `host:port`, a DNS name re-resolved periodically (`dns://NAME:PORT`: a Kubernetes
//! headless Service answers with one address per ready pod, so pods that come and go are
//! followed), or a file listing addresses, re-read when it changes (`file:PATH`, one
//! `host:port` per line, `#` comments; written by a config-management tool or a sidecar).
//!
//! An `inproc:PATH` entry names an in-process instance ([`crate::instance::local`]); it is
//! fixed, like an address.
//!
//! A fixed address or a file's line may end in `@HOST`, the label of the host (machine, node)
//! the instance runs on (`10.0.0.7:9001@node-a`): the pools spread their rotation over hosts
//! and keep a coding group's parity query off its members' hosts
//! ([`crate::upstream::pool::Pool::update`], [`crate::upstream::pool::Pool::infer_avoiding`]).
//!
//! A [`Resolver`] turns the sources into the current addresses; the frontend re-resolves them
//! every [`DEFAULT_DISCOVERY_INTERVAL`] (`--discovery-interval-ms`) and updates its pools
//! ([`crate::upstream::pool::Pool::update`]): instances that stay keep their connections and
//! breakers, new ones join the rotation, and those that left get no new calls while the calls
//! they hold finish. A source that fails to resolve keeps its last answer (a DNS hiccup must not
//! empty a pool); an answer of no address empties it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How often dynamic sources are re-resolved by default (ms scale: 2 s).
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

/// One entry of an instance list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fixed `host:port` (a host name is resolved by the connection, once per connect), or
    /// an in-process instance's `inproc:PATH` ([`crate::instance::local`]), which is fixed too.
    Addr(String),
    /// `dns://NAME:PORT`: every address NAME resolves to (A and AAAA, through the system
    /// resolver), each at PORT.
    Dns { host: String, port: u16 },
    /// `file:PATH`: the `host:port` lines of a file.
    File(PathBuf),
}

/// An instance list entry that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("instance '{0}': expected host:port, dns://NAME:PORT, file:PATH or inproc:PATH")]
    BadEntry(String),
    #[error("instance '{0}': the port must be a number from 1 to 65535")]
    BadPort(String),
}

impl Source {
    /// Parses one instance list entry (see the module docs).
    ///
    /// Errors: an empty entry, a `dns://` entry without NAME:PORT, or an empty `file:` path.
    pub fn parse(entry: &str) -> Result<Self, DiscoveryError> {
        let entry = entry.trim();
        let bad = || DiscoveryError::BadEntry(entry.to_string());
        if let Some(name) = entry.strip_prefix("dns://") {
            let (host, port) = name.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| DiscoveryError::BadPort(entry.to_string()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            return if host.is_empty() { Err(bad()) } else { Ok(Self::Dns { host: host.to_string(), port }) };
        }
        if let Some(path) = entry.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return if path.is_empty() { Err(bad()) } else { Ok(Self::File(PathBuf::from(path))) };
        }
        if entry.strip_prefix(crate::instance::local::INPROC).is_some_and(str::is_empty) {
            return Err(bad()); // names no model file
        }
        if entry.is_empty() || entry.contains("://") {
            return Err(bad());
        }
        Ok(Self::Addr(entry.to_string()))
    }

    /// True for a source whose addresses may change (DNS, file).
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, Self::Addr(_))
    }

    /// The addresses the source gives now.
    ///
    /// Errors: a name that does not resolve, a file that cannot be read, or a line in it that
    /// is not `host:port`; as text, for the log.
    async fn resolve(&self) -> Result<Vec<String>, String> {
        match self {
            Self::Addr(a) => Ok(vec![a.clone()]),
            Self::Dns { host, port } => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => Ok(addrs.map(|a| a.to_string()).collect()),
                Err(e) => Err(format!("resolving {host}: {e}")),
            },
            Self::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
                let lines = text.lines().map(|l| l.split('#').next().unwrap_or_default().trim()).filter(|l| !l.is_empty());
                lines
                    .map(|l| match Source::parse(l) {
                        Ok(Source::Addr(a)) if a.contains(':') => Ok(a),
                        _ => Err(format!("{}: '{l}' is not host:port", path.display())),
                    })
                    .collect()
            }
        }
    }
}

/// Parses every entry of an instance list (see [`Source::parse`]).
///
/// Errors: the first entry that cannot be used.
pub fn sources(entries: &[String]) -> Result<Vec<Source>, DiscoveryError> {
    entries.iter().map(|e| Source::parse(e)).collect()
}

/// The current addresses of a list of sources, each source's last good answer kept.
pub struct Resolver {
    sources: Vec<Source>,
    last: Vec<Vec<String>>,
    /// A file source's modification time when last read (unchanged files are not re-read).
    read_at: Vec<Option<SystemTime>>,
}

impl Resolver {
    pub fn new(sources: Vec<Source>) -> Self {
        let n = sources.len();
        Self { sources, last: vec![Vec::new(); n], read_at: vec![None; n] }
    }

    /// True if any source may change.
    pub fn is_dynamic(&self) -> bool {
        self.sources.iter().any(Source::is_dynamic)
    }

    /// Resolves every source (a file only if it changed since it was last read) and returns
    /// the addresses, deduplicated, in source order. A source that fails keeps its last
    /// answer; the failure is logged.
    pub async fn refresh(&mut self) -> Vec<String> {
        for (i, source) in self.sources.iter().enumerate() {
            if let Source::File(path) = source {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if modified.is_some() && modified == self.read_at[i] {
                    continue;
                }
                self.read_at[i] = modified;
            }
            match source.resolve().await {
                Ok(addrs) => self.last[i] = addrs,
                Err(e) => tracing::warn!("instance discovery: {e}; keeping the last answer ({} instances)", self.last[i].len()),
            }
        }
        let mut seen = std::collections::HashSet::new();
        self.last.iter().flatten().filter(|a| seen.insert(a.as_str())).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_to_sources_or_clear_errors() {
        assert_eq!(Source::parse("10.0.0.1:9000"), Ok(Source::Addr("10.0.0.1:9000".into())));
        assert_eq!(Source::parse("dns://workers.ns.svc:9000"), Ok(Source::Dns { host: "workers.ns.svc".into(), port: 9000 }));
        assert_eq!(Source::parse("dns://[::1]:9000"), Ok(Source::Dns { host: "::1".into(), port: 9000 }));
        assert_eq!(Source::parse("file:/etc/parm/deployed"), Ok(Source::File("/etc/parm/deployed".into())));
        assert_eq!(Source::parse("file:///etc/parm/deployed"), Ok(Source::File("/etc/parm/deployed".into())));
        assert_eq!(Source::parse("dns://workers:0"), Err(DiscoveryError::BadPort("dns://workers:0".into())));
        assert_eq!(Source::parse("inproc:models/m.bpk"), Ok(Source::Addr("inproc:models/m.bpk".into())));
        for bad in ["", "dns://workers", "dns://:9000", "file:", "http://a:1", "inproc:", "inproc://m"] {
            assert!(matches!(Source::parse(bad), Err(DiscoveryError::BadEntry(_))), "{bad}");
        }
        assert!(!Source::parse("a:1").unwrap().is_dynamic());
    }

    #[tokio::test]
    async fn a_file_source_follows_its_file_and_keeps_its_last_answer_on_errors() {
        let dir = std::env::temp_dir().join(format!("parm-discovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deployed");
        std::fs::write(&path, "127.0.0.1:9001  # first\n\n127.0.0.1:9002\n").unwrap();
        let mut r = Resolver::new(vec![Source::Addr("127.0.0.1:9001".into()), Source::File(path.clone())]);
        assert!(r.is_dynamic());
        assert_eq!(r.refresh().await, ["127.0.0.1:9001", "127.0.0.1:9002"], "deduplicated, in order");
        std::fs::write(&path, "127.0.0.1:9003\n").unwrap();
        // The modification time may not have moved within its resolution: make sure it did.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert_eq!(r.refresh().await, ["127.0.0.1:9001", "127.0.0.1:9003"]);
        std::fs::write(&path, "not an address\n").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later + Duration::from_secs(5)).unwrap();
        assert_eq!(r.refresh().await, ["127.0.0.1:9001", "127.0.0.1:9003"], "a bad file keeps the last answer");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_dns_source_gives_every_address_of_the_name() {
        let mut r = Resolver::new(vec![Source::parse("dns://localhost:9000").unwrap()]);
        let addrs = r.refresh().await;
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ends_with(":9000")), "{addrs:?}");
        assert!(addrs.iter().any(|a| a == "127.0.0.1:9000" || a == "[::1]:9000"), "{addrs:?}");
    }
}
