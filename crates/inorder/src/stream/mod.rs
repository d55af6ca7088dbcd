//! Streams: one subscription consuming one topic — the unit of ordering and progress.
//!
//! A stream reads its topic from its durable watermark on and hands each event to the key worker
//! of its key; keys go strictly one event at a time, in the subscription's order, different keys
//! in parallel. The rooms:
//!
//! | module | owns |
//! |---|---|
//! | [`supervisor`] | starting a stream, restarting it after transient failures, failing it visibly |
//! | [`task`] | one incarnation: the loop that reads, drives keys, and checkpoints |
//! | [`processbook`] | the live key workers, one per key |
//! | [`worker`] | one key's state machine: block check, sequencer, retries, parking |
//! | [`sequencer`] | the pure `actions` / `sequence` ordering logic |
//! | [`calls`] | handler calls in flight, within the keys-in-flight permits |
//! | [`timers`] | retry backoffs and sequence timeouts |
//! | [`progress`] | positions read and resolved, the watermark, checkpoints |
//! | [`reader`] | the reader task feeding decoded batches |
//! | [`handle`] | what the engine sees: status, health, the operator inbox |
//!
//! Modules here import their siblings, never this file, so the layering stays one-way.

mod calls;
pub(crate) mod handle;
mod processbook;
mod progress;
mod reader;
pub(crate) mod sequencer;
pub(crate) mod supervisor;
mod task;
mod timers;
mod worker;
