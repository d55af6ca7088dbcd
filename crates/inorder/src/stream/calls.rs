//! A stream's handler calls in flight: each one a short task on the runtime (so handlers of
//! different keys run in parallel), started only with one of the subscription's keys-in-flight
//! permits (one per call, whether it hands over one event or a run of a key's events); calls waiting for a permit queue here, in the order their keys became ready.

use std::{collections::VecDeque, sync::Arc};

use tokio::{sync::OwnedSemaphorePermit, task::JoinSet};

use crate::{
    cluster::LeaseClock,
    error::{Error, Result},
    event::Event,
    handler::{HandlerError, Reply, RunReply},
    key_locks::KeyLock,
    runtime::{SubscriptionRuntime, call_handler, call_run_handler},
};

/// A handler call to make: one event, or a run of one key's consecutive events.
pub(super) enum Call {
    /// One event, on attempt `attempt`.
    One { event: Box<Event>, attempt: u32 },
    /// Two or more consecutive events of one key, each on its first attempt.
    Run { events: Vec<Event> },
}

/// A finished handler call.
pub(super) struct CallResult {
    pub book_key: String,
    pub called: Called,
}

/// What a finished call returned.
pub(super) enum Called {
    One { event: Box<Event>, attempt: u32, result: std::result::Result<Reply, HandlerError> },
    Run { events: Vec<Event>, reply: RunReply },
}

/// Handler calls in flight and waiting for a permit.
pub(super) struct Calls {
    subscription: Arc<SubscriptionRuntime>,
    /// Cluster mode: no call starts past this lease's deadline.
    lease: Option<Arc<LeaseClock>>,
    running: JoinSet<Result<CallResult>>,
    /// Calls waiting for a keys-in-flight permit (bounded by the stream's read budget: one per
    /// key at most).
    waiting: VecDeque<(String, Call)>,
}

impl Calls {
    pub(super) fn new(
        subscription: Arc<SubscriptionRuntime>,
        lease: Option<Arc<LeaseClock>>,
    ) -> Self {
        Self { subscription, lease, running: JoinSet::new(), waiting: VecDeque::new() }
    }

    /// Calls the handler for `event` now if a permit is free, else when one is.
    pub(super) fn start(&mut self, book_key: String, event: Box<Event>, attempt: u32) {
        self.start_call(book_key, Call::One { event, attempt });
    }

    /// Makes `call` now if a permit is free, else when one is.
    pub(super) fn start_call(&mut self, book_key: String, call: Call) {
        match Arc::clone(&self.subscription.in_flight).try_acquire_owned() {
            Ok(permit) => self.spawn(book_key, call, permit),
            Err(_) => self.waiting.push_back((book_key, call)),
        }
    }

    /// Spawns the call's task: one future per kind, so that a one-event call's task (the
    /// common case) carries no run's state.
    fn spawn(&mut self, book_key: String, call: Call, permit: OwnedSemaphorePermit) {
        let subscription = Arc::clone(&self.subscription);
        let lease = self.lease.clone();
        match call {
            Call::One { event, attempt } => self.running.spawn(async move {
                let key = admit(&subscription, lease.as_deref(), &event.key).await?;
                let result = call_handler(&subscription, &event, attempt).await;
                drop((key, permit));
                Ok(CallResult { book_key, called: Called::One { event, attempt, result } })
            }),
            Call::Run { events } => self.running.spawn(async move {
                let Some(first) = events.first() else {
                    return Err(Error::Internal { what: "an empty run".to_owned() });
                };
                let key = admit(&subscription, lease.as_deref(), &first.key).await?;
                let reply = call_run_handler(&subscription, &events).await;
                drop((key, permit));
                Ok(CallResult { book_key, called: Called::Run { events, reply } })
            }),
        };
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
                if let Some((book_key, call)) = self.waiting.pop_front() {
                    self.spawn(book_key, call, permit);
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

/// Takes the key's lock (subscriptions over several topics) and checks the lease (cluster
/// mode: no call starts past its deadline) before a call.
async fn admit(
    subscription: &SubscriptionRuntime,
    lease: Option<&LeaseClock>,
    key: &str,
) -> Result<Option<KeyLock>> {
    let guard = match &subscription.key_locks {
        Some(locks) => Some(locks.lock(key).await),
        None => None,
    };
    if let Some(lease) = lease.filter(|lease| !lease.is_valid()) {
        // The partition may be another node's by now: its calls are no longer ours.
        return Err(lease.lost());
    }
    Ok(guard)
}

/// A call task that did not return: a panic outside the handler (whose panics are caught
/// and counted as failures) goes on into the stream, where the supervisor catches it.
fn abnormal(error: tokio::task::JoinError) -> Error {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    Error::Internal { what: format!("a handler call task ended abnormally: {error}") }
}
