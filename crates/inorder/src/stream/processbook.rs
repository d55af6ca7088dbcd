//! The processbook: the live [`KeyWorker`]s of one stream, by key (the name kept from Seqy).
//!
//! Only the stream task holds it, so get-or-create needs no lock and there is never more than
//! one worker per key (asserted on insert). It also keeps two things that must agree with the
//! workers: `buffered`, the events waiting in all reorder buffers (the stream's reorder budget),
//! changed only through [`Processbook::update`], which measures each worker before and after;
//! and the durable states of keys whose worker left recently, so a key that comes back soon is
//! not read from storage again.

use std::collections::HashMap;

use super::worker::KeyWorker;
use crate::{
    limits::{PROCESSBOOK_CHECKED_WORKERS_MAX, RECENT_KEY_STATES_MAX},
    state::KeyState,
};

/// The live workers of a stream.
#[derive(Default)]
pub(super) struct Processbook {
    workers: HashMap<String, KeyWorker>,
    /// Events waiting in reorder buffers, over all workers.
    buffered: usize,
    /// Durable states of keys whose worker left (bounded: cleared when full).
    recent: HashMap<String, KeyState>,
}

impl Processbook {
    /// Live workers.
    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Events waiting in reorder buffers, over all workers.
    pub(super) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether `book_key` has a live worker.
    pub(super) fn contains(&self, book_key: &str) -> bool {
        self.workers.contains_key(book_key)
    }

    /// The worker of `book_key`, for changes that leave its reorder buffer alone.
    pub(super) fn get(&self, book_key: &str) -> Option<&KeyWorker> {
        self.workers.get(book_key)
    }

    /// Runs `change` on the worker of `book_key` (if live), keeping `buffered` equal to the sum
    /// of the workers' reorder buffers.
    pub(super) fn update<R>(
        &mut self,
        book_key: &str,
        change: impl FnOnce(&mut KeyWorker) -> R,
    ) -> Option<R> {
        let worker = self.workers.get_mut(book_key)?;
        let before = worker.buffered();
        let result = change(worker);
        let after = worker.buffered();
        self.buffered = self.buffered + after - before;
        self.check();
        Some(result)
    }

    /// Adds the worker of a key that has none.
    pub(super) fn insert(&mut self, book_key: String, worker: KeyWorker) {
        self.buffered += worker.buffered();
        let previous = self.workers.insert(book_key, worker);
        assert!(previous.is_none(), "two workers for one key");
        self.check();
    }

    /// Removes the worker of `book_key` if it is idle, remembering its durable state
    /// (`remember`: false for per-event entries of `none` ordering).
    pub(super) fn remove_idle(&mut self, book_key: &str, remember: bool) {
        if !self.workers.get(book_key).is_some_and(KeyWorker::is_idle) {
            return;
        }
        let Some(worker) = self.workers.remove(book_key) else { return };
        debug_assert_eq!(worker.buffered(), 0, "an idle worker buffers nothing");
        if remember {
            if self.recent.len() >= RECENT_KEY_STATES_MAX {
                self.recent.clear();
            }
            let (key, state) = worker.into_state();
            self.recent.insert(key, state);
        }
        self.check();
    }

    /// The remembered durable state of `key`, if its worker left recently.
    pub(super) fn take_recent(&mut self, key: &str) -> Option<KeyState> {
        self.recent.remove(key)
    }

    fn check(&self) {
        if cfg!(debug_assertions) && self.workers.len() <= PROCESSBOOK_CHECKED_WORKERS_MAX {
            let sum: usize = self.workers.values().map(KeyWorker::buffered).sum();
            assert_eq!(self.buffered, sum, "buffered must equal the sum over workers");
        }
    }
}
