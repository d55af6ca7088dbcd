//! The file backend's state store: a journal in front of a fjall LSM tree.
//!
//! Checkpoints change many small values (one per key handled) and must be durable before keys go
//! on. Writing each into the LSM tree with an fsync per checkpoint made the tree the engine's
//! bottleneck, so durable commits go to a **journal** (an `inorder-log`, group commit) and into
//! an in-memory **overlay**; a background **fold** later writes the overlay into the tree in one
//! coalesced batch (a key changed a hundred times is written once), records how far the journal
//! is folded, and purges the journal below that mark.
//!
//! ```text
//! commit: resolve ops to entries ─► journal.append (durable) ─► overlay
//! read:   overlay (active, then folding) ─► tree
//! fold:   freeze overlay ─► tree batch + "folded up to" mark (fsync) ─► purge journal
//! open:   tree ─► replay journal records after the mark into the overlay
//! ```
//!
//! Journal records hold *resolved* entries (a max-merge is already applied), so replaying one
//! that the tree already holds changes nothing. The overlay is bounded: past
//! [`OVERLAY_ENTRIES_HARD_MAX`] a commit waits for the running fold.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use inorder_log::{FsyncPolicy, Log, LogOptions, Name, ReadLimits};
use tokio::sync::Notify;

use super::StateOp;
use crate::{
    error::{Error, Result},
    state::{KeyState, StreamId},
    wire::{Input, put_varint},
};

/// Bytes of fjall's block cache.
const STATE_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes of one keyspace's memtable before it is flushed to disk.
const STATE_MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Overlay entries that start a fold.
pub(crate) const OVERLAY_ENTRIES_FOLD: usize = 64 * 1024;
/// Overlay entries beyond which a commit waits for the running fold.
pub(crate) const OVERLAY_ENTRIES_HARD_MAX: usize = 4 * OVERLAY_ENTRIES_FOLD;
/// Entries written to the tree per batch while folding.
const FOLD_BATCH_ENTRIES: usize = 8 * 1024;
/// Segment size of the journal (small, so folded parts are purged soon).
const JOURNAL_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Meta key: the last journal position folded into the tree.
const FOLDED_KEY: &[u8] = b"journal-folded";

/// The keyspaces of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Space {
    Streams,
    Keys,
    Parked,
    Ids,
    Meta,
}

impl Space {
    const ALL: [Self; 5] = [Self::Streams, Self::Keys, Self::Parked, Self::Ids, Self::Meta];

    fn code(self) -> u8 {
        match self {
            Self::Streams => 0,
            Self::Keys => 1,
            Self::Parked => 2,
            Self::Ids => 3,
            Self::Meta => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::Keys => "keys",
            Self::Parked => "parked",
            Self::Ids => "ids",
            Self::Meta => "meta",
        }
    }
}

/// Byte-level changes: `None` removes the key.
type Entries = BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>;

struct Tree {
    db: fjall::Database,
    spaces: [fjall::Keyspace; 5],
}

impl Tree {
    fn space(&self, space: Space) -> &fjall::Keyspace {
        &self.spaces[usize::from(space.code())]
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.space(space).get(key).map_err(Error::state)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Writes entries in batches; the last batch (with `extra`) is durable if asked.
    fn write<'a>(
        &self,
        entries: impl Iterator<Item = (&'a (Space, Vec<u8>), &'a Option<Vec<u8>>)>,
        durable: bool,
    ) -> Result<()> {
        let mut batch = self.db.batch();
        let mut count = 0;
        for ((space, key), value) in entries {
            match value {
                Some(value) => batch.insert(self.space(*space), key.as_slice(), value.as_slice()),
                None => batch.remove(self.space(*space), key.as_slice()),
            }
            count += 1;
            if count % FOLD_BATCH_ENTRIES == 0 {
                std::mem::replace(&mut batch, self.db.batch()).commit().map_err(Error::state)?;
            }
        }
        if durable {
            batch = batch.durability(Some(fjall::PersistMode::SyncData));
        }
        batch.commit().map_err(Error::state)
    }
}

struct Layers {
    active: Entries,
    /// The overlay being folded into the tree, still read until the fold is done.
    folding: Option<Arc<Entries>>,
    /// The last journal position applied to `active`.
    journal_position: u64,
}

/// The state store: journal, overlay, tree.
pub(crate) struct StateStore {
    tree: Arc<Tree>,
    journal: Log,
    layers: Mutex<Layers>,
    folded: Notify,
}

impl StateStore {
    /// Opens the tree and the journal under `dir` and replays the unfolded journal.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir.join("tree"))
            .cache_size(STATE_CACHE_BYTES)
            .open()
            .map_err(Error::state)?;
        let spaces = Space::ALL.map(|space| {
            db.keyspace(space.name(), || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(STATE_MEMTABLE_BYTES)
            })
            .map_err(Error::state)
        });
        let [a, b, c, d, e] = spaces;
        let tree = Arc::new(Tree { spaces: [a?, b?, c?, d?, e?], db });
        let options = LogOptions {
            fsync: FsyncPolicy::Group,
            segment_bytes: JOURNAL_SEGMENT_BYTES,
            ..LogOptions::default()
        };
        let journal = Log::open(dir.join("journal"), options)?;
        let folded = read_u64(tree.get(Space::Meta, FOLDED_KEY)?)?.unwrap_or(0);
        let mut active = Entries::new();
        let mut reader = journal.reader(folded + 1);
        loop {
            let records = reader.read(ReadLimits::default())?;
            if records.is_empty() {
                break;
            }
            for record in records {
                decode_entries(&record.payload, &mut active).map_err(|e| {
                    Error::state(format!("journal record {}: {e}", record.position))
                })?;
            }
        }
        let journal_position = journal.last_position();
        tracing::debug!(replayed = active.len(), folded, journal_position, "state store opened");
        let layers = Layers { active, folding: None, journal_position };
        Ok(Self { tree, journal, layers: Mutex::new(layers), folded: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A value, through the overlay.
    pub(crate) fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        {
            let layers = self.lock();
            let lookup = (space, key.to_vec());
            if let Some(value) = layers.active.get(&lookup) {
                return Ok(value.as_deref().map(Bytes::copy_from_slice));
            }
            if let Some(value) = layers.folding.as_ref().and_then(|f| f.get(&lookup)) {
                return Ok(value.as_deref().map(Bytes::copy_from_slice));
            }
        }
        self.tree.get(space, key)
    }

    /// Entries of `space` whose key starts with `prefix` and sorts after `after`, in key order,
    /// at most `max`, through the overlay.
    pub(crate) fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let in_range = |key: &[u8]| key.starts_with(prefix) && after.is_none_or(|a| key > a);
        let mut merged: BTreeMap<Vec<u8>, Option<Bytes>> = BTreeMap::new();
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        for entry in self.tree.space(space).range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
        {
            let (key, value) = entry.into_inner().map_err(Error::state)?;
            if !key.starts_with(prefix) {
                break;
            }
            merged.insert(key.to_vec(), Some(Bytes::copy_from_slice(&value)));
            // Overlay removals can hide tree entries: read enough to still fill `max`.
            if merged.len() >= max + OVERLAY_ENTRIES_HARD_MAX {
                break;
            }
        }
        let layers = self.lock();
        let overlays =
            layers.folding.iter().map(|f| f.as_ref()).chain(std::iter::once(&layers.active));
        for overlay in overlays {
            let start = (space, prefix.to_vec());
            for ((entry_space, key), value) in overlay.range(start..) {
                if *entry_space != space || !key.starts_with(prefix) {
                    break;
                }
                if in_range(key) {
                    merged.insert(key.clone(), value.as_deref().map(Bytes::copy_from_slice));
                }
            }
        }
        Ok(merged.into_iter().filter_map(|(k, v)| Some((k, v?))).take(max).collect())
    }

    /// Makes `ops` durable (journal) and visible (overlay); without `durable`, writes them to
    /// the tree directly without fsync (the id index, which is rebuilt from the log).
    pub(crate) async fn commit(self: &Arc<Self>, ops: Vec<StateOp>, durable: bool) -> Result<()> {
        if !durable {
            let entries = self.resolve(ops)?;
            let tree = Arc::clone(&self.tree);
            return blocking(move || tree.write(entries.iter(), false)).await;
        }
        loop {
            let must_wait = {
                let layers = self.lock();
                layers.active.len() >= OVERLAY_ENTRIES_HARD_MAX && layers.folding.is_some()
            };
            if !must_wait {
                break;
            }
            self.folded.notified().await;
        }
        let entries = self.resolve(ops)?;
        let positions = self.journal.append([encode_entries(&entries)]).await?;
        let fold = {
            let mut layers = self.lock();
            layers.active.extend(entries);
            layers.journal_position = *positions.end();
            layers.active.len() >= OVERLAY_ENTRIES_FOLD && layers.folding.is_none()
        };
        if fold {
            let store = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(error) = store.fold().await {
                    tracing::error!(%error, "folding the state journal failed");
                }
            });
        }
        Ok(())
    }

    /// Writes the overlay into the tree and purges the journal it came from.
    pub(crate) async fn fold(self: &Arc<Self>) -> Result<()> {
        let (frozen, mark) = {
            let mut layers = self.lock();
            if layers.folding.is_some() || layers.active.is_empty() {
                return Ok(());
            }
            let frozen = Arc::new(std::mem::take(&mut layers.active));
            layers.folding = Some(Arc::clone(&frozen));
            (frozen, layers.journal_position)
        };
        let tree = Arc::clone(&self.tree);
        let written = Arc::clone(&frozen);
        let result = blocking(move || {
            let mark_entry =
                ((Space::Meta, FOLDED_KEY.to_vec()), Some(mark.to_be_bytes().to_vec()));
            tree.write(written.iter().chain(std::iter::once((&mark_entry.0, &mark_entry.1))), true)
        })
        .await;
        self.lock().folding = None;
        self.folded.notify_waiters();
        result?;
        self.journal.purge(mark + 1).await?;
        tracing::debug!(entries = frozen.len(), mark, "state journal folded");
        Ok(())
    }

    /// Turns ops into byte-level entries, applying max-merges against the current values.
    fn resolve(&self, ops: Vec<StateOp>) -> Result<Entries> {
        let mut entries = Entries::new();
        for op in ops {
            let (space, key, value) = match op {
                StateOp::Stream { stream, state } => {
                    (Space::Streams, stream_key(&stream), Some(state.encode()))
                }
                StateOp::Key { stream, key, state, merge } => {
                    let key = key_key(&stream, &key);
                    let state = if merge {
                        let current = match entries.get(&(Space::Keys, key.clone())) {
                            Some(value) => value.clone().map(Bytes::from),
                            None => self.get(Space::Keys, &key)?,
                        };
                        match current {
                            Some(raw) => KeyState::decode(&raw)
                                .map_err(|e| corrupt("key state", e))?
                                .merge(&state),
                            None => state,
                        }
                    } else {
                        state
                    };
                    (Space::Keys, key, Some(state.encode()))
                }
                StateOp::Park(parked) => (
                    Space::Parked,
                    parked_key(&parked.stream(), parked.position),
                    Some(parked.encode()),
                ),
                StateOp::Unpark { stream, position } => {
                    (Space::Parked, parked_key(&stream, position), None)
                }
                StateOp::EventId { topic, id, position } => {
                    (Space::Ids, id_key(&topic, &id), Some(position.to_be_bytes().to_vec()))
                }
                StateOp::IdsIndexedTo { topic, position } => {
                    (Space::Meta, ids_indexed_key(&topic), Some(position.to_be_bytes().to_vec()))
                }
            };
            entries.insert((space, key), value);
        }
        Ok(entries)
    }

    /// Folds what is left and releases the journal (on shutdown).
    pub(crate) async fn close(self: &Arc<Self>) {
        if let Err(error) = self.fold().await {
            tracing::warn!(%error, "final fold of the state journal failed; it replays on next open");
        }
    }
}

/// Runs blocking work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::state(format!("storage task: {e}")))?
}

fn encode_entries(entries: &Entries) -> Bytes {
    let mut out = Vec::with_capacity(entries.len() * 48);
    for ((space, key), value) in entries {
        out.push(space.code());
        put_varint(&mut out, key.len() as u64);
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.push(1);
                put_varint(&mut out, value.len() as u64);
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    Bytes::from(out)
}

fn decode_entries(bytes: &Bytes, into: &mut Entries) -> Result<(), &'static str> {
    let mut input = Input::new(bytes);
    while !input.is_done() {
        let code = input.byte()?;
        let space = Space::ALL.into_iter().find(|s| s.code() == code).ok_or("unknown keyspace")?;
        let key = input.bytes()?.to_vec();
        let value = match input.byte()? {
            0 => None,
            1 => Some(input.bytes()?.to_vec()),
            _ => return Err("bad presence byte"),
        };
        into.insert((space, key), value);
    }
    Ok(())
}

pub(crate) fn corrupt(what: &str, reason: &str) -> Error {
    Error::State(format!("corrupt {what} in the state store: {reason}"))
}

pub(crate) fn read_u64(raw: Option<Bytes>) -> Result<Option<u64>> {
    raw.map(|raw| {
        let bytes: [u8; 8] =
            raw.as_ref().try_into().map_err(|_| corrupt("position", "not 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes))
    })
    .transpose()
}

pub(crate) fn stream_key(stream: &StreamId) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(stream.subscription.as_str().len() + stream.topic.as_str().len() + 1);
    key.extend_from_slice(stream.subscription.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(stream.topic.as_str().as_bytes());
    key
}

pub(crate) fn key_key(stream: &StreamId, key: &str) -> Vec<u8> {
    let mut bytes = stream_key(stream);
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

pub(crate) fn parked_key(stream: &StreamId, position: u64) -> Vec<u8> {
    let mut bytes = stream_key(stream);
    bytes.push(0);
    bytes.extend_from_slice(&position.to_be_bytes());
    bytes
}

pub(crate) fn id_key(topic: &Name, id: &str) -> Vec<u8> {
    let mut bytes = topic.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

pub(crate) fn ids_indexed_key(topic: &Name) -> Vec<u8> {
    let mut bytes = b"ids-indexed\0".to_vec();
    bytes.extend_from_slice(topic.as_str().as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StreamState;

    fn stream() -> StreamId {
        StreamId { subscription: "s".parse().unwrap(), topic: "t".parse().unwrap() }
    }

    fn key_op(key: &str, last_position: u64) -> StateOp {
        StateOp::Key {
            stream: stream(),
            key: key.into(),
            state: KeyState { last_position, ..KeyState::default() },
            merge: false,
        }
    }

    async fn key_state(store: &StateStore, key: &str) -> Option<u64> {
        store
            .get(Space::Keys, &key_key(&stream(), key))
            .unwrap()
            .map(|raw| KeyState::decode(&raw).unwrap().last_position)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_state_survives_reopen_before_and_after_a_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        store.commit(vec![key_op("a", 1), key_op("b", 2)], true).await.unwrap();
        store.fold().await.unwrap();
        store.commit(vec![key_op("a", 3)], true).await.unwrap(); // only in the journal
        let state = StreamState { watermark: 9, ..StreamState::default() };
        store.commit(vec![StateOp::Stream { stream: stream(), state }], true).await.unwrap();
        drop(store);
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        assert_eq!(key_state(&store, "a").await, Some(3), "replayed from the journal");
        assert_eq!(key_state(&store, "b").await, Some(2), "folded into the tree");
        assert!(store.get(Space::Streams, &stream_key(&stream())).unwrap().is_some());
        store.fold().await.unwrap();
        assert_eq!(
            store.journal.first_position(),
            store.journal.last_position() + 1,
            "journal purged"
        );
        assert_eq!(key_state(&store, "a").await, Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_merge_the_overlay_over_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let put =
            |k: &str| StateOp::EventId { topic: "t".parse().unwrap(), id: k.into(), position: 1 };
        store.commit(vec![put("a"), put("b"), put("c")], true).await.unwrap();
        store.fold().await.unwrap();
        let topic: Name = "t".parse().unwrap();
        let mut entries = store.resolve(vec![put("d")]).unwrap();
        entries.insert((Space::Ids, id_key(&topic, "b")), None);
        store.lock().active.extend(entries);
        let keys: Vec<_> =
            store.scan(Space::Ids, b"t\0", None, 10).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [id_key(&topic, "a"), id_key(&topic, "c"), id_key(&topic, "d")]);
        let after = id_key(&topic, "a");
        assert_eq!(store.scan(Space::Ids, b"t\0", Some(&after), 1).unwrap().len(), 1);
    }
}
