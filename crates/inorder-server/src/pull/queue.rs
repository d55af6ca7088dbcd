//! The offers and leases of one pull subscription (see the parent module): runs offered by
//! the handler, leased by pulls and consume streams, decided by acks, nacks and deadlines.

use std::{
    collections::{HashMap, VecDeque},
    future::poll_fn,
    sync::{
        Arc, Weak,
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use inorder::{Event, HandlerError};
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};
use tokio_util::time::{DelayQueue, delay_queue};

use crate::limits::{DELAY_QUEUE_RENEW_AGE, LEASE_TIMEOUT_MAX, PULL_EVENTS_MAX};

/// What a consumer decided about a leased event.
#[derive(Debug, Clone, Copy)]
pub(super) enum Decision {
    Ack,
    Nack { delay: Duration },
    Expired,
}

/// How a run ended: its first `acked` events were acked; the next one failed, if `failed`.
#[derive(Debug)]
pub(super) struct RunDecision {
    pub acked: usize,
    pub failed: Option<Decision>,
}

/// One offer: the events of one handler call (one event, or a run of one key's).
struct Run {
    /// Not leased yet (emptied by the pull that leases the run).
    events: Vec<Event>,
    attempt: u32,
    /// Per leased event: the consumer's decision so far, and its lease id while held.
    decisions: Vec<Option<Decision>>,
    leases: Vec<String>,
    decide: oneshot::Sender<RunDecision>,
}

struct Lease {
    run: u64,
    /// The event's index in its run.
    index: usize,
    /// Its deadline in [`Queue::deadlines`].
    deadline: delay_queue::Key,
    /// The consume stream it was leased to, which counts it until it ends.
    window: Option<Arc<Window>>,
}

impl Lease {
    /// The lease ended (settled, expired, or with its run): its stream has room again.
    fn ended(self) {
        if let Some(window) = self.window {
            window.held.fetch_sub(1, AtomicOrdering::AcqRel);
            window.freed.notify_one();
        }
    }
}

/// The leases a consume stream holds (`POST …/consume`): it leases more only while they are
/// fewer than its window.
#[derive(Default)]
pub struct Window {
    held: AtomicUsize,
    freed: Notify,
}

impl Window {
    /// Leases held now.
    pub fn held(&self) -> usize {
        self.held.load(AtomicOrdering::Acquire)
    }

    /// Waits until a lease of this window ends (a permit is kept if one ended before).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

struct Queue {
    /// Runs offered and not leased, in the order they were offered.
    offers: VecDeque<u64>,
    /// Undecided runs by id, offered or leased.
    runs: HashMap<u64, Run>,
    next_run: u64,
    /// Leases handed out so far: with the queue's random prefix, the next lease's id.
    next_lease: u64,
    /// Held leases by id. A lease is here exactly while its id waits in `deadlines`.
    leases: HashMap<String, Lease>,
    /// Lease ids by deadline.
    deadlines: DelayQueue<String>,
    /// When `deadlines` was created: see [`DELAY_QUEUE_RENEW_AGE`].
    deadlines_since: Instant,
    /// The reaper's waker, to wake it when `deadlines` is replaced.
    reaper: Option<Waker>,
}

impl Queue {
    fn new() -> Self {
        Self {
            offers: VecDeque::new(),
            runs: HashMap::new(),
            next_run: 0,
            next_lease: 0,
            leases: HashMap::new(),
            deadlines: DelayQueue::new(),
            deadlines_since: Instant::now(),
            reaper: None,
        }
    }

    /// Replaces an empty `deadlines` older than [`DELAY_QUEUE_RENEW_AGE`]: its timer wheel does
    /// not advance while idle, and refuses (panics on) a deadline too far past where it stopped.
    fn renew_idle_deadlines(&mut self, now: Instant) {
        if self.deadlines.is_empty()
            && now.saturating_duration_since(self.deadlines_since) > DELAY_QUEUE_RENEW_AGE
        {
            self.deadlines = DelayQueue::new();
            self.deadlines_since = now;
            if let Some(reaper) = &self.reaper {
                reaper.wake_by_ref(); // to wait on the new queue
            }
        }
    }

    /// Records the decision on held lease `lease`; false if it is not held (unknown, settled,
    /// expired, or ended with its run).
    fn decide(&mut self, lease: &str, decision: Decision) -> bool {
        let Some(held) = self.leases.remove(lease) else { return false };
        let deadline = self.deadlines.try_remove(&held.deadline);
        assert!(
            deadline.is_some_and(|d| d.get_ref() == lease),
            "a held lease's deadline is queued"
        );
        let (run_id, index) = (held.run, held.index);
        held.ended();
        let Some(run) = self.runs.get_mut(&run_id) else {
            panic!("lease {lease} held for run {run_id} that was decided");
        };
        run.decisions[index] = Some(decision);
        let live = !run.decide.is_closed();
        self.conclude(run_id);
        live
    }

    /// Decides run `id` if its decisions so far say how it ends: every event acked, or the
    /// first not acked failed. Its other leases end with it.
    fn conclude(&mut self, id: u64) {
        let Some(run) = self.runs.get(&id) else { return };
        let acked = run.decisions.iter().take_while(|d| matches!(d, Some(Decision::Ack))).count();
        let failed = match run.decisions.get(acked) {
            None => None,
            Some(Some(failure)) => Some(*failure),
            Some(None) => return, // undecided: wait for it
        };
        let Some(run) = self.runs.remove(&id) else { return };
        for lease in &run.leases {
            if let Some(held) = self.leases.remove(lease) {
                self.deadlines.try_remove(&held.deadline);
                held.ended();
            }
        }
        let _ = run.decide.send(RunDecision { acked, failed });
    }
}

/// A leased event, as handed to a consumer.
#[derive(Debug)]
pub struct Leased {
    /// The lease id to ack or nack.
    pub lease: String,
    /// 1 for the first delivery, 2 for the next, …
    pub attempt: u32,
    /// The event.
    pub event: Event,
}

/// What an ack or nack found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Leases settled.
    pub settled: usize,
    /// Lease ids that were unknown or already expired.
    pub unknown: Vec<String>,
}

/// The offers and leases of one pull subscription.
pub struct PullQueue {
    lease_timeout: Duration,
    /// A UUIDv7 (time and random bits) drawn when the queue starts: lease ids of another queue
    /// (or of this subscription before a restart) never match this one's; a counter makes the
    /// rest (no random draw per lease).
    lease_prefix: String,
    queue: Mutex<Queue>,
    /// Wakes pulls waiting for offers.
    offered: Notify,
    /// Dropped with the queue, which ends the reaper.
    _reaper_stop: oneshot::Sender<()>,
}

impl PullQueue {
    /// A queue whose leases last `lease_timeout`; starts its lease reaper.
    ///
    /// # Panics
    /// If `lease_timeout` is zero or above [`LEASE_TIMEOUT_MAX`]: the configuration refuses
    /// those when it is read.
    pub fn start(lease_timeout: Duration) -> Arc<Self> {
        assert!(
            !lease_timeout.is_zero() && lease_timeout <= LEASE_TIMEOUT_MAX,
            "lease_timeout {lease_timeout:?} passed the configuration's check"
        );
        let (stop, stopped) = oneshot::channel();
        let lease_prefix = uuid::Uuid::now_v7().simple().to_string();
        let queue = Arc::new(Self {
            lease_timeout,
            lease_prefix,
            queue: Mutex::new(Queue::new()),
            offered: Notify::new(),
            _reaper_stop: stop,
        });
        tokio::spawn(reap(Arc::downgrade(&queue), stopped));
        queue
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock()
    }

    /// Leases up to `max` offered events (at most [`PULL_EVENTS_MAX`]), waiting up to `wait`
    /// for the first.
    pub async fn pull(&self, max: usize, wait: Duration) -> Vec<Leased> {
        self.pull_into(max, wait, None).await
    }

    /// As [`PullQueue::pull`], the leases counted in `window` until they end.
    pub async fn pull_into(
        &self,
        max: usize,
        wait: Duration,
        window: Option<&Arc<Window>>,
    ) -> Vec<Leased> {
        let max = max.clamp(1, PULL_EVENTS_MAX);
        // The route checked `wait` against HTTP_WAIT_MAX; past the clock's range means forever.
        let deadline = Instant::now().checked_add(wait);
        loop {
            let notified = self.offered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let leased = self.take(max, window);
            if !leased.is_empty() || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return leased;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.take(max, window);
                    }
                }
                None => notified.await,
            }
        }
    }

    fn take(&self, max: usize, window: Option<&Arc<Window>>) -> Vec<Leased> {
        let now = Instant::now();
        // At most LEASE_TIMEOUT_MAX away: within the clock's range, checked all the same.
        let Some(deadline) = now.checked_add(self.lease_timeout) else {
            tracing::error!(lease_timeout = ?self.lease_timeout, "a lease deadline past the clock's range");
            return Vec::new();
        };
        let mut guard = self.lock();
        let queue = &mut *guard;
        queue.renew_idle_deadlines(now);
        let mut leased = Vec::new();
        while leased.len() < max {
            let Some(id) = queue.offers.pop_front() else { break };
            let Some(run) = queue.runs.get_mut(&id) else { continue };
            if run.decide.is_closed() {
                queue.runs.remove(&id); // the engine stopped waiting (shutdown): nothing to lease
                continue;
            }
            // What does not fit goes back to the engine untouched (the run is cut short).
            let mut events = std::mem::take(&mut run.events);
            events.truncate(max - leased.len());
            run.decisions = vec![None; events.len()];
            run.leases = Vec::with_capacity(events.len());
            for (index, event) in events.into_iter().enumerate() {
                let lease = format!("{}{:x}", self.lease_prefix, queue.next_lease);
                queue.next_lease += 1;
                let key = queue.deadlines.insert_at(lease.clone(), deadline);
                if let Some(window) = window {
                    window.held.fetch_add(1, AtomicOrdering::AcqRel);
                }
                let window = window.cloned();
                queue.leases.insert(lease.clone(), Lease { run: id, index, deadline: key, window });
                run.leases.push(lease.clone());
                leased.push(Leased { lease, attempt: run.attempt, event });
            }
        }
        leased
    }

    /// Acks leases: their events are done.
    pub fn ack(&self, leases: &[String]) -> Settled {
        self.settle(leases, Decision::Ack)
    }

    /// Nacks leases: their events are offered again after `delay`.
    pub fn nack(&self, leases: &[String], delay: Duration) -> Settled {
        self.settle(leases, Decision::Nack { delay })
    }

    fn settle(&self, leases: &[String], decision: Decision) -> Settled {
        let mut queue = self.lock();
        let mut settled = Settled::default();
        for lease in leases {
            if queue.decide(lease, decision) {
                settled.settled += 1;
            } else {
                settled.unknown.push(lease.clone());
            }
        }
        settled
    }

    /// Events offered and not leased, and leases held.
    pub fn sizes(&self) -> (usize, usize) {
        let queue = self.lock();
        let offered =
            queue.offers.iter().filter_map(|id| queue.runs.get(id)).map(|r| r.events.len());
        (offered.sum(), queue.leases.len())
    }

    /// Offers `events` (one handler call's) and waits for the consumers' decision.
    pub(super) async fn offer(
        &self,
        events: Vec<Event>,
        attempt: u32,
    ) -> Result<RunDecision, HandlerError> {
        let (decide, decision) = oneshot::channel();
        {
            let mut queue = self.lock();
            let id = queue.next_run;
            queue.next_run += 1;
            let run = Run { events, attempt, decisions: Vec::new(), leases: Vec::new(), decide };
            queue.runs.insert(id, run);
            queue.offers.push_back(id);
        }
        self.offered.notify_waiters();
        decision.await.map_err(|_| HandlerError::retry("the offer was dropped"))
    }

    /// Expires every lease past its deadline, and leaves the reaper's waker with the next one.
    fn expire(&self, context: &mut Context<'_>) {
        let mut queue = self.lock();
        if !queue.reaper.as_ref().is_some_and(|waker| waker.will_wake(context.waker())) {
            queue.reaper = Some(context.waker().clone());
        }
        // `Ready(None)` is an empty queue: an insertion wakes the reaper.
        while let Poll::Ready(Some(expired)) = queue.deadlines.poll_expired(context) {
            let lease = expired.into_inner();
            let Some(held) = queue.leases.remove(&lease) else {
                panic!(
                    "lease {lease} expired but was not held: a deadline waits only for a held lease"
                );
            };
            let (run_id, index) = (held.run, held.index);
            held.ended();
            if let Some(run) = queue.runs.get_mut(&run_id) {
                run.decisions[index] = Some(Decision::Expired);
                queue.conclude(run_id);
            }
        }
    }
}

/// Expires leases at their deadlines until the queue is dropped.
async fn reap(queue: Weak<PullQueue>, stopped: oneshot::Receiver<()>) {
    let expire = poll_fn(|context| match queue.upgrade() {
        Some(queue) => {
            queue.expire(context);
            Poll::Pending
        }
        None => Poll::Ready(()),
    });
    tokio::select! {
        () = expire => {}
        _ = stopped => {}
    }
}
