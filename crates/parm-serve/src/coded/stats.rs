//! The one set of counters of the coded path (monotonic, but for the `late_calls` gauge), read
//! by metrics and benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the coded path. A unit is one query or one request's block of rows coded as
/// one member (`batch_coding`); `rows` counts the queries inside them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Units accepted, and the rows they carried.
    pub queries: AtomicU64,
    pub rows: AtomicU64,
    pub answered: AtomicU64,
    pub reconstructed: AtomicU64,
    pub unavailable: AtomicU64,
    pub parity_queries: AtomicU64,
    /// Rows of the parity queries sent (one per parity query unless blocks are coded).
    pub parity_rows: AtomicU64,
    /// Extra copies sent by replication and hedging (backup requests); shared with the
    /// deployed pool, which counts them.
    pub backups: Arc<AtomicU64>,
    /// Groups sealed after all their members were answered, so no parity query was sent.
    pub parity_skipped: AtomicU64,
    /// Groups whose parity query was padded with all-zero rows (partly filled, or blocks of
    /// different lengths).
    pub padded_groups: AtomicU64,
    /// Groups sealed before their time because a member's call went to a known straggler
    /// ([`crate::coded::policy::lagging`]).
    pub sealed_for_straggler: AtomicU64,
    /// Groups closed without any parity query (no parity instances, or F(0) unknown).
    pub unprotected_groups: AtomicU64,
    /// Output checks ([`crate::coded::check`]): groups checked against their code, groups
    /// flagged, instances ejected.
    pub checks: AtomicU64,
    pub flagged: AtomicU64,
    pub ejections: AtomicU64,
    /// Calls still running although their queries were answered by reconstructions (a gauge,
    /// at most `MAX_LATE_CALLS`), and such calls dropped instead, out of their instances'
    /// queues, because that many were running.
    pub late_calls: AtomicU64,
    pub cancelled_originals: AtomicU64,
}

impl Stats {
    /// Takes one of `max` late calls ([`Self::late_calls`]); false when all are taken.
    pub(crate) fn take_late_call(&self, max: u64) -> bool {
        self.late_calls.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }
}
