//! `publish_and_wait` correlation: who waits for the outcome of which event.
//!
//! A waiter registers under (subscription, event id) *before* the event is published, so an
//! outcome can never be missed; the registration is removed when the outcome arrives or the wait
//! times out, so a late outcome finds no one and never reaches another caller (the original
//! Seqy handed a late reply to the next `enqueue_await`).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use inorder_log::Name;
use tokio::sync::oneshot;

use parking_lot::Mutex;

use crate::outcome::Outcome;

/// Waiting callers by (subscription, event id).
#[derive(Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<(Name, String), oneshot::Sender<Outcome>>>,
    /// Registrations, readable without the lock: streams skip the lookup when it is 0.
    count: AtomicUsize,
}

/// Removes its registration when dropped (outcome received, timeout or cancellation).
pub(crate) struct Registration<'a> {
    waiters: &'a Waiters,
    key: (Name, String),
    receiver: oneshot::Receiver<Outcome>,
}

impl Registration<'_> {
    /// The outcome, once delivered (`None` if the engine stopped).
    pub(crate) async fn outcome(&mut self) -> Option<Outcome> {
        (&mut self.receiver).await.ok()
    }

    /// The outcome, if it was delivered already.
    pub(crate) fn delivered(&mut self) -> Option<Outcome> {
        self.receiver.try_recv().ok()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.waiting.lock();
        if waiting.remove(&self.key).is_some() {
            self.waiters.count.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Waiters {
    /// Registers a wait for the outcome of `id` on `subscription`; `None` if someone already
    /// waits for it.
    pub(crate) fn register(&self, subscription: &Name, id: &str) -> Option<Registration<'_>> {
        let key = (subscription.clone(), id.to_owned());
        let mut waiting = self.waiting.lock();
        if waiting.contains_key(&key) {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        waiting.insert(key.clone(), sender);
        self.count.fetch_add(1, Ordering::Release);
        Some(Registration { waiters: self, key, receiver })
    }

    /// Delivers an outcome to whoever waits for it.
    pub(crate) fn deliver(&self, subscription: &Name, id: &str, outcome: &Outcome) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let key = (subscription.clone(), id.to_owned());
        let sender = {
            let mut waiting = self.waiting.lock();
            let sender = waiting.remove(&key);
            if sender.is_some() {
                self.count.fetch_sub(1, Ordering::Release);
            }
            sender
        };
        if let Some(sender) = sender {
            let _ = sender.send(outcome.clone());
        }
    }

    /// Whether anyone waits at all (a cheap check before building keys).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }
}
