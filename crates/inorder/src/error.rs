//! The one error type of the engine.
//!
//! Each variant's doc says what the caller should do, and (for the server) which HTTP status
//! and problem type it maps to. Variants marked *input* changed nothing: the request was
//! refused before anything was appended or recorded.

use std::time::Duration;

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// *Input.* A topic that is neither configured nor auto-created. HTTP 404,
    /// `unknown-topic`.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },

    /// *Input.* An action not in the topic's `actions` list. HTTP 422, `unknown-action`.
    #[error("topic {topic} does not accept action {action:?}; allowed: {allowed:?}")]
    UnknownAction {
        /// The topic.
        topic: String,
        /// The refused action.
        action: String,
        /// The actions the topic accepts, in order.
        allowed: Vec<String>,
    },

    /// *Input.* An unknown subscription. HTTP 404, `unknown-subscription`.
    #[error("unknown subscription {subscription:?}")]
    UnknownSubscription {
        /// The subscription asked for.
        subscription: String,
    },

    /// *Input.* An event field out of bounds or malformed (names, sizes, empty fields).
    /// HTTP 400, `invalid-event` (413 `payload-too-large` when `too_large`).
    #[error("invalid event: {reason}")]
    InvalidEvent {
        /// What is wrong.
        reason: String,
        /// Whether the problem is size (the server answers 413).
        too_large: bool,
    },

    /// *Input.* A name that cannot be a topic or subscription name. HTTP 400, `invalid-name`.
    #[error(transparent)]
    InvalidName(inorder_log::Error),

    /// The configuration is inconsistent; fix it before starting. Names the offending item.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the topic or subscription.
        reason: String,
    },

    /// *Input.* A batch mixes topics or exceeds the batch limits. HTTP 400, `invalid-batch`.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong.
        reason: String,
    },

    /// *Input.* [`Engine::publish_new`](crate::Engine::publish_new): the topic already holds
    /// (or is publishing) an event with this id; nothing was appended. HTTP 409, `id-taken`.
    #[error("topic {topic} already holds an event with id {id:?}")]
    IdTaken {
        /// The topic.
        topic: String,
        /// The first id of the batch that is taken.
        id: String,
    },

    /// No parked event with this id in the subscription. HTTP 404, `unknown-parked-event`.
    #[error("subscription {subscription} has no parked event at {topic}/{position}")]
    UnknownParked {
        /// The subscription.
        subscription: String,
        /// The topic of the event.
        topic: String,
        /// The position of the event.
        position: u64,
    },

    /// `publish_and_wait` or `wait_processed` gave up. HTTP 504 (or 425 for status).
    #[error("timed out after {waited:?}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
    },

    /// `publish_and_wait` on a topic with more or fewer than one subscription: name it.
    #[error("topic {topic} has {count} subscriptions; name the one to wait for")]
    AmbiguousWait {
        /// The topic.
        topic: String,
        /// How many subscriptions consume it.
        count: usize,
    },

    /// The log refused or failed (durability, corruption, latch). HTTP 503 when the log is
    /// latched, else 500.
    #[error(transparent)]
    Log(inorder_log::Error),

    /// The state store failed. The engine stops checkpointing; restart it. HTTP 500.
    #[error("state store: {0}")]
    State(String),

    /// A stored event could not be decoded: corruption or a bug. Names where it lives.
    #[error("event at {topic}/{position} cannot be decoded: {reason}")]
    Decode {
        /// The topic.
        topic: String,
        /// The position.
        position: u64,
        /// What the decoder found.
        reason: &'static str,
    },

    /// *Input.* A publish would create a topic beyond the engine's `max_topics`; nothing was
    /// created. Publish to an existing topic, or raise the limit. HTTP 403, `topic-limit`.
    #[error("topic {topic} would be topic number {}; max_topics is {max}", max + 1)]
    TopicLimit {
        /// The topic that was not created.
        topic: String,
        /// The limit.
        max: usize,
    },

    /// The engine is shutting down or stopped. HTTP 503.
    #[error("the engine is stopped")]
    Stopped,
}

impl From<inorder_log::Error> for Error {
    fn from(error: inorder_log::Error) -> Self {
        match error {
            inorder_log::Error::InvalidName { .. } => Self::InvalidName(error),
            other => Self::Log(other),
        }
    }
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::InvalidConfig { reason: reason.into() }
    }

    pub(crate) fn invalid_event(reason: impl Into<String>) -> Self {
        Self::InvalidEvent { reason: reason.into(), too_large: false }
    }

    pub(crate) fn state(error: impl std::fmt::Display) -> Self {
        Self::State(error.to_string())
    }

    /// Whether the error was caused by the request (nothing changed) rather than the engine.
    #[must_use]
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownTopic { .. }
                | Self::UnknownAction { .. }
                | Self::UnknownSubscription { .. }
                | Self::InvalidEvent { .. }
                | Self::InvalidName(_)
                | Self::InvalidBatch { .. }
                | Self::UnknownParked { .. }
                | Self::IdTaken { .. }
                | Self::TopicLimit { .. }
        )
    }
}
