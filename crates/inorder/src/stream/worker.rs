//! Key workers: the state machine of one active key of a stream.
//!
//! A worker holds its key's durable state, its sequencer (reorder buffer) and its queue, and
//! decides what the key does next: call the handler for its next event, park events, or wait.
//! It is owned by its stream task (the processbook is a map of workers), so there is never more
//! than one per key and nothing to race with: the stream asks [`KeyWorker::next_step`] whenever
//! the key may go on, runs the handler call it asks for on another task, and hands the result
//! back to [`KeyWorker::handler_result`].
//!
//! The worker is **busy** from the step it hands out (a handler call, or events to record) until
//! the stream reports the checkpoint holding the key's completion **durable**
//! ([`KeyWorker::committed`]); only the worker itself sets and clears it. So after a crash, at
//! most the one event a key had in flight is handed to the handler again — or its one run: a
//! handler that takes runs ([`crate::Handler::max_run`]) gets a key's queued events together
//! where the order is one sequence (`fifo` over one topic, nothing blocked, parked or retried).
//! A worker with nothing queued, nothing waiting and nothing in flight is removed by the stream.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    sequencer::{Offer, Sequencer},
    timers::later,
};
use crate::{
    config::FailurePolicy,
    event::{Event, now_micros},
    handler::{HandlerError, Reply, RunReply},
    limits::{PARKED_ERROR_BYTES_MAX, RETRY_DELAY_MAX},
    outcome::Outcome,
    runtime::{StreamContext, SubscriptionStats},
    state::{KeyState, ParkReason, ParkedEvent},
    storage::StateOp,
};

/// One event a key finished with.
#[derive(Debug)]
pub(super) struct Done {
    pub position: u64,
    /// The event's commit position (its turn across the subscription's topics).
    pub commit: u64,
    pub event_id: String,
    pub time_micros: i64,
    /// False for an operator retry of a parked event (already done for the watermark).
    pub fresh: bool,
    pub outcome: Outcome,
}

/// What a key finished, to be made durable in the next checkpoint before the key goes on.
#[derive(Debug, Default)]
pub(super) struct Record {
    /// The events finished.
    pub items: Vec<Done>,
    /// Their state changes (parks, the key's state).
    pub ops: Vec<StateOp>,
    /// Parked events this record removes (retried successfully, or discarded).
    pub unparked: u64,
    /// Of those, discarded by an operator.
    pub discarded: u64,
}

/// What a stream hands to a key.
#[derive(Debug)]
pub(super) enum Item {
    /// A new event from the log.
    Event(Box<Event>),
    /// An operator retries this parked event.
    Retry(Box<Event>),
    /// An operator discards this parked event.
    Discard(ParkedEvent),
}

/// What a key does next.
#[derive(Debug)]
pub(super) enum Step {
    /// Call the handler (attempt `attempt`).
    Call { event: Box<Event>, attempt: u32 },
    /// Call the handler once for these consecutive events (two or more, first attempts).
    CallRun { events: Vec<Event> },
    /// Call the handler (attempt `attempt`) after `delay`: an event of a run failed.
    Retry { event: Box<Event>, attempt: u32, delay: Duration },
    /// These events are finished: record them (and the key's state) durably.
    Finished(Record),
    /// List the key's blocked followers after this position, then ask again.
    LoadFollowers { after: u64 },
    /// Nothing to do until something arrives (or a sequence times out).
    Wait,
}

/// What to do after a handler call.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // transient, like `Step`
pub(super) enum AfterCall {
    /// Call again after `delay`.
    Retry { event: Box<Event>, attempt: u32, delay: Duration },
    /// Record these (see [`Step::Finished`]).
    Finished(Record),
}

/// One active key of a stream.
#[derive(Debug)]
pub(super) struct KeyWorker {
    /// The event key (for `none` ordering the processbook entry is per event, this is still the
    /// event's key).
    key: String,
    state: KeyState,
    sequencer: Option<Sequencer>,
    queue: VecDeque<Item>,
    /// A handler call, a backoff or a checkpoint is in progress: set by the steps that start
    /// one, cleared by [`KeyWorker::committed`].
    busy: bool,
    /// When the sequencer started waiting for a missing event.
    waiting_since: Option<Instant>,
    /// Parked events to replay (blocked followers released by an unblock).
    replay: VecDeque<Box<Event>>,
    /// More blocked followers may wait in storage after this position.
    followers_after: Option<u64>,
    /// Positions that were parked and are being retried (not pending in the stream).
    retried: HashSet<u64>,
    /// The blocking event being retried: when it succeeds, its followers are released.
    retrying_blocker: Option<u64>,
    /// Whether the stored state is replaced (`false`) or max-merged (`none` ordering).
    merge: bool,
    /// The most events one handler call takes (1: no runs).
    run_max: usize,
    /// The event of a run that failed after others of the run were handled: decided (retried
    /// or parked) once those are durable, before anything else of the key.
    /// (Boxed: rare, and a worker per live key should stay small.)
    failed: Option<Box<(Event, HandlerError)>>,
}

impl KeyWorker {
    /// A worker for `key`, resuming from its durable `state`; a handler call takes up to
    /// `run_max` of its events (runs form only without a sequencer).
    pub(super) fn new(
        ctx: &StreamContext,
        key: String,
        state: KeyState,
        merge: bool,
        run_max: usize,
    ) -> Self {
        let sequencer = ctx
            .topic
            .contract(ctx.subscription.config.ordering)
            .map(|contract| Sequencer::new(contract, state.progress));
        Self {
            key,
            state,
            sequencer,
            queue: VecDeque::new(),
            busy: false,
            waiting_since: None,
            replay: VecDeque::new(),
            followers_after: None,
            retried: HashSet::new(),
            retrying_blocker: None,
            merge,
            run_max,
            failed: None,
        }
    }

    /// Queues an item; the stream asks for the next step when the key is not busy.
    pub(super) fn push(&mut self, item: Item) {
        self.queue.push_back(item);
    }

    /// Events waiting in the reorder buffer.
    pub(super) fn buffered(&self) -> usize {
        self.sequencer.as_ref().map_or(0, Sequencer::buffered)
    }

    /// Whether a handler call, a backoff or a checkpoint is in progress.
    pub(super) fn is_busy(&self) -> bool {
        self.busy
    }

    /// The checkpoint holding the key's last completion is durable: it may go on.
    pub(super) fn committed(&mut self) {
        self.busy = false;
    }

    /// Whether the worker can be removed: nothing queued, waiting, replaying or in progress.
    pub(super) fn is_idle(&self) -> bool {
        !self.busy
            && self.failed.is_none()
            && self.queue.is_empty()
            && self.replay.is_empty()
            && self.followers_after.is_none()
            && self.buffered() == 0
    }

    /// When the waiting sequence times out, if it waits and the topic has a timeout.
    pub(super) fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        Some(later(self.waiting_since?, timeout?))
    }

    /// The key's next step. `room` says whether the stream's reorder budget has room.
    pub(super) fn next_step(&mut self, ctx: &StreamContext, room: bool) -> Step {
        debug_assert!(!self.busy, "a busy key takes no step");
        let step = self.step(ctx, room);
        self.busy = matches!(
            step,
            Step::Call { .. } | Step::CallRun { .. } | Step::Retry { .. } | Step::Finished(_)
        );
        step
    }

    fn step(&mut self, ctx: &StreamContext, room: bool) -> Step {
        if let Some(failed) = self.failed.take() {
            let (event, error) = *failed;
            self.busy = true; // deciding a call's result, as after the call
            return match self.handler_result(ctx, Box::new(event), 1, Err(error)) {
                AfterCall::Retry { event, attempt, delay } => Step::Retry { event, attempt, delay },
                AfterCall::Finished(record) => Step::Finished(record),
            };
        }
        if let Some(events) = self.take_run() {
            return Step::CallRun { events };
        }
        loop {
            if let Some(event) = self.replay.pop_front() {
                match self.offer(ctx, event, room) {
                    Step::Wait => continue,
                    step => return step,
                }
            }
            if let Some(after) = self.followers_after.take() {
                return Step::LoadFollowers { after };
            }
            if let Some(event) = self.sequencer.as_mut().and_then(Sequencer::take_ready) {
                return Step::Call { event, attempt: 1 };
            }
            let Some(item) = self.queue.pop_front() else { return Step::Wait };
            let step = match item {
                Item::Event(event) => self.offer(ctx, event, room),
                Item::Retry(event) => self.retry(ctx, event, room),
                Item::Discard(parked) => self.discard(ctx, parked),
            };
            if !matches!(step, Step::Wait) {
                return step;
            }
        }
    }

    /// The key's queued events as one run, when there are two or more and nothing else decides
    /// the order: no sequencer, nothing blocked, replayed or retried.
    fn take_run(&mut self) -> Option<Vec<Event>> {
        if self.run_max < 2
            || self.sequencer.is_some()
            || self.state.blocked_by.is_some()
            || !self.replay.is_empty()
            || self.followers_after.is_some()
            || !self.retried.is_empty()
        {
            return None;
        }
        let n = self
            .queue
            .iter()
            .take(self.run_max)
            .take_while(|item| matches!(item, Item::Event(_)))
            .count();
        if n < 2 {
            return None;
        }
        let events: Vec<Event> = self
            .queue
            .drain(..n)
            .filter_map(|item| match item {
                Item::Event(event) => Some(*event),
                Item::Retry(_) | Item::Discard(_) => None,
            })
            .collect();
        debug_assert_eq!(events.len(), n, "a run takes events only");
        Some(events)
    }

    /// The handler returned for a run: its handled prefix is recorded; a failed event is
    /// decided once that is durable (at once when nothing was handled); the events after it go
    /// back to the front of the queue, in order.
    pub(super) fn run_result(
        &mut self,
        ctx: &StreamContext,
        events: Vec<Event>,
        reply: RunReply,
    ) -> AfterCall {
        debug_assert!(self.busy, "a run result for a key that had no call");
        let RunReply { replies, failed } = reply;
        let mut events = events.into_iter();
        let mut items = Vec::with_capacity(replies.len());
        for reply in replies {
            let Some(event) = events.next() else { break };
            self.state.last_time_micros = self.state.last_time_micros.max(event.time_micros);
            self.advance(&event);
            self.state.last_position = self.state.last_position.max(event.position);
            items.push(self.done(&event, Outcome::Handled(reply)));
        }
        // Nothing handled and nothing failed would hand the run over again at once: a failure.
        let failed = failed.or_else(|| {
            items.is_empty().then(|| {
                HandlerError::retry("the handler returned without handling its run's first event")
            })
        });
        let next = match failed {
            Some(error) => events.next().map(|next| (next, error)),
            None => None,
        };
        let rest: Vec<Event> = events.collect();
        for event in rest.into_iter().rev() {
            self.queue.push_front(Item::Event(Box::new(event)));
        }
        if let Some((next, error)) = next {
            if items.is_empty() {
                return self.handler_result(ctx, Box::new(next), 1, Err(error));
            }
            self.failed = Some(Box::new((next, error)));
        }
        let ops = vec![self.key_op(ctx)];
        AfterCall::Finished(Record { items, ops, ..Record::default() })
    }

    /// Routes an event through the block check and the sequencer.
    fn offer(&mut self, ctx: &StreamContext, event: Box<Event>, room: bool) -> Step {
        if let Some(blocker) = self.state.blocked_by
            && blocker != event.position
        {
            return self.park(ctx, vec![*event], ParkReason::Blocked, None);
        }
        let Some(sequencer) = self.sequencer.as_mut() else {
            return Step::Call { event, attempt: 1 };
        };
        match sequencer.offer(event, room) {
            Offer::Ready(event) => Step::Call { event, attempt: 1 },
            Offer::Buffered => {
                self.waiting_since.get_or_insert_with(Instant::now);
                Step::Wait
            }
            Offer::Park(event, reason, error) => {
                self.park(ctx, vec![*event], reason, error.as_deref())
            }
        }
    }

    /// The handler returned for `event` on attempt `attempt`.
    pub(super) fn handler_result(
        &mut self,
        ctx: &StreamContext,
        event: Box<Event>,
        attempt: u32,
        result: Result<Reply, HandlerError>,
    ) -> AfterCall {
        debug_assert!(self.busy, "a handler result for a key that had no call");
        let retry = ctx.subscription.config.retry;
        let mut ops = Vec::with_capacity(2);
        let mut unparked = 0;
        let outcome = match result {
            Ok(reply) => {
                self.state.last_time_micros = self.state.last_time_micros.max(event.time_micros);
                self.advance(&event);
                Outcome::Handled(reply)
            }
            Err(error) if error.is_retryable() && attempt < retry.max_attempts => {
                let delay = error
                    .retry_delay()
                    .unwrap_or_else(|| retry.delay(attempt))
                    .min(RETRY_DELAY_MAX);
                tracing::warn!(stream = %ctx.id, position = event.position, attempt, ?delay, %error, "handler failed; retrying");
                return AfterCall::Retry { event, attempt: attempt + 1, delay };
            }
            Err(error) => {
                let message = cut(error.message(), PARKED_ERROR_BYTES_MAX).to_owned();
                let parked =
                    parked_event(ctx, &event, ParkReason::Failed, Some(message.clone()), attempt);
                ops.push(StateOp::Park(parked));
                count_parked(ctx, 1);
                if ctx.subscription.config.on_failure == FailurePolicy::Block {
                    self.state.blocked_by = Some(event.position);
                } else {
                    self.advance(&event);
                }
                Outcome::Parked { reason: ParkReason::Failed, error: Some(message) }
            }
        };
        if ops.is_empty() && self.retried.contains(&event.position) {
            ops.push(StateOp::Unpark { stream: ctx.id.clone(), position: event.position });
            unparked = 1;
        }
        if self.retrying_blocker == Some(event.position) {
            self.retrying_blocker = None;
            if self.state.blocked_by.is_none() {
                self.followers_after = Some(event.position);
            }
        }
        self.state.last_position = self.state.last_position.max(event.position);
        let done = self.done(&event, outcome);
        ops.push(self.key_op(ctx));
        AfterCall::Finished(Record { items: vec![done], ops, unparked, discarded: 0 })
    }

    /// Marks the event done in the key's progress (handled, or parked and skipped).
    fn advance(&mut self, event: &Event) {
        if let Some(sequencer) = self.sequencer.as_mut() {
            sequencer.advance(event);
            self.state.progress = sequencer.progress();
            if sequencer.buffered() == 0 {
                self.waiting_since = None;
            }
        }
    }

    /// Parks events without calling the handler.
    fn park(
        &mut self,
        ctx: &StreamContext,
        events: Vec<Event>,
        reason: ParkReason,
        error: Option<&str>,
    ) -> Step {
        if events.is_empty() {
            return Step::Wait;
        }
        let mut ops = Vec::with_capacity(events.len() + 1);
        let mut items = Vec::with_capacity(events.len());
        for event in events {
            let error = error.map(str::to_owned);
            ops.push(StateOp::Park(parked_event(ctx, &event, reason, error.clone(), 0)));
            self.state.last_position = self.state.last_position.max(event.position);
            items.push(self.done(&event, Outcome::Parked { reason, error }));
        }
        count_parked(ctx, items.len());
        ops.push(self.key_op(ctx));
        Step::Finished(Record { items, ops, ..Record::default() })
    }

    /// The waiting sequence timed out: park everything it holds.
    pub(super) fn expire(&mut self, ctx: &StreamContext) -> Step {
        debug_assert!(!self.busy, "a busy key's sequence does not expire");
        let waiting = self.sequencer.as_mut().map(Sequencer::drain).unwrap_or_default();
        self.waiting_since = None;
        tracing::info!(stream = %ctx.id, key = self.key, parked = waiting.len(), "sequence timed out");
        let step = self.park(ctx, waiting, ParkReason::Timeout, None);
        self.busy = matches!(step, Step::Finished(_));
        step
    }

    /// An operator retries a parked event.
    fn retry(&mut self, ctx: &StreamContext, event: Box<Event>, room: bool) -> Step {
        self.retried.insert(event.position);
        if self.state.blocked_by == Some(event.position) {
            // The key stays blocked until the call succeeds; then its followers run.
            self.state.blocked_by = None;
            self.retrying_blocker = Some(event.position);
            return Step::Call { event, attempt: 1 };
        }
        self.offer(ctx, event, room)
    }

    /// An operator discards a parked event (its record stays, marked discarded, so its status
    /// keeps saying it was never handled); if it blocked the key, the key moves on.
    fn discard(&mut self, ctx: &StreamContext, parked: ParkedEvent) -> Step {
        let position = parked.position;
        let discarded = ParkedEvent { discarded_at_micros: Some(now_micros()), ..parked };
        let mut ops = vec![StateOp::Park(discarded)];
        if self.state.blocked_by == Some(position) {
            // The blocker was the key's next event: skip it in the sequence.
            self.state.blocked_by = None;
            if let Some(sequencer) = self.sequencer.as_mut() {
                sequencer.skip_next();
                self.state.progress = sequencer.progress();
            }
            self.followers_after = Some(position);
        }
        ops.push(self.key_op(ctx));
        Step::Finished(Record { items: Vec::new(), ops, unparked: 1, discarded: 1 })
    }

    /// Queues the key's blocked followers found in storage (one page; `more` after `last`).
    pub(super) fn followers(&mut self, events: Vec<Event>, more_after: Option<u64>) {
        for event in events {
            self.retried.insert(event.position);
            self.replay.push_back(Box::new(event));
        }
        self.followers_after = more_after;
    }

    fn done(&mut self, event: &Event, outcome: Outcome) -> Done {
        Done {
            position: event.position,
            commit: event.commit,
            event_id: event.id.clone(),
            time_micros: event.time_micros,
            fresh: !self.retried.remove(&event.position),
            outcome,
        }
    }

    fn key_op(&self, ctx: &StreamContext) -> StateOp {
        StateOp::Key {
            stream: ctx.id.clone(),
            key: self.key.clone(),
            state: self.state.clone(),
            merge: self.merge,
        }
    }

    /// The key and its state, when the worker leaves.
    pub(super) fn into_state(self) -> (String, KeyState) {
        (self.key, self.state)
    }

    /// The key's name.
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

fn count_parked(ctx: &StreamContext, n: usize) {
    let n = n as u64;
    SubscriptionStats::add(&ctx.subscription.stats.parked, n);
    ctx.subscription.metrics.parked.increment(n);
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A parked-event record for `event`.
fn parked_event(
    ctx: &StreamContext,
    event: &Event,
    reason: ParkReason,
    error: Option<String>,
    attempts: u32,
) -> ParkedEvent {
    ParkedEvent {
        subscription: ctx.id.subscription.clone(),
        topic: ctx.id.topic.clone(),
        position: event.position,
        event_id: event.id.clone(),
        key: event.key.clone(),
        action: event.action.clone(),
        reason,
        error,
        attempts,
        parked_at_micros: now_micros(),
        discarded_at_micros: None,
    }
}
