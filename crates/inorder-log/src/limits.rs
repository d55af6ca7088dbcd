//! Every limit of the log, named, with its unit last, in one place.
//!
//! A limit that is not here does not exist: every buffer, batch and queue of the crate is sized
//! by one of these constants or by a field of [`LogOptions`](crate::LogOptions) whose default
//! and bounds are defined here. Relations between limits are checked at compile time.

use std::time::Duration;

/// Bytes of a record header: `crc32c u32 | payload length u32 | position u64`.
pub const RECORD_HEADER_BYTES: u64 = 16;

/// [`RECORD_HEADER_BYTES`] as a `usize`, for slicing buffers.
pub(crate) const RECORD_HEADER_BYTES_USIZE: usize = usize_from(RECORD_HEADER_BYTES);

/// Bytes of a record's checksum field, the first field of its header. The checksum covers
/// everything after itself, so the covered bytes start at this offset.
pub(crate) const RECORD_CHECKSUM_BYTES: usize = 4;

/// Bytes of a segment file header (magic, version, base position, checksum).
pub const SEGMENT_HEADER_BYTES: u64 = 32;

/// [`SEGMENT_HEADER_BYTES`] as a `usize`, for slicing buffers.
pub(crate) const SEGMENT_HEADER_BYTES_USIZE: usize = usize_from(SEGMENT_HEADER_BYTES);

/// Bytes of a sparse index file header (magic, version, checksum, base position, entry count).
pub(crate) const INDEX_HEADER_BYTES: usize = 32;

/// Bytes of one sparse index entry: `position u64 | byte offset u64`.
pub(crate) const INDEX_ENTRY_BYTES: usize = 16;

/// Largest sparse index file read: the header plus one entry per [`INDEX_INTERVAL_BYTES`] of
/// the largest segment, plus its first record. A larger file is not a valid index (it is rebuilt).
pub(crate) const INDEX_FILE_BYTES_MAX: u64 = INDEX_HEADER_BYTES as u64
    + (SEGMENT_BYTES_MAX / INDEX_INTERVAL_BYTES + 1) * INDEX_ENTRY_BYTES as u64;

/// Longest accepted [`Name`](crate::Name), in bytes.
pub const NAME_BYTES_MAX: usize = 200;

/// Most bytes of a refused name quoted back in [`Error::InvalidName`](crate::Error::InvalidName).
pub const NAME_DISPLAY_BYTES_MAX: usize = 64;

/// Largest payload the on-disk format accepts. A header claiming more is treated as corrupt
/// before anything is allocated; [`LogOptions::record_payload_bytes_max`] may only lower it.
///
/// [`LogOptions::record_payload_bytes_max`]: crate::LogOptions::record_payload_bytes_max
pub const RECORD_PAYLOAD_BYTES_LIMIT: u32 = 16 * 1024 * 1024;

/// Default largest payload of one record.
pub const RECORD_PAYLOAD_BYTES_MAX_DEFAULT: u32 = 4 * 1024 * 1024;

/// Smallest segment size accepted by [`LogOptions`](crate::LogOptions) (tests use tiny segments).
pub const SEGMENT_BYTES_MIN: u64 = 4096;

/// Largest segment size: sparse index offsets and file offsets stay far below `u32::MAX`.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Most records in one `append` call.
pub const APPEND_RECORDS_MAX: usize = 16 * 1024;

/// Most payload bytes in one `append` call.
pub const APPEND_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Payload bytes that may be queued for the writer at once, across every appender. Appenders
/// beyond it wait (async) for earlier appends to finish: this bounds the writer's queue in bytes,
/// while [`WRITER_QUEUE_DEPTH`] bounds it in commands.
pub const APPEND_INFLIGHT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes per permit of the in-flight byte budget ([`APPEND_INFLIGHT_BYTES_MAX`]): an append
/// takes one permit per started KiB of payload.
pub(crate) const APPEND_PERMIT_BYTES: usize = 1024;

/// Commands that may wait in one log's command queue for its write stage.
pub const WRITER_QUEUE_DEPTH: usize = 4096;

/// Bytes written by one group commit (one `write` + one `fdatasync`) before the writer stops
/// gathering more appends. A single append larger than this is still written whole.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Append commands gathered into one group commit.
pub const GROUP_COMMIT_COMMANDS_MAX: usize = 4096;

/// Written groups (and explicit syncs) of one log that may be waiting for their fsync or their
/// answer. When that many are unanswered, the log's write stage pauses (it does not hold a pool
/// thread) until its answer stage catches up; appenders then wait in the command queue.
pub const SYNC_QUEUE_DEPTH: usize = 1024;

/// Groups of appends (or other commands) one log's write stage serves in one turn before its
/// pool thread serves the other stages with work (the log goes to the back of the ready queue).
pub const WRITER_TURN_GROUPS_MAX: usize = 16;

/// Fsyncs one log's sync stage runs back to back in one turn before its syncer thread serves the
/// other stages with work.
pub const SYNC_TURN_BATCHES_MAX: usize = 16;

/// Synced batches one log's answer stage answers in one turn before its thread serves the other
/// stages with work.
pub const ANSWER_TURN_BATCHES_MAX: usize = 16;

/// Fewest writer threads of the process-wide pool, whatever the number of CPUs: a writer thread
/// blocked in one log's segment roll or purge (which fsync) leaves another for the other logs.
pub const WRITER_THREADS_MIN: usize = 2;

/// Most writer threads of the process-wide pool. The pool starts one per CPU within
/// [`WRITER_THREADS_MIN`]`..=`[`WRITER_THREADS_MAX`], on the first open, and never more, however
/// many logs are open.
pub const WRITER_THREADS_MAX: usize = 8;

/// Syncer threads of the process-wide pool. `fdatasync` waits for the device, not the CPU: fsyncs
/// of different logs run in parallel on them (devices with deep queues serve them together),
/// those of one log one at a time. They also answer appenders, and run the write stage of logs
/// under `always`.
pub const SYNCER_THREADS: usize = 4;

/// A sparse index entry is kept at least every this many bytes of a segment.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

/// Bytes a reader fetches from a segment file per read call.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Earlier read chunks a reader keeps for reuse (records handed out may still refer to them).
pub(crate) const READ_SPARE_CHUNKS_MAX: usize = 4;

/// Most records a reader frames in one pass over a chunk.
pub(crate) const READ_FRAMES_PER_PASS_MAX: usize = 4096;

/// Records a reader frames beyond what the read still has room for, for the records a walk from
/// an index entry skips before reaching the wanted position.
pub(crate) const READ_SKIP_FRAMES_MAX: usize = 64;

/// Default most records returned by one read.
pub const READ_RECORDS_MAX_DEFAULT: usize = 4096;

/// Default most payload bytes returned by one read (a single larger record is still returned).
pub const READ_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// Default time without commands after which a log releases its buffers and file handles.
pub const IDLE_AFTER_DEFAULT: Duration = Duration::from_secs(30);

/// Most quarantine files one segment file may have at one offset (`….at-<offset>.<n>.quarantine`):
/// a repair that finds them all taken refuses rather than overwrite one.
pub const QUARANTINE_NAMES_MAX: usize = 1000;

/// Stack size of each pool thread: they only encode records and issue syscalls.
pub const POOL_THREAD_STACK_BYTES: usize = 256 * 1024;

const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX_DEFAULT <= RECORD_PAYLOAD_BYTES_LIMIT);
const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(
    RECORD_PAYLOAD_BYTES_MAX_DEFAULT as u64 + RECORD_HEADER_BYTES + SEGMENT_HEADER_BYTES
        <= SEGMENT_BYTES_DEFAULT
);
const _: () = assert!((RECORD_PAYLOAD_BYTES_LIMIT as usize) <= APPEND_BYTES_MAX);
const _: () = assert!(
    SEGMENT_HEADER_BYTES
        + APPEND_BYTES_MAX as u64
        + APPEND_RECORDS_MAX as u64 * RECORD_HEADER_BYTES
        <= SEGMENT_BYTES_MAX,
    "a batch never spans segments: a segment of one largest batch stays within the offsets"
);
const _: () = assert!(APPEND_BYTES_MAX <= APPEND_INFLIGHT_BYTES_MAX);
const _: () = assert!(READ_CHUNK_BYTES as u64 > RECORD_HEADER_BYTES);
const _: () = assert!(READ_SKIP_FRAMES_MAX < READ_FRAMES_PER_PASS_MAX);
const _: () = assert!(READ_SPARE_CHUNKS_MAX >= 1);
const _: () = assert!(RECORD_CHECKSUM_BYTES < RECORD_HEADER_BYTES_USIZE);
const _: () = assert!(INDEX_INTERVAL_BYTES >= RECORD_HEADER_BYTES);
const _: () = assert!(NAME_DISPLAY_BYTES_MAX <= NAME_BYTES_MAX);
const _: () = assert!(APPEND_INFLIGHT_BYTES_MAX.is_multiple_of(APPEND_PERMIT_BYTES));
const _: () = assert!(APPEND_BYTES_MAX.div_ceil(APPEND_PERMIT_BYTES) <= u32::MAX as usize);
const _: () =
    assert!(APPEND_INFLIGHT_BYTES_MAX / APPEND_PERMIT_BYTES <= tokio::sync::Semaphore::MAX_PERMITS);
const _: () = assert!(GROUP_COMMIT_BYTES_MAX <= APPEND_INFLIGHT_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_COMMANDS_MAX <= WRITER_QUEUE_DEPTH);
const _: () = assert!(SYNC_QUEUE_DEPTH >= 2, "the writer stage writes ahead of an fsync");
const _: () = assert!(WRITER_TURN_GROUPS_MAX >= 1);
const _: () = assert!(SYNC_TURN_BATCHES_MAX >= 1 && ANSWER_TURN_BATCHES_MAX >= 1);
const _: () = assert!(1 <= WRITER_THREADS_MIN && WRITER_THREADS_MIN <= WRITER_THREADS_MAX);
const _: () = assert!(SYNCER_THREADS >= 2, "a log's fsyncs go on while its appenders are answered");
const _: () = assert!(usize::BITS == 64, "inorder-log supports 64-bit targets only");

/// Converts an on-disk `u64` to a `usize` (lossless: the crate requires a 64-bit target).
#[allow(clippy::cast_possible_truncation)]
pub(crate) const fn usize_from(n: u64) -> usize {
    n as usize
}

/// Converts a `usize` length to the `u64` used on disk (lossless on 64-bit targets).
pub(crate) const fn u64_from(n: usize) -> u64 {
    n as u64
}
