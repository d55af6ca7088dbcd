//! Group commit: the syncer thread, which shares one `fdatasync` among many appends and runs
//! it in parallel with the writer.
//!
//! Under `fsync = group` the writer does not wait for the disk. It writes a group of appends to
//! the page cache and hands a [`SyncRequest`] (the file, the extent written, the waiting
//! appenders) to the syncer, then goes on writing the next group. The syncer takes every request
//! queued behind the first, issues **one** `fdatasync` on the newest file — which covers every
//! byte written to it before the call — and only then publishes the new committed position and
//! replies to every appender in those requests. While one fsync runs the next group is already
//! being written, so the disk never waits for the appenders and the number of appends sharing
//! an fsync grows by itself with the load.
//!
//! Why syncing only the newest file is enough: a request may name an older segment only if the
//! writer rolled since; rolling fsyncs the old segment before the writer moves on.
//!
//! The syncer does nothing but fsync: it hands each finished batch to the *replier* thread,
//! which publishes the new committed position and wakes the appenders, and goes straight on to
//! the next fsync — the disk does not wait for the replies either. The replier publishes batches
//! in the order they were synced, so the committed position only grows.
//!
//! A failed fsync latches the log (see [`Shared::latch`]) before anything later is synced, so no
//! later fsync can publish past the lost data (after a failed fsync the kernel may have dropped
//! the dirty pages; a later successful fsync proves nothing about them). Every request then gets
//! [`crate::Error::Latched`].

use std::{ops::RangeInclusive, sync::Arc, thread::JoinHandle};

use crate::{
    error::{Error, Result},
    limits::{SYNC_QUEUE_DEPTH, WRITER_STACK_BYTES},
    segments::Segment,
    shared::Shared,
    vfs::VfsFile,
};

/// The reply channel of one append.
pub(crate) type AppendReply = tokio::sync::oneshot::Sender<Result<RangeInclusive<u64>>>;

/// Written, not yet durable: what the writer hands to the syncer.
pub(crate) struct SyncRequest {
    /// The file the records were written to.
    pub file: Arc<dyn VfsFile>,
    /// Its segment, whose extent is published after the fsync.
    pub segment: Arc<Segment>,
    /// One past the last position written.
    pub end: u64,
    /// Bytes of the segment written, up to `end`.
    pub committed_bytes: u64,
    /// The appenders waiting for these records, with their positions.
    pub replies: Vec<(AppendReply, RangeInclusive<u64>)>,
}

/// A synced (or failed) batch on its way to the replier.
struct Synced {
    batch: Vec<SyncRequest>,
    outcome: Result<(), Arc<std::io::Error>>,
}

/// Starts the syncer and replier threads of a log; returns the request channel and the threads.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
) -> Result<(flume::Sender<SyncRequest>, Vec<JoinHandle<()>>)> {
    let (requests, receiver) = flume::bounded(SYNC_QUEUE_DEPTH);
    let (synced, to_reply) = flume::bounded(SYNC_QUEUE_DEPTH);
    let spawn_named = |name: &str, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(WRITER_STACK_BYTES)
            .spawn(body)
            .map_err(|e| Error::io("spawn group commit thread", &shared.dir, e))
    };
    let replier_shared = Arc::clone(shared);
    let replier =
        spawn_named("inorder-log-reply", Box::new(move || reply(&replier_shared, &to_reply)))?;
    let syncer_shared = Arc::clone(shared);
    let syncer = spawn_named(
        "inorder-log-sync",
        Box::new(move || sync(&syncer_shared, &receiver, &synced)),
    )?;
    Ok((requests, vec![syncer, replier]))
}

/// The syncer: one fsync per batch of queued requests, back to back.
fn sync(shared: &Shared, requests: &flume::Receiver<SyncRequest>, synced: &flume::Sender<Synced>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter().take(SYNC_QUEUE_DEPTH));
        let newest = batch.last().expect("a batch holds its first request");
        let outcome = match shared.latched() {
            Some(source) => Err(source),
            None => newest.file.sync_data().map_err(|e| {
                let path = &newest.segment.path;
                shared.latch(std::io::Error::new(
                    e.kind(),
                    format!("fdatasync {}: {e}", path.display()),
                ))
            }),
        };
        if outcome.is_ok() {
            shared.stats.add_sync();
        }
        if synced.send(Synced { batch, outcome }).is_err() {
            return;
        }
    }
}

/// The replier: publishes synced batches in order and answers their appenders.
fn reply(shared: &Shared, synced: &flume::Receiver<Synced>) {
    while let Ok(Synced { batch, outcome }) = synced.recv() {
        match outcome {
            Ok(()) => {
                for request in &batch {
                    request.segment.publish(request.end, request.committed_bytes);
                }
                let newest = batch.last().expect("a batch holds its first request");
                shared.publish_committed(newest.end - 1);
                for request in batch {
                    for (reply, positions) in request.replies {
                        let _ = reply.send(Ok(positions));
                    }
                }
            }
            Err(source) => {
                for request in batch {
                    for (reply, _) in request.replies {
                        let _ = reply.send(Err(Error::Latched { source: Arc::clone(&source) }));
                    }
                }
            }
        }
    }
}
