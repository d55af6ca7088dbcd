//! State changes of the management API: definitions made at run time, and removing what a
//! deleted subscription, a rewound stream or a deleted topic leaves behind.
//!
//! Everything goes through the journal like a commit (durable, then visible in the overlay), in
//! pages of [`FOLD_BATCH_ENTRIES`], each page one journal commit: a crash between pages leaves
//! some removed and the rest still there, and the caller (which only ever removes) repeats the
//! whole operation on its next attempt. The id index lives in the tree only and is removed there.

use std::sync::Arc;

use bytes::Bytes;
use inorder_log::Name;

use super::{Entries, StateStore, blocking};
use crate::{
    error::Result,
    limits::FOLD_BATCH_ENTRIES,
    storage::keys::{Space, ids_by_position_key, ids_indexed_key, ids_max_key, topic_prefix},
};

/// The meta key of a definition: `def\0<kind>\0<name>`.
fn definition_key(kind: &str, name: &str) -> Vec<u8> {
    let mut key = definition_prefix(kind);
    key.extend_from_slice(name.as_bytes());
    key
}

fn definition_prefix(kind: &str) -> Vec<u8> {
    let mut key = b"def\0".to_vec();
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key
}

impl StateStore {
    /// Sets or removes a definition, durably.
    pub(crate) async fn put_definition(
        self: &Arc<Self>,
        kind: &str,
        name: &str,
        value: Option<Bytes>,
    ) -> Result<()> {
        let mut entries = Entries::new();
        entries.insert((Space::Meta, definition_key(kind, name)), value.map(|v| v.to_vec()));
        let appended = self.append(&entries).await?;
        self.apply(entries, appended);
        Ok(())
    }

    /// Every definition of `kind`, in name order.
    pub(crate) fn definitions(&self, kind: &str) -> Result<Vec<(String, Bytes)>> {
        let prefix = definition_prefix(kind);
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(Space::Meta, &prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
            let full = page.len() == FOLD_BATCH_ENTRIES;
            after = page.last().map(|(key, _)| key.clone());
            for (key, value) in page {
                all.push((String::from_utf8_lossy(&key[prefix.len()..]).into_owned(), value));
            }
            if !full {
                return Ok(all);
            }
        }
    }

    /// Removes, durably, every entry of `space` under `prefix` that `remove` selects (by key);
    /// returns how many.
    pub(crate) async fn remove_under(
        self: &Arc<Self>,
        space: Space,
        prefix: &[u8],
        remove: impl Fn(&[u8]) -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(space, prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
            let full = page.len() == FOLD_BATCH_ENTRIES;
            after = page.last().map(|(key, _)| key.clone());
            let entries: Entries = page
                .into_iter()
                .filter(|(key, _)| remove(key))
                .map(|(key, _)| ((space, key), None))
                .collect();
            if !entries.is_empty() {
                removed += entries.len();
                let appended = self.append(&entries).await?;
                self.apply(entries, appended);
            }
            if !full {
                return Ok(removed);
            }
        }
    }

    /// Removes a topic's id index (both keyspaces and its marks) from the tree.
    pub(crate) async fn forget_ids(self: &Arc<Self>, topic: &Name) -> Result<()> {
        let prefix = topic_prefix(topic);
        for space in [Space::Ids, Space::IdPositions] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.scan(space, &prefix, after.as_deref(), FOLD_BATCH_ENTRIES)?;
                let full = page.len() == FOLD_BATCH_ENTRIES;
                after = page.last().map(|(key, _)| key.clone());
                let entries: Entries =
                    page.into_iter().map(|(key, _)| ((space, key), None)).collect();
                let tree = Arc::clone(&self.tree);
                blocking(move || tree.write(entries.iter(), false)).await?;
                if !full {
                    break;
                }
            }
        }
        let mut marks = Entries::new();
        for key in [ids_indexed_key(topic), ids_max_key(topic), ids_by_position_key(topic)] {
            marks.insert((Space::Meta, key), None);
        }
        let (tree, written) = (Arc::clone(&self.tree), marks.clone());
        blocking(move || tree.write(written.iter(), true)).await?;
        // The marks may also sit in the overlay (written through the journal): remove them there.
        let appended = self.append(&marks).await?;
        self.apply(marks, appended);
        Ok(())
    }
}
