//! What became of an event in a subscription: the answer `publish_and_wait` delivers.

use crate::{handler::Reply, state::ParkReason};

/// What became of an event in a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded with this reply.
    Handled(Reply),
    /// The event was parked.
    Parked {
        /// Why.
        reason: ParkReason,
        /// The last handler error, if a handler failed.
        error: Option<String>,
    },
    /// `publish_and_wait` of an id the topic already held, handled before this wait began
    /// (its reply is not kept).
    Deduplicated {
        /// The position of the earlier event.
        position: u64,
    },
    /// Cluster mode: another node holds the key's partition and handled the event (its reply
    /// stays with that node).
    HandledElsewhere {
        /// The event's position.
        position: u64,
    },
}
