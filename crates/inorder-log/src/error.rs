//! The one error type of the crate.
//!
//! Each variant's doc says what the caller should do. Input errors (`InvalidName`,
//! `InvalidBatch`, `InvalidOptions`, `Purged`) changed nothing on disk. Storage errors (`Io`, `Corrupt`, `Latched`) are never retried inside the log.

use std::{io, path::PathBuf, sync::Arc};

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `inorder-log`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed. If it happened in the writer, the log is latched (see
    /// [`Error::Latched`]); reopen the log to recover. HTTP: 500.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// A record or segment header failed its checks somewhere it cannot be a torn write: in a
    /// sealed segment, or with sound records after it. Nothing is skipped or cut silently:
    /// restore the file from a replica or backup, or repair the log offline
    /// ([`OfflineLog`](crate::OfflineLog), `inorder log repair`), which moves the damaged batch
    /// and everything after it into quarantine files. HTTP: 500.
    #[error("corrupt log data in {} at byte offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the bad record or header within `file`.
        offset: u64,
        /// What check failed.
        reason: CorruptReason,
    },

    /// An earlier write, fsync, rename, file creation or removal failed, so the writer stopped:
    /// after a failed fsync the page cache may no longer match the disk, and writing on could
    /// acknowledge records that are lost. The append that met the failure and every later one
    /// fail with this error until the log is reopened (which recovers from what is really on
    /// disk: every acknowledged record). `source.kind()` says why — `StorageFull` (ENOSPC): free
    /// space, then reopen. HTTP: 503.
    #[error("the log stopped writing after an earlier I/O error: {source}")]
    Latched {
        /// The error that stopped the writer.
        source: Arc<io::Error>,
    },

    /// A name (of a topic, or whatever the caller names with [`Name`](crate::Name)) is not a safe
    /// file name. Nothing was created. HTTP: 400.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What was being named (`topic`, `subscription`, …).
        kind: &'static str,
        /// The offending name (at most [`NAME_DISPLAY_BYTES_MAX`] bytes of it).
        ///
        /// [`NAME_DISPLAY_BYTES_MAX`]: crate::limits::NAME_DISPLAY_BYTES_MAX
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An append was refused before anything was written (empty batch, too many records, a
    /// record over the payload limit). HTTP: 413 for size, 400 otherwise.
    #[error("invalid append: {reason}")]
    InvalidBatch {
        /// Why it was refused.
        reason: String,
    },

    /// [`LogOptions`](crate::LogOptions) out of bounds. Fix the configuration.
    #[error("invalid log options: {reason}")]
    InvalidOptions {
        /// Which bound was violated.
        reason: String,
    },

    /// Another `Log` (in this or another process) holds the directory. Close it first.
    #[error("log directory {} is already open (lock held)", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },

    /// The requested position was purged. Resume from `first_available`. HTTP: 410.
    #[error("position {requested} was purged; the first available position is {first_available}")]
    Purged {
        /// The position asked for.
        requested: u64,
        /// The lowest position still in the log.
        first_available: u64,
    },

    /// The log was closed while the operation waited. Reopen it.
    #[error("the log is closed")]
    Closed,
}

/// Why a piece of the log was judged corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// A file header has the wrong magic, version or checksum.
    #[error("bad file header")]
    BadHeader,
    /// The segment header names another base position than the file name.
    #[error("segment header base position does not match the file name")]
    BaseMismatch,
    /// A record in a sealed segment is cut short by the end of the file.
    #[error("record cut short by the end of a sealed segment")]
    Truncated,
    /// A record's length field exceeds the format's limit or the file.
    #[error("record length out of bounds")]
    BadLength,
    /// A record's checksum does not match its bytes.
    #[error("record checksum mismatch")]
    ChecksumMismatch,
    /// A record carries another position than the one that must follow its predecessor.
    #[error("record position out of sequence")]
    PositionOutOfSequence,
    /// Consecutive segments do not continue each other's positions.
    #[error("segments do not continue each other's positions")]
    SegmentGap,
    /// A sealed segment ends inside a batch (its last record says the batch continues): a batch
    /// never spans segments, and sealed segments were complete on disk.
    #[error("a sealed segment ends inside a batch")]
    IncompleteBatch,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }

    pub(crate) fn batch(reason: impl Into<String>) -> Self {
        Self::InvalidBatch { reason: reason.into() }
    }

    pub(crate) fn options(reason: impl Into<String>) -> Self {
        Self::InvalidOptions { reason: reason.into() }
    }
}
