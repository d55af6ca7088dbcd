//! Key workers: the state machine of one active key of a stream.
//!
//! A worker holds its key's durable state, its sequencer (reorder buffer) and its queue, and
//! decides what the key does next: call the handler for its next event, park events, or wait.
//! It is owned by its stream task (the processbook is a map of workers), so there is never more
//! than one per key and nothing to race with: the stream asks [`KeyWorker::next_step`] whenever
//! the key may go on, runs the handler call it asks for on another task, and hands the result
//! back to [`KeyWorker::handler_result`].
//!
//! The key goes on only after its last completion is **durable** (the stream clears
//! [`KeyWorker::busy`] when the checkpoint holding it is committed): after a crash, at most the
//! one event a key had in flight is handed to the handler again. A worker with nothing queued,
//! nothing waiting and nothing in flight is removed by the stream.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    config::FailurePolicy,
    event::{Event, now_micros},
    handler::{HandlerError, Reply},
    limits::RETRY_DELAY_MAX,
    runtime::{StreamContext, SubscriptionStats},
    sequencer::{Offer, Sequencer},
    state::{KeyState, ParkReason, ParkedEvent},
    storage::StateOp,
    stream::{Done, Outcome},
};

/// What a stream hands to a key.
#[derive(Debug)]
pub(crate) enum Item {
    /// A new event from the log.
    Event(Event),
    /// An operator retries this parked event.
    Retry(Event),
    /// An operator discards the parked event at this position.
    Discard(u64),
}

/// What a key does next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // transient; boxing `Call`, the common case, would allocate per event
pub(crate) enum Step {
    /// Call the handler (attempt `attempt`).
    Call { event: Event, attempt: u32 },
    /// These events are finished: record them (and the key's state) durably.
    Finished { items: Vec<Done>, ops: Vec<StateOp> },
    /// List the key's blocked followers after this position, then ask again.
    LoadFollowers { after: u64 },
    /// Nothing to do until something arrives (or a sequence times out).
    Wait,
}

/// What to do after a handler call.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // transient, like `Step`
pub(crate) enum AfterCall {
    /// Call again after `delay`.
    Retry { event: Event, attempt: u32, delay: Duration },
    /// Record these (see [`Step::Finished`]).
    Finished { items: Vec<Done>, ops: Vec<StateOp> },
}

/// One active key of a stream.
#[derive(Debug)]
pub(crate) struct KeyWorker {
    /// The event key (for `none` ordering the processbook entry is per event, this is still the
    /// event's key).
    key: String,
    state: KeyState,
    sequencer: Option<Sequencer>,
    queue: VecDeque<Item>,
    /// A handler call, a backoff or a checkpoint is in progress.
    pub busy: bool,
    /// When the sequencer started waiting for a missing event.
    waiting_since: Option<Instant>,
    /// Parked events to replay (blocked followers released by an unblock).
    replay: VecDeque<Event>,
    /// More blocked followers may wait in storage after this position.
    followers_after: Option<u64>,
    /// Positions that were parked and are being retried (not pending in the stream).
    retried: HashSet<u64>,
    /// The blocking event being retried: when it succeeds, its followers are released.
    retrying_blocker: Option<u64>,
    /// Whether the stored state is replaced (`false`) or max-merged (`none` ordering).
    merge: bool,
}

impl KeyWorker {
    /// A worker for `key`, resuming from its durable `state`.
    pub(crate) fn new(ctx: &StreamContext, key: String, state: KeyState, merge: bool) -> Self {
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
        }
    }

    /// Queues an item; the stream asks for the next step when the key is not busy.
    pub(crate) fn push(&mut self, item: Item) {
        self.queue.push_back(item);
    }

    /// Events waiting in the reorder buffer.
    pub(crate) fn buffered(&self) -> usize {
        self.sequencer.as_ref().map_or(0, Sequencer::buffered)
    }

    /// Whether the worker can be removed: nothing queued, waiting, replaying or in progress.
    pub(crate) fn is_idle(&self) -> bool {
        !self.busy
            && self.queue.is_empty()
            && self.replay.is_empty()
            && self.followers_after.is_none()
            && self.buffered() == 0
    }

    /// When the waiting sequence times out, if it waits and the topic has a timeout.
    pub(crate) fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        Some(crate::stream::later(self.waiting_since?, timeout?))
    }

    /// The key's next step. `room` says whether the stream's reorder budget has room.
    pub(crate) fn next_step(&mut self, ctx: &StreamContext, room: bool) -> Step {
        debug_assert!(!self.busy, "a busy key takes no step");
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
                Item::Discard(position) => self.discard(ctx, position),
            };
            if !matches!(step, Step::Wait) {
                return step;
            }
        }
    }

    /// Routes an event through the block check and the sequencer.
    fn offer(&mut self, ctx: &StreamContext, event: Event, room: bool) -> Step {
        if let Some(blocker) = self.state.blocked_by
            && blocker != event.position
        {
            return self.park(ctx, vec![event], ParkReason::Blocked, None);
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
                self.park(ctx, vec![event], reason, error.as_deref())
            }
        }
    }

    /// The handler returned for `event` on attempt `attempt`.
    pub(crate) fn handler_result(
        &mut self,
        ctx: &StreamContext,
        event: Event,
        attempt: u32,
        result: Result<Reply, HandlerError>,
    ) -> AfterCall {
        let retry = ctx.subscription.config.retry;
        let mut ops = Vec::with_capacity(2);
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
                let message = error.message().to_owned();
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
        AfterCall::Finished { items: vec![done], ops }
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
        Step::Finished { items, ops }
    }

    /// The waiting sequence timed out: park everything it holds.
    pub(crate) fn expire(&mut self, ctx: &StreamContext) -> Step {
        let waiting = self.sequencer.as_mut().map(Sequencer::drain).unwrap_or_default();
        self.waiting_since = None;
        tracing::info!(stream = %ctx.id, key = self.key, parked = waiting.len(), "sequence timed out");
        self.park(ctx, waiting, ParkReason::Timeout, None)
    }

    /// An operator retries a parked event.
    fn retry(&mut self, ctx: &StreamContext, event: Event, room: bool) -> Step {
        self.retried.insert(event.position);
        if self.state.blocked_by == Some(event.position) {
            // The key stays blocked until the call succeeds; then its followers run.
            self.state.blocked_by = None;
            self.retrying_blocker = Some(event.position);
            return Step::Call { event, attempt: 1 };
        }
        self.offer(ctx, event, room)
    }

    /// An operator discards a parked event; if it blocked the key, the key moves on.
    fn discard(&mut self, ctx: &StreamContext, position: u64) -> Step {
        let mut ops = vec![StateOp::Unpark { stream: ctx.id.clone(), position }];
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
        Step::Finished { items: Vec::new(), ops }
    }

    /// Queues the key's blocked followers found in storage (one page; `more` after `last`).
    pub(crate) fn followers(&mut self, events: Vec<Event>, more_after: Option<u64>) {
        for event in events {
            self.retried.insert(event.position);
            self.replay.push_back(event);
        }
        self.followers_after = more_after;
    }

    fn done(&mut self, event: &Event, outcome: Outcome) -> Done {
        Done {
            position: event.position,
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
    pub(crate) fn into_state(self) -> (String, KeyState) {
        (self.key, self.state)
    }

    /// The key's name.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

fn count_parked(ctx: &StreamContext, n: usize) {
    let n = n as u64;
    SubscriptionStats::add(&ctx.subscription.stats.parked, n);
    ctx.subscription.metrics.parked.increment(n);
}

/// A parked-event record for `event`.
pub(crate) fn parked_event(
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
    }
}
