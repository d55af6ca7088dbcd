//! Pull delivery: HTTP consumers lease events, then ack or nack them.
//!
//! A pull subscription's handler is a [`PullHandler`]: when the engine hands it an event, it
//! *offers* the event to consumers and waits for their decision. So everything the engine
//! guarantees holds for HTTP consumers too — a key's next event is offered only after the
//! previous one was acked (and made durable), so two events of one key are never leased at once
//! and in `actions` ordering only a key's next action is leasable; the number of offered events
//! is bounded by the subscription's keys-in-flight limit.
//!
//! - `pull` leases up to `max` offered events for the lease timeout;
//! - `ack` ends them (the handler succeeds);
//! - `nack` fails them, to be offered again after its delay (attempt + 1);
//! - an expired lease fails the same way, at once; after `max_attempts` the engine parks the
//!   event.
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

use inorder::{Event, Handler, HandlerContext, HandlerError, Reply};
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};
use tokio_util::time::{DelayQueue, delay_queue};

use crate::limits::{DELAY_QUEUE_RENEW_AGE, LEASE_TIMEOUT_MAX, PULL_EVENTS_MAX};

/// What a consumer decided about a leased event.
#[derive(Debug)]
enum Decision {
    Ack,
    Nack { delay: Duration },
    Expired,
}

struct Offer {
    event: Event,
    attempt: u32,
    decide: oneshot::Sender<Decision>,
}

struct Lease {
    decide: oneshot::Sender<Decision>,
    /// Its deadline in [`Queue::deadlines`].
    deadline: delay_queue::Key,
}

struct Queue {
    offers: VecDeque<Offer>,
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
        let queue = Arc::new(Self {
            lease_timeout,
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
        let mut queue = self.lock();
        queue.renew_idle_deadlines(now);
        let mut leased = Vec::new();
        while leased.len() < max {
            let Some(offer) = queue.offers.pop_front() else { break };
            if offer.decide.is_closed() {
                continue; // the engine stopped waiting (shutdown): nothing to lease
            }
            let lease = uuid::Uuid::now_v7().simple().to_string();
            let key = queue.deadlines.insert_at(lease.clone(), deadline);
            queue.leases.insert(lease.clone(), Lease { decide: offer.decide, deadline: key });
            leased.push(Leased { lease, attempt: offer.attempt, event: offer.event });
        }
        leased
    }

    /// Acks leases: their events are done.
    pub fn ack(&self, leases: &[String]) -> Settled {
        self.settle(leases, || Decision::Ack)
    }

    /// Nacks leases: their events are offered again after `delay`.
    pub fn nack(&self, leases: &[String], delay: Duration) -> Settled {
        self.settle(leases, || Decision::Nack { delay })
    }

    fn settle(&self, leases: &[String], decision: impl Fn() -> Decision) -> Settled {
        let mut queue = self.lock();
        let mut settled = Settled::default();
        for lease in leases {
            let sent = match queue.leases.remove(lease) {
                Some(held) => {
                    let deadline = queue.deadlines.try_remove(&held.deadline);
                    assert!(
                        deadline.is_some_and(|d| d.get_ref() == lease),
                        "a held lease's deadline is queued"
                    );
                    held.decide.send(decision()).is_ok()
                }
                None => false,
            };
            if sent {
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
        (queue.offers.len(), queue.leases.len())
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
            let _ = held.decide.send(Decision::Expired);
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

/// The handler of a pull subscription: offers each event and waits for the consumers.
pub struct PullHandler(pub Arc<PullQueue>);

#[async_trait::async_trait]
impl Handler for PullHandler {
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let (decide, decision) = oneshot::channel();
        self.0.lock().offers.push_back(Offer {
            event: event.clone(),
            attempt: context.attempt,
            decide,
        });
        self.0.offered.notify_waiters();
        match decision.await {
            Ok(Decision::Ack) => Ok(Reply::Null),
            Ok(Decision::Nack { delay }) => {
                Err(HandlerError::retry_after("nacked by the consumer", delay))
            }
            Ok(Decision::Expired) => {
                Err(HandlerError::retry_after("lease expired", Duration::ZERO))
            }
            Err(_) => Err(HandlerError::retry("the offer was dropped")),
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
        let handler = PullHandler(Arc::clone(&queue));
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
        let handler = PullHandler(Arc::clone(&queue));
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
        let handler = PullHandler(Arc::clone(&queue));
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
        let handler = PullHandler(Arc::clone(queue));
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
