//! Aggregates: state rebuilt by applying their own events, and commands validated against that
//! state before anything is appended.
//!
//! An aggregate is a consistency boundary identified by an id. Its events form a *stream*: the
//! events of topic [`Aggregate::TOPIC`] whose key is the id, numbered by version 1, 2, 3, … (the
//! version is the event's `sequence`, and its id is `{id}@{version}` — which is what makes
//! appends conditional, see [`crate::store`]). [`Aggregate::handle`] is pure: it looks at the
//! current state and either refuses the command with the aggregate's own typed error or returns
//! the events that record the decision; [`Aggregate::apply`] folds an event into the state and
//! never fails (an event is a fact). Both run again when a concurrent writer forces a retry, so
//! they must not have side effects.

use inorder::TopicConfig;
use serde::{Serialize, de::DeserializeOwned};

/// An event of an aggregate: serialised as the event's JSON `data`, named by its action.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The event type (CloudEvents `type`), e.g. `account.granted`.
    fn action(&self) -> &'static str;
}

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The topic holding the streams of this aggregate type (key = aggregate id).
    const TOPIC: &'static str;
    /// The shape of the serialised state, for snapshots: bump it when the state type changes
    /// and snapshots taken with another number are ignored (the state is rebuilt from events).
    const SNAPSHOT_SCHEMA: u32 = 1;

    /// What callers ask of it.
    type Command: Send + Sync;
    /// What it records.
    type Event: DomainEvent;
    /// Why it refuses a command (returned to the caller as
    /// [`CommandError::Rejected`](crate::CommandError::Rejected); nothing is appended).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: the events that carry out `command` against the current state, or a refusal.
    ///
    /// # Errors
    /// The aggregate's refusal.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one of its events into the state.
    fn apply(&mut self, event: &Self::Event);
}

/// The topic holding the snapshots of the aggregates of `topic`.
#[must_use]
pub fn snapshot_topic(topic: &str) -> String {
    format!("{topic}.snapshots")
}

/// The topics an aggregate type needs in the engine's configuration (its events and its
/// snapshots), for `EngineConfig::topic`.
#[must_use]
pub fn topics<A: Aggregate>() -> [TopicConfig; 2] {
    [TopicConfig::new(A::TOPIC), TopicConfig::new(snapshot_topic(A::TOPIC))]
}
