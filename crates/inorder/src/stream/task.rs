//! One incarnation of a stream: the task that reads a topic for a subscription and drives its
//! keys, from the durable progress it opened with until it stops or fails.
//!
//! It owns, without locks: the [`Processbook`] of live key workers, the [`Calls`] in flight, the
//! [`Timers`], and the [`Progress`] (watermark and checkpoints). Its loop takes, in priority
//! order: shutdown, a durable checkpoint, finished handler calls, free permits, timers, operator
//! commands, and new events — reading stops while [`STREAM_PENDING_EVENTS_MAX`] events are in
//! progress (events waiting in reorder buffers have their own budget,
//! [`STREAM_REORDER_EVENTS_MAX`], so waiting for a missing action never stops the reading that
//! would bring it).
//!
//! In a `fifo` subscription over several topics, a key's handler call also waits for its
//! [commit-order turn](crate::key_turns): the stream registers each batch's events with the
//! subscription's turns before driving them, holds a call until its turn is granted (without a
//! keys-in-flight permit, so waiting never starves the calls it waits for), and ends the turns
//! of events whose resolution is durable.
//!
//! Any error ends the incarnation and goes to the [supervisor](super::supervisor), which
//! decides between a restart (from durable progress, as after a crash) and failing the stream.

use std::{collections::HashMap, sync::Arc};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    calls::{Call, CallResult, Called, Calls},
    handle::{StreamHealth, StreamMsg, StreamStatus},
    processbook::Processbook,
    progress::{Committed, Progress},
    reader::{Batch, Read, ReaderTask},
    timers::{Timer, Timers, later},
    worker::{AfterCall, Item, KeyWorker, Step},
};
use crate::{
    checkpoint::CommitRequest,
    config::{Ordering, StartFrom},
    error::{Error, Result},
    event::Event,
    key_turns::{Grants, KeyTurns, TurnEvent},
    limits::{
        PARKED_LIST_MAX, RUN_EVENTS_MAX, STREAM_PENDING_EVENTS_MAX, STREAM_READ_BATCHES_MAX,
        STREAM_REORDER_EVENTS_MAX, STREAM_TIMEOUT_RECHECK,
    },
    runtime::{StreamContext, SubscriptionStats, read_event},
    state::{KeyState, ParkReason, StreamId},
    waiters::Waiters,
};

/// What a stream incarnation keeps across restarts: its inbox, its published status, the
/// shutdown signal.
pub(super) struct StreamIo {
    pub inbox: mpsc::Receiver<StreamMsg>,
    pub status: watch::Sender<StreamStatus>,
    pub shutdown: watch::Receiver<bool>,
}

/// One incarnation of a stream.
pub(super) struct Stream {
    ctx: Arc<StreamContext>,
    checkpointer: mpsc::Sender<CommitRequest>,
    waiters: Arc<Waiters>,
    batches: mpsc::Receiver<Result<Batch>>,
    reader: ReaderTask,
    progress: Progress,
    book: Processbook,
    calls: Calls,
    timers: Timers,
    /// The subscription's commit-order turns and this stream's grants, when it keeps them.
    turns: Option<(Arc<KeyTurns>, Arc<Grants>)>,
    /// Calls waiting for their key's turn, by processbook key (one per key: its worker is busy).
    awaiting_turn: HashMap<String, (Box<Event>, u32)>,
    /// The most events of a key one handler call takes: the handler's
    /// [`max_run`](crate::Handler::max_run) where a key's events are one sequence (ordered, and
    /// no commit-order turns across topics), else 1.
    run_max: usize,
}

impl Stream {
    /// Loads the stream's durable progress and starts reading after its watermark.
    pub(super) async fn open(
        ctx: &Arc<StreamContext>,
        checkpointer: &mpsc::Sender<CommitRequest>,
        waiters: &Arc<Waiters>,
    ) -> Result<Self> {
        let storage = &ctx.storage;
        let stored = match storage.stream_state(&ctx.id).await? {
            // A partition taken for the first time goes on from where the subscription was
            // before cluster mode, if it ran without it.
            None if ctx.id.partition.is_some() => {
                let whole = StreamId::new(ctx.id.subscription.clone(), ctx.id.topic.clone());
                storage.stream_state(&whole).await?
            }
            stored => stored,
        };
        let (_, last) = storage.positions(&ctx.topic.name).await?;
        // Below the first retained position the reader is told `Purged` and skips what went,
        // counted (`skip_purged`): one path for a stream that fell behind retention, whether it
        // was running or stopped.
        let watermark = match (&stored, ctx.subscription.config.start) {
            (Some(state), _) => state.watermark,
            (None, StartFrom::Earliest) => 0,
            (None, StartFrom::Latest) => last,
        };
        let (parked, discarded) = count_parked(ctx).await?;
        let mut progress =
            Progress::resume(&stored.unwrap_or_default(), watermark, parked, discarded);
        let turns = ctx.subscription.turns.as_ref().map(|turns| {
            progress.track_turns();
            (Arc::clone(turns), turns.join(&ctx.topic.name, progress.read_position()))
        });
        let (batch_sender, batches) = mpsc::channel(STREAM_READ_BATCHES_MAX);
        let reader = ReaderTask::spawn(
            Arc::clone(storage),
            ctx.topic.name.clone(),
            progress.read_position(),
            batch_sender,
        );
        // (Workers also take no run while a sequencer orders their key.)
        let run_max = match (&turns, ctx.subscription.config.ordering) {
            (None, Ordering::Fifo | Ordering::Actions | Ordering::Sequence) => {
                ctx.subscription.handler.max_run().clamp(1, RUN_EVENTS_MAX)
            }
            _ => 1,
        };
        tracing::info!(stream = %ctx.id, watermark, last, parked, run_max, "stream starting");
        Ok(Self {
            ctx: Arc::clone(ctx),
            checkpointer: checkpointer.clone(),
            waiters: Arc::clone(waiters),
            batches,
            reader,
            progress,
            book: Processbook::default(),
            calls: Calls::new(Arc::clone(&ctx.subscription), ctx.lease.clone()),
            timers: Timers::default(),
            turns,
            awaiting_turn: HashMap::new(),
            run_max,
        })
    }

    /// The status this incarnation starts with.
    pub(super) fn status(&self, commits: u64) -> StreamStatus {
        let (parked, discarded) = self.progress.parked();
        StreamStatus {
            watermark: self.progress.watermark(),
            max_time_micros: self.progress.time_mark(),
            commits,
            read_position: self.progress.read_position(),
            pending: self.progress.in_progress(),
            live_workers: self.book.len(),
            parked,
            discarded,
            done_above: self.progress.done_above(),
            health: StreamHealth::Running,
        }
    }

    /// Runs until shutdown (`Ok`) or the first error.
    pub(super) async fn run(mut self, io: &mut StreamIo) -> Result<()> {
        loop {
            let can_read =
                self.progress.in_progress() - self.book.buffered() < STREAM_PENDING_EVENTS_MAX;
            tokio::select! {
                biased;
                changed = io.shutdown.changed() => {
                    if changed.is_err() || *io.shutdown.borrow() {
                        return Ok(());
                    }
                }
                committed = self.progress.committed() => self.on_committed(committed?, io).await?,
                call = self.calls.next() => if let Some(call) = call? {
                    self.on_call_result(call).await?;
                    // Take every other finished call now: one trip round the loop per call
                    // costs more than the call's own bookkeeping.
                    while let Some(call) = self.calls.try_next() {
                        self.on_call_result(call?).await?;
                    }
                },
                () = granted(self.turns.as_ref()) => self.on_grants(),
                timer = self.timers.next() => self.on_timer(timer).await?,
                Some(message) = io.inbox.recv() => self.on_message(message).await,
                batch = self.batches.recv(), if can_read => match batch {
                    Some(events) => {
                        self.on_events(events?).await?;
                        self.show_reading(io);
                    }
                    None => return Err(self.reader.ended().await),
                },
            }
            self.progress.checkpoint(&self.ctx, &self.checkpointer).await?;
        }
    }

    async fn on_events(&mut self, batch: Batch) -> Result<()> {
        let Batch { reads, through } = batch;
        let mut fresh = Vec::with_capacity(reads.len());
        for read in reads {
            if let Read::Purged(range) = read {
                let skipped = self.progress.skip_purged(&self.ctx.id, range.clone())?;
                self.skipped_by_retention(&range, skipped);
                continue;
            }
            if !self.progress.accept(&self.ctx.id, read.position())? {
                continue; // resolved before the restart
            }
            match read {
                Read::Event(event) if self.ctx.owns(&event.key) => fresh.push(event),
                // Another partition's key (cluster mode): its own stream handles it.
                Read::Event(event) => self.progress.resolve_lost(event.position),
                // No event to hand over: resolved, as the subscriptions that got here before
                // the loss resolved it.
                Read::Lost(position) => self.progress.resolve_lost(position),
                Read::Purged(_) => {}
            }
        }
        if let Some((turns, _)) = &self.turns {
            let events = fresh
                .iter()
                .map(|e| TurnEvent { key: e.key.clone(), commit: e.commit, position: e.position })
                .collect();
            turns.read(&self.ctx.topic.name, events, through, self.progress.read_position());
        }
        for event in fresh {
            let book_key = self.book_key(&event);
            self.ensure_worker(&book_key, &event.key).await?;
            self.book.update(&book_key, |worker| worker.push(Item::Event(event)));
            self.drive(&book_key).await?;
        }
        Ok(())
    }

    /// Says that retention deleted events this stream had not resolved (`skipped` of `range`).
    fn skipped_by_retention(&self, range: &std::ops::RangeInclusive<u64>, skipped: u64) {
        if skipped == 0 {
            return;
        }
        tracing::warn!(
            stream = %self.ctx.id,
            from = range.start(),
            to = range.end(),
            skipped,
            "retention deleted events this subscription had not handled: skipped"
        );
        let labels = [
            ("subscription", self.ctx.id.subscription.to_string()),
            ("topic", self.ctx.id.topic.to_string()),
        ];
        metrics::counter!("inorder_retention_skipped_events_total", &labels).increment(skipped);
        SubscriptionStats::add(&self.ctx.subscription.stats.skipped_by_retention, skipped);
    }

    /// The processbook entry of an event: its key, or (without per-key order) the event itself.
    fn book_key(&self, event: &Event) -> String {
        match self.ctx.subscription.config.ordering {
            Ordering::None => format!("#{}", event.position),
            _ => event.key.clone(),
        }
    }

    fn unordered(&self) -> bool {
        self.ctx.subscription.config.ordering == Ordering::None
    }

    /// Creates the worker of `book_key` (loading the key's durable state) if it has none.
    async fn ensure_worker(&mut self, book_key: &str, key: &str) -> Result<()> {
        if self.book.contains(book_key) {
            return Ok(());
        }
        let state = if self.unordered() {
            KeyState::default()
        } else if let Some(state) = self.book.take_recent(key) {
            state
        } else {
            self.ctx.storage.key_state(&self.ctx.id, key).await?.unwrap_or_default()
        };
        let worker =
            KeyWorker::new(&self.ctx, key.to_owned(), state, self.unordered(), self.run_max);
        self.book.insert(book_key.to_owned(), worker);
        Ok(())
    }

    /// Lets a key take its next step, as long as it is not busy.
    async fn drive(&mut self, book_key: &str) -> Result<()> {
        loop {
            let room = self.book.buffered() < STREAM_REORDER_EVENTS_MAX;
            let ctx = Arc::clone(&self.ctx);
            let step = self.book.update(book_key, |worker| {
                (!worker.is_busy()).then(|| worker.next_step(&ctx, room))
            });
            let Some(Some(step)) = step else { return Ok(()) };
            match step {
                Step::Call { event, attempt } => {
                    let topic = &self.ctx.topic.name;
                    match &self.turns {
                        Some((turns, _))
                            if !turns.request(topic, &event.key, event.commit, event.position) =>
                        {
                            self.awaiting_turn.insert(book_key.to_owned(), (event, attempt));
                        }
                        _ => self.calls.start(book_key.to_owned(), event, attempt),
                    }
                    return Ok(());
                }
                Step::CallRun { events } => {
                    debug_assert!(self.turns.is_none(), "runs form only without turns");
                    self.calls.start_call(book_key.to_owned(), Call::Run { events });
                    return Ok(());
                }
                Step::Retry { event, attempt, delay } => {
                    self.timers.retry(delay, book_key.to_owned(), event, attempt);
                    return Ok(());
                }
                Step::Finished(record) => {
                    self.progress.record(book_key, record, self.waiters.any());
                    return Ok(());
                }
                Step::LoadFollowers { after } => {
                    let key = self.book.get(book_key).map(|w| w.key().to_owned());
                    let Some(key) = key else { return Ok(()) };
                    let (events, more) = self.followers(&key, after).await?;
                    self.book.update(book_key, |worker| worker.followers(events, more));
                }
                Step::Wait => {
                    let timeout = self.ctx.topic.config.sequence_timeout;
                    match self.book.get(book_key).and_then(|w| w.deadline(timeout)) {
                        Some(deadline) => self.timers.arm_timeout(book_key, deadline),
                        None => self.book.remove_idle(book_key, !self.unordered()),
                    }
                    return Ok(());
                }
            }
        }
    }

    /// One page of `key`'s parked `blocked` followers after `after`, read back from the log.
    async fn followers(&self, key: &str, after: u64) -> Result<(Vec<Event>, Option<u64>)> {
        let ctx = &self.ctx;
        let page = ctx
            .storage
            .parked(&ctx.id.subscription, Some((ctx.id.topic.clone(), after)), PARKED_LIST_MAX)
            .await?;
        let more =
            (page.len() >= PARKED_LIST_MAX).then(|| page.last().map(|p| p.position)).flatten();
        let mut events = Vec::new();
        for parked in page.into_iter().take_while(|p| p.topic == ctx.id.topic) {
            if parked.key == key
                && parked.reason == ParkReason::Blocked
                && parked.discarded_at_micros.is_none()
            {
                match read_event(ctx.storage.as_ref(), &ctx.id.topic, parked.position).await {
                    Ok(event) => events.push(event),
                    // Retention deleted it: it stays parked (listed; an operator discards it).
                    Err(Error::Purged { .. }) => {
                        tracing::warn!(stream = %ctx.id, position = parked.position,
                            "a blocked follower was deleted by retention; it stays parked");
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok((events, more))
    }

    /// Starts the calls whose turn came.
    fn on_grants(&mut self) {
        let Some((_, grants)) = &self.turns else { return };
        for (key, position) in grants.take() {
            match self.awaiting_turn.remove(&key) {
                Some((event, attempt)) if event.position == position => {
                    self.calls.start(key, event, attempt);
                }
                Some(other) => {
                    debug_assert!(false, "a turn granted to {key} at {position}, not its call");
                    self.awaiting_turn.insert(key, other);
                }
                None => {}
            }
        }
    }

    async fn on_call_result(&mut self, call: CallResult) -> Result<()> {
        let CallResult { book_key, called } = call;
        let ctx = Arc::clone(&self.ctx);
        let after = self
            .book
            .update(&book_key, |worker| match called {
                Called::One { event, attempt, result } => {
                    worker.handler_result(&ctx, event, attempt, result)
                }
                Called::Run { events, reply } => worker.run_result(&ctx, events, reply),
            })
            .ok_or_else(|| Error::Internal {
                what: format!("no worker for key {book_key} after its handler call"),
            })?;
        match after {
            AfterCall::Retry { event, attempt, delay } => {
                self.timers.retry(delay, book_key, event, attempt);
            }
            AfterCall::Finished(record) => {
                self.progress.record(&book_key, record, self.waiters.any());
            }
        }
        Ok(())
    }

    async fn on_timer(&mut self, timer: Timer) -> Result<()> {
        match timer {
            Timer::Retry { book_key, event, attempt } => {
                self.calls.start(book_key, event, attempt);
                Ok(())
            }
            Timer::Timeout { book_key } => self.expire(&book_key, Instant::now()).await,
        }
    }

    /// A key's sequence timeout fired: park what waits if the deadline passed, else re-arm.
    async fn expire(&mut self, book_key: &str, now: Instant) -> Result<()> {
        let timeout = self.ctx.topic.config.sequence_timeout;
        let Some(worker) = self.book.get(book_key) else { return Ok(()) };
        match (worker.deadline(timeout), worker.is_busy()) {
            (Some(deadline), false) if deadline <= now => {
                let ctx = Arc::clone(&self.ctx);
                if let Some(Step::Finished(record)) =
                    self.book.update(book_key, |worker| worker.expire(&ctx))
                {
                    self.progress.record(book_key, record, self.waiters.any());
                }
            }
            // Busy: look again shortly after its step is durable.
            (Some(deadline), busy) => {
                let at =
                    if busy { deadline.max(later(now, STREAM_TIMEOUT_RECHECK)) } else { deadline };
                self.timers.arm_timeout(book_key, at);
            }
            (None, _) => self.drive(book_key).await?,
        }
        Ok(())
    }

    async fn on_message(&mut self, message: StreamMsg) {
        match message {
            StreamMsg::Retry { position, reply } => {
                let _ = reply.send(self.operate(position, true).await);
            }
            StreamMsg::Discard { position, reply } => {
                let _ = reply.send(self.operate(position, false).await);
            }
        }
    }

    /// Hands an operator's retry or discard of a parked event to its key.
    async fn operate(&mut self, position: u64, retry: bool) -> Result<()> {
        let ctx = Arc::clone(&self.ctx);
        let unknown = || Error::UnknownParked {
            subscription: ctx.id.subscription.to_string(),
            topic: ctx.id.topic.to_string(),
            position,
        };
        let parked = ctx.storage.parked_event(&ctx.id, position).await?.ok_or_else(unknown)?;
        if parked.discarded_at_micros.is_some() {
            return Err(unknown());
        }
        let key = parked.key.clone();
        let book_key = match ctx.subscription.config.ordering {
            Ordering::None => format!("#{position}"),
            _ => key.clone(),
        };
        let item = if retry {
            Item::Retry(Box::new(ctx.read_event(position).await?))
        } else {
            Item::Discard(parked)
        };
        self.ensure_worker(&book_key, &key).await?;
        self.book.update(&book_key, |worker| worker.push(item));
        self.drive(&book_key).await
    }

    /// Shows how far the stream has read (read position, events in progress, live workers) in
    /// its status without waking anyone: waiters wait for the watermark, which has not moved.
    fn show_reading(&self, io: &StreamIo) {
        io.status.send_if_modified(|status| {
            status.read_position = self.progress.read_position();
            status.pending = self.progress.in_progress();
            status.live_workers = self.book.len();
            false
        });
    }

    /// A checkpoint is durable: its keys go on, waiters get their outcomes, status is published.
    async fn on_committed(&mut self, committed: Committed, io: &mut StreamIo) -> Result<()> {
        let Committed { watermark, time_mark, done_above, keys, outcomes, turns } = committed;
        // Turns end before the keys go on: a key's next event finds its predecessor gone.
        if let Some((key_turns, _)) = &self.turns {
            key_turns.resolved(&self.ctx.topic.name, &turns);
        }
        for key in &keys {
            self.book.update(key, KeyWorker::committed);
        }
        for key in &keys {
            self.drive(key).await?;
        }
        if self.waiters.any() {
            for (id, outcome) in &outcomes {
                self.waiters.deliver(&self.ctx.id.subscription, id, outcome);
            }
        }
        let (parked, discarded) = self.progress.parked();
        io.status.send_modify(|status| {
            debug_assert!(watermark >= status.watermark, "the published watermark only grows");
            *status = StreamStatus {
                watermark,
                max_time_micros: time_mark,
                commits: status.commits + 1,
                read_position: self.progress.read_position(),
                pending: self.progress.in_progress(),
                live_workers: self.book.len(),
                parked,
                discarded,
                done_above,
                health: StreamHealth::Running,
            };
        });
        let labels = [
            ("subscription", self.ctx.id.subscription.to_string()),
            ("topic", self.ctx.id.topic.to_string()),
        ];
        metrics::gauge!("inorder_live_workers", &labels).set(self.book.len() as f64);
        metrics::gauge!("inorder_watermark", &labels).set(watermark as f64);
        Ok(())
    }
}

/// Waits for turns granted to the stream (pending when it keeps none).
async fn granted(turns: Option<&(Arc<KeyTurns>, Arc<Grants>)>) {
    match turns {
        Some((_, grants)) => grants.notified().await,
        None => std::future::pending().await,
    }
}

/// Counts the parked (not discarded) and the discarded events of a stream.
async fn count_parked(ctx: &StreamContext) -> Result<(u64, u64)> {
    let id = &ctx.id;
    let (mut parked, mut discarded) = (0, 0);
    let mut after = Some((id.topic.clone(), 0));
    loop {
        let page = ctx.storage.parked(&id.subscription, after.clone(), PARKED_LIST_MAX).await?;
        let full = page.len() >= PARKED_LIST_MAX;
        let mine: Vec<_> = page.iter().take_while(|p| p.topic == id.topic).collect();
        for p in &mine {
            if p.discarded_at_micros.is_some() {
                discarded += 1;
            } else {
                parked += 1;
            }
        }
        if !full || mine.len() < page.len() {
            return Ok((parked, discarded));
        }
        after = mine.last().map(|p| (p.topic.clone(), p.position));
    }
}
