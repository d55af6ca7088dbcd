//! `inorder-cqrs`: CQRS and event sourcing on the inorder engine.
//!
//! - [`aggregate`]: the [`Aggregate`] trait — state rebuilt from its events, commands validated
//!   against it before anything is appended.
//! - [`store`]: aggregate streams on the engine — reading one stream, appending at an expected
//!   version, snapshots.
//! - [`bus`]: the [`CommandBus`] — optimistic concurrency with bounded retries, snapshots, a
//!   registry of live aggregates evicted when idle, `eventual` or `strong` dispatch.
//! - [`cross`]: [`CrossAggregate`]s — state over many keys and topics, rebuilt on start,
//!   validating commands.
//! - [`projector`]: [`Projection`]s keep read models, resume from their checkpoint or rebuild
//!   from the first event, reporting the rebuild's [`RebuildProgress`] to a callback.
//! - [`process`]: [`ProcessManager`]s emit events effectively once, hydrate before they accept
//!   anything, and stop on an event out of sequence.
//! - [`scheduler`]: the [`DailyCycler`] — `system.cycled` once per date, catching up after
//!   downtime, on an injectable clock.
//! - [`testing`]: [`AggregateSpec`](testing::AggregateSpec) — given events, when a command, then
//!   these events or this refusal: an aggregate's rules tested without an engine.
//!
//! See `ARCHITECTURE.md` (the CQRS codemap) for how they fit on the engine.
#![warn(missing_docs)]

pub mod aggregate;
pub mod bus;
pub mod cross;
pub mod error;
pub mod limits;
pub mod process;
pub mod projector;
mod registry;
pub mod scheduler;
pub mod store;
pub mod testing;

pub use crate::{
    aggregate::{Aggregate, DomainEvent},
    bus::{BusOptions, CommandBus, Consistency, Dispatch, Executed},
    cross::{CrossAggregate, CrossStream},
    error::{CommandError, Error, Result},
    process::{Emit, ProcessHandle, ProcessManager},
    projector::{Projection, Projector, RebuildProgress, StartMode},
    scheduler::{Clock, DailyCycler, ManualClock, SystemClock},
    store::{Loaded, Metadata},
};
