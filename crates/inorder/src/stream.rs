//! Streams: one subscription consuming one topic — the unit of ordering and progress.
//!
//! A stream is a task that owns, without locks:
//!
//! - the **processbook**: the live key workers, by key. Only this task creates or removes them,
//!   so get-or-create is atomic by construction and two workers never exist for one key;
//! - the **pending** positions (read, not yet done) and the **watermark** (every position at or
//!   below it is handled or parked);
//! - the next **checkpoint**: completions reported by workers, made durable in one batch by the
//!   checkpointer before the workers may go on and before the watermark is published.
//!
//! A reader task feeds it decoded events through a channel of [`STREAM_READ_BATCHES`] batches;
//! the stream stops taking them while [`STREAM_PENDING_EVENTS_MAX`] events are pending or a
//! worker queue is full, which holds the whole pipeline to bounded memory.
//!
//! On start the stream resumes from its durable watermark and skips the positions its last
//! checkpoint recorded as done above it, so nothing handled and checkpointed is handed to a
//! handler again.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use inorder_log::Name;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{AbortHandle, JoinHandle},
};

use crate::{
    checkpoint::CommitRequest,
    codec,
    config::{Ordering, StartFrom},
    error::{Error, Result},
    event::Event,
    handler::Reply,
    limits::{
        PARKED_LIST_MAX, STREAM_INBOX_DEPTH, STREAM_PENDING_EVENTS_MAX, STREAM_READ_RECORDS_MAX,
        WORKER_QUEUE_DEPTH,
    },
    runtime::{StreamContext, SubscriptionRuntime, TopicRuntime},
    state::{ParkReason, StreamId, StreamState},
    storage::{StateOp, Storage},
    waiters::Waiters,
    worker::{WorkItem, Worker, handle_unordered},
};

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

/// One event a worker finished with.
#[derive(Debug)]
pub(crate) struct Done {
    pub position: u64,
    pub event_id: String,
    pub time_micros: i64,
    /// False for an operator retry of a parked event (already done as far as the watermark is
    /// concerned).
    pub fresh: bool,
    pub outcome: Outcome,
}

/// Events a worker finished with, the state changes to make durable, and whom to tell.
#[derive(Debug)]
pub(crate) struct Completion {
    pub items: Vec<Done>,
    pub ops: Vec<StateOp>,
    pub durable: Option<oneshot::Sender<()>>,
}

/// Messages to a stream task.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    /// A worker or task finished events.
    Completed(Completion),
    /// A worker has nothing to do after receiving `received` items.
    Idle { key: String, received: u64 },
    /// An operator retries a parked event.
    Retry { position: u64, reply: oneshot::Sender<Result<()>> },
    /// An operator discards a parked event.
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
    /// Key workers alive.
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

struct Slot {
    queue: mpsc::Sender<WorkItem>,
    sent: u64,
    task: AbortHandle,
}

#[derive(Default)]
struct NextCheckpoint {
    ops: Vec<StateOp>,
    acks: Vec<oneshot::Sender<()>>,
    outcomes: Vec<(String, Outcome)>,
    dirty: bool,
}

struct InFlight {
    done: oneshot::Receiver<Result<()>>,
    watermark: u64,
    max_time_micros: i64,
    acks: Vec<oneshot::Sender<()>>,
    outcomes: Vec<(String, Outcome)>,
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
    workers: HashMap<String, Slot>,
    /// Items waiting for room in their worker's queue, in log order.
    stalled: VecDeque<WorkItem>,
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
    let ctx =
        Arc::new(StreamContext { id, subscription, topic, storage, inbox: inbox_sender.clone() });
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
        workers: HashMap::new(),
        stalled: VecDeque::new(),
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

/// The reader task: reads and decodes the topic from `from` on, waiting for new records.
async fn read_events(
    storage: Arc<dyn Storage>,
    topic: Name,
    from: u64,
    batches: mpsc::Sender<Result<Vec<Event>>>,
) {
    let opened = async {
        Ok::<_, Error>((storage.watch(&topic).await?, storage.reader(&topic, from).await?))
    };
    let (mut last, mut reader) = match opened.await {
        Ok(opened) => opened,
        Err(error) => {
            let _ = batches.send(Err(error)).await;
            return;
        }
    };
    loop {
        let records = match reader.read(STREAM_READ_RECORDS_MAX).await {
            Ok(records) => records,
            Err(error) => {
                let _ = batches.send(Err(error)).await;
                return;
            }
        };
        if records.is_empty() {
            let next = reader.next_position();
            if last.wait_for(|last| *last >= next).await.is_err() {
                return;
            }
            continue;
        }
        let decoded: Result<Vec<Event>> = records
            .iter()
            .map(|r| {
                codec::decode(&topic, r.position, &r.payload).map_err(|reason| Error::Decode {
                    topic: topic.to_string(),
                    position: r.position,
                    reason,
                })
            })
            .collect();
        let failed = decoded.is_err();
        if batches.send(decoded).await.is_err() || failed {
            return;
        }
    }
}

impl Stream {
    async fn run(mut self) {
        loop {
            let can_read =
                self.stalled.is_empty() && self.pending.len() < STREAM_PENDING_EVENTS_MAX;
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break;
                    }
                }
                Some(message) = self.inbox.recv() => self.on_message(message).await,
                result = wait(&mut self.in_flight), if self.in_flight.is_some() => {
                    if !self.on_committed(result) {
                        break;
                    }
                }
                batch = self.batches.recv(), if can_read => match batch {
                    Some(Ok(events)) => self.on_events(events),
                    Some(Err(error)) => {
                        tracing::error!(stream = %self.ctx.id, %error, "cannot read the topic; stream stops");
                        break;
                    }
                    None => break,
                },
            }
            if !self.flush_stalled() {
                break;
            }
            self.checkpoint().await;
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.reader_task.abort();
        for slot in self.workers.values() {
            slot.task.abort();
        }
        self.workers.clear();
        tracing::info!(stream = %self.ctx.id, watermark = self.watermark, "stream stopped");
    }

    fn on_events(&mut self, events: Vec<Event>) {
        for event in events {
            let position = event.position;
            self.read_position = position + 1;
            if position <= self.restart_until && self.restart.is_done(position) {
                self.mark_done(position);
                continue;
            }
            self.pending.insert(position);
            self.dispatch(event);
        }
    }

    fn dispatch(&mut self, event: Event) {
        if self.ordering == Ordering::None {
            tokio::spawn(handle_unordered(Arc::clone(&self.ctx), event, true));
            return;
        }
        self.stalled.push_back(WorkItem::Event(event));
    }

    /// Hands stalled items to their workers, in order, until a queue is full. Returns false if
    /// a worker died (the stream cannot know what its queue held, so it stops; a restart
    /// resumes from the durable state).
    fn flush_stalled(&mut self) -> bool {
        while let Some(item) = self.stalled.pop_front() {
            if !self.workers.contains_key(item.key()) {
                let key = item.key().to_owned();
                let slot = spawn_worker(&self.ctx, &key);
                self.workers.insert(key, slot);
            }
            let slot = self.workers.get_mut(item.key()).expect("inserted above");
            match slot.queue.try_send(item) {
                Ok(()) => slot.sent += 1,
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.stalled.push_front(item);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(item)) => {
                    tracing::error!(stream = %self.ctx.id, key = item.key(), "a key worker died; stream stops");
                    return false;
                }
            }
        }
        true
    }

    async fn on_message(&mut self, message: StreamMsg) {
        match message {
            StreamMsg::Completed(completion) => self.on_completed(completion),
            StreamMsg::Idle { key, received } => {
                if self.workers.get(&key).is_some_and(|slot| slot.sent == received)
                    && let Some(slot) = self.workers.remove(&key)
                {
                    drop(slot.queue); // the worker's queue closes and it ends
                    let (live_workers, pending) = (self.workers.len(), self.pending.len());
                    self.status.send_if_modified(|status| {
                        status.live_workers = live_workers;
                        status.pending = pending;
                        false // informational: do not wake status waiters
                    });
                }
            }
            StreamMsg::Retry { position, reply } => {
                let _ = reply.send(self.retry(position).await);
            }
            StreamMsg::Discard { position, reply } => {
                let _ = reply.send(self.discard(position).await);
            }
        }
    }

    fn on_completed(&mut self, completion: Completion) {
        let is_fresh =
            |position: u64| completion.items.iter().any(|d| d.fresh && d.position == position);
        for op in &completion.ops {
            match op {
                StateOp::Park(parked) if is_fresh(parked.position) => self.parked += 1,
                StateOp::Unpark { .. } => self.parked = self.parked.saturating_sub(1),
                _ => {}
            }
        }
        for done in completion.items {
            if done.fresh {
                self.pending.remove(&done.position);
                self.mark_done(done.position);
            }
            if matches!(done.outcome, Outcome::Handled(_)) {
                self.max_time_micros = self.max_time_micros.max(done.time_micros);
            }
            if self.waiters.any() {
                self.next.outcomes.push((done.event_id, done.outcome));
            }
        }
        self.next.ops.extend(completion.ops);
        self.next.acks.extend(completion.durable);
        self.next.dirty = true;
    }

    fn mark_done(&mut self, position: u64) {
        if position <= self.watermark {
            return;
        }
        self.done_above.insert(position);
        while self.done_above.first() == Some(&(self.watermark + 1)) {
            self.done_above.pop_first();
            self.watermark += 1;
            self.next.dirty = true;
        }
    }

    async fn retry(&mut self, position: u64) -> Result<()> {
        self.parked_or_unknown(position).await?;
        let event = self.ctx.read_event(position).await?;
        if self.ordering == Ordering::None {
            tokio::spawn(handle_unordered(Arc::clone(&self.ctx), event, false));
        } else {
            self.stalled.push_back(WorkItem::Retry(event));
        }
        Ok(())
    }

    async fn discard(&mut self, position: u64) -> Result<()> {
        let parked = self.parked_or_unknown(position).await?;
        if self.ordering == Ordering::None {
            self.next.ops.push(StateOp::Unpark { stream: self.ctx.id.clone(), position });
            self.parked = self.parked.saturating_sub(1);
            self.next.dirty = true;
        } else {
            self.stalled.push_back(WorkItem::Discard { key: parked.key, position });
        }
        Ok(())
    }

    async fn parked_or_unknown(&self, position: u64) -> Result<crate::state::ParkedEvent> {
        self.ctx.storage.parked_event(&self.ctx.id, position).await?.ok_or_else(|| {
            Error::UnknownParked {
                subscription: self.ctx.id.subscription.to_string(),
                topic: self.ctx.id.topic.to_string(),
                position,
            }
        })
    }

    /// Sends the next checkpoint if none is in flight and there is something to make durable.
    async fn checkpoint(&mut self) {
        if self.in_flight.is_some() || !self.next.dirty {
            return;
        }
        let next = std::mem::take(&mut self.next);
        let mut ops = next.ops;
        ops.push(StateOp::Stream {
            stream: self.ctx.id.clone(),
            state: StreamState {
                watermark: self.watermark,
                done_above: ranges(&self.done_above),
                max_time_micros: self.max_time_micros,
            },
        });
        let (done, is_done) = oneshot::channel();
        if self.checkpointer.send(CommitRequest { ops, done }).await.is_err() {
            return; // the engine is stopping
        }
        self.in_flight = Some(InFlight {
            done: is_done,
            watermark: self.watermark,
            max_time_micros: self.max_time_micros,
            acks: next.acks,
            outcomes: next.outcomes,
        });
    }

    /// A checkpoint is durable (or failed): release workers, answer waiters, publish status.
    fn on_committed(&mut self, result: Result<()>) -> bool {
        let in_flight = self.in_flight.take().expect("a checkpoint was in flight");
        if let Err(error) = result {
            tracing::error!(stream = %self.ctx.id, %error, "checkpoint failed; stream stops");
            return false;
        }
        for ack in in_flight.acks {
            let _ = ack.send(());
        }
        if self.waiters.any() {
            for (id, outcome) in &in_flight.outcomes {
                self.waiters.deliver(&self.ctx.id.subscription, id, outcome);
            }
        }
        self.commits += 1;
        let status = StreamStatus {
            watermark: in_flight.watermark,
            max_time_micros: in_flight.max_time_micros,
            commits: self.commits,
            read_position: self.read_position,
            pending: self.pending.len(),
            live_workers: self.workers.len(),
            parked: self.parked,
        };
        self.status.send_replace(status);
        let labels = [
            ("subscription", self.ctx.id.subscription.to_string()),
            ("topic", self.ctx.id.topic.to_string()),
        ];
        metrics::gauge!("inorder_live_workers", &labels).set(status.live_workers as f64);
        metrics::gauge!("inorder_watermark", &labels).set(status.watermark as f64);
        true
    }
}

async fn wait(in_flight: &mut Option<InFlight>) -> Result<()> {
    match in_flight {
        Some(in_flight) => (&mut in_flight.done).await.unwrap_or(Err(Error::Stopped)),
        None => std::future::pending().await,
    }
}

fn spawn_worker(ctx: &Arc<StreamContext>, key: &str) -> Slot {
    let (queue, receiver) = mpsc::channel(WORKER_QUEUE_DEPTH);
    let task = tokio::spawn(Worker::run(Arc::clone(ctx), key.to_owned(), receiver));
    Slot { queue, sent: 0, task: task.abort_handle() }
}

/// Compresses a set of positions into inclusive ranges.
fn ranges(positions: &BTreeSet<u64>) -> Vec<std::ops::RangeInclusive<u64>> {
    let mut ranges: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    for &position in positions {
        match ranges.last_mut() {
            Some(last) if *last.end() + 1 == position => *last = *last.start()..=position,
            _ => ranges.push(position..=position),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_compress_into_ranges() {
        let set: BTreeSet<u64> = [3, 4, 5, 9, 11, 12].into_iter().collect();
        assert_eq!(ranges(&set), vec![3..=5, 9..=9, 11..=12]);
        assert!(ranges(&BTreeSet::new()).is_empty());
    }
}
