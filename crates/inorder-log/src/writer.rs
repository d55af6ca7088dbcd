//! The writer: one thread per open log that owns the active segment and performs every write.
//!
//! Appenders send [`Command`]s over a bounded channel and wait on a one-shot reply. The writer
//! takes the first command, then every append already queued behind it (up to
//! [`GROUP_COMMIT_BYTES_MAX`] / [`GROUP_COMMIT_COMMANDS_MAX`]), encodes them into one buffer,
//! writes it with one call and — unless the policy is `never` — makes it durable with one
//! `fdatasync`. Only then does it publish the new committed position (readers see nothing
//! earlier) and reply to each appender with its positions. That is group commit: appenders that
//! arrive while an fsync runs share the next one. Under `always` each append gets its own
//! write and fsync.
//!
//! After a failed write or fsync the writer *latches*: it keeps replying
//! [`Error::Latched`] and writes nothing more until the log is reopened. The page cache may no
//! longer match the disk after a failed fsync, so going on could acknowledge lost records.
//!
//! After [`LogOptions::idle_after`](crate::LogOptions::idle_after) without commands the writer
//! hibernates: it closes its file, frees its buffer and asks every segment to drop its cached
//! read handle and sealed index. The next command reopens what it needs.

use std::{io, ops::RangeInclusive, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::{
    error::{Error, Result},
    index::{SparseIndex, write_index_file},
    limits::{
        GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_COMMANDS_MAX, INDEX_INTERVAL_BYTES,
        SEGMENT_HEADER_BYTES, u64_from,
    },
    log::Shared,
    options::FsyncPolicy,
    record::{HEADER, encode_record},
    recovery::remove_if_present,
    segment::{self, Segment},
    vfs::{OpenMode, VfsFile},
};

/// What the writer can be asked to do.
pub(crate) enum Command {
    /// Append records; reply with their positions once durable under the policy.
    Append(PendingAppend),
    /// Make everything written so far durable (useful under `never`).
    Sync { reply: oneshot::Sender<Result<()>> },
    /// Delete whole segments below a position (see [`Log::purge`](crate::Log::purge)).
    Purge {
        before: u64,
        reply: oneshot::Sender<Result<PurgeReport>>,
    },
}

/// One queued append.
pub(crate) struct PendingAppend {
    pub records: Vec<Bytes>,
    pub payload_bytes: usize,
    pub reply: oneshot::Sender<Result<RangeInclusive<u64>>>,
    /// Held until the append is done: bounds the bytes queued for the writer.
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

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    /// Write handle of the active segment; `None` while hibernating.
    file: Option<Arc<dyn VfsFile>>,
    /// Bytes of the active segment file written so far.
    write_offset: u64,
    next_position: u64,
    last_indexed_offset: Option<u64>,
    buf: Vec<u8>,
    index_entries: Vec<(u64, u64)>,
    failed: Option<Arc<io::Error>>,
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
            failed: None,
        }
    }

    /// Serves commands until every sender is gone.
    pub(crate) fn run(mut self, commands: &flume::Receiver<Command>, idle_after: Duration) {
        let commands_max = match self.shared.options.fsync {
            FsyncPolicy::Always => 1,
            FsyncPolicy::Group | FsyncPolicy::Never => GROUP_COMMIT_COMMANDS_MAX,
        };
        let mut held: Option<Command> = None;
        loop {
            let command = match held.take() {
                Some(command) => command,
                None => match commands.recv_timeout(idle_after) {
                    Ok(command) => command,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        self.hibernate();
                        match commands.recv() {
                            Ok(command) => command,
                            Err(flume::RecvError::Disconnected) => break,
                        }
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                },
            };
            match command {
                Command::Append(first) => {
                    let mut bytes = first.payload_bytes;
                    let mut group = vec![first];
                    while group.len() < commands_max && bytes < GROUP_COMMIT_BYTES_MAX {
                        match commands.try_recv() {
                            Ok(Command::Append(next)) => {
                                bytes += next.payload_bytes;
                                group.push(next);
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(group);
                }
                Command::Sync { reply } => {
                    let result = self.guarded(Self::sync);
                    let _ = reply.send(result);
                }
                Command::Purge { before, reply } => {
                    let result = self.guarded(|writer| writer.purge(before));
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Runs `op` unless latched; latches if it fails with an I/O error.
    fn guarded<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(source) = &self.failed {
            return Err(Error::Latched {
                source: Arc::clone(source),
            });
        }
        op(self).map_err(|error| match error {
            Error::Io { op, path, source } => {
                let source = Arc::new(io::Error::new(
                    source.kind(),
                    format!("{op} on {}: {source}", path.display()),
                ));
                self.latch(Arc::clone(&source));
                Error::Latched { source }
            }
            other => other,
        })
    }

    fn latch(&mut self, source: Arc<io::Error>) {
        tracing::error!(dir = %self.shared.dir.display(), error = %source, "log writer latched");
        self.shared.stats.set_latched();
        self.failed = Some(source);
    }

    /// Writes a group of appends and replies to each.
    fn commit(&mut self, group: Vec<PendingAppend>) {
        let records: usize = group.iter().map(|append| append.records.len()).sum();
        let result = self.guarded(|writer| writer.write_group(&group));
        match result {
            Ok(ranges) => {
                self.shared.stats.add_group(group.len(), records);
                for (append, range) in group.into_iter().zip(ranges) {
                    let _ = append.reply.send(Ok(range));
                }
            }
            Err(error) => {
                let source = match &error {
                    Error::Latched { source } => Arc::clone(source),
                    other => Arc::new(io::Error::other(other.to_string())),
                };
                for append in group {
                    let _ = append.reply.send(Err(Error::Latched {
                        source: Arc::clone(&source),
                    }));
                }
            }
        }
    }

    fn write_group(&mut self, group: &[PendingAppend]) -> Result<Vec<RangeInclusive<u64>>> {
        self.writable_file()?;
        let segment_bytes = self.shared.options.segment_bytes;
        let committed_before = self.next_position - 1;
        let mut ranges = Vec::with_capacity(group.len());
        for append in group {
            let first = self.next_position;
            for payload in &append.records {
                let record_bytes = u64_from(HEADER + payload.len());
                let at = self.write_offset + u64_from(self.buf.len());
                if at + record_bytes > segment_bytes && at > SEGMENT_HEADER_BYTES {
                    self.flush_buffer()?;
                    self.roll()?;
                }
                let at = self.write_offset + u64_from(self.buf.len());
                if self
                    .last_indexed_offset
                    .is_none_or(|last| at - last >= INDEX_INTERVAL_BYTES)
                {
                    self.index_entries.push((self.next_position, at));
                    self.last_indexed_offset = Some(at);
                }
                encode_record(&mut self.buf, self.next_position, payload);
                self.next_position += 1;
            }
            ranges.push(first..=self.next_position - 1);
        }
        self.flush_buffer()?;
        if self.shared.options.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        // Publish: segment extent first, then the log's committed position (readers check the
        // committed position first, so they never look past durable bytes).
        self.active.publish(self.next_position, self.write_offset);
        let committed = self.next_position - 1;
        let appended: u64 = group
            .iter()
            .map(|append| u64_from(append.records.len()))
            .sum();
        assert_eq!(
            committed,
            committed_before + appended,
            "positions must stay contiguous"
        );
        self.shared.publish_committed(committed);
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

    fn sync(&mut self) -> Result<()> {
        let file = self.writable_file()?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &self.active.path, e))?;
        self.shared.stats.add_sync();
        Ok(())
    }

    /// Seals the active segment (fsync, index file) and starts a new one at the next position.
    fn roll(&mut self) -> Result<()> {
        assert!(self.buf.is_empty(), "roll only after the buffer is written");
        self.sync()?;
        self.active.publish(self.next_position, self.write_offset);
        self.active.seal();
        let index = self
            .active
            .index_snapshot()
            .unwrap_or_else(|| SparseIndex::new(self.active.base));
        if let Err(error) = write_index_file(self.shared.vfs.as_ref(), &self.active, &index) {
            tracing::warn!(%error, "could not write segment index (it will be rebuilt on demand)");
        }
        let base = self.next_position;
        segment::create_segment_file(self.shared.vfs.as_ref(), &self.shared.dir, base)?;
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

    fn purge(&mut self, before: u64) -> Result<PurgeReport> {
        let bound = match self.shared.cursors.slowest() {
            Some(ack) => before.min(ack.saturating_add(1)),
            None => before,
        };
        if !self.active.is_empty() && self.active.end() <= bound {
            self.roll()?;
        }
        let victims: Vec<Arc<Segment>> = self
            .shared
            .read_segments()
            .values()
            .take_while(|segment| segment.is_sealed() && segment.end() <= bound)
            .cloned()
            .collect();
        let vfs = self.shared.vfs.as_ref();
        for victim in &victims {
            self.shared.write_segments().remove(&victim.base);
            remove_if_present(vfs, &victim.path)?;
            remove_if_present(vfs, &victim.index_path)?;
        }
        if !victims.is_empty() {
            let dir = &self.shared.dir;
            vfs.sync_dir(dir)
                .map_err(|e| Error::io("fsync log directory", dir, e))?;
        }
        Ok(PurgeReport {
            segments_removed: victims.len(),
            first_position: self.shared.first_position(),
        })
    }

    fn hibernate(&mut self) {
        self.file = None;
        self.buf = Vec::new();
        self.index_entries = Vec::new();
        for segment in self.shared.read_segments().values() {
            segment.release();
        }
        self.shared.stats.add_hibernation();
        tracing::debug!(dir = %self.shared.dir.display(), "log writer idle: released files");
    }
}
