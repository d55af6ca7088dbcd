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
//! Leases expire on a timer (a heap of deadlines and one sleeping task per subscription), never
//! by polling.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use inorder::{Event, Handler, HandlerContext, HandlerError, Reply};
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};

use crate::limits::PULL_EVENTS_MAX;

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
    deadline: Instant,
}

#[derive(Default)]
struct Queue {
    offers: VecDeque<Offer>,
    leases: HashMap<String, Lease>,
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
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
    /// Wakes the reaper when a nearer deadline appears (shared with it, so it can wait on it
    /// without keeping the queue alive).
    leased: Arc<Notify>,
}

impl Drop for PullQueue {
    fn drop(&mut self) {
        self.leased.notify_one(); // the reaper wakes, finds the queue gone, and ends
    }
}

impl PullQueue {
    /// A queue whose leases last `lease_timeout`; starts its lease reaper.
    pub fn start(lease_timeout: Duration) -> Arc<Self> {
        let queue = Arc::new(Self {
            lease_timeout,
            queue: Mutex::new(Queue::default()),
            offered: Notify::new(),
            leased: Arc::new(Notify::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&queue), Arc::clone(&queue.leased)));
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
        let mut queue = self.lock();
        let deadline = Instant::now() + self.lease_timeout;
        let mut leased = Vec::new();
        while leased.len() < max {
            let Some(offer) = queue.offers.pop_front() else { break };
            if offer.decide.is_closed() {
                continue; // the engine stopped waiting (shutdown): nothing to lease
            }
            let lease = uuid::Uuid::now_v7().simple().to_string();
            queue.deadlines.push(Reverse((deadline, lease.clone())));
            queue.leases.insert(lease.clone(), Lease { decide: offer.decide, deadline });
            leased.push(Leased { lease, attempt: offer.attempt, event: offer.event });
        }
        if !leased.is_empty() {
            self.leased.notify_one();
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
            let sent =
                queue.leases.remove(lease).is_some_and(|held| held.decide.send(decision()).is_ok());
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

    /// Expires every lease past its deadline; returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut queue = self.lock();
        while let Some(Reverse((deadline, lease))) = queue.deadlines.peek().cloned() {
            if deadline > now {
                return Some(deadline);
            }
            queue.deadlines.pop();
            if let Some(held) = queue.leases.remove(&lease) {
                if held.deadline <= now {
                    let _ = held.decide.send(Decision::Expired);
                } else {
                    queue.leases.insert(lease, held);
                }
            }
        }
        None
    }
}

/// Expires leases at their deadlines while the queue exists.
async fn reap(queue: std::sync::Weak<PullQueue>, wake: Arc<Notify>) {
    loop {
        let leased = wake.notified();
        tokio::pin!(leased);
        leased.as_mut().enable();
        let Some(strong) = queue.upgrade() else { return };
        let next = strong.expire(Instant::now());
        drop(strong);
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = &mut leased => {}
                }
            }
            None => leased.await,
        }
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
}
