//! A stream's progress: which positions it read, which are resolved, the watermark, and the
//! checkpoints that make them durable.
//!
//! - Positions arrive from the reader strictly in order: a position that does not follow the
//!   last one is a **gap** — events are missing from the log — and stops the stream as
//!   corrupt; nothing is ever skipped.
//! - Resolved positions (handled, or parked) go into a [`Watermark`]: the prefix is the
//!   watermark, the rest are ranges, so memory is bounded by the unresolved positions.
//! - Every read event is counted from the moment it is read until the checkpoint recording its
//!   resolution is durable ([`Progress::in_progress`]), so the stream's read budget also bounds
//!   what waits for a checkpoint while another is in flight.
//! - A checkpoint carries the recorded state changes and the stream's durable progress; when it
//!   is durable its keys go on, waiters get their outcomes, and only then is the watermark
//!   published ([`Committed`]).

use std::{ops::RangeInclusive, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::worker::Record;
use crate::{
    checkpoint::CommitRequest,
    error::{Error, Result},
    outcome::Outcome,
    runtime::StreamContext,
    state::{StreamId, StreamState},
    storage::StateOp,
    watermark::{MaxTime, Watermark},
};

/// The progress of one stream incarnation.
pub(super) struct Progress {
    /// Resolved positions; the prefix is the watermark, its mark the topic's time mark.
    done: Watermark<MaxTime>,
    /// The next position the reader must hand over.
    read_position: u64,
    /// Events read and not yet recorded: in key queues, reorder buffers, handler calls.
    open: usize,
    /// Events recorded and not yet durable (in `next` or `in_flight`).
    unsaved: usize,
    next: NextCheckpoint,
    in_flight: Option<InFlight>,
    /// Parked events (not discarded) and discarded ones, as stored.
    parked: u64,
    discarded: u64,
    /// Whether resolved events are reported back for the subscription's commit-order turns.
    turns: bool,
}

/// A resolved event of a key, as the commit-order turns know it: (key, commit, position).
pub(super) type ResolvedTurn = (String, u64, u64);

#[derive(Default)]
struct NextCheckpoint {
    ops: Vec<StateOp>,
    keys: Vec<String>,
    outcomes: Vec<(String, Outcome)>,
    turns: Vec<ResolvedTurn>,
    /// Fresh events recorded in it.
    events: usize,
    dirty: bool,
}

struct InFlight {
    done: oneshot::Receiver<Result<()>>,
    watermark: u64,
    time_mark: i64,
    done_above: Arc<[RangeInclusive<u64>]>,
    keys: Vec<String>,
    outcomes: Vec<(String, Outcome)>,
    turns: Vec<ResolvedTurn>,
    events: usize,
}

/// A durable checkpoint: what may now go on and be published.
pub(super) struct Committed {
    /// The watermark, time mark and resolved ranges above it that it made durable.
    pub watermark: u64,
    pub time_mark: i64,
    pub done_above: Arc<[RangeInclusive<u64>]>,
    /// Keys whose completion it held: they may take their next step.
    pub keys: Vec<String>,
    /// Outcomes for `publish_and_wait` callers.
    pub outcomes: Vec<(String, Outcome)>,
    /// Resolved events whose commit-order turn ends (when the subscription keeps turns).
    pub turns: Vec<ResolvedTurn>,
}

impl Progress {
    /// Progress resuming from durable `state`; the reader starts after the watermark.
    pub(super) fn resume(state: &StreamState, watermark: u64, parked: u64, discarded: u64) -> Self {
        let done = Watermark::with_ranges(
            watermark,
            MaxTime(state.max_time_micros),
            state.done_above.iter().map(|(range, time)| (range.clone(), MaxTime(*time))),
        );
        Self {
            read_position: done.through() + 1,
            done,
            open: 0,
            unsaved: 0,
            next: NextCheckpoint::default(),
            in_flight: None,
            parked,
            discarded,
            turns: false,
        }
    }

    /// Reports resolved events in [`Committed::turns`] from now on.
    pub(super) fn track_turns(&mut self) {
        self.turns = true;
    }

    /// Events read whose resolution is not yet durable.
    pub(super) fn in_progress(&self) -> usize {
        self.open + self.unsaved
    }

    /// The watermark (resolved, maybe not yet durable).
    pub(super) fn watermark(&self) -> u64 {
        self.done.through()
    }

    /// The latest event time handled at or below the watermark.
    pub(super) fn time_mark(&self) -> i64 {
        self.done.mark().0
    }

    /// The next position the stream reads.
    pub(super) fn read_position(&self) -> u64 {
        self.read_position
    }

    /// Ranges resolved above the watermark.
    pub(super) fn done_above(&self) -> Arc<[RangeInclusive<u64>]> {
        self.done.ranges().map(|(range, _)| range).collect()
    }

    /// Parked (not discarded) and discarded events.
    pub(super) fn parked(&self) -> (u64, u64) {
        (self.parked, self.discarded)
    }

    /// Takes the next position read from the topic: `Ok(true)` if it must be handled,
    /// `Ok(false)` if it was resolved before a restart.
    ///
    /// # Errors
    /// [`Error::Gap`] if it does not follow the previous position.
    pub(super) fn accept(&mut self, id: &StreamId, position: u64) -> Result<bool> {
        if position != self.read_position {
            return Err(Error::Gap {
                topic: id.topic.to_string(),
                expected: self.read_position,
                found: position,
            });
        }
        self.read_position += 1;
        if self.done.contains(position) {
            return Ok(false);
        }
        self.open += 1;
        Ok(true)
    }

    /// Takes positions retention deleted before they were read (they start at the next
    /// position to read): resolved without a handler, like lost ones. Returns how many were
    /// not resolved before (those the subscription never handled).
    ///
    /// # Errors
    /// [`Error::Gap`] if they do not start at the next position to read.
    pub(super) fn skip_purged(&mut self, id: &StreamId, range: RangeInclusive<u64>) -> Result<u64> {
        let (start, end) = (*range.start(), *range.end());
        if start != self.read_position || end < start {
            return Err(Error::Gap {
                topic: id.topic.to_string(),
                expected: self.read_position,
                found: start,
            });
        }
        // Positions not yet read can be resolved already only in ranges above the watermark
        // (resolved before a restart).
        let already: u64 = self
            .done
            .ranges()
            .map(|(r, _)| {
                let (low, high) = ((*r.start()).max(start), (*r.end()).min(end));
                if low <= high { high - low + 1 } else { 0 }
            })
            .sum();
        self.done.insert_range(start, end, MaxTime::default());
        self.read_position = end + 1;
        self.next.dirty = true;
        Ok((end - start + 1).saturating_sub(already))
    }

    /// Records what a key finished, for the next checkpoint.
    pub(super) fn record(&mut self, book_key: &str, record: Record, keep_outcomes: bool) {
        let Record { items, ops, unparked, discarded } = record;
        for done in items {
            if done.fresh {
                debug_assert!(self.open > 0, "a fresh event was counted open when read");
                self.open -= 1;
                self.unsaved += 1;
                self.next.events += 1;
                if matches!(done.outcome, Outcome::Parked { .. }) {
                    self.parked += 1;
                }
                if self.turns {
                    self.next.turns.push((book_key.to_owned(), done.commit, done.position));
                }
                let time = match done.outcome {
                    Outcome::Handled(_) => MaxTime(done.time_micros),
                    _ => MaxTime::default(),
                };
                let before = self.done.through();
                self.done.insert(done.position, time);
                debug_assert!(self.done.through() >= before, "the watermark only grows");
            }
            if keep_outcomes {
                self.next.outcomes.push((done.event_id, done.outcome));
            }
        }
        self.parked = self.parked.saturating_sub(unparked);
        self.discarded += discarded;
        self.next.ops.extend(ops);
        self.next.keys.push(book_key.to_owned());
        self.next.dirty = true;
    }

    /// Resolves a lost position (one the log filled after losing its event) without a handler.
    pub(super) fn resolve_lost(&mut self, position: u64) {
        debug_assert!(self.open > 0, "a lost position was counted open when read");
        self.open -= 1;
        self.unsaved += 1;
        self.next.events += 1;
        self.done.insert(position, MaxTime::default());
        self.next.dirty = true;
    }

    /// Sends the next checkpoint if none is in flight and there is something to make durable.
    pub(super) async fn checkpoint(
        &mut self,
        ctx: &StreamContext,
        checkpointer: &mpsc::Sender<CommitRequest>,
    ) -> Result<()> {
        if self.in_flight.is_some() || !self.next.dirty {
            return Ok(());
        }
        let next = std::mem::take(&mut self.next);
        let mut ops = next.ops;
        let state = self.durable_state();
        let done_above = state.done_above.iter().map(|(range, _)| range.clone()).collect();
        ops.push(StateOp::Stream { stream: ctx.id.clone(), state });
        if let Some(fence) = ctx.fence() {
            ops.push(fence);
        }
        let (done, is_done) = oneshot::channel();
        let fence = ctx.lease.as_ref().map(|lease| lease.fence.clone());
        checkpointer.send(CommitRequest { ops, fence, done }).await.map_err(|_| Error::Stopped)?;
        self.in_flight = Some(InFlight {
            done: is_done,
            watermark: self.done.through(),
            time_mark: self.done.mark().0,
            done_above,
            keys: next.keys,
            outcomes: next.outcomes,
            turns: next.turns,
            events: next.events,
        });
        Ok(())
    }

    fn durable_state(&self) -> StreamState {
        StreamState {
            watermark: self.done.through(),
            done_above: self.done.ranges().map(|(range, time)| (range, time.0)).collect(),
            max_time_micros: self.done.mark().0,
        }
    }

    /// Waits for the checkpoint in flight (pending while there is none).
    pub(super) async fn committed(&mut self) -> Result<Committed> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = (&mut in_flight.done).await.unwrap_or(Err(Error::Stopped));
        let in_flight = self.in_flight.take().expect("a checkpoint was in flight");
        result?;
        self.unsaved -= in_flight.events;
        Ok(Committed {
            watermark: in_flight.watermark,
            time_mark: in_flight.time_mark,
            done_above: in_flight.done_above,
            keys: in_flight.keys,
            outcomes: in_flight.outcomes,
            turns: in_flight.turns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::worker::Done;

    fn id() -> StreamId {
        StreamId::new("s".parse().unwrap(), "t".parse().unwrap())
    }

    fn handled(position: u64, time_micros: i64) -> Record {
        let outcome = Outcome::Handled(serde_json::Value::Null);
        let event_id = format!("e{position}");
        let done = Done { position, commit: position, event_id, time_micros, fresh: true, outcome };
        Record { items: vec![done], ..Record::default() }
    }

    #[test]
    fn a_position_that_does_not_follow_on_is_a_gap() {
        let mut progress = Progress::resume(&StreamState::default(), 0, 0, 0);
        assert!(progress.accept(&id(), 1).unwrap());
        let error = progress.accept(&id(), 3).unwrap_err();
        assert!(matches!(error, Error::Gap { expected: 2, found: 3, .. }), "{error}");
    }

    #[test]
    fn positions_resolved_before_a_restart_are_skipped_once_read() {
        let state =
            StreamState { watermark: 2, done_above: vec![(4..=5, 70)], max_time_micros: 10 };
        let mut progress = Progress::resume(&state, 2, 0, 0);
        assert_eq!(progress.read_position(), 3);
        assert!(progress.accept(&id(), 3).unwrap(), "3 was not resolved");
        assert!(!progress.accept(&id(), 4).unwrap() && !progress.accept(&id(), 5).unwrap());
        progress.record("k", handled(3, 20), false);
        assert_eq!(progress.watermark(), 5);
        assert_eq!(progress.durable_state().max_time_micros, 70, "the ranges' times joined in");
    }

    #[test]
    fn the_time_mark_waits_for_the_earlier_slow_event() {
        let mut progress = Progress::resume(&StreamState::default(), 0, 0, 0);
        progress.accept(&id(), 1).unwrap();
        progress.accept(&id(), 2).unwrap();
        progress.record("fast", handled(2, 200), false);
        assert_eq!((progress.watermark(), progress.durable_state().max_time_micros), (0, 0));
        progress.record("slow", handled(1, 100), false);
        assert_eq!((progress.watermark(), progress.durable_state().max_time_micros), (2, 200));
    }
}
