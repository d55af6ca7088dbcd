//! Key workers: one task per active key of a stream, handling the key's events strictly one at
//! a time and in order.
//!
//! A worker owns its key's state (loaded from storage when it starts), its sequencer (reorder
//! buffer) and its queue. For each event it calls the handler with retries, then reports the
//! completion to its stream and **waits until the completion is durable** before it takes the
//! next event: after a crash, at most the one event a key had in flight is handed to the
//! handler again.
//!
//! A worker never decides alone to stop. When its queue is empty and nothing waits in its
//! buffer it tells the stream how many events it received; the stream removes it only if that
//! is every event it sent (so an event sent meanwhile is never lost), and the worker ends when
//! its queue closes. A panicking handler is caught ([`crate::handler::call`]).

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    config::FailurePolicy,
    event::{Event, now_micros},
    handler::{self, HandlerContext, Reply},
    limits::PARKED_LIST_MAX,
    runtime::{StreamContext, SubscriptionStats},
    sequencer::{Offer, Sequencer},
    state::{KeyState, ParkReason, ParkedEvent},
    storage::StateOp,
    stream::{Completion, Done, Outcome, StreamMsg},
};

/// What a stream hands to a key worker.
#[derive(Debug)]
pub(crate) enum WorkItem {
    /// A new event from the log.
    Event(Event),
    /// An operator retries this parked event.
    Retry(Event),
    /// An operator discards the parked event of `key` at `position`.
    Discard { key: String, position: u64 },
}

impl WorkItem {
    /// The key whose worker takes the item.
    pub(crate) fn key(&self) -> &str {
        match self {
            Self::Event(event) | Self::Retry(event) => &event.key,
            Self::Discard { key, .. } => key,
        }
    }
}

/// One key's worker.
pub(crate) struct Worker {
    ctx: Arc<StreamContext>,
    key: String,
    queue: mpsc::Receiver<WorkItem>,
    state: KeyState,
    sequencer: Option<Sequencer>,
    /// When the sequencer started waiting for a missing event.
    waiting_since: Option<Instant>,
    /// Parked events to replay before the queue (followers released by an unblock).
    replay: VecDeque<Event>,
    /// Position after which more blocked followers may wait in storage.
    followers_after: Option<u64>,
    /// Positions that were parked and are being retried (not pending in the stream).
    retried: HashSet<u64>,
}

impl Worker {
    /// Loads the key's state and serves the key until the stream removes the worker.
    pub(crate) async fn run(ctx: Arc<StreamContext>, key: String, queue: mpsc::Receiver<WorkItem>) {
        let contract = ctx.topic.contract(ctx.subscription.config.ordering);
        let state = match ctx.storage.key_state(&ctx.id, &key).await {
            Ok(state) => state.unwrap_or_default(),
            Err(error) => {
                tracing::error!(%error, stream = %ctx.id, key, "cannot load key state; worker stops");
                return;
            }
        };
        let sequencer = contract.map(|contract| Sequencer::new(contract, state.progress));
        let mut worker = Self {
            ctx,
            key,
            queue,
            state,
            sequencer,
            waiting_since: None,
            replay: VecDeque::new(),
            followers_after: None,
            retried: HashSet::new(),
        };
        worker.serve().await;
    }

    async fn serve(&mut self) {
        let mut received = 0u64;
        loop {
            if self.replay.is_empty()
                && let Some(after) = self.followers_after.take()
                && !self.load_followers(after).await
            {
                return;
            }
            if let Some(event) = self.replay.pop_front() {
                if !self.offer(event).await {
                    return;
                }
                continue;
            }
            if let Some(event) = self.sequencer.as_mut().and_then(Sequencer::take_ready) {
                if !self.process(event).await {
                    return;
                }
                continue;
            }
            let waiting = self.sequencer.as_ref().is_some_and(Sequencer::is_waiting);
            let item = match (waiting, self.deadline()) {
                (true, Some(deadline)) => tokio::select! {
                    item = self.queue.recv() => item,
                    () = tokio::time::sleep_until(deadline) => {
                        if !self.expire().await {
                            return;
                        }
                        continue;
                    }
                },
                // Waiting without a timeout: never report idle, the buffer must not be lost.
                (true, None) => self.queue.recv().await,
                (false, _) => match self.queue.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let idle = StreamMsg::Idle { key: self.key.clone(), received };
                        if self.ctx.inbox.send(idle).await.is_err() {
                            return;
                        }
                        self.queue.recv().await
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
            };
            let Some(item) = item else { return };
            received += 1;
            let alive = match item {
                WorkItem::Event(event) => self.offer(event).await,
                WorkItem::Retry(event) => self.retry(event).await,
                WorkItem::Discard { position, .. } => self.discard(position).await,
            };
            if !alive {
                return;
            }
        }
    }

    /// When the waiting sequence times out, if the topic has a timeout.
    fn deadline(&self) -> Option<Instant> {
        let timeout = self.ctx.topic.config.sequence_timeout?;
        Some(self.waiting_since.unwrap_or_else(Instant::now) + timeout)
    }

    /// Routes an event through the block check and the sequencer. Returns false if the stream
    /// is gone.
    async fn offer(&mut self, event: Event) -> bool {
        if let Some(blocker) = self.state.blocked_by
            && blocker != event.position
        {
            return self.park(vec![event], ParkReason::Blocked, None).await;
        }
        let Some(sequencer) = self.sequencer.as_mut() else {
            return self.process(event).await;
        };
        match sequencer.offer(event) {
            Offer::Ready(event) => self.process(event).await,
            Offer::Buffered => {
                self.waiting_since.get_or_insert_with(Instant::now);
                true
            }
            Offer::Park(event, reason, error) => self.park(vec![event], reason, error).await,
        }
    }

    /// Calls the handler for the key's next event and records the outcome.
    async fn process(&mut self, event: Event) -> bool {
        // Boxed: keeps the worker's own future small (it is moved on every spawn).
        let outcome = Box::pin(call_with_retries(&self.ctx, &event)).await;
        let mut ops = Vec::new();
        let done_outcome = match outcome {
            Ok(reply) => {
                self.state.last_time_micros = self.state.last_time_micros.max(event.time_micros);
                self.advance(&event);
                Outcome::Handled(reply)
            }
            Err((error, attempts)) => {
                let parked = parked_event(
                    &self.ctx,
                    &event,
                    ParkReason::Failed,
                    Some(error.clone()),
                    attempts,
                );
                ops.push(StateOp::Park(parked));
                SubscriptionStats::add(&self.ctx.subscription.stats.parked, 1);
                self.ctx.subscription.metrics.parked.increment(1);
                if self.ctx.subscription.config.on_failure == FailurePolicy::Block {
                    self.state.blocked_by = Some(event.position);
                } else {
                    self.advance(&event);
                }
                Outcome::Parked { reason: ParkReason::Failed, error: Some(error) }
            }
        };
        if ops.is_empty() && self.retried.contains(&event.position) {
            ops.push(StateOp::Unpark { stream: self.ctx.id.clone(), position: event.position });
        }
        self.state.last_position = self.state.last_position.max(event.position);
        let done = self.done(&event, done_outcome);
        self.complete(vec![done], ops).await
    }

    /// Marks the event done in the key's progress (handled, or parked and skipped).
    fn advance(&mut self, event: &Event) {
        if let Some(sequencer) = self.sequencer.as_mut() {
            sequencer.advance(event);
            self.state.progress = sequencer.progress();
            if !sequencer.is_waiting() {
                self.waiting_since = None;
            }
        }
    }

    /// Parks events without calling the handler.
    async fn park(
        &mut self,
        events: Vec<Event>,
        reason: ParkReason,
        error: Option<String>,
    ) -> bool {
        let mut ops = Vec::with_capacity(events.len());
        let mut items = Vec::with_capacity(events.len());
        for event in events {
            ops.push(StateOp::Park(parked_event(&self.ctx, &event, reason, error.clone(), 0)));
            self.state.last_position = self.state.last_position.max(event.position);
            items.push(self.done(&event, Outcome::Parked { reason, error: error.clone() }));
        }
        SubscriptionStats::add(&self.ctx.subscription.stats.parked, items.len() as u64);
        self.complete(items, ops).await
    }

    /// The sequence waited too long: park everything it holds.
    async fn expire(&mut self) -> bool {
        let waiting = self.sequencer.as_mut().map(Sequencer::drain).unwrap_or_default();
        self.waiting_since = None;
        tracing::info!(stream = %self.ctx.id, key = self.key, parked = waiting.len(), "sequence timed out");
        self.park(waiting, ParkReason::Timeout, None).await
    }

    /// An operator retries a parked event.
    async fn retry(&mut self, event: Event) -> bool {
        self.retried.insert(event.position);
        if self.state.blocked_by == Some(event.position) {
            self.state.blocked_by = None;
            let position = event.position;
            let alive = self.process(event).await;
            if alive && self.state.blocked_by.is_none() {
                self.followers_after = Some(position);
            }
            return alive;
        }
        self.offer(event).await
    }

    /// An operator discards a parked event; if it blocked the key, the key moves on.
    async fn discard(&mut self, position: u64) -> bool {
        let mut ops = vec![StateOp::Unpark { stream: self.ctx.id.clone(), position }];
        if self.state.blocked_by == Some(position) {
            self.state.blocked_by = None;
            if self.sequencer.is_some() {
                match self.ctx.read_event(position).await {
                    Ok(event) => self.advance(&event),
                    Err(error) => tracing::error!(%error, "cannot read the discarded event"),
                }
            }
            self.followers_after = Some(position);
        }
        ops.push(self.key_op());
        self.send_completion(Vec::new(), ops).await
    }

    /// Loads the key's blocked followers after `after` (one page) into the replay queue.
    async fn load_followers(&mut self, after: u64) -> bool {
        let ctx = Arc::clone(&self.ctx);
        let start = Some((ctx.topic.name.clone(), after));
        let page = match ctx.storage.parked(&ctx.subscription.name, start, PARKED_LIST_MAX).await {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(%error, "cannot list blocked followers");
                return true;
            }
        };
        let full = page.len() >= PARKED_LIST_MAX;
        let mut last = after;
        for parked in page.into_iter().take_while(|p| p.topic == ctx.topic.name) {
            last = parked.position;
            if parked.key != self.key || parked.reason != ParkReason::Blocked {
                continue;
            }
            match ctx.read_event(parked.position).await {
                Ok(event) => {
                    self.retried.insert(event.position);
                    self.replay.push_back(event);
                }
                Err(error) => tracing::error!(%error, "cannot read a blocked follower"),
            }
        }
        if full {
            self.followers_after = Some(last);
        }
        true
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

    /// The key's state to store (the worker loaded it, so it replaces what is stored).
    fn key_op(&self) -> StateOp {
        StateOp::Key {
            stream: self.ctx.id.clone(),
            key: self.key.clone(),
            state: self.state.clone(),
            merge: false,
        }
    }

    /// Reports completed events with the key's new state, and waits until they are durable.
    async fn complete(&mut self, items: Vec<Done>, mut ops: Vec<StateOp>) -> bool {
        ops.push(self.key_op());
        self.send_completion(items, ops).await
    }

    async fn send_completion(&mut self, items: Vec<Done>, ops: Vec<StateOp>) -> bool {
        let (durable, is_durable) = oneshot::channel();
        let completion = Completion { items, ops, durable: Some(durable) };
        if self.ctx.inbox.send(StreamMsg::Completed(completion)).await.is_err() {
            return false;
        }
        is_durable.await.is_ok()
    }
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

/// Calls the subscription's handler until it succeeds, fails permanently, or runs out of
/// attempts (then the last error and the number of attempts).
pub(crate) async fn call_with_retries(
    ctx: &StreamContext,
    event: &Event,
) -> Result<Reply, (String, u32)> {
    let subscription = &ctx.subscription;
    let retry = subscription.config.retry;
    let mut attempt = 1;
    loop {
        let Ok(permit) = subscription.in_flight.acquire().await else {
            return Err(("the engine is stopping".to_owned(), attempt - 1));
        };
        let context = HandlerContext { subscription: subscription.name.clone(), attempt };
        let started = std::time::Instant::now();
        let result = handler::call(&subscription.handler, event, &context).await;
        drop(permit);
        subscription.metrics.handle_seconds.record(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) => {
                SubscriptionStats::add(&subscription.stats.handled, 1);
                subscription.metrics.handled.increment(1);
                return Ok(reply);
            }
            Err(error) => {
                SubscriptionStats::add(&subscription.stats.failed_attempts, 1);
                subscription.metrics.failures.increment(1);
                if !error.is_retryable() || attempt >= retry.max_attempts {
                    return Err((error.message().to_owned(), attempt));
                }
                let delay = retry.delay(attempt);
                tracing::warn!(stream = %ctx.id, position = event.position, attempt, ?delay, %error, "handler failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Handles one event of a `none`-ordered subscription (no key worker) and reports it.
pub(crate) async fn handle_unordered(ctx: Arc<StreamContext>, event: Event, fresh: bool) {
    let (outcome, mut ops) = match call_with_retries(&ctx, &event).await {
        Ok(reply) => (Outcome::Handled(reply), Vec::new()),
        Err((error, attempts)) => {
            SubscriptionStats::add(&ctx.subscription.stats.parked, 1);
            let parked =
                parked_event(&ctx, &event, ParkReason::Failed, Some(error.clone()), attempts);
            (
                Outcome::Parked { reason: ParkReason::Failed, error: Some(error) },
                vec![StateOp::Park(parked)],
            )
        }
    };
    if !fresh && ops.is_empty() {
        ops.push(StateOp::Unpark { stream: ctx.id.clone(), position: event.position });
    }
    let handled = matches!(outcome, Outcome::Handled(_));
    ops.push(StateOp::Key {
        stream: ctx.id.clone(),
        key: event.key.clone(),
        state: KeyState {
            last_position: event.position,
            last_time_micros: if handled { event.time_micros } else { i64::MIN },
            ..KeyState::default()
        },
        merge: true,
    });
    let done = Done {
        position: event.position,
        event_id: event.id.clone(),
        time_micros: event.time_micros,
        fresh,
        outcome,
    };
    let completion = Completion { items: vec![done], ops, durable: None };
    let _ = ctx.inbox.send(StreamMsg::Completed(completion)).await;
}
