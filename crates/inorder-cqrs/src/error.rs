//! The one error type of the CQRS layer, and the wrapper that keeps an aggregate's own refusal
//! typed.
//!
//! A command either is *rejected* by the aggregate (its `Error` type, nothing appended: the
//! caller matches on it) or *fails* in the machinery ([`Error`]: a conflict that outlived its
//! retries, the engine, decoding, a consistency wait that timed out).

/// Result alias of the CQRS layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the CQRS layer can fail at (apart from an aggregate's own refusal).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] inorder::Error),

    /// *Input.* An aggregate id that cannot name a stream (empty, too long). Nothing changed.
    #[error("invalid aggregate id {id:?}: {reason}")]
    InvalidId {
        /// The id (possibly cut).
        id: String,
        /// What is wrong.
        reason: String,
    },

    /// Another writer kept appending to the stream; every retry lost the race. Nothing of this
    /// command was appended; send it again.
    #[error(
        "stream {stream}: concurrent writers won {attempts} times in a row (last seen at version {version})"
    )]
    Conflict {
        /// The stream (`topic/id`).
        stream: String,
        /// The version the last attempt expected.
        version: u64,
        /// Attempts made.
        attempts: u32,
    },

    /// A stored event or snapshot could not be decoded into its Rust type.
    #[error("{topic}/{position}: cannot decode {what}: {reason}")]
    Decode {
        /// The topic.
        topic: String,
        /// The position.
        position: u64,
        /// What was expected (an event of an aggregate, a snapshot, …).
        what: String,
        /// The decoder's message.
        reason: String,
    },

    /// A value could not be encoded (serde refused it).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        reason: String,
    },

    /// A stream's stored events are not what its ids promise (a version is missing or an id
    /// points at another event): corruption or a writer that bypassed the store.
    #[error("stream {stream} is inconsistent: {reason}")]
    Corrupt {
        /// The stream (`topic/id`).
        stream: String,
        /// What is wrong.
        reason: String,
    },

    /// `strong` dispatch: a projector did not process the new events in time. The events are
    /// appended; only the wait gave up.
    #[error("projector {projector} has not processed {topic}/{position} after {waited:?}")]
    ConsistencyTimeout {
        /// The projector (subscription) waited for.
        projector: String,
        /// The topic.
        topic: String,
        /// The last appended position.
        position: u64,
        /// How long it waited.
        waited: std::time::Duration,
    },

    /// A process manager met an event out of sequence: a gap, or a position at or below its
    /// checkpoint. It stopped without handling it.
    #[error(
        "process manager {manager}: {topic} is out of sequence: expected position {expected}, found {found}"
    )]
    OutOfSequence {
        /// The process manager.
        manager: String,
        /// The topic.
        topic: String,
        /// The position it expected next (its checkpoint + 1).
        expected: u64,
        /// The position it found.
        found: u64,
    },

    /// User code (a projector's reset, a process manager's handler) failed.
    #[error("{what}: {reason}")]
    Handler {
        /// Which component.
        what: String,
        /// Its message.
        reason: String,
    },

    /// The configuration is inconsistent (names the offending item).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The component was stopped.
    #[error("stopped")]
    Stopped,
}

/// The outcome of a command that did not succeed: the aggregate refused it (typed, nothing was
/// appended), or the machinery failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command against its current state. Nothing was appended.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// The command could not be carried out.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl<E> From<inorder::Error> for CommandError<E> {
    fn from(error: inorder::Error) -> Self {
        Self::Failed(Error::Engine(error))
    }
}
