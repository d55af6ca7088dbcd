//! [`Shared`]: the state of one open log that the write path, the readers and the `Log` handles
//! all see — the segment map, the committed position and its watch, the counters, the latch.
//!
//! **Guarantees.** The committed position only grows, and it is published only after the fsync
//! the policy requires (by whichever stage ran it). The latch is set once, by the first failed
//! write or fsync, and never cleared: the log writes nothing after it until reopened.

use std::{
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

use crate::{options::LogOptions, segments::SegmentMap, stats::Stats, vfs::Vfs};

/// State shared by the writer, readers and the `Log` handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) options: LogOptions,
    segments: RwLock<SegmentMap>,
    /// Last durable position (0 while the log has never held a record).
    committed: AtomicU64,
    /// Wakes watchers of the last position when `committed` grows or the log closes.
    watch: watch::Sender<u64>,
    pub(crate) stats: Stats,
    /// Set by the first failed write or fsync; the log writes nothing after it.
    latch: OnceLock<Arc<std::io::Error>>,
}

impl Shared {
    pub(crate) fn new(
        dir: PathBuf,
        vfs: Arc<dyn Vfs>,
        options: LogOptions,
        segments: SegmentMap,
        committed: u64,
    ) -> Self {
        Self {
            dir,
            vfs,
            options,
            segments: RwLock::new(segments),
            committed: AtomicU64::new(committed),
            watch: watch::Sender::new(committed),
            stats: Stats::default(),
            latch: OnceLock::new(),
        }
    }

    /// The error that latched the log, if any.
    pub(crate) fn latched(&self) -> Option<Arc<std::io::Error>> {
        self.latch.get().cloned()
    }

    /// Latches the log after an I/O error; returns the error that holds the latch (the first).
    pub(crate) fn latch(&self, source: std::io::Error) -> Arc<std::io::Error> {
        let first = self.latch.get_or_init(|| {
            tracing::error!(dir = %self.dir.display(), error = %source, "log latched");
            Arc::new(source)
        });
        self.stats.set_latched();
        Arc::clone(first)
    }

    pub(crate) fn read_segments(&self) -> RwLockReadGuard<'_, SegmentMap> {
        self.segments.read()
    }

    pub(crate) fn write_segments(&self) -> RwLockWriteGuard<'_, SegmentMap> {
        self.segments.write()
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Publishes a new committed position (after the fsync that made it durable). The
    /// position only grows: a smaller value (a syncer finishing after a later fsync already
    /// published more) changes nothing.
    pub(crate) fn publish_committed(&self, committed: u64) {
        let previous = self.committed.fetch_max(committed, Ordering::AcqRel);
        if committed > previous {
            self.watch.send_if_modified(|shown| {
                let grew = committed > *shown;
                *shown = (*shown).max(committed);
                grew
            });
        }
    }

    pub(crate) fn first_position(&self) -> u64 {
        self.read_segments().keys().next().copied().unwrap_or(1)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.watch.subscribe()
    }

    /// Wakes every watcher of the last position: the log is closing.
    pub(crate) fn close(&self) {
        self.watch.send_modify(|_| {});
    }
}
