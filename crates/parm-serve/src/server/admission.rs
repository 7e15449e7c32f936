//! Admission control: the frontend's one bound on work in progress.
//!
//! Every inference request must hold a [`Permit`] for its queries (rows) while the frontend
//! works on it. At most [`Admission::limit`] queries are in flight at once, over HTTP and gRPC
//! together; a request that would pass the limit is **shed** at once with HTTP 503 +
//! `Retry-After` (gRPC `UNAVAILABLE` with `retry-after` and `grpc-retry-pushback-ms`
//! metadata) instead of waiting in a queue. Since nothing downstream of admission (coding
//! groups, instance RPCs, worker queues) holds more than the admitted queries, memory and
//! queueing delay stay bounded however hard clients push.
//!
//! A batch request of B queries costs min(B, limit) permits, so a batch larger than the limit
//! is still served when the frontend is otherwise idle.
//!
//! [`Admission::close`] (graceful shutdown) makes every later request fail the same way, with
//! the message "shutting down", while the admitted ones finish.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::server::error::{ApiError, ErrorKind};

/// Default most queries in flight at the frontend (`parm serve --max-inflight`).
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;

/// Default `Retry-After` sent with a shed request.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counts queries in flight against a fixed limit.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    in_flight: AtomicUsize,
    closed: AtomicBool,
    shed: AtomicU64,
    peak: AtomicUsize,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_INFLIGHT)
    }
}

impl Admission {
    /// At most `limit` queries in flight (a limit of 0 is taken as 1). Shed requests carry
    /// the hint [`DEFAULT_RETRY_AFTER`].
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            shed: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Most queries in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queries in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Most queries that were ever in flight at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Requests shed so far (over the limit, or after [`Self::close`]).
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// True when no further query would be admitted now (full or closed): lets an interface
    /// shed a request before reading its body.
    pub fn is_full(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.in_flight() >= self.limit
    }

    /// True after [`Self::close`].
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Admits nothing more (graceful shutdown); permits already held stay valid.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Admits `queries` queries (a request's rows), or sheds the request.
    ///
    /// Errors: [`ErrorKind::Overloaded`] when admitting would pass the limit or the frontend
    /// is shutting down; the caller answers it at once (503 + `Retry-After` / `UNAVAILABLE`).
    pub fn try_acquire(&self, queries: usize) -> Result<Permit<'_>, ApiError> {
        let cost = queries.clamp(1, self.limit);
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.reject("the frontend is shutting down"));
        }
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur + cost > self.limit {
                return Err(
                    self.reject(&format!("overloaded: {cur} queries in flight, limit {} (request of {queries}); retry later", self.limit))
                );
            }
            match self.in_flight.compare_exchange_weak(cur, cur + cost, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.peak.fetch_max(cur + cost, Ordering::Relaxed);
        Ok(Permit { admission: self, cost })
    }

    /// Counts one request shed before it reached [`Self::try_acquire`] (e.g. before its body
    /// was read) and returns its error.
    pub fn shed_now(&self) -> ApiError {
        let why = if self.is_closed() {
            "the frontend is shutting down".to_string()
        } else {
            format!("overloaded: limit of {} queries in flight reached; retry later", self.limit)
        };
        self.reject(&why)
    }

    fn reject(&self, message: &str) -> ApiError {
        self.shed.fetch_add(1, Ordering::Relaxed);
        ApiError::new(ErrorKind::Overloaded, message)
    }
}

/// Admitted queries; released when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    admission: &'a Admission,
    cost: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(self.cost, Ordering::AcqRel);
    }
}

/// `Retry-After` header value: whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_sheds_and_permits_release() {
        let a = Admission::new(3);
        let p1 = a.try_acquire(2).unwrap();
        assert_eq!(a.in_flight(), 2);
        let e = a.try_acquire(2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.http_status(), 503);
        let p2 = a.try_acquire(1).unwrap();
        assert!(a.is_full());
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        drop(p2);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.shed(), 1);
        assert_eq!(a.peak(), 3);
    }

    #[test]
    fn big_batch_fits_an_idle_frontend_only() {
        let a = Admission::new(4);
        let p = a.try_acquire(100).unwrap(); // costs the whole limit
        assert_eq!(a.in_flight(), 4);
        assert!(a.try_acquire(1).is_err());
        drop(p);
        assert!(a.try_acquire(0).is_ok(), "an empty request still costs one permit while it runs");
    }

    #[test]
    fn closed_admits_nothing_but_keeps_permits() {
        let a = Admission::new(10);
        let p = a.try_acquire(1).unwrap();
        a.close();
        assert!(a.try_acquire(1).unwrap_err().message.contains("shutting down"));
        assert!(a.is_full());
        drop(p);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_seconds() {
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
