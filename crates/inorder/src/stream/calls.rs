//! A stream's handler calls in flight: each one a short task on the runtime (so handlers of
//! different keys run in parallel), started only with one of the subscription's keys-in-flight
//! permits; calls waiting for a permit queue here, in the order their keys became ready.

use std::{collections::VecDeque, sync::Arc};

use tokio::{sync::OwnedSemaphorePermit, task::JoinSet};

use crate::{
    cluster::LeaseClock,
    error::{Error, Result},
    event::Event,
    handler::{HandlerError, Reply},
    runtime::{SubscriptionRuntime, call_handler},
};

/// A finished handler call.
pub(super) struct CallResult {
    pub book_key: String,
    pub event: Event,
    pub attempt: u32,
    pub result: std::result::Result<Reply, HandlerError>,
}

/// Handler calls in flight and waiting for a permit.
pub(super) struct Calls {
    subscription: Arc<SubscriptionRuntime>,
    /// Cluster mode: no call starts past this lease's deadline.
    lease: Option<Arc<LeaseClock>>,
    running: JoinSet<Result<CallResult>>,
    /// Calls waiting for a keys-in-flight permit (bounded by the stream's read budget: one per
    /// key at most).
    waiting: VecDeque<(String, Event, u32)>,
}

impl Calls {
    pub(super) fn new(
        subscription: Arc<SubscriptionRuntime>,
        lease: Option<Arc<LeaseClock>>,
    ) -> Self {
        Self { subscription, lease, running: JoinSet::new(), waiting: VecDeque::new() }
    }

    /// Calls the handler for `event` now if a permit is free, else when one is.
    pub(super) fn start(&mut self, book_key: String, event: Event, attempt: u32) {
        match Arc::clone(&self.subscription.in_flight).try_acquire_owned() {
            Ok(permit) => self.spawn(book_key, event, attempt, permit),
            Err(_) => self.waiting.push_back((book_key, event, attempt)),
        }
    }

    fn spawn(
        &mut self,
        book_key: String,
        event: Event,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) {
        let subscription = Arc::clone(&self.subscription);
        let lease = self.lease.clone();
        self.running.spawn(async move {
            let key = match &subscription.key_locks {
                Some(locks) => Some(locks.lock(&event.key).await),
                None => None,
            };
            if let Some(lease) = lease.as_ref().filter(|lease| !lease.is_valid()) {
                // The partition may be another node's by now: its calls are no longer ours.
                return Err(lease.lost());
            }
            let result = call_handler(&subscription, &event, attempt).await;
            drop((key, permit));
            Ok(CallResult { book_key, event, attempt, result })
        });
    }

    /// The next finished call, or `None` when a waiting call got its permit and started
    /// (pending while nothing runs or waits). A call task that did not finish by itself (the
    /// handler wrapper catches panics, so this is a bug) fails the stream.
    pub(super) async fn next(&mut self) -> Result<Option<CallResult>> {
        let permits = Arc::clone(&self.subscription.in_flight);
        let waiting = !self.waiting.is_empty();
        tokio::select! {
            Some(joined) = self.running.join_next() => joined.map_err(abnormal)?.map(Some),
            permit = permits.acquire_owned(), if waiting => {
                let permit = permit.map_err(|_| Error::Stopped)?;
                if let Some((book_key, event, attempt)) = self.waiting.pop_front() {
                    self.spawn(book_key, event, attempt, permit);
                }
                Ok(None)
            }
            else => std::future::pending().await,
        }
    }

    /// A call that finished already, without waiting.
    pub(super) fn try_next(&mut self) -> Option<Result<CallResult>> {
        self.running.try_join_next().map(|joined| joined.map_err(abnormal).and_then(|call| call))
    }
}

/// A call task that did not return: a panic outside the handler (whose panics are caught
/// and counted as failures) goes on into the stream, where the supervisor catches it.
fn abnormal(error: tokio::task::JoinError) -> Error {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    Error::Internal { what: format!("a handler call task ended abnormally: {error}") }
}
