//! The embedded default storage: one `inorder-log` per topic, the state in a journaled fjall
//! tree ([`StateStore`]).
//!
//! ```text
//! <data_dir>/topics/<topic>/   an inorder-log (see crates/inorder-log/FORMAT.md); each record
//!                              is an engine record framed with its commit position
//!                              (`frame::frame_commit`)
//! <data_dir>/state/journal/    the state journal (an inorder-log)
//! <data_dir>/state/tree/       fjall: keyspaces streams, keys, parked, ids, meta, id-positions
//! ```
//!
//! State keys are built from validated names (which never contain a NUL byte) separated by NUL,
//! so they sort by subscription, topic, then key or big-endian position. Topic logs are opened
//! on first use (recovery runs on a blocking thread) and stay open; an idle log closes its
//! files by itself.
//!
//! Commit positions come from one [`CommitClock`]: an append takes its topic's turn, is issued
//! its commits and queues its records before the next append of the topic may, so commits grow
//! with positions; `read_all` merges the topics by commit up to the clock's visible commit.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use inorder_log::{
    Log, LogOptions, Name, ReadLimits, Reader,
    vfs::{StdVfs, Vfs},
};
use parking_lot::RwLock;
use tokio::sync::watch;

use super::{
    StateOp, Storage, StoredRecord, TopicReader,
    commit_clock::CommitClock,
    keys::{
        COMMITS_RESERVED_KEY, Space, id_key, ids_indexed_key, key_key, parked_key,
        split_parked_key, stream_key, stream_prefix,
    },
    state_store::{StateStore, blocking, corrupt, read_u64},
};
use crate::{
    error::{Error, Result, StorageError},
    frame,
    limits::{READ_ALL_EVENTS_MAX, READ_ALL_PURGE_RETRIES},
    retention::{Footprint, PurgeRequest, segments_to_purge},
    state::{KeyState, ParkedEvent, StreamId, StreamState},
};

/// A file-system failure of the storage's directories: the storage is unavailable.
fn fs_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |error| Error::Storage(StorageError::unavailable(format!("{what} {path}: {error}")))
}

/// The embedded storage backend.
pub struct FileStorage {
    vfs: Arc<dyn Vfs>,
    topics_dir: PathBuf,
    log_options: LogOptions,
    logs: RwLock<HashMap<Name, TopicLog>>,
    clock: Arc<CommitClock>,
    /// Serialises opening logs, so a topic is never opened twice.
    opening: tokio::sync::Mutex<()>,
    /// `None` once closed.
    state: RwLock<Option<Arc<StateStore>>>,
}

/// An open topic log and its append turn: held from issuing commits to queueing the records,
/// so that commits grow with positions.
#[derive(Clone)]
struct TopicLog {
    log: Log,
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The highest commit issued to the log (0 if none), so `read_all` skips topics with
    /// nothing new without reading them.
    last_commit: Arc<AtomicU64>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage").field("topics_dir", &self.topics_dir).finish_non_exhaustive()
    }
}

impl FileStorage {
    /// Opens (or creates) the storage under `data_dir`.
    ///
    /// # Errors
    /// [`Error::Storage`] if the directories cannot be created or opened.
    pub fn open(data_dir: &Path, log_options: LogOptions) -> Result<Self> {
        Self::open_with_vfs(Arc::new(StdVfs), data_dir, log_options)
    }

    /// Opens the storage with its topic logs and state journal on `vfs` (tests run it on
    /// `SimVfs` to cut power; the state tree stays on the real file system under `data_dir`).
    ///
    /// # Errors
    /// As [`FileStorage::open`].
    pub fn open_with_vfs(
        vfs: Arc<dyn Vfs>,
        data_dir: &Path,
        log_options: LogOptions,
    ) -> Result<Self> {
        let topics_dir = data_dir.join("topics");
        // Made durable with its parents: a topic created after a power loss must find it.
        inorder_log::vfs::create_dir_durable(vfs.as_ref(), &topics_dir)
            .map_err(fs_error("creating", &topics_dir))?;
        let state = StateStore::open(Arc::clone(&vfs), &data_dir.join("state"))?;
        let reserved = read_u64(state.get(Space::Meta, COMMITS_RESERVED_KEY)?)?.unwrap_or(0);
        Ok(Self {
            vfs,
            topics_dir,
            log_options,
            logs: RwLock::new(HashMap::new()),
            clock: Arc::new(CommitClock::new(reserved)),
            opening: tokio::sync::Mutex::new(()),
            state: RwLock::new(Some(Arc::new(state))),
        })
    }

    fn state(&self) -> Result<Arc<StateStore>> {
        self.state.read().clone().ok_or(Error::Stopped)
    }

    /// The open log of `topic`, opening it if its directory exists (or `create`).
    async fn log(&self, topic: &Name, create: bool) -> Result<Log> {
        Ok(self.topic_log(topic, create).await?.log)
    }

    /// The open log of `topic` with its append turn (see [`FileStorage::log`]).
    async fn topic_log(&self, topic: &Name, create: bool) -> Result<TopicLog> {
        if let Some(log) = self.logs.read().get(topic) {
            return Ok(log.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(log) = self.logs.read().get(topic) {
            return Ok(log.clone());
        }
        let dir = self.topics_dir.join(topic.as_str());
        if !create && self.vfs.read_dir(&dir).is_err() {
            return Err(Error::UnknownTopic { topic: topic.to_string() });
        }
        let options = self.log_options;
        let vfs = Arc::clone(&self.vfs);
        let log =
            blocking(move || Log::open_with_vfs(vfs, dir, options).map_err(Error::from)).await?;
        let forgotten = self.state()?.forget_ids_above(topic, log.last_position()).await?;
        if forgotten > 0 {
            tracing::warn!(
                %topic,
                forgotten,
                last = log.last_position(),
                "the log lost records its id index knew (a power loss under fsync = never): \
                 their ids are forgotten, so a retry appends them again"
            );
        }
        let last = log.last_position();
        let last_commit = if last == 0 {
            0
        } else {
            let log = log.clone();
            blocking(move || {
                let records = log.read(last, ReadLimits::records(1))?;
                Ok(records.into_iter().next().map_or(0, |r| frame::split_commit(r.payload).0))
            })
            .await?
        };
        let log = TopicLog { log, turn: Arc::default(), last_commit: Arc::new(last_commit.into()) };
        self.logs.write().insert(topic.clone(), log.clone());
        Ok(log)
    }

    /// Issues commits to `payloads`, frames them, and queues them to the topic's log in its turn;
    /// returns once durable.
    async fn append_committed(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
    ) -> Result<RangeInclusive<u64>> {
        let TopicLog { log, turn, last_commit } = self.topic_log(topic, false).await?;
        let state = self.state()?;
        let count = u64::try_from(payloads.len()).unwrap_or(u64::MAX);
        let issued = {
            let _turn = turn.lock().await;
            let reserve = |mark| {
                let state = Arc::clone(&state);
                async move { state.put_meta(COMMITS_RESERVED_KEY, mark).await }
            };
            let mut issued = self.clock.issue(count, reserve).await?;
            // Raised before the commits can become visible (an upper bound: `read_all` may read
            // the topic for nothing, never skip a visible commit).
            last_commit.fetch_max(*issued.range().end(), AtomicOrdering::Release);
            let framed = issued
                .range()
                .zip(&payloads)
                .map(|(commit, payload)| frame::frame_commit(commit, payload));
            issued.queued(log.submit(framed).await?);
            issued
        };
        Ok(issued.durable().await?)
    }

    /// The records of one topic with commits in `from..=visible`, at most `max`, reading from
    /// the first such position (found by binary search: commits grow with positions). A purge
    /// that deletes the segment being read meanwhile makes it start over from the first position
    /// left (what went is gone for every reader alike).
    fn read_committed(log: &Log, from: u64, visible: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::read_committed_once(log, from, visible, max) {
                Err(inorder_log::Error::Purged { .. }) if attempts < READ_ALL_PURGE_RETRIES => {}
                other => return other.map_err(Error::from),
            }
        }
    }

    fn read_committed_once(
        log: &Log,
        from: u64,
        visible: u64,
        max: usize,
    ) -> std::result::Result<Vec<StoredRecord>, inorder_log::Error> {
        let commit_at = |position: u64| -> std::result::Result<Option<u64>, inorder_log::Error> {
            let records = log.read(position, ReadLimits::records(1))?;
            Ok(records.into_iter().next().map(|r| frame::split_commit(r.payload).0))
        };
        let (first, last) = (log.first_position(), log.last_position());
        if last < first || commit_at(last)?.is_none_or(|commit| commit < from) {
            return Ok(Vec::new());
        }
        let (mut low, mut high) = (first, last);
        while low < high {
            let middle = low + (high - low) / 2;
            if commit_at(middle)?.is_some_and(|commit| commit >= from) {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        let mut out = Vec::new();
        let mut reader = log.reader(low);
        while out.len() < max {
            let records = reader.read(ReadLimits::records(max - out.len()))?;
            if records.is_empty() {
                break;
            }
            for record in records {
                let (commit, payload) = frame::split_commit(record.payload);
                if commit > visible {
                    return Ok(out);
                }
                out.push(StoredRecord { position: record.position, commit, payload });
            }
        }
        Ok(out)
    }
}

impl FileStorage {
    fn footprint_of(log: &Log) -> Footprint {
        Footprint {
            first: log.first_position(),
            last: log.last_position(),
            bytes: log.segments().iter().map(|segment| segment.bytes).sum(),
        }
    }
}

struct FileTopicReader {
    topic: Name,
    reader: Option<Reader>,
    next: u64,
}

#[async_trait::async_trait]
impl TopicReader for FileTopicReader {
    async fn read(&mut self, max: usize) -> Result<Vec<StoredRecord>> {
        let mut reader = self
            .reader
            .take()
            .ok_or_else(|| Error::Internal { what: "a topic reader was lost by a panic".into() })?;
        let (reader, records) = blocking(move || {
            let records = reader.read(ReadLimits::records(max));
            Ok((reader, records))
        })
        .await?;
        self.next = reader.next_position();
        self.reader = Some(reader);
        let records = records.map_err(|error| match error {
            inorder_log::Error::Purged { requested, first_available } => {
                Error::Purged { topic: self.topic.to_string(), requested, first_available }
            }
            other => other.into(),
        })?;
        Ok(records
            .into_iter()
            .map(|r| {
                let (commit, payload) = frame::split_commit(r.payload);
                StoredRecord { position: r.position, commit, payload }
            })
            .collect())
    }

    fn next_position(&self) -> u64 {
        self.next
    }
}

#[async_trait::async_trait]
impl Storage for FileStorage {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn topics(&self) -> Result<Vec<Name>> {
        let dir = self.topics_dir.clone();
        let vfs = Arc::clone(&self.vfs);
        blocking(move || {
            let mut topics = Vec::new();
            for entry in vfs.read_dir(&dir).map_err(fs_error("listing", &dir))? {
                // A topic is a directory holding a log: one that lists is one.
                if let Ok(topic) = Name::new("topic", &entry)
                    && vfs.read_dir(&dir.join(&entry)).is_ok()
                {
                    topics.push(topic);
                }
            }
            topics.sort();
            Ok(topics)
        })
        .await
    }

    async fn create_topic(&self, topic: &Name) -> Result<()> {
        self.log(topic, true).await.map(|_| ())
    }

    async fn append(&self, topic: &Name, payloads: Vec<Bytes>) -> Result<RangeInclusive<u64>> {
        self.append_committed(topic, payloads).await
    }

    async fn reader(&self, topic: &Name, from: u64) -> Result<Box<dyn TopicReader>> {
        let log = self.log(topic, false).await?;
        Ok(Box::new(FileTopicReader {
            topic: topic.clone(),
            reader: Some(log.reader(from)),
            next: from.max(1),
        }))
    }

    async fn positions(&self, topic: &Name) -> Result<(u64, u64)> {
        let log = self.log(topic, false).await?;
        Ok((log.first_position(), log.last_position()))
    }

    async fn watch(&self, topic: &Name) -> Result<watch::Receiver<u64>> {
        Ok(self.log(topic, false).await?.watch_last_position())
    }

    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<(Name, StoredRecord)>> {
        let max = max.min(READ_ALL_EVENTS_MAX);
        let visible = self.clock.visible();
        let mut all = Vec::new();
        for topic in self.topics().await? {
            let TopicLog { log, last_commit, .. } = self.topic_log(&topic, false).await?;
            if last_commit.load(AtomicOrdering::Acquire) < from {
                continue; // nothing at or after `from` (commits grow with positions)
            }
            let records = blocking(move || Self::read_committed(&log, from, visible, max)).await?;
            all.extend(records.into_iter().map(|record| (topic.clone(), record)));
        }
        all.sort_by(|(a_topic, a), (b_topic, b)| {
            (a.commit, a_topic, a.position).cmp(&(b.commit, b_topic, b.position))
        });
        all.truncate(max);
        Ok(all)
    }

    async fn visible_commit(&self) -> Result<u64> {
        Ok(self.clock.visible())
    }

    async fn watch_commit(&self) -> Result<watch::Receiver<u64>> {
        Ok(self.clock.subscribe())
    }

    async fn commit(&self, ops: Vec<StateOp>, durable: bool) -> Result<()> {
        self.state()?.commit(ops, durable).await
    }

    // Point reads run inline: the overlay is in memory and fjall's block cache and bloom filters
    // make tree reads memory-speed; a trip to the blocking pool would cost more than the read.

    async fn stream_state(&self, stream: &StreamId) -> Result<Option<StreamState>> {
        self.state()?
            .get(Space::Streams, &stream_key(stream))?
            .map(|raw| StreamState::decode(&raw).map_err(|e| corrupt("stream state", e)))
            .transpose()
    }

    async fn key_state(&self, stream: &StreamId, key: &str) -> Result<Option<KeyState>> {
        self.state()?
            .get(Space::Keys, &key_key(stream, key))?
            .map(|raw| KeyState::decode(&raw).map_err(|e| corrupt("key state", e)))
            .transpose()
    }

    async fn parked(
        &self,
        subscription: &Name,
        after: Option<(Name, u64)>,
        max: usize,
    ) -> Result<Vec<ParkedEvent>> {
        let state = self.state()?;
        let subscription = subscription.clone();
        blocking(move || {
            let mut prefix = subscription.as_str().as_bytes().to_vec();
            prefix.push(0);
            let after = after.map(|(topic, position)| {
                parked_key(&StreamId::new(subscription.clone(), topic), position)
            });
            let entries = state.scan(Space::Parked, &prefix, after.as_deref(), max)?;
            entries
                .into_iter()
                .map(|(key, value)| {
                    let (topic, position) = split_parked_key(&key[prefix.len()..])
                        .ok_or_else(|| corrupt("parked key", "malformed"))?;
                    let stream = StreamId::new(subscription.clone(), topic);
                    ParkedEvent::decode(&stream, position, &value)
                        .map_err(|e| corrupt("parked event", e))
                })
                .collect()
        })
        .await
    }

    async fn parked_event(&self, stream: &StreamId, position: u64) -> Result<Option<ParkedEvent>> {
        self.state()?
            .get(Space::Parked, &parked_key(stream, position))?
            .map(|raw| {
                ParkedEvent::decode(stream, position, &raw).map_err(|e| corrupt("parked event", e))
            })
            .transpose()
    }

    async fn event_positions(&self, topic: &Name, ids: Vec<String>) -> Result<Vec<Option<u64>>> {
        let state = self.state()?;
        ids.iter().map(|id| read_u64(state.get(Space::Ids, &id_key(topic, id))?)).collect()
    }

    async fn ids_indexed_to(&self, topic: &Name) -> Result<u64> {
        Ok(read_u64(self.state()?.get(Space::Meta, &ids_indexed_key(topic))?)?.unwrap_or(0))
    }

    async fn footprint(&self, topic: &Name) -> Result<Footprint> {
        Ok(Self::footprint_of(&self.log(topic, false).await?))
    }

    async fn purge(&self, topic: &Name, request: &PurgeRequest) -> Result<Footprint> {
        let log = self.log(topic, false).await?;
        let request = *request;
        let before = {
            let log = log.clone();
            blocking(move || {
                let segments = log.segments();
                let modified = |base| log.segment_modified(base);
                Ok(segments_to_purge(&segments, modified, SystemTime::now(), &request))
            })
            .await?
        };
        if before > log.first_position() {
            let report = log.purge(before).await?;
            let pruned = self.state()?.prune_ids_below(topic, report.first_position).await?;
            tracing::debug!(
                %topic,
                segments = report.segments_removed,
                first = report.first_position,
                ids = pruned,
                "retention purged"
            );
        }
        Ok(Self::footprint_of(&log))
    }

    async fn put_definition(&self, kind: &str, name: &str, value: Option<Bytes>) -> Result<()> {
        self.state()?.put_definition(kind, name, value).await
    }

    async fn definitions(&self, kind: &str) -> Result<Vec<(String, Bytes)>> {
        self.state()?.definitions(kind)
    }

    async fn forget_subscription(&self, subscription: &Name) -> Result<()> {
        let state = self.state()?;
        let mut prefix = subscription.as_str().as_bytes().to_vec();
        prefix.push(0);
        for space in [Space::Keys, Space::Parked, Space::Streams] {
            state.remove_under(space, &prefix, |_| true).await?;
        }
        Ok(())
    }

    async fn reset_stream(&self, stream: &StreamId, watermark: u64) -> Result<()> {
        let state = self.state()?;
        let mut prefix = stream_prefix(stream);
        prefix.push(0);
        state.remove_under(Space::Keys, &prefix, |_| true).await?;
        let above = |key: &[u8]| {
            key.get(prefix.len()..)
                .and_then(|raw| raw.try_into().ok())
                .is_some_and(|raw| u64::from_be_bytes(raw) > watermark)
        };
        state.remove_under(Space::Parked, &prefix, above).await?;
        let progress = StreamState { watermark, ..StreamState::default() };
        state.commit(vec![StateOp::Stream { stream: stream.clone(), state: progress }], true).await
    }

    /// Crash-safe in this order: the events first, as a purge of everything (whole segments,
    /// oldest first, each removal durable: a crash leaves a shorter valid log, never one with a
    /// hole), so a crash never hands a deleted event out again; then the state (a stream whose
    /// progress survived a crash skips what went, as behind retention); then the log's last,
    /// empty segment and its directory. Deleting again finishes what a crash interrupted.
    async fn delete_topic(&self, topic: &Name) -> Result<()> {
        let state = self.state()?;
        match self.log(topic, false).await {
            Ok(log) => {
                log.purge(log.last_position().saturating_add(1)).await?;
            }
            Err(Error::UnknownTopic { .. }) => {}
            // A damaged log does not open: its files go as they are.
            Err(error) if error.storage_kind() == Some(crate::StorageErrorKind::Corrupt) => {}
            Err(error) => return Err(error),
        }
        // Every stream on the topic: its key states, parked events, progress.
        let streams = state.scan(Space::Streams, b"", None, usize::MAX)?;
        for (key, _) in streams {
            let Some(split) = key.iter().position(|b| *b == 0) else { continue };
            if &key[split + 1..] != topic.as_str().as_bytes() {
                continue;
            }
            let mut prefix = key.clone();
            prefix.push(0);
            state.remove_under(Space::Keys, &prefix, |_| true).await?;
            state.remove_under(Space::Parked, &prefix, |_| true).await?;
            state.remove_under(Space::Streams, &key, |k| k == key.as_slice()).await?;
        }
        state.forget_ids(topic).await?;
        // The log: closed (its writer joined), then its files and directory removed.
        let _opening = self.opening.lock().await;
        let open = self.logs.write().remove(topic);
        if let Some(open) = open {
            let _ = tokio::task::spawn_blocking(move || drop(open)).await;
        }
        let dir = self.topics_dir.join(topic.as_str());
        let vfs = Arc::clone(&self.vfs);
        let topics_dir = self.topics_dir.clone();
        blocking(move || {
            let names = match vfs.read_dir(&dir) {
                Ok(names) => names,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) => return Err(fs_error("listing", &dir)(error)),
            };
            for name in names {
                let path = dir.join(name);
                vfs.remove_file(&path).map_err(fs_error("removing", &path))?;
            }
            vfs.remove_dir(&dir).map_err(fs_error("removing", &dir))?;
            vfs.sync_dir(&topics_dir).map_err(fs_error("syncing", &topics_dir))
        })
        .await
    }

    async fn log_stats(&self, topic: &Name) -> Result<Option<inorder_log::LogStats>> {
        Ok(Some(self.log(topic, false).await?.stats()))
    }

    async fn close(&self) {
        let logs: Vec<Log> = self.logs.write().drain().map(|(_, topic)| topic.log).collect();
        let state = self.state.write().take();
        if let Some(state) = &state {
            state.close().await;
        }
        // Dropping a log joins its writer; dropping the last state handle closes the database.
        let _ = tokio::task::spawn_blocking(move || drop((logs, state))).await;
    }
}
