//! Group commit: what the sync stage of a log does with the extents its write stage wrote —
//! share one `fdatasync` among many appends, publish what it made durable, answer the appenders.
//!
//! Under `fsync = group` the write stage does not wait for the disk. It writes a group of appends
//! to the page cache and hands a [`SyncRequest`] (the file, the extent written, the waiting
//! appenders) to the log's sync stage, then goes on writing the next group. The sync stage takes
//! every request queued behind the first, issues **one** `fdatasync` on the newest file — which
//! covers every byte written to it before the call — and only then publishes the new committed
//! position. While one fsync runs the next group is already being written, so the disk never
//! waits for the appenders, and the number of appends sharing an fsync grows by itself with the
//! load. Under `always` each request gets its own fsync; under `never` only explicit syncs come
//! here.
//!
//! Why syncing only the newest file is enough: a request may name an older segment only if the
//! writer rolled since; rolling fsyncs the old segment before the writer moves on.
//!
//! A log's fsyncs run one at a time and publish in the order they ran, so the committed position
//! only grows. Answering the appenders is left to after the stage has been handed on
//! ([`super::pipeline`]): the next fsync of the log may start on another syncer thread while this
//! batch's appenders are being woken — the disk does not wait for the replies either.
//!
//! A failed fsync latches the log (see [`Shared::latch`]) before the next fsync of the log can
//! start, so no later fsync can publish past the lost data (after a failed fsync the kernel may
//! have dropped the dirty pages; a later successful fsync proves nothing about them). Every
//! request then gets [`crate::Error::Latched`].

use std::{io, ops::RangeInclusive, sync::Arc};

use tokio::sync::oneshot;

use crate::{
    error::{Error, Result},
    segments::Segment,
    shared::Shared,
    vfs::VfsFile,
};

/// The reply channel of one append.
pub(crate) type AppendReply = oneshot::Sender<Result<RangeInclusive<u64>>>;

/// The reply channel of one explicit sync.
pub(crate) type SyncReply = oneshot::Sender<Result<()>>;

/// Someone waiting for a request to become durable.
pub(crate) enum Waiter {
    /// An append, with the positions it was given.
    Append(AppendReply, RangeInclusive<u64>),
    /// An explicit [`Log::sync`](crate::Log::sync).
    Sync(SyncReply),
}

impl Waiter {
    /// Answers with the outcome of the fsync that covered the waiter's records.
    pub(crate) fn answer(self, outcome: Result<(), Arc<io::Error>>) {
        let latched = |source| Error::Latched { source };
        match self {
            Self::Append(reply, positions) => {
                let _ = reply.send(outcome.map(|()| positions).map_err(latched));
            }
            Self::Sync(reply) => {
                let _ = reply.send(outcome.map_err(latched));
            }
        }
    }
}

/// Written, not yet durable: what the write stage hands to the sync stage.
pub(crate) struct SyncRequest {
    /// The file the records were written to.
    pub file: Arc<dyn VfsFile>,
    /// Its segment, whose extent is published after the fsync.
    pub segment: Arc<Segment>,
    /// One past the last position written.
    pub end: u64,
    /// Bytes of the segment written, up to `end`.
    pub committed_bytes: u64,
    /// Who waits for these records, with their positions.
    pub waiters: Vec<Waiter>,
}

/// Makes a batch of requests durable with one `fdatasync` of the newest request's file and
/// publishes the extents it covers; on failure latches the log. Does not answer anyone.
pub(crate) fn sync_batch(shared: &Shared, batch: &[SyncRequest]) -> Result<(), Arc<io::Error>> {
    let newest = batch.last().expect("a batch holds at least one request");
    if let Some(source) = shared.latched() {
        return Err(source);
    }
    newest.file.sync_data().map_err(|e| {
        let path = &newest.segment.path;
        shared.latch(io::Error::new(e.kind(), format!("fdatasync {}: {e}", path.display())))
    })?;
    shared.stats.add_sync();
    for request in batch {
        request.segment.publish(request.end, request.committed_bytes);
    }
    shared.publish_committed(newest.end - 1);
    Ok(())
}

/// Answers every waiter of a synced (or failed) batch. The batch's file handles are released
/// first, so a log whose last appender was answered holds no handle for it any more.
pub(crate) fn answer(batch: Vec<SyncRequest>, outcome: &Result<(), Arc<io::Error>>) {
    let waiters: Vec<Waiter> = batch.into_iter().flat_map(|request| request.waiters).collect();
    for waiter in waiters {
        waiter.answer(outcome.clone());
    }
}
