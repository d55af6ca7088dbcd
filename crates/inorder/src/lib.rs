//! `inorder`: durable, ordered event processing.
//!
//! Events are published to topics, appended to a durable log, and handed to subscriptions'
//! handlers per key strictly in order, other keys in parallel. See [`Engine`] to start, and
//! `ARCHITECTURE.md` for how the pieces fit.
//!
//! The guarantees (each proved by a test in `tests/`):
//!
//! 1. A publish that returned survives `kill -9` (and, with `fsync = always | group`, power loss).
//! 2. Per key and subscription, handlers never run concurrently and never out of order — across
//!    retries and restarts.
//! 3. Delivery is at-least-once, and after a crash only the event a key had in flight is handed
//!    to the handler again. Publishing an id twice returns the first position.
//! 4. Every queue and buffer is bounded; publishers wait when the log's queue is full.
//! 5. Bad input gets a typed error and changes nothing.

#![warn(missing_docs)]

mod checkpoint;
pub mod cluster;
pub mod codec;
mod conditional;
mod config;
mod dedupe;
mod engine;
mod error;
mod event;
mod frame;
mod handler;
mod indexer;
mod info;
mod key_locks;
mod key_turns;
pub mod limits;
mod manage;
mod outcome;
mod publish;
mod replay;
mod retainer;
mod retention;
mod runtime;
mod state;
mod status;
pub mod storage;
mod stream;
mod topics;
mod turn_keeper;
mod waiters;
mod watermark;
mod wire;

pub use inorder_log::{Error as LogError, FsyncPolicy, Name};

pub use crate::{
    config::{
        ClusterConfig, EngineConfig, FailurePolicy, Ordering, RetryPolicy, StartFrom,
        SubscriptionConfig, TopicConfig, TopicPattern,
    },
    engine::{Engine, EngineBuilder},
    error::{Error, Result, StorageError, StorageErrorKind},
    event::{Event, EventBuilder, ExtensionValue, new_event_id, now_micros},
    handler::{FnHandler, Handler, HandlerContext, HandlerError, Reply, RunReply, handler_fn},
    info::{StreamInfo, SubscriptionInfo, TopicInfo},
    manage::Rewind,
    outcome::Outcome,
    retention::{Footprint, PurgeRequest, Retention, segments_to_purge},
    state::{KeyState, ParkReason, ParkedEvent, Progress, StreamId, StreamState},
    status::{EventStatus, ProcessedMark},
    stream::handle::{StreamHealth, StreamStatus},
};
