//! [`Writer`]: the state of one log's write stage — the active segment, its write handle and
//! offset, the next position — and every operation that changes the log's files.
//!
//! The write stage ([`super::pipeline`]) hands it groups of appends: the first queued append and
//! every append already queued behind it (up to [`GROUP_COMMIT_BYTES_MAX`] /
//! [`GROUP_COMMIT_COMMANDS_MAX`]). The writer assigns their positions, encodes them into one buffer
//! and writes it with one call. Then, by policy:
//!
//! - `group`: returns the written extent as a [`SyncRequest`] for the log's sync stage
//!   ([`super::group_commit`]), which answers after the fsync that covers it; the write stage goes
//!   on with the next group meanwhile;
//! - `always`: one append per group, fdatasynced here before it is answered and the next one is
//!   written (the pool runs such a log's write stage on a syncer thread, so writer threads never
//!   wait for the disk);
//! - `never`: publishes and answers at once (page cache only).
//!
//! Nothing is visible to readers before it is durable under the policy: the committed position
//! is published after the fsync, by the stage that ran it.
//!
//! **Guarantees.** Only the writer assigns positions, and they are contiguous (asserted for every
//! group). After a failed write or fsync the log *latches* ([`Shared::latch`]): every later
//! command gets [`Error::Latched`] until the log is reopened. The page cache may no longer match
//! the disk after a failed fsync, so writing on could acknowledge records that are lost.
//!
//! Rolling to a new segment fsyncs the sealed one here, under every policy (rare: once per
//! segment). [`Writer::hibernate`] closes the file and frees the buffer of an idle log and asks
//! every segment to drop its cached read handle and sealed index; the next command reopens what it
//! needs.
//!
//! [`GROUP_COMMIT_BYTES_MAX`]: crate::limits::GROUP_COMMIT_BYTES_MAX

use std::{ops::RangeInclusive, sync::Arc};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::{
    error::{Error, Result},
    format::{index::SparseIndex, record::encode_batch_record, segment::create_segment_file},
    limits::{
        GROUP_COMMIT_COMMANDS_MAX, INDEX_INTERVAL_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
        u64_from,
    },
    options::FsyncPolicy,
    segments::Segment,
    shared::Shared,
    vfs::{self, OpenMode, VfsFile},
    write::group_commit::{AppendReply, SyncReply, SyncRequest, Waiter},
};

/// What the writer can be asked to do.
pub(crate) enum Command {
    /// Append records; reply with their positions once durable under the policy.
    Append(PendingAppend),
    /// Make everything written so far durable (useful under `never`).
    Sync { reply: SyncReply },
    /// Delete whole segments below a position (see [`Log::purge`](crate::Log::purge)).
    Purge { before: u64, reply: oneshot::Sender<Result<PurgeReport>> },
}

/// One queued append.
pub(crate) struct PendingAppend {
    pub records: Vec<Bytes>,
    pub payload_bytes: usize,
    pub reply: AppendReply,
    /// Held until the records are written: bounds the payload bytes queued for the writer.
    pub _permit: OwnedSemaphorePermit,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// The first position still in the log afterwards.
    pub first_position: u64,
}

/// The state of one log's write stage.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    /// Write handle of the active segment; `None` while hibernating.
    file: Option<Arc<dyn VfsFile>>,
    /// Bytes of the active segment file written so far.
    write_offset: u64,
    next_position: u64,
    last_indexed_offset: Option<u64>,
    /// The group being encoded; freed when the log hibernates.
    buf: Vec<u8>,
    index_entries: Vec<(u64, u64)>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, active: Arc<Segment>, next_position: u64) -> Self {
        let write_offset = active.committed_bytes();
        let last_indexed_offset = active
            .index_snapshot()
            .map(|index| index.seek(u64::MAX).1)
            .filter(|_| !active.is_empty());
        Self {
            shared,
            active,
            file: None,
            write_offset,
            next_position,
            last_indexed_offset,
            buf: Vec::new(),
            index_entries: Vec::new(),
        }
    }

    /// Appends a policy allows in one group: `always` gives every append its own fsync.
    pub(crate) fn group_commands_max(&self) -> usize {
        match self.shared.options.fsync {
            FsyncPolicy::Always => 1,
            FsyncPolicy::Group | FsyncPolicy::Never => GROUP_COMMIT_COMMANDS_MAX,
        }
    }

    /// Runs `op` unless latched; latches the log if it fails with an I/O error.
    fn guarded<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(source) = self.shared.latched() {
            return Err(Error::Latched { source });
        }
        op(self).map_err(|error| match error {
            Error::Io { op, path, source } => {
                let source = self.shared.latch(std::io::Error::new(
                    source.kind(),
                    format!("{op} on {}: {source}", path.display()),
                ));
                Error::Latched { source }
            }
            other => other,
        })
    }

    /// Writes a group of appends. Under `never` it publishes and answers them at once, under
    /// `always` after its own fsync; under `group` it returns the request the sync stage must make
    /// durable before they are answered. On a failure every append of the group is answered with
    /// the error.
    pub(crate) fn commit(&mut self, group: Vec<PendingAppend>) -> Option<SyncRequest> {
        let records: usize = group.iter().map(|append| append.records.len()).sum();
        let written = self.guarded(|writer| writer.write_group(&group));
        let ranges = match written {
            Ok(ranges) => ranges,
            Err(error) => {
                reply_all(group.into_iter().map(|a| a.reply), &error);
                return None;
            }
        };
        self.shared.stats.add_group(group.len(), records);
        // The payloads are written: dropping the appends frees them and their byte permits.
        let waiters: Vec<_> = group
            .into_iter()
            .zip(ranges)
            .map(|(a, range)| Waiter::Append(a.reply, range))
            .collect();
        match self.shared.options.fsync {
            FsyncPolicy::Group => Some(self.sync_request(waiters)),
            FsyncPolicy::Never => {
                self.publish_and_answer(waiters);
                None
            }
            FsyncPolicy::Always => {
                match self.guarded(Self::sync) {
                    Ok(()) => self.publish_and_answer(waiters),
                    Err(error) => {
                        let source = latch_source(&error);
                        for waiter in waiters {
                            waiter.answer(Err(Arc::clone(&source)));
                        }
                    }
                }
                None
            }
        }
    }

    fn publish_and_answer(&self, waiters: Vec<Waiter>) {
        self.active.publish(self.next_position, self.write_offset);
        self.shared.publish_committed(self.next_position - 1);
        for waiter in waiters {
            waiter.answer(Ok(()));
        }
    }

    /// An explicit sync. Under `group` and `never`: the request that makes everything written so
    /// far durable, for the sync stage. Under `always` the fsync runs here and the caller is
    /// answered at once. `None` when it was answered already (here, or with an error).
    pub(crate) fn sync_everything(&mut self, reply: SyncReply) -> Option<SyncRequest> {
        let ready = match self.shared.options.fsync {
            FsyncPolicy::Always => self.guarded(Self::sync).map(|()| false),
            FsyncPolicy::Group | FsyncPolicy::Never => {
                self.guarded(Self::writable_file).map(|_| true)
            }
        };
        match ready {
            Ok(true) => Some(self.sync_request(vec![Waiter::Sync(reply)])),
            Ok(false) => {
                let _ = reply.send(Ok(()));
                None
            }
            Err(error) => {
                let _ = reply.send(Err(error));
                None
            }
        }
    }

    /// What the sync stage needs to make everything written so far durable and publish it.
    fn sync_request(&self, waiters: Vec<Waiter>) -> SyncRequest {
        SyncRequest {
            file: Arc::clone(self.file.as_ref().expect("written through an open file")),
            segment: Arc::clone(&self.active),
            end: self.next_position,
            committed_bytes: self.write_offset,
            waiters,
        }
    }

    /// Assigns positions and writes the group (rolling segments as needed); no fsync. Each
    /// append is one batch: its records carry the batch flag but the last, and a batch never
    /// spans two segments — the segment rolls before a batch that does not fit (a batch larger
    /// than a whole segment gets a segment of its own, which may exceed `segment_bytes`).
    fn write_group(&mut self, group: &[PendingAppend]) -> Result<Vec<RangeInclusive<u64>>> {
        self.writable_file()?;
        let segment_bytes = self.shared.options.segment_bytes;
        let first_of_group = self.next_position;
        let mut ranges = Vec::with_capacity(group.len());
        for append in group {
            let batch_bytes = RECORD_HEADER_BYTES * u64_from(append.records.len())
                + u64_from(append.payload_bytes);
            let at = self.write_offset + u64_from(self.buf.len());
            if at + batch_bytes > segment_bytes && at > SEGMENT_HEADER_BYTES {
                self.flush_buffer()?;
                self.roll()?;
            }
            let first = self.next_position;
            let last_index = append.records.len() - 1;
            for (i, payload) in append.records.iter().enumerate() {
                let at = self.write_offset + u64_from(self.buf.len());
                if self.last_indexed_offset.is_none_or(|last| at - last >= INDEX_INTERVAL_BYTES) {
                    self.index_entries.push((self.next_position, at));
                    self.last_indexed_offset = Some(at);
                }
                encode_batch_record(&mut self.buf, self.next_position, payload, i < last_index);
                self.next_position += 1;
            }
            ranges.push(first..=self.next_position - 1);
        }
        self.flush_buffer()?;
        let appended: u64 = group.iter().map(|append| u64_from(append.records.len())).sum();
        assert_eq!(self.next_position, first_of_group + appended, "positions stay contiguous");
        Ok(ranges)
    }

    fn writable_file(&mut self) -> Result<Arc<dyn VfsFile>> {
        if let Some(file) = &self.file {
            return Ok(Arc::clone(file));
        }
        let path = &self.active.path;
        let file = self
            .shared
            .vfs
            .open(path, OpenMode::ReadWrite)
            .map_err(|e| Error::io("open active segment", path, e))?;
        self.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Writes the buffer at the end of the active segment (no fsync).
    fn flush_buffer(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.writable_file()?;
        file.write_all_at(&self.buf, self.write_offset)
            .map_err(|e| Error::io("write records", &self.active.path, e))?;
        self.write_offset += u64_from(self.buf.len());
        self.shared.stats.add_bytes(self.buf.len());
        self.buf.clear();
        self.active.extend_index(&self.index_entries);
        self.index_entries.clear();
        Ok(())
    }

    /// Makes everything written to the active segment durable, here (under `always`, and when
    /// sealing a segment).
    fn sync(&mut self) -> Result<()> {
        let file = self.writable_file()?;
        file.sync_data().map_err(|e| Error::io("fdatasync", &self.active.path, e))?;
        self.shared.stats.add_sync();
        Ok(())
    }

    /// Seals the active segment (fsync, index file) and starts a new one at the next position.
    fn roll(&mut self) -> Result<()> {
        assert!(self.buf.is_empty(), "roll only after the buffer is written");
        self.sync()?;
        self.active.publish(self.next_position, self.write_offset);
        self.active.seal();
        self.active.save_index(self.shared.vfs.as_ref())?;
        let base = self.next_position;
        create_segment_file(self.shared.vfs.as_ref(), &self.shared.dir, base)?;
        let next = Arc::new(Segment::new(
            &self.shared.dir,
            base,
            base,
            SEGMENT_HEADER_BYTES,
            false,
            Some(SparseIndex::new(base)),
        ));
        self.shared.write_segments().insert(base, Arc::clone(&next));
        self.active = next;
        self.file = None;
        self.write_offset = SEGMENT_HEADER_BYTES;
        self.last_indexed_offset = None;
        Ok(())
    }

    /// Deletes the whole segments below `before` (see [`Log::purge`](crate::Log::purge)).
    pub(crate) fn purge(&mut self, before: u64) -> Result<PurgeReport> {
        self.guarded(|writer| writer.purge_segments(before))
    }

    fn purge_segments(&mut self, before: u64) -> Result<PurgeReport> {
        // Only committed records go: one still waiting for its fsync has not been answered yet.
        let bound = before.min(self.shared.committed() + 1);
        if self.next_position > self.active.base && self.next_position <= bound {
            self.roll()?;
        }
        let victims: Vec<Arc<Segment>> = self
            .shared
            .read_segments()
            .values()
            .take_while(|segment| segment.is_sealed() && segment.end() <= bound)
            .cloned()
            .collect();
        let (vfs, dir) = (self.shared.vfs.as_ref(), &self.shared.dir);
        for victim in &victims {
            // Oldest first, each removal durable before the next: whatever a crash undoes, the
            // segments left are a contiguous run of positions, never one with a hole.
            self.shared.write_segments().remove(&victim.base);
            for path in [&victim.index_path, &victim.path] {
                vfs::remove_if_present(vfs, path).map_err(|e| Error::io("remove file", path, e))?;
            }
            vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e))?;
        }
        Ok(PurgeReport {
            segments_removed: victims.len(),
            first_position: self.shared.first_position(),
        })
    }

    /// Releases the write handle, the buffers and every segment's cached read handle and sealed
    /// index (an idle log costs no file descriptor).
    pub(crate) fn hibernate(&mut self) {
        self.close();
        for segment in self.shared.read_segments().values() {
            segment.release();
        }
        self.shared.stats.add_hibernation();
        tracing::debug!(dir = %self.shared.dir.display(), "log writer idle: released files");
    }

    /// Releases the write handle and the buffers (the log is closing, or idle).
    pub(crate) fn close(&mut self) {
        self.file = None;
        self.buf = Vec::new();
        self.index_entries = Vec::new();
    }
}

/// Replies with `error` (as a latched or closed error) to every waiting appender.
fn reply_all(replies: impl Iterator<Item = AppendReply>, error: &Error) {
    for reply in replies {
        let error = match error {
            Error::Closed => Error::Closed,
            other => Error::Latched { source: latch_source(other) },
        };
        let _ = reply.send(Err(error));
    }
}

/// The I/O error that a failed write or fsync latched the log with.
fn latch_source(error: &Error) -> Arc<std::io::Error> {
    match error {
        Error::Latched { source } => Arc::clone(source),
        other => Arc::new(std::io::Error::other(other.to_string())),
    }
}
