//! Deduplication of producer retries by event id.
//!
//! Publishing an event whose id the topic already holds returns the first position instead of
//! appending again. Ids are indexed in the state store after the append, by the
//! [indexer](crate::indexer) (not durably: the index is rebuilt from the log on start, from the
//! last recorded "indexed up to" position). While an id is being published its *claim* makes
//! concurrent publishers of the same id wait for the first one's position, so two appends of one
//! id can never race; once appended, the claim is kept (resolved) until the indexer has written
//! the id, so a retry is answered from memory in between.
//!
//! A claim is held by a [`ClaimGuard`] that owns a handle on the topic's [`Dedupe`], so it can
//! outlive the publisher's future: the append task keeps it until the outcome is known (a
//! publisher that gives up waiting must not release a claim whose append still lands).
//!
//! A claim costs one map entry: the channel a concurrent publisher of the same id waits on is
//! made only when one comes (rare: a producer's retry racing its first try), not per event.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{limits::INDEXED_MARK_POSITIONS, watermark::Watermark};

/// The dedupe state of one topic.
#[derive(Default)]
pub(crate) struct Dedupe {
    claims: Mutex<HashMap<String, Slot>>,
    indexed: Mutex<Indexed>,
}

/// A claimed id: its position once appended, and the channel of publishers waiting for it.
#[derive(Default)]
struct Slot {
    position: Option<u64>,
    /// Made by the first publisher that waits; dropped unresolved, it tells them it failed.
    waiters: Option<watch::Sender<Option<u64>>>,
}

#[derive(Default)]
struct Indexed {
    /// Positions whose ids are in the index.
    positions: Watermark,
    /// The last "indexed up to" mark written to the state store.
    marked: u64,
}

/// The outcome of claiming an id.
pub(crate) enum Claim {
    /// This caller publishes the id; dropping the guard releases the claim.
    Mine(ClaimGuard),
    /// Another caller is publishing it: wait for its position (`None` if it failed).
    Theirs(watch::Receiver<Option<u64>>),
}

/// A held claim on an id. Dropped unresolved (the publish failed), it releases the claim.
pub(crate) struct ClaimGuard {
    dedupe: Arc<Dedupe>,
    id: String,
    resolved: bool,
}

impl ClaimGuard {
    /// Announces the id's position to waiting publishers and keeps the claim until
    /// [`Dedupe::release`] (after the id is indexed); returns the id.
    pub(crate) fn resolve(mut self, position: u64) -> String {
        if let Some(slot) = self.dedupe.claims.lock().get_mut(&self.id) {
            slot.position = Some(position);
            if let Some(waiters) = &slot.waiters {
                waiters.send_replace(Some(position));
            }
        }
        self.resolved = true;
        std::mem::take(&mut self.id)
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.resolved {
            self.dedupe.claims.lock().remove(&self.id);
        }
    }
}

impl Dedupe {
    /// Claims `id` for publishing, or reports who holds it.
    pub(crate) fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut claims = self.claims.lock();
        if let Some(slot) = claims.get_mut(id) {
            let position = slot.position;
            let waiters = slot.waiters.get_or_insert_with(|| watch::channel(position).0);
            return Claim::Theirs(waiters.subscribe());
        }
        claims.insert(id.to_owned(), Slot::default());
        Claim::Mine(ClaimGuard { dedupe: Arc::clone(self), id: id.to_owned(), resolved: false })
    }

    /// The position of a published id still held as a claim (`None` if there is no claim, or
    /// its publish has not appended yet).
    pub(crate) fn position(&self, id: &str) -> Option<u64> {
        self.claims.lock().get(id).and_then(|slot| slot.position)
    }

    /// Releases the resolved claims of `ids` (they are indexed, or will be from the log).
    pub(crate) fn release<'i>(&self, ids: impl IntoIterator<Item = &'i str>) {
        let mut claims = self.claims.lock();
        for id in ids {
            claims.remove(id);
        }
    }

    /// Sets the indexed prefix (on start, after the log tail was indexed).
    pub(crate) fn set_indexed(&self, to: u64) {
        *self.indexed.lock() = Indexed { positions: Watermark::new(to, ()), marked: to };
    }

    /// Records that the ids of `positions` are indexed; returns a new "indexed up to" mark when
    /// it is worth writing.
    pub(crate) fn indexed(&self, positions: impl IntoIterator<Item = u64>) -> Option<u64> {
        let mut indexed = self.indexed.lock();
        for position in positions {
            indexed.positions.insert(position, ());
        }
        let to = indexed.positions.through();
        if to >= indexed.marked + INDEXED_MARK_POSITIONS {
            indexed.marked = to;
            return Some(to);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_waits_for_the_first() {
        let dedupe = Arc::new(Dedupe::default());
        let Claim::Mine(first) = dedupe.claim("id-1") else { panic!("first claim is mine") };
        let Claim::Theirs(mut second) = dedupe.claim("id-1") else { panic!("second must wait") };
        assert_eq!(first.resolve(7), "id-1");
        assert_eq!(*second.borrow_and_update(), Some(7));
        let Claim::Theirs(third) = dedupe.claim("id-1") else { panic!("kept until indexed") };
        assert_eq!(*third.borrow(), Some(7), "a retry is answered from memory");
        dedupe.release(["id-1"]);
        assert!(matches!(dedupe.claim("id-1"), Claim::Mine(_)), "released once indexed");
    }

    #[test]
    fn a_failed_publish_releases_its_claim() {
        let dedupe = Arc::new(Dedupe::default());
        let Claim::Mine(first) = dedupe.claim("id-1") else { panic!("first claim is mine") };
        let Claim::Theirs(mut second) = dedupe.claim("id-1") else { panic!("second must wait") };
        drop(first);
        assert!(second.borrow_and_update().is_none(), "no position to report");
        assert!(matches!(dedupe.claim("id-1"), Claim::Mine(_)), "released on drop");
    }

    #[test]
    fn the_indexed_mark_only_covers_a_contiguous_prefix() {
        let dedupe = Dedupe::default();
        dedupe.set_indexed(0);
        assert_eq!(dedupe.indexed(2..=INDEXED_MARK_POSITIONS + 5), None, "position 1 is missing");
        assert_eq!(dedupe.indexed([1]), Some(INDEXED_MARK_POSITIONS + 5));
    }
}
