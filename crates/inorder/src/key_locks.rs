//! One handler call per key at a time across a subscription's topics.
//!
//! Each stream orders a key's events within its topic; a subscription over several topics has
//! one stream per topic, so without more the same key could be handled by two of them at once.
//! A subscription over more than one topic (or with topic patterns) therefore takes its key's
//! lock around every handler call. Calls of one key from different topics then run one after
//! the other — never at once — while different keys still run in parallel. (Which of two ready
//! events of a key from different topics goes first is not tied to their commit positions yet.)
//!
//! A lock exists only while a call holds or waits for it, so the table is bounded by the calls
//! in flight (the subscription's keys-in-flight permits, taken before the lock).

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// The key locks of one subscription.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    /// Waits until no other call of `key` runs, and holds the key until the guard is dropped.
    pub(crate) async fn lock(self: &Arc<Self>, key: &str) -> KeyLock {
        let lock = Arc::clone(self.locks.lock().entry(key.to_owned()).or_default());
        let guard = Arc::clone(&lock).lock_owned().await;
        KeyLock { locks: Arc::clone(self), key: key.to_owned(), lock, guard: Some(guard) }
    }

    /// Keys locked or waited for (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().len()
    }
}

/// A held key; dropping it lets the next call of the key run.
pub(crate) struct KeyLock {
    locks: Arc<KeyLocks>,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.locks.locks.lock();
        // The table and this guard are the only holders: nobody waits, forget the key.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_key_is_held_by_one_call_at_a_time_and_forgotten_when_free() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("k").await;
        let other_key = locks.lock("j").await;
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.lock("k").await }
        });
        // The waiter is registered (it holds a clone of the key's lock) but cannot proceed.
        while Arc::strong_count(&first.lock) < 3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(locks.len(), 2, "k is still held, by the second call");
        drop((second, other_key));
        assert_eq!(locks.len(), 0, "free keys are forgotten");
    }
}
