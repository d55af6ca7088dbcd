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
//! that the tree already holds changes nothing. A commit of any size is one atomic step: it is
//! written as journal parts applied all or nothing ([`super::journal`]). The overlay is bounded:
//! past [`OVERLAY_ENTRIES_HARD_MAX`] a commit waits for the running fold.
//!
//! The fold's "folded up to" mark is the end of the **contiguous prefix** of journal positions
//! already applied to the overlay ([`Watermark`]): commits append concurrently and may apply in
//! either order, and purging a journal record whose commit is not yet in the overlay would lose
//! it at the next crash. A fold that fails puts its entries back under newer ones, so reads
//! never go stale.

use std::{collections::BTreeMap, ops::RangeInclusive, path::Path, sync::Arc};

use bytes::Bytes;
use inorder_log::{FsyncPolicy, Log, LogOptions, Name, ReadLimits, vfs::Vfs};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use super::{
    StateOp,
    journal::{Assembler, encode_commit},
    keys::{
        FOLDED_KEY, Space, id_key, id_position_key, ids_indexed_key, ids_max_key, key_key,
        parked_key, stream_key,
    },
};
use crate::{
    error::{Error, Result, StorageError},
    limits::{
        FOLD_BATCH_ENTRIES, ID_POSITIONS_MEMTABLE_BYTES, JOURNAL_PARTS_PER_APPEND,
        JOURNAL_SEGMENT_BYTES, OVERLAY_ENTRIES_FOLD, OVERLAY_ENTRIES_HARD_MAX, STATE_CACHE_BYTES,
        STATE_MEMTABLE_BYTES,
    },
    state::KeyState,
    watermark::Watermark,
};

/// Byte-level changes: `None` removes the key.
pub(crate) type Entries = BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>;

struct Tree {
    db: fjall::Database,
    spaces: [fjall::Keyspace; 6],
}

/// A failure of the tree (fjall): I/O underneath, so the storage is unavailable.
fn tree_error(what: &'static str) -> impl FnOnce(fjall::Error) -> Error {
    move |error| Error::Storage(StorageError::unavailable(format!("state tree: {what}: {error}")))
}

impl Tree {
    fn space(&self, space: Space) -> &fjall::Keyspace {
        &self.spaces[usize::from(space.code())]
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self
            .space(space)
            .get(key)
            .map_err(tree_error("read"))?
            .map(|v| Bytes::copy_from_slice(&v)))
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
                std::mem::replace(&mut batch, self.db.batch())
                    .commit()
                    .map_err(tree_error("write"))?;
            }
        }
        if durable {
            batch = batch.durability(Some(fjall::PersistMode::SyncData));
        }
        batch.commit().map_err(tree_error("write"))
    }
}

struct Layers {
    active: Entries,
    /// The overlay being folded into the tree, still read until the fold is done.
    folding: Option<Arc<Entries>>,
    /// Journal positions applied to `active` (or to the tree): the fold's mark is its prefix.
    applied: Watermark,
}

/// The state store: journal, overlay, tree.
pub(crate) struct StateStore {
    tree: Arc<Tree>,
    journal: Log,
    layers: Mutex<Layers>,
    folded: Notify,
    /// The next commit's number (see [`super::journal`]).
    commits: std::sync::atomic::AtomicU64,
    /// Background folds not known to be finished (at most a couple: one runs at a time).
    fold_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl StateStore {
    /// Opens the tree and the journal under `dir` and replays the unfolded journal.
    pub(crate) fn open(vfs: Arc<dyn Vfs>, dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir.join("tree"))
            .cache_size(STATE_CACHE_BYTES)
            .open()
            .map_err(tree_error("open"))?;
        let spaces = Space::ALL.map(|space| {
            let memtable = match space {
                Space::IdPositions => ID_POSITIONS_MEMTABLE_BYTES,
                _ => STATE_MEMTABLE_BYTES,
            };
            db.keyspace(space.name(), || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(tree_error("open keyspace"))
        });
        let [a, b, c, d, e, f] = spaces;
        let tree = Arc::new(Tree { spaces: [a?, b?, c?, d?, e?, f?], db });
        let options = LogOptions {
            fsync: FsyncPolicy::Group,
            segment_bytes: JOURNAL_SEGMENT_BYTES,
            ..LogOptions::default()
        };
        let journal = Log::open_with_vfs(vfs, dir.join("journal"), options)?;
        let folded = read_u64(tree.get(Space::Meta, FOLDED_KEY)?)?.unwrap_or(0);
        if journal.last_position() < folded {
            // New commits would take positions the next open skips as folded: refuse.
            return Err(StorageError::corrupt(format!(
                "the state journal ends at {} but the state tree folded it up to {folded}: \
                 journal files are missing",
                journal.last_position()
            ))
            .into());
        }
        let mut active = Entries::new();
        let mut assembler = Assembler::default();
        let mut reader = journal.reader(folded + 1);
        loop {
            let records = reader.read(ReadLimits::default())?;
            if records.is_empty() {
                break;
            }
            for record in records {
                let commit = assembler.push(&record.payload).map_err(|e| {
                    StorageError::corrupt(format!("state journal record {}: {e}", record.position))
                })?;
                active.extend(commit.into_iter().flatten());
            }
        }
        assembler.finish();
        let journal_position = journal.last_position();
        tracing::debug!(
            replayed = active.len(),
            folded,
            journal_position,
            dropped = assembler.dropped,
            "state store opened"
        );
        let layers =
            Layers { active, folding: None, applied: Watermark::new(journal_position, ()) };
        let commits = std::sync::atomic::AtomicU64::new(journal_position + 1);
        Ok(Self {
            tree,
            journal,
            layers: Mutex::new(layers),
            folded: Notify::new(),
            commits,
            fold_tasks: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        self.layers.lock()
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
            let (key, value) = entry.into_inner().map_err(tree_error("scan"))?;
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
        let appended = self.append(&entries).await?;
        self.apply(entries, appended);
        Ok(())
    }

    /// Sets a meta entry to `value`, durably (through the journal, like a commit).
    pub(crate) async fn put_meta(self: &Arc<Self>, key: &[u8], value: u64) -> Result<()> {
        let mut entries = Entries::new();
        entries.insert((Space::Meta, key.to_vec()), Some(value.to_be_bytes().to_vec()));
        let appended = self.append(&entries).await?;
        self.apply(entries, appended);
        Ok(())
    }

    /// Writes a commit's entries to the journal (durable on return), as parts.
    async fn append(&self, entries: &Entries) -> Result<Vec<RangeInclusive<u64>>> {
        let number = self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parts = encode_commit(number, entries);
        let mut appended = Vec::with_capacity(parts.len().div_ceil(JOURNAL_PARTS_PER_APPEND));
        for chunk in parts.chunks(JOURNAL_PARTS_PER_APPEND) {
            match self.journal.append(chunk.to_vec()).await {
                Ok(positions) => appended.push(positions),
                Err(error) => {
                    // The parts written are an incomplete commit, dropped on replay: they must
                    // not hold the fold mark back.
                    let mut layers = self.lock();
                    for positions in appended {
                        layers.applied.insert_range(*positions.start(), *positions.end(), ());
                    }
                    return Err(error.into());
                }
            }
        }
        Ok(appended)
    }

    /// Makes an appended commit visible, and starts a fold when the overlay is large.
    fn apply(self: &Arc<Self>, entries: Entries, appended: Vec<RangeInclusive<u64>>) {
        let fold = {
            let mut layers = self.lock();
            layers.active.extend(entries);
            for positions in appended {
                layers.applied.insert_range(*positions.start(), *positions.end(), ());
            }
            layers.active.len() >= OVERLAY_ENTRIES_FOLD && layers.folding.is_none()
        };
        if fold {
            let store = Arc::clone(self);
            let task = tokio::spawn(async move {
                if let Err(error) = store.fold().await {
                    tracing::error!(%error, "folding the state journal failed");
                }
            });
            // Kept so `close` can wait for it: the tree closes only when its last user is gone.
            let mut tasks = self.fold_tasks.lock();
            tasks.retain(|task| !task.is_finished());
            tasks.push(task);
        }
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
            // Only a prefix of applied commits may be purged from the journal: a commit that
            // appended but has not reached the overlay yet must stay there for replay.
            (frozen, layers.applied.through())
        };
        let tree = Arc::clone(&self.tree);
        let written = Arc::clone(&frozen);
        let result = blocking(move || {
            let mark_entry =
                ((Space::Meta, FOLDED_KEY.to_vec()), Some(mark.to_be_bytes().to_vec()));
            tree.write(written.iter().chain(std::iter::once((&mark_entry.0, &mark_entry.1))), true)
        })
        .await;
        if result.is_err() {
            self.restore_failed_fold(&frozen);
        } else {
            self.lock().folding = None;
        }
        self.folded.notify_waiters();
        result?;
        self.journal.purge(mark + 1).await?;
        tracing::debug!(entries = frozen.len(), mark, "state journal folded");
        Ok(())
    }

    /// A fold could not write `frozen` into the tree: keep serving it from the overlay, under
    /// anything newer (reads would otherwise go stale until a restart).
    fn restore_failed_fold(&self, frozen: &Entries) {
        let mut layers = self.lock();
        layers.folding = None;
        for (key, value) in frozen {
            layers.active.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }

    /// Turns ops into byte-level entries, applying max-merges against the current values.
    fn resolve(&self, ops: Vec<StateOp>) -> Result<Entries> {
        let mut entries = Entries::new();
        // The highest position indexed per topic (see `forget_ids_above`).
        let mut ids_max: BTreeMap<Name, u64> = BTreeMap::new();
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
                    let key = id_key(&topic, &id);
                    entries.insert(
                        (Space::IdPositions, id_position_key(&topic, position)),
                        Some(id.into_bytes()),
                    );
                    let max = ids_max.entry(topic).or_default();
                    *max = (*max).max(position);
                    (Space::Ids, key, Some(position.to_be_bytes().to_vec()))
                }
                StateOp::IdsIndexedTo { topic, position } => {
                    (Space::Meta, ids_indexed_key(&topic), Some(position.to_be_bytes().to_vec()))
                }
                StateOp::Fence(fence) => {
                    return Err(crate::error::StorageError::refused(format!(
                        "partition {} of {} is leased, but the file storage belongs to one \
                         process: cluster mode needs a shared storage (PostgreSQL)",
                        fence.partition, fence.subscription
                    ))
                    .into());
                }
            };
            entries.insert((space, key), value);
        }
        for (topic, max) in ids_max {
            let key = ids_max_key(&topic);
            let stored = read_u64(self.get(Space::Meta, &key)?)?.unwrap_or(0);
            entries.insert((Space::Meta, key), Some(max.max(stored).to_be_bytes().to_vec()));
        }
        Ok(entries)
    }

    /// Folds what is left and releases the journal (on shutdown).
    /// Waits for a background fold first, so that the tree is released when the store is.
    pub(crate) async fn close(self: &Arc<Self>) {
        let running = std::mem::take(&mut *self.fold_tasks.lock());
        for task in running {
            let _ = task.await;
        }
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
        .map_err(|e| Error::Internal { what: format!("a storage task ended: {e}") })?
}

/// A value the state store cannot decode: corruption.
pub(crate) fn corrupt(what: &str, reason: &str) -> Error {
    Error::Storage(StorageError::corrupt(format!("{what} in the state store: {reason}")))
}

pub(crate) fn read_u64(raw: Option<Bytes>) -> Result<Option<u64>> {
    raw.map(|raw| {
        let bytes: [u8; 8] =
            raw.as_ref().try_into().map_err(|_| corrupt("position", "not 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes))
    })
    .transpose()
}

mod ids;
mod manage;
#[cfg(test)]
mod tests;
