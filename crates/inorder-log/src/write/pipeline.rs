//! [`Pipeline`]: the write path of one open log — its bounded command queue and its three stages
//! — run by the process-wide pool ([`super::pool`]) with no thread of its own.
//!
//! ```text
//!  appenders ─► command queue ─► write stage ─► sync queue ─► sync stage ─► synced ─► answer stage
//!               (WRITER_QUEUE_    group, pwrite   (requests)    one fsync     (batches)   wake the
//!                DEPTH)                                         per batch,                appenders
//!                                                               publish
//! ```
//!
//! An appender sends a [`Command`] and wakes the write stage; the stage's [`Turn`] puts it in a
//! ready queue of the pool if it was idle. A pool thread runs it: it serves commands — groups
//! appends and writes them ([`Writer`]) — until the queue is empty or it has served
//! [`WRITER_TURN_GROUPS_MAX`] commands or groups, then lets other logs have the thread. Under `group` each
//! written group goes to the sync queue and wakes the sync stage the same way. A syncer thread
//! takes every queued request, runs one fsync ([`group_commit`]) and publishes, hands the batch to
//! the answer stage, and goes straight on with the requests written meanwhile — fsyncs back to
//! back, as a dedicated syncer thread would — while another syncer thread answers the appenders,
//! in the order their batches were synced. When nothing was written meanwhile, the thread answers
//! the batch itself ([`Pipeline::follow_up`]) instead of waking another. Under `never` the write stage answers at once (explicit syncs
//! still go through the sync stage); under `always` it fsyncs and answers each append itself, and
//! runs on a syncer thread so that writer threads never wait for the disk.
//!
//! **Guarantees.**
//! - Each stage runs on at most one thread at a time, so a log's writes are single-threaded
//!   (positions contiguous) and its fsyncs run and publish in order; different logs, and the
//!   stages of one log, run in parallel on different pool threads.
//! - Pipelining as with a thread per stage: the write stage writes the next group while the sync
//!   stage's fsync runs, and the next fsync starts while the last batch is being answered.
//! - Bounded: at most [`SYNC_QUEUE_DEPTH`] requests of a log are written and not yet answered;
//!   at that depth the write stage pauses (without holding a thread) until the answer stage
//!   catches up, and appenders wait in the bounded command queue.
//! - [`Pipeline::close`] returns only after every command was served and every request answered.
//! - Idle logs hibernate: a timer on the pool's writer queue fires [`LogOptions::idle_after`]
//!   after the last command, and the write stage — never anyone else — closes the files.
//!
//! [`LogOptions::idle_after`]: crate::LogOptions::idle_after

use std::{
    collections::VecDeque,
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};

use crate::{
    limits::{
        ANSWER_TURN_BATCHES_MAX, GROUP_COMMIT_BYTES_MAX, SYNC_QUEUE_DEPTH, SYNC_TURN_BATCHES_MAX,
        WRITER_TURN_GROUPS_MAX,
    },
    options::FsyncPolicy,
    shared::Shared,
    write::{
        group_commit::{self, SyncRequest},
        ready::{ReadyQueue, Stage},
        turn::Turn,
        writer::{Command, Writer},
    },
};

/// The pool's two ready queues: what its writer threads serve (write stages of `group` and
/// `never` logs, idle timers) and what its syncer threads serve (sync and answer stages, write
/// stages of `always` logs).
pub(crate) struct Queues {
    pub(crate) writers: ReadyQueue<Pipeline>,
    pub(crate) syncers: ReadyQueue<Pipeline>,
}

impl Queues {
    pub(crate) fn new() -> Self {
        Self { writers: ReadyQueue::new(), syncers: ReadyQueue::new() }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

/// The write path of one open log.
pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    queues: Arc<Queues>,
    commands: flume::Receiver<Command>,
    /// The write stage's state. Only the thread whose turn it is locks it, so the lock is never
    /// contended; it is what lets pool threads take turns with the state without `unsafe`.
    writer: Mutex<WriterStage>,
    write_turn: Turn,
    sync: Mutex<SyncStage>,
    sync_turn: Turn,
    answer_turn: Turn,
    /// Wakes [`Pipeline::close`] when the pipeline may have drained.
    drained: Condvar,
    idle: IdleClock,
}

struct WriterStage {
    writer: Writer,
    /// A command taken while gathering a group of appends, served next.
    held: Option<Command>,
    /// Every sender is gone and every command was served.
    closed: bool,
}

/// What the sync and answer stages have to do, and the write stage's state as they see it.
struct SyncStage {
    /// Written, waiting for an fsync.
    requests: VecDeque<SyncRequest>,
    /// Synced (or failed) batches, waiting to be answered, in the order they were synced.
    synced: VecDeque<Synced>,
    /// Requests submitted and not answered yet (queued, being synced, synced): at most
    /// [`SYNC_QUEUE_DEPTH`].
    unanswered: usize,
    /// The write stage stopped because `unanswered` reached the depth; answering wakes it.
    writer_paused: bool,
    /// The write stage served its last command.
    writer_closed: bool,
}

impl SyncStage {
    fn is_drained(&self) -> bool {
        self.writer_closed && self.unanswered == 0
    }
}

/// One fsync's batch and its outcome.
struct Synced {
    batch: Vec<SyncRequest>,
    outcome: Result<(), Arc<io::Error>>,
}

/// When the log last served a command, and its idle timer.
struct IdleClock {
    idle_after: Duration,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the end of the last writer turn that served a command.
    last_active_nanos: AtomicU64,
    /// An idle timer of this log is in the pool's writer queue (at most one is).
    armed: AtomicBool,
    /// The idle timer fired: the write stage should check whether to hibernate.
    due: AtomicBool,
}

impl IdleClock {
    fn last_active(&self) -> Instant {
        let since_epoch = Duration::from_nanos(self.last_active_nanos.load(SeqCst));
        self.epoch.checked_add(since_epoch).unwrap_or_else(Instant::now)
    }

    /// When the log is idle long enough to hibernate; `None` if never (an `idle_after` too large
    /// for the clock).
    fn deadline(&self) -> Option<Instant> {
        self.last_active().checked_add(self.idle_after)
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_active_nanos.store(nanos, SeqCst);
    }
}

impl Pipeline {
    pub(crate) fn new(
        shared: Arc<Shared>,
        writer: Writer,
        commands: flume::Receiver<Command>,
        queues: Arc<Queues>,
    ) -> Arc<Self> {
        let idle_after = shared.options.idle_after;
        let pipeline = Arc::new(Self {
            shared,
            queues,
            commands,
            writer: Mutex::new(WriterStage { writer, held: None, closed: false }),
            write_turn: Turn::default(),
            sync: Mutex::new(SyncStage {
                requests: VecDeque::new(),
                synced: VecDeque::new(),
                unanswered: 0,
                writer_paused: false,
                writer_closed: false,
            }),
            sync_turn: Turn::default(),
            answer_turn: Turn::default(),
            drained: Condvar::new(),
            idle: IdleClock {
                idle_after,
                epoch: Instant::now(),
                last_active_nanos: AtomicU64::new(0),
                armed: AtomicBool::new(false),
                due: AtomicBool::new(false),
            },
        });
        // Counted from the open: a log that is only read still releases its files when idle.
        pipeline.arm_idle_timer();
        pipeline
    }

    /// Wakes the write stage: call after sending a command (or closing the queue).
    pub(crate) fn notify_writer(self: &Arc<Self>) {
        if self.write_turn.notify() {
            // Under `always` the write stage fsyncs: it runs on the threads made to wait for disks.
            let queue = match self.shared.options.fsync {
                FsyncPolicy::Always => &self.queues.syncers,
                FsyncPolicy::Group | FsyncPolicy::Never => &self.queues.writers,
            };
            queue.push(Arc::clone(self), Stage::Write);
        }
    }

    fn notify(self: &Arc<Self>, stage: Stage) {
        match stage {
            Stage::Write => self.notify_writer(),
            Stage::Sync | Stage::Answer => {
                if self.turn(stage).notify() {
                    self.queues.syncers.push(Arc::clone(self), stage);
                }
            }
        }
    }

    fn turn(&self, stage: Stage) -> &Turn {
        match stage {
            Stage::Write => &self.write_turn,
            Stage::Sync => &self.sync_turn,
            Stage::Answer => &self.answer_turn,
        }
    }

    /// A pool thread starts a turn of `stage`.
    pub(crate) fn start(&self, stage: Stage) {
        self.turn(stage).start();
    }

    /// A pool thread ends a turn of `stage`; `true` if the stage must run again.
    pub(crate) fn finish(&self, stage: Stage, more: bool) -> bool {
        self.turn(stage).finish(more)
    }

    /// Runs a turn of `stage`; `true` if it stopped with work left.
    pub(crate) fn run(self: &Arc<Self>, stage: Stage) -> bool {
        match stage {
            Stage::Write => self.run_writer(),
            Stage::Sync => self.run_sync(),
            Stage::Answer => self.run_answers(),
        }
    }

    /// Waits until every command was served and every fsync in flight answered. Call after the
    /// last sender of the command queue was dropped.
    pub(crate) fn close(self: &Arc<Self>) {
        self.notify_writer();
        let mut sync = self.sync.lock();
        while !sync.is_drained() {
            self.drained.wait(&mut sync);
        }
    }

    /// The write stage's turn: serves commands; returns `true` if it stopped with work left.
    fn run_writer(self: &Arc<Self>) -> bool {
        let mut stage = self.writer.lock();
        if stage.closed {
            return false;
        }
        if self.idle.due.swap(false, SeqCst) {
            self.hibernate_if_idle(&mut stage);
        }
        let mut served = 0;
        let mut more = true;
        for _ in 0..WRITER_TURN_GROUPS_MAX {
            if !self.sync_has_room() {
                more = false; // the answer stage wakes the write stage when there is room
                break;
            }
            let command = match stage.held.take() {
                Some(command) => command,
                None => match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(flume::TryRecvError::Empty) => {
                        more = false;
                        break;
                    }
                    Err(flume::TryRecvError::Disconnected) => {
                        self.close_writer(&mut stage);
                        return false;
                    }
                },
            };
            self.serve(&mut stage, command);
            served += 1;
        }
        if served > 0 {
            self.idle.touch();
            self.arm_idle_timer();
        }
        more
    }

    fn serve(self: &Arc<Self>, stage: &mut WriterStage, command: Command) {
        match command {
            Command::Append(first) => {
                let commands_max = stage.writer.group_commands_max();
                let mut bytes = first.payload_bytes;
                let mut group = vec![first];
                while group.len() < commands_max && bytes < GROUP_COMMIT_BYTES_MAX {
                    match self.commands.try_recv() {
                        Ok(Command::Append(next)) => {
                            bytes += next.payload_bytes;
                            group.push(next);
                        }
                        Ok(other) => {
                            stage.held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Some(request) = stage.writer.commit(group) {
                    self.submit(request);
                }
            }
            Command::Sync { reply } => {
                if let Some(request) = stage.writer.sync_everything(reply) {
                    self.submit(request);
                }
            }
            Command::Purge { before, reply } => {
                let _ = reply.send(stage.writer.purge(before));
            }
        }
    }

    /// Whether one more request may be submitted; if not, marks the write stage paused.
    fn sync_has_room(&self) -> bool {
        let mut sync = self.sync.lock();
        let room = sync.unanswered < SYNC_QUEUE_DEPTH;
        if !room {
            sync.writer_paused = true;
        }
        room
    }

    /// Hands a written extent to the sync stage.
    fn submit(self: &Arc<Self>, request: SyncRequest) {
        let mut sync = self.sync.lock();
        assert!(sync.unanswered < SYNC_QUEUE_DEPTH, "the write stage checked for room first");
        sync.requests.push_back(request);
        sync.unanswered += 1;
        drop(sync);
        self.notify(Stage::Sync);
    }

    fn close_writer(&self, stage: &mut WriterStage) {
        stage.closed = true;
        stage.writer.close();
        let mut sync = self.sync.lock();
        sync.writer_closed = true;
        if sync.is_drained() {
            self.drained.notify_all();
        }
    }

    /// A stage panicked (a bug): the log latches, so every later command is refused without
    /// touching what the panic may have left half done. Appends the stage held were dropped with
    /// it; their appenders get [`crate::Error::Closed`].
    pub(crate) fn stage_panicked(&self, stage: Stage) {
        let source =
            self.shared.latch(io::Error::other(format!("the log's {stage:?} stage panicked")));
        tracing::error!(dir = %self.shared.dir.display(), %source, "log stage panicked");
    }

    /// The sync stage's turn: one fsync for all the requests queued, then the next, back to back,
    /// up to [`SYNC_TURN_BATCHES_MAX`]; each synced batch goes to the answer stage.
    fn run_sync(self: &Arc<Self>) -> bool {
        for _ in 0..SYNC_TURN_BATCHES_MAX {
            let batch: Vec<SyncRequest> = self.sync.lock().requests.drain(..).collect();
            if batch.is_empty() {
                return false;
            }
            let outcome =
                catch_unwind(AssertUnwindSafe(|| group_commit::sync_batch(&self.shared, &batch)))
                    .unwrap_or_else(|_| {
                        Err(self.shared.latch(io::Error::other("the log's sync stage panicked")))
                    });
            let mut sync = self.sync.lock();
            sync.synced.push_back(Synced { batch, outcome });
            let more = !sync.requests.is_empty();
            drop(sync);
            if !more {
                // This thread answers the batch right after the turn (see `follow_up`): no
                // other thread needs waking.
                return false;
            }
            // This thread goes on with the next fsync; another one answers.
            self.notify(Stage::Answer);
        }
        true
    }

    /// What the pool thread that just ended a turn of `stage` should run next for this log, if
    /// anything: after a sync turn that left batches to answer, the answer stage (when it is
    /// idle, the thread takes its turn directly instead of waking another thread for it).
    pub(crate) fn follow_up(&self, stage: Stage) -> Option<Stage> {
        match stage {
            Stage::Sync => {
                let unanswered = !self.sync.lock().synced.is_empty();
                (unanswered && self.answer_turn.notify()).then_some(Stage::Answer)
            }
            Stage::Write | Stage::Answer => None,
        }
    }

    /// The answer stage's turn: answers synced batches in order, up to
    /// [`ANSWER_TURN_BATCHES_MAX`], and wakes a write stage paused for room.
    fn run_answers(self: &Arc<Self>) -> bool {
        for _ in 0..ANSWER_TURN_BATCHES_MAX {
            let Some(Synced { batch, outcome }) = self.sync.lock().synced.pop_front() else {
                return false;
            };
            let answered = batch.len();
            group_commit::answer(batch, &outcome);
            let mut sync = self.sync.lock();
            sync.unanswered -= answered;
            let wake_writer = std::mem::take(&mut sync.writer_paused);
            if sync.is_drained() {
                self.drained.notify_all();
            }
            drop(sync);
            if wake_writer {
                self.notify_writer();
            }
        }
        !self.sync.lock().synced.is_empty()
    }

    /// Arms the log's idle timer unless one is armed already.
    fn arm_idle_timer(self: &Arc<Self>) {
        if let Some(due) = self.idle.deadline()
            && !self.idle.armed.swap(true, SeqCst)
        {
            self.queues.writers.arm(due, Arc::downgrade(self));
        }
    }

    /// The idle timer fired: if the log served nothing since, let the write stage hibernate it;
    /// otherwise wait for the new deadline.
    pub(crate) fn idle_timer_due(self: &Arc<Self>) {
        if let Some(due) = self.idle.deadline()
            && due > Instant::now()
        {
            self.queues.writers.arm(due, Arc::downgrade(self)); // still armed
            return;
        }
        self.idle.armed.store(false, SeqCst);
        self.idle.due.store(true, SeqCst);
        self.notify_writer();
    }

    fn hibernate_if_idle(self: &Arc<Self>, stage: &mut WriterStage) {
        let idle = self.idle.last_active().elapsed() >= self.idle.idle_after;
        if idle && stage.held.is_none() && self.commands.is_empty() {
            stage.writer.hibernate();
        } else if !idle {
            self.arm_idle_timer(); // served something after the timer fired
        }
    }
}
