//! Pull delivery: HTTP consumers lease events, then ack or nack them.
//!
//! A pull subscription's handler is a [`PullHandler`]: when the engine hands it an event — or
//! a *run* of one key's consecutive events, with `max_per_key` above 1 — it *offers* them to
//! consumers and waits for their decision. So everything the engine guarantees holds for HTTP
//! consumers too — a key's next events are offered only after the previous ones were acked (and
//! made durable), so one key's events are never leased by two pulls at once, and in `actions`
//! ordering only a key's next action is leasable; the number of offers is bounded by the
//! subscription's keys-in-flight limit.
//!
//! - `pull` leases up to `max` offered events for the lease timeout, each run whole (up to the
//!   pull's room: what does not fit goes back to the engine untouched, offered again after the
//!   leased part is durable);
//! - `ack` ends them (the handler succeeds);
//! - `nack` fails them, to be offered again after its delay (attempt + 1);
//! - an expired lease fails the same way, at once; after `max_attempts` the engine parks the
//!   event.
//!
//! A run is decided in order: its acked prefix is handled; its first nacked or expired event
//! fails (the rest of the run's leases end with it, their events offered again after it); it is
//! decided as soon as that much is known.
//!
//! Leases expire on a timer, never by polling: their deadlines wait in a
//! [`DelayQueue`] beside the leases (under the same lock, so a lease and its deadline go
//! together), and one reaper task per subscription sleeps until the earliest. A lease expires
//! exactly once — its deadline leaves the queue when it expires, is acked or is nacked,
//! whichever comes first — and the reaper ends when the queue is dropped.

use std::{
    collections::{HashMap, VecDeque},
    future::poll_fn,
    sync::{Arc, Weak},
    task::{Context, Poll, Waker},
    time::Duration,
};

use inorder::{Event, Handler, HandlerContext, HandlerError, Reply, RunReply};
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};
use tokio_util::time::{DelayQueue, delay_queue};

use crate::limits::{DELAY_QUEUE_RENEW_AGE, LEASE_TIMEOUT_MAX, PULL_EVENTS_MAX, PULL_PER_KEY_MAX};

/// What a consumer decided about a leased event.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Ack,
    Nack { delay: Duration },
    Expired,
}

/// How a run ended: its first `acked` events were acked; the next one failed, if `failed`.
#[derive(Debug)]
struct RunDecision {
    acked: usize,
    failed: Option<Decision>,
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
        let Some(run) = self.runs.get_mut(&held.run) else {
            panic!("lease {lease} held for run {} that was decided", held.run);
        };
        run.decisions[held.index] = Some(decision);
        let live = !run.decide.is_closed();
        self.conclude(held.run);
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
        let max = max.clamp(1, PULL_EVENTS_MAX);
        // The route checked `wait` against HTTP_WAIT_MAX; past the clock's range means forever.
        let deadline = Instant::now().checked_add(wait);
        loop {
            let notified = self.offered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let leased = self.take(max);
            if !leased.is_empty() || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return leased;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.take(max);
                    }
                }
                None => notified.await,
            }
        }
    }

    fn take(&self, max: usize) -> Vec<Leased> {
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
                queue.leases.insert(lease.clone(), Lease { run: id, index, deadline: key });
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
    async fn offer(&self, events: Vec<Event>, attempt: u32) -> Result<RunDecision, HandlerError> {
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
            if let Some(run) = queue.runs.get_mut(&held.run) {
                run.decisions[held.index] = Some(Decision::Expired);
                queue.conclude(held.run);
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

/// The handler of a pull subscription: offers each event — or each run of up to `max_per_key`
/// of a key's events — and waits for the consumers.
pub struct PullHandler {
    queue: Arc<PullQueue>,
    max_per_key: usize,
}

impl PullHandler {
    /// Offers through `queue`, up to `max_per_key` consecutive events of a key at once (capped
    /// at [`PULL_PER_KEY_MAX`]).
    pub fn new(queue: Arc<PullQueue>, max_per_key: usize) -> Self {
        Self { queue, max_per_key: max_per_key.clamp(1, PULL_PER_KEY_MAX) }
    }
}

/// The handler's error for a failed event.
fn failure(decision: Decision) -> HandlerError {
    match decision {
        Decision::Nack { delay } => HandlerError::retry_after("nacked by the consumer", delay),
        Decision::Expired => HandlerError::retry_after("lease expired", Duration::ZERO),
        Decision::Ack => HandlerError::retry("an acked event counted as failed (a bug)"),
    }
}

#[async_trait::async_trait]
impl Handler for PullHandler {
    fn max_run(&self) -> usize {
        self.max_per_key
    }

    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let decided = self.queue.offer(vec![event.clone()], context.attempt).await?;
        match decided {
            RunDecision { acked: 1.., .. } => Ok(Reply::Null),
            RunDecision { failed: Some(decision), .. } => Err(failure(decision)),
            RunDecision { failed: None, .. } => {
                Err(HandlerError::retry("the offer was not leased"))
            }
        }
    }

    async fn handle_run(&self, events: &[Event], context: &HandlerContext) -> RunReply {
        match self.queue.offer(events.to_vec(), context.attempt).await {
            Ok(RunDecision { acked, failed }) => {
                RunReply { replies: vec![Reply::Null; acked], failed: failed.map(failure) }
            }
            Err(error) => RunReply { replies: Vec::new(), failed: Some(error) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(attempt: u32) -> HandlerContext {
        HandlerContext { subscription: "s".parse().unwrap(), attempt }
    }

    #[tokio::test]
    async fn an_acked_lease_completes_the_handler() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let handler = PullHandler::new(Arc::clone(&queue), 1);
        let event = Event::builder("t", "k", "a").build().unwrap();
        let call = tokio::spawn(async move { handler.handle(&event, &context(1)).await });
        let leased = queue.pull(10, Duration::from_secs(5)).await;
        assert_eq!(leased.len(), 1);
        assert_eq!(queue.ack(&[leased[0].lease.clone()]).settled, 1);
        assert!(call.await.unwrap().is_ok());
        assert_eq!(queue.ack(&[leased[0].lease.clone()]).unknown.len(), 1, "a lease settles once");
    }

    #[tokio::test]
    async fn an_expired_lease_fails_the_handler() {
        let queue = PullQueue::start(Duration::from_millis(50));
        let handler = PullHandler::new(Arc::clone(&queue), 1);
        let event = Event::builder("t", "k", "a").build().unwrap();
        let call = tokio::spawn(async move { handler.handle(&event, &context(1)).await });
        let leased = queue.pull(1, Duration::from_secs(5)).await;
        assert_eq!(leased.len(), 1);
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.message(), "lease expired");
        assert!(queue.ack(&[leased[0].lease.clone()]).unknown.len() == 1, "too late to ack");
    }

    #[tokio::test]
    async fn a_pull_waits_for_an_offer_and_gives_up_after_its_wait() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let started = Instant::now();
        assert!(queue.pull(1, Duration::from_millis(50)).await.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));
        let handler = PullHandler::new(Arc::clone(&queue), 1);
        let waiting = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { queue.pull(1, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let event = Event::builder("t", "k", "a").build().unwrap();
        let _call = tokio::spawn(async move { handler.handle(&event, &context(2)).await });
        let leased = waiting.await.unwrap();
        assert_eq!((leased.len(), leased[0].attempt), (1, 2));
    }

    /// Hands `event` of key `key` to the queue as the engine would; resolves with the handler's result.
    fn offer(
        queue: &Arc<PullQueue>,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Reply, HandlerError>> {
        let handler = PullHandler::new(Arc::clone(queue), 1);
        let event = Event::builder("t", key, "a").build().unwrap();
        tokio::spawn(async move { handler.handle(&event, &context(1)).await })
    }

    async fn lease(queue: &PullQueue, count: usize) -> Vec<Leased> {
        let mut leased = Vec::new();
        while leased.len() < count {
            leased.extend(queue.pull(count - leased.len(), Duration::from_secs(1)).await);
        }
        leased
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_at_its_deadline_and_not_before() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let (acked, expiring) = (offer(&queue, "k1"), offer(&queue, "k2"));
        let leased = lease(&queue, 2).await;
        let leased_at = Instant::now();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(queue.sizes(), (0, 2), "no lease expires before its deadline");
        let first = leased.iter().position(|l| l.event.key == "k1").unwrap();
        assert_eq!(queue.ack(&[leased[first].lease.clone()]).settled, 1);
        assert!(acked.await.unwrap().is_ok());
        // The clock moves on by itself to the next timer: the other lease's deadline.
        let error = expiring.await.unwrap().unwrap_err();
        assert_eq!(error.message(), "lease expired");
        let expired_after = leased_at.elapsed();
        assert!(
            expired_after >= Duration::from_secs(30)
                && expired_after <= Duration::from_secs(30) + Duration::from_millis(2),
            "expired {expired_after:?} after the lease"
        );
        assert_eq!(queue.sizes(), (0, 0));
        let other = leased[1 - first].lease.clone();
        assert_eq!(
            queue.nack(std::slice::from_ref(&other), Duration::ZERO).unknown,
            [other],
            "expired once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_idle_for_years_still_leases_and_expires() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let call = offer(&queue, "k");
        let leased = lease(&queue, 1).await;
        assert_eq!(queue.ack(&[leased[0].lease.clone()]).settled, 1);
        call.await.unwrap().unwrap();
        // Longer than the DelayQueue's timer wheel reaches (2^36 ms, about 2.2 years).
        tokio::time::advance(Duration::from_secs(3 * 365 * 24 * 60 * 60)).await;
        let call = offer(&queue, "k");
        let leased = lease(&queue, 1).await;
        let leased_at = Instant::now();
        assert_eq!(call.await.unwrap().unwrap_err().message(), "lease expired");
        assert!(leased_at.elapsed() >= Duration::from_secs(30));
        assert_eq!(queue.ack(&[leased[0].lease.clone()]).unknown.len(), 1);
    }

    /// Hands `count` events of key `k` to the queue as one run, as the engine would.
    fn offer_run(queue: &Arc<PullQueue>, count: usize) -> tokio::task::JoinHandle<RunReply> {
        let handler = PullHandler::new(Arc::clone(queue), 8);
        let events: Vec<Event> = (0..count)
            .map(|i| Event::builder("t", "k", format!("a{i}")).build().unwrap())
            .collect();
        tokio::spawn(async move { handler.handle_run(&events, &context(1)).await })
    }

    fn ids(leased: &[Leased]) -> Vec<String> {
        leased.iter().map(|l| l.lease.clone()).collect()
    }

    #[tokio::test]
    async fn a_run_is_leased_whole_by_one_pull_in_order_and_acked_together() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let run = offer_run(&queue, 3);
        let leased = lease(&queue, 3).await;
        let actions: Vec<&str> = leased.iter().map(|l| l.event.action.as_str()).collect();
        assert_eq!(actions, ["a0", "a1", "a2"]);
        assert_eq!(queue.ack(&ids(&leased)).settled, 3);
        let reply = run.await.unwrap();
        assert_eq!((reply.replies.len(), reply.failed), (3, None));
        assert_eq!(queue.sizes(), (0, 0));
    }

    #[tokio::test]
    async fn a_run_waits_for_its_first_events_decision_even_when_later_ones_are_acked() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let run = offer_run(&queue, 2);
        let leased = lease(&queue, 2).await;
        assert_eq!(queue.ack(&[leased[1].lease.clone()]).settled, 1);
        // A decided run ends its leases at once (in the ack's call): the first is still held.
        assert_eq!(queue.sizes(), (0, 1), "the first event is undecided");
        assert_eq!(queue.ack(&[leased[0].lease.clone()]).settled, 1);
        assert_eq!(run.await.unwrap().replies.len(), 2);
    }

    #[tokio::test]
    async fn a_nack_in_a_run_keeps_the_acked_prefix_and_ends_the_later_leases() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let run = offer_run(&queue, 4);
        let leased = ids(&lease(&queue, 4).await);
        assert_eq!(queue.ack(&leased[..1]).settled, 1);
        assert_eq!(queue.nack(&leased[1..2], Duration::from_millis(7)).settled, 1);
        let reply = run.await.unwrap();
        assert_eq!(reply.replies.len(), 1, "the acked prefix is handled");
        let failed = reply.failed.unwrap();
        assert_eq!(failed.message(), "nacked by the consumer");
        assert_eq!(failed.retry_delay(), Some(Duration::from_millis(7)));
        assert_eq!(queue.ack(&leased[2..]).unknown, &leased[2..], "ended with the run");
        assert_eq!(queue.sizes(), (0, 0));
    }

    #[tokio::test]
    async fn a_run_wider_than_the_pull_is_cut_and_the_rest_goes_back_to_the_engine() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let run = offer_run(&queue, 5);
        let leased = queue.pull(2, Duration::from_secs(1)).await;
        assert_eq!(leased.len(), 2);
        assert_eq!(queue.sizes(), (0, 2), "nothing of the run is left to lease");
        queue.ack(&ids(&leased));
        let reply = run.await.unwrap();
        assert_eq!((reply.replies.len(), reply.failed), (2, None), "three handed back untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_run_fails_at_its_first_unacked_event() {
        let queue = PullQueue::start(Duration::from_secs(30));
        let run = offer_run(&queue, 3);
        let leased = ids(&lease(&queue, 3).await);
        queue.ack(&leased[..1]);
        let reply = run.await.unwrap(); // the clock moves on to the deadline
        assert_eq!(reply.replies.len(), 1);
        assert_eq!(reply.failed.unwrap().message(), "lease expired");
        assert_eq!(queue.sizes(), (0, 0));
    }

    #[tokio::test]
    async fn the_reaper_ends_when_the_queue_is_dropped() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let queue = PullQueue::start(Duration::from_secs(30));
        assert_eq!(metrics.num_alive_tasks(), before + 1, "the reaper runs");
        drop(queue);
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before, "the reaper ended with its queue");
    }
}
