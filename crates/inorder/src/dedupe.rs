//! Deduplication of producer retries by event id.
//!
//! Publishing an event whose id the topic already holds returns the first position instead of
//! appending again. Ids are indexed in the state store after the append (not durably: the index
//! is rebuilt from the log on start, from the last recorded "indexed up to" position). While an
//! id is being published its *claim* makes concurrent publishers of the same id wait for the
//! first one's position, so two appends of one id can never race.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use tokio::sync::watch;

/// How far ahead of its last record the "indexed up to" marker may lag (positions).
pub(crate) const INDEXED_MARK_EVERY: u64 = 1024;

/// The dedupe state of one topic.
#[derive(Default)]
pub(crate) struct Dedupe {
    claims: Mutex<HashMap<String, watch::Sender<Option<u64>>>>,
    indexed: Mutex<Indexed>,
}

#[derive(Default)]
struct Indexed {
    /// Every id at or below this position is in the index.
    to: u64,
    /// Indexed positions above `to`.
    above: BTreeSet<u64>,
    /// The last `to` written to the state store.
    marked: u64,
}

/// The outcome of claiming an id.
pub(crate) enum Claim<'a> {
    /// This caller publishes the id; dropping the guard releases the claim.
    Mine(ClaimGuard<'a>),
    /// Another caller is publishing it: wait for its position (`None` if it failed).
    Theirs(watch::Receiver<Option<u64>>),
}

/// A held claim on an id.
pub(crate) struct ClaimGuard<'a> {
    dedupe: &'a Dedupe,
    id: String,
    position: watch::Sender<Option<u64>>,
}

impl ClaimGuard<'_> {
    /// Announces the id's position to waiting publishers (the claim is released on drop).
    pub(crate) fn resolve(&self, position: u64) {
        self.position.send_replace(Some(position));
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.dedupe.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Dedupe {
    /// Claims `id` for publishing, or reports who holds it.
    pub(crate) fn claim(&self, id: &str) -> Claim<'_> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = claims.get(id) {
            return Claim::Theirs(holder.subscribe());
        }
        let (position, _) = watch::channel(None);
        claims.insert(id.to_owned(), position.clone());
        Claim::Mine(ClaimGuard { dedupe: self, id: id.to_owned(), position })
    }

    /// Sets the indexed prefix (on start, after the log tail was indexed).
    pub(crate) fn set_indexed(&self, to: u64) {
        let mut indexed = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
        *indexed = Indexed { to, above: BTreeSet::new(), marked: to };
    }

    /// Records that the ids of `positions` are indexed; returns a new "indexed up to" mark when
    /// it is worth writing.
    pub(crate) fn indexed(&self, positions: impl IntoIterator<Item = u64>) -> Option<u64> {
        let mut indexed = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
        indexed.above.extend(positions);
        while indexed.above.first() == Some(&(indexed.to + 1)) {
            indexed.above.pop_first();
            indexed.to += 1;
        }
        if indexed.to >= indexed.marked + INDEXED_MARK_EVERY {
            indexed.marked = indexed.to;
            return Some(indexed.to);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_waits_for_the_first() {
        let dedupe = Dedupe::default();
        let Claim::Mine(first) = dedupe.claim("id-1") else { panic!("first claim is mine") };
        let Claim::Theirs(mut second) = dedupe.claim("id-1") else { panic!("second must wait") };
        first.resolve(7);
        assert_eq!(*second.borrow_and_update(), Some(7));
        drop(first);
        assert!(matches!(dedupe.claim("id-1"), Claim::Mine(_)), "released on drop");
    }

    #[test]
    fn the_indexed_mark_only_covers_a_contiguous_prefix() {
        let dedupe = Dedupe::default();
        dedupe.set_indexed(0);
        assert_eq!(dedupe.indexed(2..=INDEXED_MARK_EVERY + 5), None, "position 1 is missing");
        assert_eq!(dedupe.indexed([1]), Some(INDEXED_MARK_EVERY + 5));
    }
}
