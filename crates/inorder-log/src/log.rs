//! [`Log`]: one topic's durable log — the public face of the crate.
//!
//! A `Log` owns a directory: segment files, their sparse indexes and a `LOCK` file that keeps a
//! second `Log` (in any process) out. Opening runs recovery
//! ([`crate::open`]); appends go to the write path ([`crate::write`]); reads
//! ([`crate::read`]) go straight to the segment files and never see past the committed (durable)
//! position. This module only depends downward: it holds the handles and adds nothing but
//! argument checks.
//!
//! **Invariants.** Positions are 1, 2, 3, … with no gaps; only the writer assigns them. A
//! position becomes visible to readers and `last_position` only once the fsync policy made it
//! durable.

use std::{ops::RangeInclusive, path::Path, sync::Arc};

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::{
    blocking::block_on,
    error::{Error, Result},
    limits::{
        APPEND_BYTES_MAX, APPEND_INFLIGHT_BYTES_MAX, APPEND_PERMIT_BYTES, APPEND_RECORDS_MAX,
        WRITER_QUEUE_DEPTH,
    },
    open,
    options::LogOptions,
    read::{
        reader::{ReadLimits, Reader, Record},
        verify,
    },
    recovery::RecoveryReport,
    shared::Shared,
    stats::{LogStats, SegmentInfo},
    vfs::{self, StdVfs, Vfs, VfsLock},
    write::{
        pipeline::Pipeline,
        pool,
        writer::{Command, PendingAppend, PurgeReport, Writer},
    },
};

/// A durable, ordered, checksummed log of records for one topic.
///
/// Cheap to clone; clones share one write path. The last clone to drop waits until every append
/// and sync it sent was served and answered, then releases the directory lock. A `Log` has no
/// thread of its own: the process-wide pool runs its writes and fsyncs (see the crate docs).
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    shared: Arc<Shared>,
    commands: Option<flume::Sender<Command>>,
    pipeline: Arc<Pipeline>,
    inflight: Arc<Semaphore>,
    report: RecoveryReport,
    _lock: Box<dyn VfsLock>,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        self.commands.take();
        self.pipeline.close();
        self.shared.close();
    }
}

impl Log {
    /// Opens (or creates) the log in `dir` on the real file system, running recovery.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`], [`Error::Locked`] if the directory is open elsewhere,
    /// [`Error::Corrupt`] if recovery finds damage it must not cut, [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self> {
        Self::open_with_vfs(Arc::new(StdVfs), dir, options)
    }

    /// Opens (or creates) the log in `dir` on the given file system.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with_vfs(
        vfs: Arc<dyn Vfs>,
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<Self> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let queues = pool::queues().map_err(|e| Error::io("start the log threads", &dir, e))?;
        vfs::create_dir_durable(vfs.as_ref(), &dir)
            .map_err(|e| Error::io("create log directory", &dir, e))?;
        let lock = open::lock_log_dir(vfs.as_ref(), &dir)?;
        let recovered = open::recover(vfs.as_ref(), &dir, &options)?;
        let committed = recovered.next_position - 1;
        let active = Arc::clone(recovered.segments.values().next_back().expect("a segment"));
        let shared =
            Arc::new(Shared::new(dir.clone(), vfs, options, recovered.segments, committed));
        let (commands, receiver) = flume::bounded(WRITER_QUEUE_DEPTH);
        let writer = Writer::new(Arc::clone(&shared), active, recovered.next_position);
        let pipeline = Pipeline::new(Arc::clone(&shared), writer, receiver, queues);
        tracing::debug!(dir = %dir.display(), report = ?recovered.report, "log opened");
        Ok(Self {
            inner: Arc::new(LogInner {
                shared,
                commands: Some(commands),
                pipeline,
                inflight: Arc::new(Semaphore::new(APPEND_INFLIGHT_BYTES_MAX / APPEND_PERMIT_BYTES)),
                report: recovered.report,
                _lock: lock,
            }),
        })
    }

    /// The log's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// The options the log was opened with.
    #[must_use]
    pub fn options(&self) -> &LogOptions {
        &self.inner.shared.options
    }

    /// What recovery found and did when this log was opened.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// Appends a batch of records and returns their positions, `first..=last`, once durable
    /// under the fsync policy. The batch is all or nothing, also on disk: on success every record
    /// is committed; on failure none is acknowledged, and after a crash either every record of
    /// the batch is in the log or none is (its last record is its commit marker; see FORMAT.md).
    ///
    /// Waits (asynchronously) while the writer's queue is full. Needs no particular runtime.
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] (nothing written), [`Error::Latched`], [`Error::Closed`].
    pub async fn append<I, B>(&self, records: I) -> Result<RangeInclusive<u64>>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        self.submit(records).await?.await
    }

    /// The first half of [`Log::append`]: queues the batch to the writer and returns once it is
    /// queued, with the future of its positions. Batches are written — and get their positions —
    /// in the order their `submit` returned, so a caller that serialises its submits (say, to
    /// number records in position order) need not wait for each fsync in between.
    ///
    /// The batch is appended whether or not the returned [`Appending`] is awaited.
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] (nothing queued), [`Error::Closed`]; the [`Appending`] as
    /// [`Log::append`].
    pub async fn submit<I, B>(&self, records: I) -> Result<Appending>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        let records: Vec<Bytes> = records.into_iter().map(Into::into).collect();
        let payload_bytes = self.check_batch(&records)?;
        let permits = u32::try_from(payload_bytes.div_ceil(APPEND_PERMIT_BYTES).max(1))
            .map_err(|_| Error::batch("batch too large"))?;
        let permit = Arc::clone(&self.inner.inflight)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Error::Closed)?;
        let (reply, response) = oneshot::channel();
        let command =
            Command::Append(PendingAppend { records, payload_bytes, reply, _permit: permit });
        self.send(command).await?;
        Ok(Appending(response))
    }

    /// [`Log::append`] for synchronous code. Do not call from inside an async runtime.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_blocking<I, B>(&self, records: I) -> Result<RangeInclusive<u64>>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        block_on(self.append(records))
    }

    fn check_batch(&self, records: &[Bytes]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::batch("a batch needs at least one record"));
        }
        if records.len() > APPEND_RECORDS_MAX {
            return Err(Error::batch(format!(
                "{} records in one batch; at most {APPEND_RECORDS_MAX}",
                records.len()
            )));
        }
        let max = self.inner.shared.options.record_payload_bytes_max;
        if let Some((i, record)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| u64::try_from(r.len()).is_ok_and(|n| n > u64::from(max)))
        {
            return Err(Error::batch(format!(
                "record {i} has {} bytes; at most {max}",
                record.len()
            )));
        }
        let total: usize = records.iter().map(Bytes::len).sum();
        if total > APPEND_BYTES_MAX {
            return Err(Error::batch(format!(
                "{total} bytes in one batch; at most {APPEND_BYTES_MAX}"
            )));
        }
        Ok(total)
    }

    async fn send(&self, command: Command) -> Result<()> {
        let commands = self.inner.commands.as_ref().ok_or(Error::Closed)?;
        commands.send_async(command).await.map_err(|_| Error::Closed)?;
        self.inner.pipeline.notify_writer();
        Ok(())
    }

    /// Makes every record written so far durable (an explicit fsync; useful under `never`).
    ///
    /// # Errors
    /// [`Error::Latched`], [`Error::Closed`].
    pub async fn sync(&self) -> Result<()> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Sync { reply }).await?;
        response.await.map_err(|_| Error::Closed)?
    }

    /// [`Log::sync`] for synchronous code.
    ///
    /// # Errors
    /// As [`Log::sync`].
    pub fn sync_blocking(&self) -> Result<()> {
        block_on(self.sync())
    }

    /// Deletes whole segments whose records all lie strictly below `before` (and below the
    /// committed position: a record still waiting for its fsync is never purged). The segment
    /// being written is never deleted: if the bound covers all of it, it is sealed first and a new,
    /// empty segment carries the next position, so positions are never reused.
    ///
    /// # Errors
    /// [`Error::Latched`], [`Error::Closed`], [`Error::Io`].
    pub async fn purge(&self, before: u64) -> Result<PurgeReport> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Purge { before, reply }).await?;
        response.await.map_err(|_| Error::Closed)?
    }

    /// [`Log::purge`] for synchronous code.
    ///
    /// # Errors
    /// As [`Log::purge`].
    pub fn purge_blocking(&self, before: u64) -> Result<PurgeReport> {
        block_on(self.purge(before))
    }

    /// The first position still in the log (or the next one, if the log holds nothing).
    #[must_use]
    pub fn first_position(&self) -> u64 {
        self.inner.shared.first_position()
    }

    /// The last durable position; 0 if nothing was ever appended.
    #[must_use]
    pub fn last_position(&self) -> u64 {
        self.inner.shared.committed()
    }

    /// A watch of the last durable position: `changed().await` wakes on every commit.
    #[must_use]
    pub fn watch_last_position(&self) -> watch::Receiver<u64> {
        self.inner.shared.subscribe()
    }

    /// Reads up to `limits` records starting at `from` (empty when `from` is past the end).
    ///
    /// # Errors
    /// [`Error::Purged`], [`Error::Corrupt`] (naming file and offset), [`Error::Io`].
    pub fn read(&self, from: u64, limits: ReadLimits) -> Result<Vec<Record>> {
        self.reader(from).read(limits)
    }

    /// A reader positioned at `from` that keeps its place between reads.
    #[must_use]
    pub fn reader(&self, from: u64) -> Reader {
        Reader::new(Arc::clone(&self.inner.shared), from)
    }

    /// Counters and extent of the log.
    #[must_use]
    pub fn stats(&self) -> LogStats {
        let shared = &self.inner.shared;
        shared.stats.snapshot(
            shared.first_position(),
            shared.committed(),
            shared.read_segments().len(),
        )
    }

    /// The segments, oldest first, with their committed extents (in memory: no I/O).
    #[must_use]
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .shared
            .read_segments()
            .values()
            .map(|segment| SegmentInfo {
                base: segment.base,
                end: segment.end(),
                bytes: segment.committed_bytes(),
                sealed: segment.is_sealed(),
            })
            .collect()
    }

    /// When the segment starting at `base` was last written (its file's modification time: for
    /// a sealed segment, when its last record was written). `None` if the file system cannot
    /// tell or the segment is gone.
    #[must_use]
    pub fn segment_modified(&self, base: u64) -> Option<std::time::SystemTime> {
        let shared = &self.inner.shared;
        let path = shared.read_segments().get(&base)?.path.clone();
        shared.vfs.modified(&path).ok()
    }

    /// Reads every segment and checks every record (checksums, positions, segment continuity).
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the first bad file and offset; [`Error::Io`].
    pub fn verify(&self) -> Result<u64> {
        verify::verify(&self.inner.shared)
    }
}

/// A batch queued by [`Log::submit`]: resolves to its positions once durable under the fsync
/// policy, or to the error that stopped it.
#[derive(Debug)]
#[must_use = "the batch is appended anyway; await this to learn its positions"]
pub struct Appending(oneshot::Receiver<Result<RangeInclusive<u64>>>);

impl std::future::Future for Appending {
    type Output = Result<RangeInclusive<u64>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| answer.map_err(|_| Error::Closed)?)
    }
}
