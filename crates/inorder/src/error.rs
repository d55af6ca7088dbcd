//! The one error type of the engine.
//!
//! Each variant's doc says what the caller should do, and (for the server) which HTTP status
//! and problem type it maps to. Variants marked *input* changed nothing: the request was
//! refused before anything was appended or recorded.

use std::{sync::Arc, time::Duration};

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

    /// The storage failed; [`StorageError::kind`] says whether to retry (`transient`), or
    /// whether an operator must act (`corrupt`, `unavailable`, `refused`). HTTP 503
    /// `storage-unavailable` (with `Retry-After` when transient), 500 `internal` when corrupt.
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// A stored event could not be decoded: corruption or a bug. Names where it lives. The
    /// stream that met it is failed (an operator must repair the log). HTTP 500.
    #[error("event at {topic}/{position} cannot be decoded: {reason}")]
    Decode {
        /// The topic.
        topic: String,
        /// The position.
        position: u64,
        /// What the decoder found.
        reason: &'static str,
    },

    /// A stream read position `found` where `expected` should follow: the log misses events.
    /// Never skipped: the stream is failed as corrupt until an operator repairs the topic.
    #[error("topic {topic} skips from position {expected} to {found}: events are missing")]
    Gap {
        /// The topic.
        topic: String,
        /// The position that should have come next.
        expected: u64,
        /// The position that came.
        found: u64,
    },

    /// The stream of this subscription on this topic has failed and runs no more (see
    /// `GET /v1/subscriptions`); its operator actions are refused. Repair, then restart. HTTP 503.
    #[error("stream {stream} has failed: {error}")]
    StreamFailed {
        /// The stream (`subscription/topic`).
        stream: String,
        /// Why it failed.
        error: String,
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

    /// A subscription's handler refused to reset for a replay
    /// ([`Handler::on_replay`](crate::Handler::on_replay)); the engine did not start.
    #[error("replaying subscription {subscription}: its handler's reset failed: {reason}")]
    Replay {
        /// The subscription.
        subscription: String,
        /// The handler's message.
        reason: String,
    },

    /// An invariant of the engine broke: a bug. The stream that met it restarts (or fails after
    /// repeated panics); please report it. HTTP 500.
    #[error("internal error: {what}")]
    Internal {
        /// What broke.
        what: String,
    },

    /// *Input.* A topic or subscription of this name already exists (declared, or created at run
    /// time with another definition). HTTP 409, `exists`.
    #[error("{what} {name} already exists")]
    Exists {
        /// `topic` or `subscription`.
        what: &'static str,
        /// Its name.
        name: String,
    },

    /// *Input.* The events asked for were deleted by the topic's retention: the first one still
    /// stored is `first_available`. HTTP 410, `purged`.
    #[error(
        "topic {topic}: position {requested} was purged by retention; the first available is {first_available}"
    )]
    Purged {
        /// The topic.
        topic: String,
        /// The position asked for.
        requested: u64,
        /// The first position still stored.
        first_available: u64,
    },

    /// This node no longer holds the lease of a partition (cluster mode): another node took it
    /// over, or the lease ran out before it was renewed. Nothing of the write that met it was
    /// stored; the partition's stream stops here and goes on where its new owner runs it. HTTP
    /// 503.
    #[error(
        "partition {partition} of subscription {subscription} is no longer leased to this node"
    )]
    Fenced {
        /// The subscription.
        subscription: String,
        /// The partition.
        partition: u16,
    },

    /// The engine is shutting down or stopped. HTTP 503.
    #[error("the engine is stopped")]
    Stopped,
}

/// What kind of storage failure: it decides what the engine does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageErrorKind {
    /// May succeed if tried again: a lost connection, a server restarting, a serialization
    /// conflict, a pool timeout. Streams restart with capped backoff and count the retries;
    /// publishes answer 503 with `Retry-After`.
    Transient,
    /// Stored data is damaged or inconsistent (a checksum, an undecodable value). Never retried:
    /// the stream that met it is failed naming where; an operator repairs.
    Corrupt,
    /// The storage stopped accepting work until an operator acts: a log latched after an I/O
    /// error, a full disk, a read-only file system. Streams are failed; publishes answer 503
    /// `storage-unavailable`; restart once it is fixed.
    Unavailable,
    /// The storage refused the operation itself (a constraint, a value it cannot hold): a bug or
    /// an input that passed validation. Not retried.
    Refused,
}

impl StorageErrorKind {
    /// The kind as written in APIs (`transient`, `corrupt`, `unavailable`, `refused`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Corrupt => "corrupt",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
        }
    }
}

impl std::fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of the storage behind the engine, typed by [`StorageErrorKind`] so that callers
/// tell a lost connection from corruption. Every backend builds these from its own errors.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage ({kind}): {message}")]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    /// A failure of `kind`; `message` says what was being done and what went wrong.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// A [`StorageErrorKind::Transient`] failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Transient, message)
    }

    /// A [`StorageErrorKind::Corrupt`] failure.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Corrupt, message)
    }

    /// A [`StorageErrorKind::Unavailable`] failure.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Unavailable, message)
    }

    /// A [`StorageErrorKind::Refused`] failure.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Refused, message)
    }

    /// Keeps the backend's own error as the source (when the message does not already carry
    /// its text: error chains print both).
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure it is.
    #[must_use]
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// What was being done and what went wrong.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<inorder_log::Error> for Error {
    fn from(error: inorder_log::Error) -> Self {
        use inorder_log::Error as L;
        let kind = match &error {
            L::InvalidName { .. } => return Self::InvalidName(error),
            L::Closed => return Self::Stopped,
            L::Corrupt { .. } => StorageErrorKind::Corrupt,
            L::Io { .. } | L::Latched { .. } | L::Locked { .. } => StorageErrorKind::Unavailable,
            _ => StorageErrorKind::Refused,
        };
        // The message carries the log's own text: no source, or error chains print it twice.
        Self::Storage(StorageError::new(kind, error.to_string()))
    }
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::InvalidConfig { reason: reason.into() }
    }

    pub(crate) fn invalid_event(reason: impl Into<String>) -> Self {
        Self::InvalidEvent { reason: reason.into(), too_large: false }
    }

    /// What kind of storage failure this is, if it is one (a decode failure or a gap is
    /// corruption of what the storage holds).
    #[must_use]
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Self::Storage(error) => Some(error.kind()),
            Self::Decode { .. } | Self::Gap { .. } => Some(StorageErrorKind::Corrupt),
            _ => None,
        }
    }

    /// Whether trying again later may succeed without anyone acting.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.storage_kind() == Some(StorageErrorKind::Transient)
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
                | Self::Purged { .. }
                | Self::Exists { .. }
        )
    }
}
