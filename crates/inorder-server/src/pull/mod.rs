//! Pull delivery: HTTP consumers lease events, then ack or nack them.
//!
//! A pull subscription's handler is a [`PullHandler`]: when the engine hands it an event — or
//! a *run* of one key's consecutive events, with `max_per_key` above 1 — it *offers* them to
//! consumers and waits for their decision. So everything the engine guarantees holds for HTTP
//! consumers too — a key's next events are offered only after the previous ones were acked (and
//! made durable), so one key's events are never leased by two pulls at once, and in `actions`
//! ordering only a key's next action is leasable; the number of offers is bounded by the
//! subscription's keys-in-flight limit.
//!
//! - `pull` leases up to `max` offered events for the lease timeout, each run whole (up to the
//!   pull's room: what does not fit goes back to the engine untouched, offered again after the
//!   leased part is durable);
//! - `ack` ends them (the handler succeeds);
//! - `nack` fails them, to be offered again after its delay (attempt + 1);
//! - an expired lease fails the same way, at once; after `max_attempts` the engine parks the
//!   event.
//!
//! A run is decided in order: its acked prefix is handled; its first nacked or expired event
//! fails (the rest of the run's leases end with it, their events offered again after it); it is
//! decided as soon as that much is known.
//!
//! Leases expire on a timer, never by polling: their deadlines wait in a
//! [`DelayQueue`] beside the leases (under the same lock, so a lease and its deadline go
//! together), and one reaper task per subscription sleeps until the earliest. A lease expires
//! exactly once — its deadline leaves the queue when it expires, is acked or is nacked,
//! whichever comes first — and the reaper ends when the queue is dropped.

mod queue;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use inorder::{Event, Handler, HandlerContext, HandlerError, Reply, RunReply};

use self::queue::{Decision, RunDecision};
pub use self::queue::{Leased, PullQueue, Window};
use crate::limits::PULL_PER_KEY_MAX;

/// The handler of a pull subscription: offers each event — or each run of up to `max_per_key`
/// of a key's events — and waits for the consumers.
pub struct PullHandler {
    queue: Arc<PullQueue>,
    max_per_key: usize,
}

impl PullHandler {
    /// Offers through `queue`, up to `max_per_key` consecutive events of a key at once (capped
    /// at [`PULL_PER_KEY_MAX`]).
    pub fn new(queue: Arc<PullQueue>, max_per_key: usize) -> Self {
        Self { queue, max_per_key: max_per_key.clamp(1, PULL_PER_KEY_MAX) }
    }
}

/// The handler's error for a failed event.
fn failure(decision: Decision) -> HandlerError {
    match decision {
        Decision::Nack { delay } => HandlerError::retry_after("nacked by the consumer", delay),
        Decision::Expired => HandlerError::retry_after("lease expired", Duration::ZERO),
        Decision::Ack => HandlerError::retry("an acked event counted as failed (a bug)"),
    }
}

#[async_trait::async_trait]
impl Handler for PullHandler {
    fn max_run(&self) -> usize {
        self.max_per_key
    }

    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let decided = self.queue.offer(vec![event.clone()], context.attempt).await?;
        match decided {
            RunDecision { acked: 1.., .. } => Ok(Reply::Null),
            RunDecision { failed: Some(decision), .. } => Err(failure(decision)),
            RunDecision { failed: None, .. } => {
                Err(HandlerError::retry("the offer was not leased"))
            }
        }
    }

    async fn handle_run(&self, events: &[Event], context: &HandlerContext) -> RunReply {
        match self.queue.offer(events.to_vec(), context.attempt).await {
            Ok(RunDecision { acked, failed }) => {
                RunReply { replies: vec![Reply::Null; acked], failed: failed.map(failure) }
            }
            Err(error) => RunReply { replies: Vec::new(), failed: Some(error) },
        }
    }
}
