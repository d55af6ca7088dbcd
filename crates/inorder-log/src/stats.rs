//! Counters of a log, for metrics and benchmarks (how many records one fsync carried).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::limits::u64_from;

/// A snapshot of a log's counters and extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// First position still in the log.
    pub first_position: u64,
    /// Last durable position (0 if none).
    pub last_position: u64,
    /// Segment files.
    pub segments: usize,
    /// Append calls committed since open.
    pub appends: u64,
    /// Records committed since open.
    pub records: u64,
    /// Groups written (one write call each) since open.
    pub group_commits: u64,
    /// `fdatasync` calls on segments since open.
    pub data_syncs: u64,
    /// Bytes written to segments since open.
    pub bytes_written: u64,
    /// Times the writer went idle and released its files.
    pub hibernations: u64,
    /// Whether the writer stopped after an I/O error.
    pub latched: bool,
}

/// One segment file as the log knows it: what retention decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Position of its first record.
    pub base: u64,
    /// One past its last committed position (`base` while empty).
    pub end: u64,
    /// Bytes of the file that hold committed records (header included).
    pub bytes: u64,
    /// Whether the writer moved on: the file never changes again (only sealed segments are ever
    /// purged; a purge that covers the active one seals it first).
    pub sealed: bool,
}

/// The live counters (relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    appends: AtomicU64,
    records: AtomicU64,
    group_commits: AtomicU64,
    data_syncs: AtomicU64,
    bytes_written: AtomicU64,
    hibernations: AtomicU64,
    latched: AtomicBool,
}

impl Stats {
    pub(crate) fn add_group(&self, appends: usize, records: usize) {
        self.appends.fetch_add(u64_from(appends), Ordering::Relaxed);
        self.records.fetch_add(u64_from(records), Ordering::Relaxed);
        self.group_commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_sync(&self) {
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, bytes: usize) {
        self.bytes_written.fetch_add(u64_from(bytes), Ordering::Relaxed);
    }

    pub(crate) fn add_hibernation(&self) {
        self.hibernations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_latched(&self) {
        self.latched.store(true, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        first_position: u64,
        last_position: u64,
        segments: usize,
    ) -> LogStats {
        LogStats {
            first_position,
            last_position,
            segments,
            appends: self.appends.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            group_commits: self.group_commits.load(Ordering::Relaxed),
            data_syncs: self.data_syncs.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            hibernations: self.hibernations.load(Ordering::Relaxed),
            latched: self.latched.load(Ordering::Relaxed),
        }
    }
}
