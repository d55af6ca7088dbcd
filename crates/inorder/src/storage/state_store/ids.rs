//! The event-id index's upkeep: ids forgotten after a power loss cut the log, and ids pruned
//! with the events retention deletes.
//!
//! Ids live in the tree only (written there directly by the indexer, never through the journal:
//! the index is rebuilt from the log), in two keyspaces: [`Space::Ids`] (`topic\0id` → position,
//! for lookups) and [`Space::IdPositions`] (`topic\0position` → id, so retention prunes a prefix
//! of positions without reading the whole index). Removals are written unsynced like the index
//! itself: one a crash undoes is made again by the next purge, and until then a retry of that id
//! answers the deleted position (a duplicate is still a duplicate).

use std::sync::Arc;

use inorder_log::Name;

use super::{Entries, StateStore, blocking, corrupt, read_u64};
use crate::{
    error::Result,
    limits::FOLD_BATCH_ENTRIES,
    storage::keys::{
        Space, id_position_key, ids_by_position_key, ids_indexed_key, ids_max_key, topic_prefix,
    },
};

impl StateStore {
    /// Forgets the event ids the index holds for positions above `last`, the end of the
    /// topic's log. Only after a power loss under `fsync = never` (the log lost records whose
    /// ids were indexed: the index is written off the publish path, not after an fsync) can it
    /// hold any; then a producer retry of such an id must append again, not answer a position
    /// the log no longer has. Returns how many it forgot.
    pub(crate) async fn forget_ids_above(
        self: &Arc<Self>,
        topic: &Name,
        last: u64,
    ) -> Result<usize> {
        let max = read_u64(self.get(Space::Meta, &ids_max_key(topic))?)?.unwrap_or(0);
        if max <= last {
            return Ok(0);
        }
        let prefix = topic_prefix(topic);
        let mut removals = Entries::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(Space::Ids, &prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
            let Some((last_key, _)) = page.last() else { break };
            after = Some(last_key.clone());
            for (key, value) in page {
                if let Some(position) = read_u64(Some(value))?.filter(|p| *p > last) {
                    removals.insert((Space::Ids, key), None);
                    removals.insert((Space::IdPositions, id_position_key(topic, position)), None);
                }
            }
        }
        let forgotten = removals.len() / 2;
        removals.insert((Space::Meta, ids_max_key(topic)), Some(last.to_be_bytes().to_vec()));
        let indexed = read_u64(self.get(Space::Meta, &ids_indexed_key(topic))?)?.unwrap_or(0);
        if indexed > last {
            removals
                .insert((Space::Meta, ids_indexed_key(topic)), Some(last.to_be_bytes().to_vec()));
        }
        let tree = Arc::clone(&self.tree);
        blocking(move || tree.write(removals.iter(), true)).await?;
        Ok(forgotten)
    }

    /// Removes the ids of the topic's events below `first` (deleted by retention); returns how
    /// many. An id published again since (now at a retained position) keeps its entry.
    pub(crate) async fn prune_ids_below(self: &Arc<Self>, topic: &Name, first: u64) -> Result<u64> {
        if self.get(Space::Meta, &ids_by_position_key(topic))?.is_none() {
            self.index_ids_by_position(topic).await?;
        }
        let prefix = topic_prefix(topic);
        let mut pruned = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page =
                self.scan(Space::IdPositions, &prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
            let full = page.len() == FOLD_BATCH_ENTRIES;
            let mut removals = Entries::new();
            let mut reached = false;
            for (key, id) in page {
                let position = key
                    .get(prefix.len()..)
                    .and_then(|raw| raw.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt("id position key", "malformed"))?;
                if position >= first {
                    reached = true;
                    break;
                }
                let mut id_key = prefix.clone();
                id_key.extend_from_slice(&id);
                if read_u64(self.get(Space::Ids, &id_key)?)? == Some(position) {
                    removals.insert((Space::Ids, id_key), None);
                }
                removals.insert((Space::IdPositions, key.clone()), None);
                after = Some(key);
                pruned += 1;
            }
            if !removals.is_empty() {
                let tree = Arc::clone(&self.tree);
                blocking(move || tree.write(removals.iter(), false)).await?;
            }
            if reached || !full {
                return Ok(pruned);
            }
        }
    }

    /// Gives every id of the topic its [`Space::IdPositions`] entry (ids indexed before that
    /// keyspace existed), once per topic.
    async fn index_ids_by_position(self: &Arc<Self>, topic: &Name) -> Result<()> {
        let prefix = topic_prefix(topic);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(Space::Ids, &prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
            let Some((last_key, _)) = page.last() else { break };
            after = Some(last_key.clone());
            let mut entries = Entries::new();
            for (key, value) in page {
                let position = read_u64(Some(value))?.unwrap_or(0);
                let id = key[prefix.len()..].to_vec();
                entries.insert((Space::IdPositions, id_position_key(topic, position)), Some(id));
            }
            let tree = Arc::clone(&self.tree);
            blocking(move || tree.write(entries.iter(), false)).await?;
        }
        let mut flag = Entries::new();
        flag.insert((Space::Meta, ids_by_position_key(topic)), Some(1u64.to_be_bytes().to_vec()));
        let tree = Arc::clone(&self.tree);
        blocking(move || tree.write(flag.iter(), false)).await
    }
}
