//! The embedded default storage: one `inorder-log` per topic, the state in a fjall LSM tree.
//!
//! ```text
//! <data_dir>/topics/<topic>/   an inorder-log (see crates/inorder-log/FORMAT.md)
//! <data_dir>/state/            fjall: keyspaces streams, keys, parked, ids, meta
//! ```
//!
//! State keys are built from validated names (which never contain a NUL byte) separated by NUL,
//! so they sort by subscription, topic, then key or big-endian position. Topic logs are opened
//! on first use (recovery runs on a blocking thread) and stay open; an idle log closes its
//! files by itself.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use inorder_log::{Log, LogOptions, Name, ReadLimits, Reader};
use tokio::sync::watch;

use super::{StateOp, Storage, StoredRecord, TopicReader};
use crate::{
    error::{Error, Result},
    state::{KeyState, ParkedEvent, StreamId, StreamState},
};

/// Bytes of fjall's block cache.
const STATE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Bytes of one keyspace's memtable before it is flushed to disk.
const STATE_MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// The embedded storage backend.
pub struct FileStorage {
    topics_dir: PathBuf,
    log_options: LogOptions,
    logs: RwLock<HashMap<Name, Log>>,
    /// Serialises opening logs, so a topic is never opened twice.
    opening: tokio::sync::Mutex<()>,
    /// `None` once closed.
    state: RwLock<Option<Arc<StateTree>>>,
}

struct StateTree {
    db: fjall::Database,
    streams: fjall::Keyspace,
    keys: fjall::Keyspace,
    parked: fjall::Keyspace,
    ids: fjall::Keyspace,
    meta: fjall::Keyspace,
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
    /// [`Error::Log`] or [`Error::State`] if the directories cannot be created or opened.
    pub fn open(data_dir: &Path, log_options: LogOptions) -> Result<Self> {
        let topics_dir = data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(Error::state)?;
        let db = fjall::Database::builder(data_dir.join("state"))
            .cache_size(STATE_CACHE_BYTES)
            .open()
            .map_err(Error::state)?;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(STATE_MEMTABLE_BYTES)
            })
            .map_err(Error::state)
        };
        let state = StateTree {
            streams: keyspace("streams")?,
            keys: keyspace("keys")?,
            parked: keyspace("parked")?,
            ids: keyspace("ids")?,
            meta: keyspace("meta")?,
            db,
        };
        Ok(Self {
            topics_dir,
            log_options,
            logs: RwLock::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            state: RwLock::new(Some(Arc::new(state))),
        })
    }

    fn state(&self) -> Result<Arc<StateTree>> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Error::Stopped)
    }

    /// The open log of `topic`, opening it if its directory exists (or `create`).
    async fn log(&self, topic: &Name, create: bool) -> Result<Log> {
        if let Some(log) = self.logs.read().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(log.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(log) = self.logs.read().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(log.clone());
        }
        let dir = self.topics_dir.join(topic.as_str());
        if !create && !dir.is_dir() {
            return Err(Error::UnknownTopic { topic: topic.to_string() });
        }
        let options = self.log_options;
        let log = blocking(move || Log::open(dir, options).map_err(Error::from)).await?;
        self.logs.write().unwrap_or_else(|e| e.into_inner()).insert(topic.clone(), log.clone());
        Ok(log)
    }
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::state(format!("storage task: {e}")))?
}

fn stream_key(stream: &StreamId) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(stream.subscription.as_str().len() + stream.topic.as_str().len() + 1);
    key.extend_from_slice(stream.subscription.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(stream.topic.as_str().as_bytes());
    key
}

fn key_key(stream: &StreamId, key: &str) -> Vec<u8> {
    let mut bytes = stream_key(stream);
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn parked_key(stream: &StreamId, position: u64) -> Vec<u8> {
    let mut bytes = stream_key(stream);
    bytes.push(0);
    bytes.extend_from_slice(&position.to_be_bytes());
    bytes
}

fn id_key(topic: &Name, id: &str) -> Vec<u8> {
    let mut bytes = topic.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

fn ids_indexed_key(topic: &Name) -> Vec<u8> {
    let mut bytes = b"ids-indexed\0".to_vec();
    bytes.extend_from_slice(topic.as_str().as_bytes());
    bytes
}

/// Splits a parked key (after the `subscription\0` prefix) into topic and position.
fn split_parked_key(rest: &[u8]) -> Option<(Name, u64)> {
    let split = rest.iter().position(|b| *b == 0)?;
    let topic = Name::new("topic", std::str::from_utf8(&rest[..split]).ok()?).ok()?;
    let position = u64::from_be_bytes(rest.get(split + 1..)?.try_into().ok()?);
    Some((topic, position))
}

fn corrupt(what: &str, reason: &str) -> Error {
    Error::State(format!("corrupt {what} in the state store: {reason}"))
}

impl StateTree {
    fn apply(&self, ops: Vec<StateOp>, durable: bool) -> Result<()> {
        let mut batch = self.db.batch();
        if durable {
            batch = batch.durability(Some(fjall::PersistMode::SyncData));
        }
        for op in ops {
            match op {
                StateOp::Stream { stream, state } => {
                    batch.insert(&self.streams, stream_key(&stream), state.encode());
                }
                StateOp::Key { stream, key, state, merge } => {
                    let k = key_key(&stream, &key);
                    let state = match (merge, self.keys.get(&k).map_err(Error::state)?) {
                        (true, Some(stored)) => KeyState::decode(&Bytes::copy_from_slice(&stored))
                            .map_err(|e| corrupt("key state", e))?
                            .merge(&state),
                        _ => state,
                    };
                    batch.insert(&self.keys, k, state.encode());
                }
                StateOp::Park(parked) => {
                    batch.insert(
                        &self.parked,
                        parked_key(&parked.stream(), parked.position),
                        parked.encode(),
                    );
                }
                StateOp::Unpark { stream, position } => {
                    batch.remove(&self.parked, parked_key(&stream, position));
                }
                StateOp::EventId { topic, id, position } => {
                    batch.insert(&self.ids, id_key(&topic, &id), position.to_be_bytes());
                }
                StateOp::IdsIndexedTo { topic, position } => {
                    batch.insert(&self.meta, ids_indexed_key(&topic), position.to_be_bytes());
                }
            }
        }
        batch.commit().map_err(Error::state)
    }

    fn get(&self, keyspace: &fjall::Keyspace, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(keyspace.get(key).map_err(Error::state)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn read_u64(&self, keyspace: &fjall::Keyspace, key: &[u8]) -> Result<Option<u64>> {
        match self.get(keyspace, key)? {
            None => Ok(None),
            Some(raw) => {
                let bytes: [u8; 8] =
                    raw.as_ref().try_into().map_err(|_| corrupt("position", "not 8 bytes"))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }
}

struct FileTopicReader {
    reader: Option<Reader>,
    next: u64,
}

#[async_trait::async_trait]
impl TopicReader for FileTopicReader {
    async fn read(&mut self, max: usize) -> Result<Vec<StoredRecord>> {
        let mut reader =
            self.reader.take().ok_or_else(|| Error::state("reader lost after a panic"))?;
        let (reader, records) = blocking(move || {
            let records = reader.read(ReadLimits::records(max)).map_err(Error::from);
            Ok((reader, records))
        })
        .await?;
        self.next = reader.next_position();
        self.reader = Some(reader);
        Ok(records?
            .into_iter()
            .map(|r| StoredRecord { position: r.position, payload: r.payload })
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
        blocking(move || {
            let mut topics = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(Error::state)? {
                let entry = entry.map_err(Error::state)?;
                if entry.file_type().map_err(Error::state)?.is_dir()
                    && let Some(name) = entry.file_name().to_str()
                    && let Ok(topic) = Name::new("topic", name)
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
        let log = self.log(topic, false).await?;
        Ok(log.append(payloads).await?)
    }

    async fn reader(&self, topic: &Name, from: u64) -> Result<Box<dyn TopicReader>> {
        let log = self.log(topic, false).await?;
        Ok(Box::new(FileTopicReader { reader: Some(log.reader(from)), next: from.max(1) }))
    }

    async fn positions(&self, topic: &Name) -> Result<(u64, u64)> {
        let log = self.log(topic, false).await?;
        Ok((log.first_position(), log.last_position()))
    }

    async fn watch(&self, topic: &Name) -> Result<watch::Receiver<u64>> {
        Ok(self.log(topic, false).await?.watch_last_position())
    }

    async fn commit(&self, ops: Vec<StateOp>, durable: bool) -> Result<()> {
        let state = self.state()?;
        blocking(move || state.apply(ops, durable)).await
    }

    // Point reads run inline: with fjall's block cache and bloom filters they are memory-speed,
    // and a trip to the blocking pool would cost more than the read. Commits (fsync) and scans
    // run on the blocking pool.

    async fn stream_state(&self, stream: &StreamId) -> Result<Option<StreamState>> {
        let state = self.state()?;
        state
            .get(&state.streams, &stream_key(stream))?
            .map(|raw| StreamState::decode(&raw).map_err(|e| corrupt("stream state", e)))
            .transpose()
    }

    async fn key_state(&self, stream: &StreamId, key: &str) -> Result<Option<KeyState>> {
        let state = self.state()?;
        state
            .get(&state.keys, &key_key(stream, key))?
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
            let mut parked = Vec::new();
            for entry in state.parked.prefix(&prefix) {
                let (key, value) = entry.into_inner().map_err(Error::state)?;
                let (topic, position) = split_parked_key(&key[prefix.len()..])
                    .ok_or_else(|| corrupt("parked key", "malformed"))?;
                if after.as_ref().is_some_and(|(t, p)| (&topic, position) <= (t, *p)) {
                    continue;
                }
                let stream = StreamId { subscription: subscription.clone(), topic };
                let value = Bytes::copy_from_slice(&value);
                parked.push(
                    ParkedEvent::decode(&stream, position, &value)
                        .map_err(|e| corrupt("parked event", e))?,
                );
                if parked.len() >= max {
                    break;
                }
            }
            Ok(parked)
        })
        .await
    }

    async fn parked_event(&self, stream: &StreamId, position: u64) -> Result<Option<ParkedEvent>> {
        let state = self.state()?;
        state
            .get(&state.parked, &parked_key(stream, position))?
            .map(|raw| {
                ParkedEvent::decode(stream, position, &raw).map_err(|e| corrupt("parked event", e))
            })
            .transpose()
    }

    async fn event_positions(&self, topic: &Name, ids: Vec<String>) -> Result<Vec<Option<u64>>> {
        let state = self.state()?;
        ids.iter().map(|id| state.read_u64(&state.ids, &id_key(topic, id))).collect()
    }

    async fn log_stats(&self, topic: &Name) -> Result<Option<inorder_log::LogStats>> {
        Ok(Some(self.log(topic, false).await?.stats()))
    }

    async fn close(&self) {
        let logs: Vec<Log> = self
            .logs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, log)| log)
            .collect();
        let state = self.state.write().unwrap_or_else(|e| e.into_inner()).take();
        // Dropping a log joins its writer; dropping the last state handle closes the database.
        let _ = tokio::task::spawn_blocking(move || drop((logs, state))).await;
    }

    async fn ids_indexed_to(&self, topic: &Name) -> Result<u64> {
        let state = self.state()?;
        Ok(state.read_u64(&state.meta, &ids_indexed_key(topic))?.unwrap_or(0))
    }
}
