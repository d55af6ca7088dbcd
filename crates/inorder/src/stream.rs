//! Streams: one subscription consuming one topic — the unit of ordering and progress.
//!
//! A stream is one task that owns, without locks:
//!
//! - the **processbook**: the active keys' [`KeyWorker`]s. Only this task creates or removes
//!   them, so there is never more than one per key, and a worker is removed only when it has
//!   nothing queued, waiting or in flight — an event arriving meanwhile simply finds it;
//! - the **handler calls** in flight (a `JoinSet`: handlers run in parallel on the runtime,
//!   within the subscription's keys-in-flight permits), and the timers of retries and sequence
//!   timeouts;
//! - the **pending** positions (read, not yet done) and the **watermark** (every position at or
//!   below it handled or parked);
//! - the next **checkpoint**: completions made durable in one batch by the checkpointer before
//!   their keys may go on and before the watermark is published.
//!
//! A reader task feeds it decoded events through a channel of [`STREAM_READ_BATCHES`] batches.
//! The stream stops taking them while [`STREAM_PENDING_EVENTS_MAX`] events are pending (events
//! waiting in reorder buffers have their own budget, [`STREAM_REORDER_EVENTS_MAX`], so waiting
//! for a missing action never stops the reading that would bring it).
//!
//! On start the stream resumes from its durable watermark and skips the positions its last
//! checkpoint recorded as done above it.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use tokio::{
    sync::{OwnedSemaphorePermit, mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use crate::{
    checkpoint::CommitRequest,
    config::{Ordering, StartFrom},
    error::{Error, Result},
    event::Event,
    handler::{HandlerError, Reply},
    limits::{
        PARKED_LIST_MAX, RECENT_KEY_STATES_MAX, STREAM_INBOX_DEPTH, STREAM_PENDING_EVENTS_MAX,
        STREAM_REORDER_EVENTS_MAX,
    },
    reader::read_events,
    runtime::{StreamContext, SubscriptionRuntime, TopicRuntime, call_handler, read_event},
    state::{KeyState, ParkReason, StreamId, StreamState},
    storage::Storage,
    waiters::Waiters,
    worker::{AfterCall, Item, KeyWorker, Step},
};

mod progress;

use self::progress::{InFlight, NextCheckpoint, wait};

/// Decoded batches the reader task may have ready ahead of the stream.
const STREAM_READ_BATCHES: usize = 2;

/// What became of an event in a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded with this reply.
    Handled(Reply),
    /// The event was parked.
    Parked {
        /// Why.
        reason: ParkReason,
        /// The last handler error, if a handler failed.
        error: Option<String>,
    },
    /// `publish_and_wait` of an id the topic already held, handled before this wait began
    /// (its reply is not kept).
    Deduplicated {
        /// The position of the earlier event.
        position: u64,
    },
}

/// One event a key finished with.
#[derive(Debug)]
pub(crate) struct Done {
    pub position: u64,
    pub event_id: String,
    pub time_micros: i64,
    /// False for an operator retry of a parked event (already done for the watermark).
    pub fresh: bool,
    pub outcome: Outcome,
}

/// Operator commands to a stream task.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    /// Retry a parked event.
    Retry { position: u64, reply: oneshot::Sender<Result<()>> },
    /// Discard a parked event.
    Discard { position: u64, reply: oneshot::Sender<Result<()>> },
}

/// A stream's status, published after every durable checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// Every position at or below it is handled or parked, durably.
    pub watermark: u64,
    /// Latest event time handled (microseconds).
    pub max_time_micros: i64,
    /// Checkpoints so far (changes on every checkpoint; status waiters re-check on it).
    pub commits: u64,
    /// The next position the stream will read.
    pub read_position: u64,
    /// Events read and not yet done.
    pub pending: usize,
    /// Keys with a live worker.
    pub live_workers: usize,
    /// Parked events.
    pub parked: u64,
}

/// The engine's handle on a running stream.
pub(crate) struct StreamHandle {
    pub inbox: mpsc::Sender<StreamMsg>,
    pub status: watch::Receiver<StreamStatus>,
    pub task: JoinHandle<()>,
}

/// A finished handler call.
struct CallResult {
    book_key: String,
    event: Event,
    attempt: u32,
    result: std::result::Result<Reply, HandlerError>,
}

/// What a timer does when it fires.
#[allow(clippy::large_enum_variant)] // transient, like `worker::Step`
enum TimerKind {
    /// Call the handler again.
    Retry { book_key: String, event: Event, attempt: u32 },
    /// Check whether the key's waiting sequence timed out.
    Timeout { book_key: String },
}

struct Stream {
    ctx: Arc<StreamContext>,
    checkpointer: mpsc::Sender<CommitRequest>,
    waiters: Arc<Waiters>,
    ordering: Ordering,
    batches: mpsc::Receiver<Result<Vec<Event>>>,
    reader_task: JoinHandle<()>,
    /// Durable progress found on start, and the last position that existed then.
    restart: StreamState,
    restart_until: u64,
    pending: BTreeSet<u64>,
    done_above: BTreeSet<u64>,
    watermark: u64,
    max_time_micros: i64,
    read_position: u64,
    processbook: HashMap<String, KeyWorker>,
    /// Durable states of keys whose worker left recently (see `remember`).
    recent_states: HashMap<String, KeyState>,
    /// Events waiting in reorder buffers, over all workers.
    buffered: usize,
    calls: JoinSet<CallResult>,
    waiting_permit: VecDeque<(String, Event, u32)>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_kinds: HashMap<u64, TimerKind>,
    timer_seq: u64,
    /// Keys with an armed sequence-timeout timer.
    timeouts_armed: HashSet<String>,
    next: NextCheckpoint,
    in_flight: Option<InFlight>,
    commits: u64,
    parked: u64,
    status: watch::Sender<StreamStatus>,
    inbox: mpsc::Receiver<StreamMsg>,
    shutdown: watch::Receiver<bool>,
}

/// Starts the stream of `subscription` on `topic`.
pub(crate) async fn start(
    subscription: Arc<SubscriptionRuntime>,
    topic: Arc<TopicRuntime>,
    storage: Arc<dyn Storage>,
    checkpointer: mpsc::Sender<CommitRequest>,
    waiters: Arc<Waiters>,
    shutdown: watch::Receiver<bool>,
) -> Result<StreamHandle> {
    let id = StreamId { subscription: subscription.name.clone(), topic: topic.name.clone() };
    let stored = storage.stream_state(&id).await?;
    let (first, last) = storage.positions(&topic.name).await?;
    let watermark = match (&stored, subscription.config.start) {
        (Some(state), _) => state.watermark,
        (None, StartFrom::Earliest) => 0,
        (None, StartFrom::Latest) => last,
    }
    .max(first.saturating_sub(1));
    let restart = stored.unwrap_or_default();
    let parked = count_parked(storage.as_ref(), &id).await?;
    let ordering = subscription.config.ordering;
    let (inbox_sender, inbox) = mpsc::channel(STREAM_INBOX_DEPTH);
    let (batch_sender, batches) = mpsc::channel(STREAM_READ_BATCHES);
    let reader_task = tokio::spawn(read_events(
        Arc::clone(&storage),
        topic.name.clone(),
        watermark + 1,
        batch_sender,
    ));
    let initial = StreamStatus {
        watermark,
        max_time_micros: restart.max_time_micros,
        read_position: watermark + 1,
        parked,
        ..StreamStatus::default()
    };
    let (status, status_receiver) = watch::channel(initial);
    let ctx = Arc::new(StreamContext { id, subscription, topic, storage });
    tracing::info!(stream = %ctx.id, watermark, last, parked, "stream starting");
    let stream = Stream {
        ctx,
        checkpointer,
        waiters,
        ordering,
        batches,
        reader_task,
        max_time_micros: restart.max_time_micros,
        restart,
        restart_until: last,
        pending: BTreeSet::new(),
        done_above: BTreeSet::new(),
        watermark,
        read_position: watermark + 1,
        processbook: HashMap::new(),
        recent_states: HashMap::new(),
        buffered: 0,
        calls: JoinSet::new(),
        waiting_permit: VecDeque::new(),
        timers: BinaryHeap::new(),
        timer_kinds: HashMap::new(),
        timer_seq: 0,
        timeouts_armed: HashSet::new(),
        next: NextCheckpoint::default(),
        in_flight: None,
        commits: 0,
        parked,
        status,
        inbox,
        shutdown,
    };
    let task = tokio::spawn(stream.run());
    Ok(StreamHandle { inbox: inbox_sender, status: status_receiver, task })
}

/// Counts the parked events of a stream.
async fn count_parked(storage: &dyn Storage, id: &StreamId) -> Result<u64> {
    let mut count = 0;
    let mut after = Some((id.topic.clone(), 0));
    loop {
        let page = storage.parked(&id.subscription, after.clone(), PARKED_LIST_MAX).await?;
        let full = page.len() >= PARKED_LIST_MAX;
        let mine: Vec<_> = page.iter().take_while(|p| p.topic == id.topic).collect();
        count += mine.len() as u64;
        if !full || mine.len() < page.len() {
            return Ok(count);
        }
        after = mine.last().map(|p| (p.topic.clone(), p.position));
    }
}

impl Stream {
    async fn run(mut self) {
        if let Err(error) = self.serve().await {
            tracing::error!(stream = %self.ctx.id, %error, "stream stops");
        }
        self.reader_task.abort();
        self.calls.abort_all();
        tracing::info!(stream = %self.ctx.id, watermark = self.watermark, "stream stopped");
    }

    async fn serve(&mut self) -> Result<()> {
        loop {
            let can_read = self.pending.len() - self.buffered < STREAM_PENDING_EVENTS_MAX;
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let permits = Arc::clone(&self.ctx.subscription.in_flight);
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        return Ok(());
                    }
                }
                result = wait(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.on_committed(result).await?;
                }
                Some(joined) = self.calls.join_next(), if !self.calls.is_empty() => {
                    self.on_call_result(joined).await?;
                    // Take every other finished call now: one trip round the loop per call
                    // costs more than the call's own bookkeeping.
                    while let Some(joined) = self.calls.try_join_next() {
                        self.on_call_result(joined).await?;
                    }
                }
                permit = permits.acquire_owned(), if !self.waiting_permit.is_empty() => {
                    let permit = permit.map_err(|_| Error::Stopped)?;
                    if let Some((book_key, event, attempt)) = self.waiting_permit.pop_front() {
                        self.spawn_call(book_key, event, attempt, permit);
                    }
                }
                () = sleep_until(next_timer), if next_timer.is_some() => self.on_timer().await?,
                Some(message) = self.inbox.recv() => self.on_message(message).await,
                batch = self.batches.recv(), if can_read => match batch {
                    Some(events) => self.on_events(events?).await?,
                    None => return Ok(()),
                },
            }
            self.checkpoint().await;
        }
    }

    async fn on_events(&mut self, events: Vec<Event>) -> Result<()> {
        for event in events {
            let position = event.position;
            self.read_position = position + 1;
            if position <= self.restart_until && self.restart.is_done(position) {
                self.mark_done(position);
                continue;
            }
            self.pending.insert(position);
            let book_key = self.book_key(&event);
            self.worker(&book_key, &event.key).await?.push(Item::Event(event));
            self.drive(&book_key).await?;
        }
        Ok(())
    }

    /// The processbook entry of an event: its key, or (without per-key order) the event itself.
    fn book_key(&self, event: &Event) -> String {
        match self.ordering {
            Ordering::None => format!("#{}", event.position),
            _ => event.key.clone(),
        }
    }

    /// The worker of `book_key`, created (loading the key's durable state) if needed.
    async fn worker(&mut self, book_key: &str, key: &str) -> Result<&mut KeyWorker> {
        if !self.processbook.contains_key(book_key) {
            let unordered = self.ordering == Ordering::None;
            let state = if unordered {
                KeyState::default()
            } else if let Some(state) = self.recent_states.remove(key) {
                state
            } else {
                self.ctx.storage.key_state(&self.ctx.id, key).await?.unwrap_or_default()
            };
            let worker = KeyWorker::new(&self.ctx, key.to_owned(), state, unordered);
            self.processbook.insert(book_key.to_owned(), worker);
        }
        Ok(self.processbook.get_mut(book_key).expect("inserted above"))
    }

    /// Keeps the durable state of a worker that left, so the key's next worker need not read it
    /// back (it is exactly what the last checkpoint stored). Bounded: cleared when full.
    fn remember(&mut self, worker: KeyWorker) {
        if self.ordering == Ordering::None {
            return;
        }
        if self.recent_states.len() >= RECENT_KEY_STATES_MAX {
            self.recent_states.clear();
        }
        let (key, state) = worker.into_state();
        self.recent_states.insert(key, state);
    }

    /// Lets a key take its next step, as long as it is not busy.
    async fn drive(&mut self, book_key: &str) -> Result<()> {
        loop {
            let room = self.buffered < STREAM_REORDER_EVENTS_MAX;
            let Some(worker) = self.processbook.get_mut(book_key) else { return Ok(()) };
            if worker.busy {
                return Ok(());
            }
            let before = worker.buffered();
            let step = worker.next_step(&self.ctx, room);
            self.buffered = self.buffered + worker.buffered() - before;
            match step {
                Step::Call { event, attempt } => {
                    worker.busy = true;
                    self.start_call(book_key.to_owned(), event, attempt);
                    return Ok(());
                }
                Step::Finished { items, ops } => {
                    worker.busy = true;
                    self.record(book_key, items, ops);
                    return Ok(());
                }
                Step::LoadFollowers { after } => {
                    let key = worker.key().to_owned();
                    let (events, more) = self.followers(&key, after).await?;
                    if let Some(worker) = self.processbook.get_mut(book_key) {
                        worker.followers(events, more);
                    }
                }
                Step::Wait => {
                    let timeout = self.ctx.topic.config.sequence_timeout;
                    if let Some(deadline) = worker.deadline(timeout) {
                        if self.timeouts_armed.insert(book_key.to_owned()) {
                            let kind = TimerKind::Timeout { book_key: book_key.to_owned() };
                            self.add_timer(deadline, kind);
                        }
                    } else if worker.is_idle()
                        && let Some(worker) = self.processbook.remove(book_key)
                    {
                        self.remember(worker);
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
            if parked.key == key && parked.reason == ParkReason::Blocked {
                events
                    .push(read_event(ctx.storage.as_ref(), &ctx.id.topic, parked.position).await?);
            }
        }
        Ok((events, more))
    }

    fn start_call(&mut self, book_key: String, event: Event, attempt: u32) {
        match Arc::clone(&self.ctx.subscription.in_flight).try_acquire_owned() {
            Ok(permit) => self.spawn_call(book_key, event, attempt, permit),
            Err(_) => self.waiting_permit.push_back((book_key, event, attempt)),
        }
    }

    fn spawn_call(
        &mut self,
        book_key: String,
        event: Event,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) {
        let subscription = Arc::clone(&self.ctx.subscription);
        self.calls.spawn(async move {
            let result = call_handler(&subscription, &event, attempt).await;
            drop(permit);
            CallResult { book_key, event, attempt, result }
        });
    }

    async fn on_call_result(
        &mut self,
        joined: std::result::Result<CallResult, tokio::task::JoinError>,
    ) -> Result<()> {
        let call = joined.map_err(|e| Error::state(format!("a handler task failed: {e}")))?;
        let CallResult { book_key, event, attempt, result } = call;
        let Some(worker) = self.processbook.get_mut(&book_key) else {
            return Err(Error::state(format!(
                "no worker for key {book_key} after its handler call"
            )));
        };
        match worker.handler_result(&self.ctx, event, attempt, result) {
            AfterCall::Retry { event, attempt, delay } => {
                self.add_timer(
                    later(Instant::now(), delay),
                    TimerKind::Retry { book_key, event, attempt },
                );
            }
            AfterCall::Finished { items, ops } => self.record(&book_key, items, ops),
        }
        Ok(())
    }

    fn add_timer(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq)));
        self.timer_kinds.insert(self.timer_seq, kind);
    }

    async fn on_timer(&mut self) -> Result<()> {
        let now = Instant::now();
        while let Some(&Reverse((at, seq))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.timer_kinds.remove(&seq) {
                Some(TimerKind::Retry { book_key, event, attempt }) => {
                    self.start_call(book_key, event, attempt);
                }
                Some(TimerKind::Timeout { book_key }) => {
                    self.timeouts_armed.remove(&book_key);
                    self.expire(&book_key, now).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A key's sequence timeout fired: park what waits if the deadline passed, else re-arm.
    async fn expire(&mut self, book_key: &str, now: Instant) -> Result<()> {
        let timeout = self.ctx.topic.config.sequence_timeout;
        let Some(worker) = self.processbook.get_mut(book_key) else { return Ok(()) };
        match worker.deadline(timeout) {
            Some(deadline) if deadline <= now && !worker.busy => {
                let before = worker.buffered();
                let step = worker.expire(&self.ctx);
                self.buffered -= before - worker.buffered();
                if let Step::Finished { items, ops } = step {
                    worker.busy = true;
                    self.record(book_key, items, ops);
                }
            }
            Some(deadline) => {
                self.timeouts_armed.insert(book_key.to_owned());
                let at = if worker.busy {
                    deadline.max(later(now, std::time::Duration::from_millis(10)))
                } else {
                    deadline
                };
                self.add_timer(at, TimerKind::Timeout { book_key: book_key.to_owned() });
            }
            None => self.drive(book_key).await?,
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
        let parked = ctx.storage.parked_event(&ctx.id, position).await?.ok_or_else(|| {
            Error::UnknownParked {
                subscription: ctx.id.subscription.to_string(),
                topic: ctx.id.topic.to_string(),
                position,
            }
        })?;
        let book_key = match self.ordering {
            Ordering::None => format!("#{position}"),
            _ => parked.key.clone(),
        };
        let item = if retry {
            Item::Retry(ctx.read_event(position).await?)
        } else {
            Item::Discard(position)
        };
        self.worker(&book_key, &parked.key).await?.push(item);
        self.drive(&book_key).await
    }
}

/// `at + delay`, saturating far in the future instead of overflowing (delays come from input).
pub(crate) fn later(at: Instant, delay: std::time::Duration) -> Instant {
    const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(delay.min(FAR_FUTURE))
        .unwrap_or_else(|| at + std::time::Duration::from_secs(86_400))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
