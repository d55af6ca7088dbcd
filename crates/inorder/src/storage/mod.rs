//! The storage seam: everything the engine keeps durably goes through [`Storage`].
//!
//! Two halves. The *event log*: per-topic, append-only, positions 1, 2, 3, … assigned by the
//! storage, durable when `append` returns, tailed through a watch of the last position. The
//! *state*: stream progress, key state, parked events and the event-id index, changed only by
//! [`Storage::commit`] of a batch of [`StateOp`]s (atomic; durable when `durable` is set).
//!
//! Every failure is an [`Error::Storage`](crate::Error::Storage) whose
//! [`StorageErrorKind`](crate::StorageErrorKind) the backend chooses: `transient` (worth trying
//! again: a lost connection, a serialization conflict), `corrupt` (damaged data: never retried),
//! `unavailable` (needs an operator: a latched log, a full disk) or `refused`. The engine's
//! supervisors restart streams on transient failures and fail them visibly on the others.
//!
//! The engine never knows which backend it runs on. [`FileStorage`] (the embedded default) keeps
//! each topic in an `inorder-log` and the state in a fjall LSM tree; the Postgres backend
//! implements the same trait with tables.

mod commit_clock;
mod coordination;
mod file;
mod journal;
mod keys;
mod state_store;

use std::ops::RangeInclusive;

use bytes::Bytes;
use inorder_log::Name;
use tokio::sync::watch;

pub use self::{
    coordination::{Coordination, Fence, Lease},
    file::FileStorage,
};
use crate::{
    error::Result,
    retention::{Footprint, PurgeRequest},
    state::{KeyState, ParkedEvent, StreamId, StreamState},
};

/// A record as stored: the encoded event, its position and its commit position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the topic.
    pub position: u64,
    /// The node-wide commit position (0 for records stored before commit positions existed).
    pub commit: u64,
    /// The encoded event.
    pub payload: Bytes,
}

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    /// Replace a stream's progress.
    Stream {
        /// The stream.
        stream: StreamId,
        /// Its new state.
        state: StreamState,
    },
    /// Replace (or, with `merge`, combine into) a key's state.
    Key {
        /// The stream.
        stream: StreamId,
        /// The key.
        key: String,
        /// Its new state.
        state: KeyState,
        /// Combine with the stored state ([`KeyState::merge`]) instead of replacing it.
        merge: bool,
    },
    /// Record a parked event.
    Park(ParkedEvent),
    /// Remove a parked event (retried or discarded).
    Unpark {
        /// The stream.
        stream: StreamId,
        /// The event's position.
        position: u64,
    },
    /// Index an event id (deduplication of producer retries).
    EventId {
        /// The topic.
        topic: Name,
        /// The event's id.
        id: String,
        /// Its position.
        position: u64,
    },
    /// The rest of the commit holds only while this lease does (cluster mode): the storage
    /// checks it inside the commit and refuses everything with
    /// [`Error::Fenced`](crate::Error::Fenced) if another node took the partition over.
    Fence(Fence),
    /// Every event id up to this position of the topic is indexed.
    IdsIndexedTo {
        /// The topic.
        topic: Name,
        /// The position.
        position: u64,
    },
}

/// Reads a topic forward from a position.
#[async_trait::async_trait]
pub trait TopicReader: Send {
    /// Up to `max` records from the reader's position on (empty when there is none yet);
    /// [`Error::Purged`](crate::Error::Purged) when its position was deleted by retention.
    async fn read(&mut self, max: usize) -> Result<Vec<StoredRecord>>;
    /// The position the next read starts at.
    fn next_position(&self) -> u64;
}

/// The durable store behind the engine.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The backend's name, for logs and `GET /v1/topics`.
    fn backend(&self) -> &'static str;

    /// Every topic that exists.
    async fn topics(&self) -> Result<Vec<Name>>;
    /// Creates a topic if it does not exist (idempotent, durable).
    async fn create_topic(&self, topic: &Name) -> Result<()>;
    /// Appends encoded events; returns their positions once durable. All or nothing.
    async fn append(&self, topic: &Name, payloads: Vec<Bytes>) -> Result<RangeInclusive<u64>>;
    /// Whether [`Storage::append_new`] decides on ids itself, for every process sharing the
    /// storage. The default (`false`): the engine's in-process claims decide, which holds among
    /// writers sharing one engine only.
    fn decides_ids(&self) -> bool {
        false
    }
    /// Appends `payloads` only if none of `ids` (their event ids, in order) is held by the
    /// topic, decided atomically with the append — [`Error::IdTaken`](crate::Error::IdTaken)
    /// naming the first held id, and nothing appended, otherwise. Called only when
    /// [`Storage::decides_ids`]; the default appends unconditionally.
    async fn append_new(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
        ids: Vec<String>,
    ) -> Result<RangeInclusive<u64>> {
        let _ = ids;
        self.append(topic, payloads).await
    }
    /// A reader of `topic` starting at `from`.
    async fn reader(&self, topic: &Name, from: u64) -> Result<Box<dyn TopicReader>>;
    /// The first position still stored and the last durable one (0 if none).
    async fn positions(&self, topic: &Name) -> Result<(u64, u64)>;
    /// A watch of the last durable position, changed on every append.
    async fn watch(&self, topic: &Name) -> Result<watch::Receiver<u64>>;
    /// Up to `max` records of every topic with a commit position at or above `from`, in commit
    /// order, never past a commit some earlier one of which may still appear: whatever a read
    /// returns, no record with a lower commit shows up later (commits may have gaps).
    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<(Name, StoredRecord)>>;
    /// The highest commit position below which every commit is durable and readable (through
    /// [`Storage::reader`] too): events with commits up to it can be merged across topics
    /// without one of a lower commit appearing later.
    async fn visible_commit(&self) -> Result<u64>;
    /// A watch of [`Storage::visible_commit`], raised as commits become visible (for readers
    /// across topics that wait for more).
    async fn watch_commit(&self) -> Result<watch::Receiver<u64>>;
    /// The visible commit and, seen after it, the last position of each of `topics`: every
    /// event of those topics with a commit up to the returned one is at or below its topic's
    /// position (for the commit-order turns of subscriptions over several topics). The default
    /// asks [`Storage::visible_commit`], then [`Storage::positions`] topic by topic.
    async fn commit_marks(&self, topics: &[Name]) -> Result<(u64, Vec<u64>)> {
        let visible = self.visible_commit().await?;
        let mut lasts = Vec::with_capacity(topics.len());
        for topic in topics {
            lasts.push(self.positions(topic).await?.1);
        }
        Ok((visible, lasts))
    }

    /// Applies a batch of state changes atomically, whatever its size (the checkpointer merges
    /// many streams' changes; a burst can be hundreds of megabytes); durable on return when
    /// `durable`.
    async fn commit(&self, ops: Vec<StateOp>, durable: bool) -> Result<()>;
    /// A stream's progress, if it ever committed any.
    async fn stream_state(&self, stream: &StreamId) -> Result<Option<StreamState>>;
    /// A key's state on a stream, if any.
    async fn key_state(&self, stream: &StreamId, key: &str) -> Result<Option<KeyState>>;
    /// Parked events of a subscription, ordered by topic then position, starting after `after`.
    async fn parked(
        &self,
        subscription: &Name,
        after: Option<(Name, u64)>,
        max: usize,
    ) -> Result<Vec<ParkedEvent>>;
    /// One parked event.
    async fn parked_event(&self, stream: &StreamId, position: u64) -> Result<Option<ParkedEvent>>;
    /// The positions of the events with these ids in the topic, where indexed.
    async fn event_positions(&self, topic: &Name, ids: Vec<String>) -> Result<Vec<Option<u64>>>;
    /// Up to which position event ids of the topic are indexed.
    async fn ids_indexed_to(&self, topic: &Name) -> Result<u64>;

    /// What `topic` holds now: its first and last positions and the bytes they take.
    async fn footprint(&self, topic: &Name) -> Result<Footprint>;
    /// Deletes the oldest events of `topic` that `request` lets go (see [`PurgeRequest`]: a
    /// prefix, at the backend's granularity, never an event not yet durable) and the ids the
    /// index holds for them; returns what the topic holds afterwards. Readers asking for a
    /// deleted position get [`Error::Purged`](crate::Error::Purged).
    async fn purge(&self, topic: &Name, request: &PurgeRequest) -> Result<Footprint>;

    /// Sets (`Some`) or removes (`None`) a definition made at run time — a topic or a
    /// subscription created through the management API, a paused flag — by kind and name:
    /// opaque bytes the caller encodes; durable on return.
    async fn put_definition(&self, kind: &str, name: &str, value: Option<Bytes>) -> Result<()>;
    /// Every definition of `kind`, by name, in name order.
    async fn definitions(&self, kind: &str) -> Result<Vec<(String, Bytes)>>;
    /// Deletes a removed subscription's progress: its stream states, key states and parked
    /// events (so one created again under its name starts afresh). Durable on return.
    async fn forget_subscription(&self, subscription: &Name) -> Result<()>;
    /// Starts a stopped stream over after `watermark` (a rewind): its key states go, and its
    /// parked events above `watermark`; its progress becomes `watermark`. Durable on return.
    async fn reset_stream(&self, stream: &StreamId, watermark: u64) -> Result<()>;
    /// Deletes a topic: its events, its id index, and the progress, key states and parked
    /// events of every stream on it. A topic created again under its name starts at position 1.
    async fn delete_topic(&self, topic: &Name) -> Result<()>;

    /// Counters of the topic's log (appends, fsyncs, …), if the backend keeps such a log.
    async fn log_stats(&self, _topic: &Name) -> Result<Option<inorder_log::LogStats>> {
        Ok(None)
    }

    /// Releases files, locks and connections (after the engine stopped). Later calls fail with
    /// [`Error::Stopped`](crate::Error::Stopped).
    async fn close(&self) {}

    /// The leases and shared progress several nodes coordinate through ([cluster
    /// mode](crate::cluster)); `None` (the default) for a storage one process owns.
    fn coordination(&self) -> Option<&dyn Coordination> {
        None
    }
}
