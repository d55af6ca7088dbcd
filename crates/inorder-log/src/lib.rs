//! `inorder-log`: the durable, segmented, per-topic log under inorder.
//!
//! One [`Log`] per topic, in its own directory. Records are opaque bytes framed with their
//! length, a CRC32C and their position; positions are 1, 2, 3, … with no gaps and are never
//! reused. Appends are durable before they return under the `always` and `group` fsync
//! policies ([`FsyncPolicy`]); group commit lets concurrent appenders share one `fdatasync`.
//! Readers start anywhere (a sparse index avoids scanning); a watch of the last durable position
//! tells waiting consumers when to read again, without polling. Purge deletes whole segments below
//! a position. One append is one batch, all or nothing across a crash. Opening a log recovers
//! from a crash: a torn tail (or an incomplete batch) is cut and reported; corruption anywhere it
//! cannot be a torn write — also bad bytes with sound records after them — is an error naming
//! file and offset, which only an operator's repair ([`OfflineLog`]) cuts, into quarantine files.
//!
//! The crate needs no async runtime: async methods only wait on runtime-agnostic channels, and
//! every async method has a `*_blocking` twin.
//!
//! # Threads
//!
//! A `Log` has no thread of its own, so the number of OS threads does not grow with the number
//! of open logs. The first open starts a process-wide pool, kept for the life of the process:
//! one writer thread per CPU (at least [`limits::WRITER_THREADS_MIN`], at most
//! [`limits::WRITER_THREADS_MAX`]) and [`limits::SYNCER_THREADS`] syncer threads. Each log keeps
//! its own bounded command queue, and its write path is cut into three stages: the *write* stage
//! (group appends, assign positions, one `pwrite` per group), the *sync* stage (one `fdatasync`
//! per batch of written groups, then publish the committed position) and the *answer* stage
//! (wake the appenders). A stage with work is queued on the pool once and runs on one pool thread
//! at a time: a log's writes stay single-threaded and its fsyncs run and publish in order, while
//! different logs, and the three stages of one log, run in parallel. Writer threads run write
//! stages; syncer threads run sync and answer stages, and the write stage of `always` logs, which
//! fsyncs each append before writing the next. An idle log holds no thread, and after
//! [`LogOptions::idle_after`] no file handle but its lock either.
//!
//! ```
//! # fn main() -> Result<(), inorder_log::Error> {
//! use inorder_log::{Log, LogOptions, ReadLimits};
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let log = Log::open(dir.path(), LogOptions::default())?;
//! let positions = log.append_blocking(["user.created", "user.paid"])?;
//! assert_eq!(positions, 1..=2);
//!
//! let records = log.read(1, ReadLimits::default())?;
//! assert_eq!(records[1].payload, "user.paid");
//!
//! // Whole segments below a position go once the caller no longer needs them.
//! let report = log.purge_blocking(3)?;
//! assert_eq!(report.first_position, 3);
//! # Ok(()) }
//! ```
//!
//! The on-disk format and the durability argument are in `FORMAT.md` next to this crate.

#![warn(missing_docs)]

// Layers, bottom up; a module uses only modules of lower layers (within a layer, only those
// listed before it):
//   foundations  blocking, error, limits, name, options, stats, vfs/
//   format       format/ (segment, record, index, checksum), recovery (the decision table)
//   knowledge    scan, segments, open, shared
//   paths        read/ (reader, verify), write/ (group_commit, writer), offline/ (inspect, repair)
//   façade       log
mod blocking;
mod error;
mod format;
pub mod limits;
mod log;
mod name;
mod offline;
mod open;
mod options;
mod read;
mod recovery;
mod scan;
mod segments;
mod shared;
mod stats;
pub mod vfs;
mod write;

pub use crate::{
    error::{CorruptReason, Error, Result},
    format::record,
    limits::NAME_BYTES_MAX,
    log::{Appending, Log},
    name::Name,
    offline::{
        OfflineLog,
        inspect::{Damage, Finding, Inspection, Problem, SegmentInspection},
        repair::{QuarantineMove, RepairPlan},
    },
    options::{FsyncPolicy, LogOptions},
    read::reader::{ReadLimits, Reader, Record},
    recovery::{RecoveryReport, TornReason, Truncation},
    stats::{LogStats, SegmentInfo},
    write::writer::PurgeReport,
};
