//! The pull queue and handler, alone: leases, runs, decisions and deadlines.

use tokio::time::Instant;

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
    let events: Vec<Event> =
        (0..count).map(|i| Event::builder("t", "k", format!("a{i}")).build().unwrap()).collect();
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
