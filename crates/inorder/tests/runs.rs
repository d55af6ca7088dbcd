//! Runs: a handler that takes several consecutive events of one key in one call
//! ([`Handler::max_run`]) gets a key's queued events together, in order, never more than its
//! `max_run`, never two calls of one key at once; a run that fails part-way keeps what it
//! handled, and its failed event is retried (attempts counted as for one event) or parked
//! before any later event of the key.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Fixture, PATIENCE, eventually, parked_reason, publish, settle, subscription};
use inorder::{
    Engine, Event, EventStatus, FailurePolicy, Handler, HandlerContext, HandlerError, ParkReason,
    Reply, RetryPolicy, RunReply, TopicConfig,
};
use tokio::sync::Semaphore;

/// Fails the events whose action is `bad` on attempts below this.
type FailsUntil = u32;

/// Records each call (the positions it was handed) and each event's attempts; the first call
/// waits for the test to open the gate, so the key's next events queue up behind it.
struct RunRecorder {
    max_run: usize,
    gate: Semaphore,
    bad_fails_until: FailsUntil,
    calls: Mutex<Vec<Vec<u64>>>,
    /// (position, attempt, handled)
    attempts: Mutex<Vec<(u64, u32, bool)>>,
    running: Mutex<HashMap<String, usize>>,
    overlaps: Mutex<usize>,
}

impl RunRecorder {
    fn new(max_run: usize, bad_fails_until: FailsUntil) -> Arc<Self> {
        Arc::new(Self {
            max_run,
            gate: Semaphore::new(0),
            bad_fails_until,
            calls: Mutex::default(),
            attempts: Mutex::default(),
            running: Mutex::default(),
            overlaps: Mutex::default(),
        })
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn one(&self, event: &Event, attempt: u32) -> Result<Reply, HandlerError> {
        let ok = event.action != "bad" || attempt >= self.bad_fails_until;
        self.attempts.lock().unwrap().push((event.position, attempt, ok));
        if ok { Ok(Reply::Null) } else { Err(HandlerError::retry("bad")) }
    }

    async fn enter(&self, events: &[Event]) {
        let _pass = self.gate.acquire().await.unwrap();
        self.calls.lock().unwrap().push(events.iter().map(|e| e.position).collect());
        let mut running = self.running.lock().unwrap();
        let count = running.entry(events[0].key.clone()).or_default();
        *count += 1;
        if *count > 1 {
            *self.overlaps.lock().unwrap() += 1;
        }
    }

    fn leave(&self, key: &str) {
        *self.running.lock().unwrap().get_mut(key).unwrap() -= 1;
    }

    /// Positions handled successfully, in order.
    fn handled(&self) -> Vec<u64> {
        self.attempts.lock().unwrap().iter().filter(|a| a.2).map(|a| a.0).collect()
    }

    fn attempts_of(&self, position: u64) -> Vec<u32> {
        self.attempts.lock().unwrap().iter().filter(|a| a.0 == position).map(|a| a.1).collect()
    }

    fn calls(&self) -> Vec<Vec<u64>> {
        self.calls.lock().unwrap().clone()
    }
}

struct Runs(Arc<RunRecorder>);

#[async_trait::async_trait]
impl Handler for Runs {
    fn max_run(&self) -> usize {
        self.0.max_run
    }

    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        self.0.enter(std::slice::from_ref(event)).await;
        let result = self.0.one(event, context.attempt);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.leave(&event.key);
        result
    }

    async fn handle_run(&self, events: &[Event], context: &HandlerContext) -> RunReply {
        assert_eq!(context.attempt, 1, "a run is each event's first attempt");
        self.0.enter(events).await;
        let mut replies = Vec::new();
        let mut failed = None;
        for event in events {
            match self.0.one(event, context.attempt) {
                Ok(reply) => replies.push(reply),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.leave(&events[0].key);
        RunReply { replies, failed }
    }
}

fn fixture(policy: FailurePolicy) -> Fixture {
    let retry = RetryPolicy {
        initial: Duration::from_millis(5),
        factor: 2.0,
        max_delay: Duration::from_millis(20),
        max_attempts: 3,
        jitter: 0.0,
    };
    Fixture::new(|c| {
        c.topic(TopicConfig::new("t"))
            .subscription(subscription("s", "t").retry(retry).on_failure(policy))
    })
}

async fn start(fixture: &mut Fixture, recorder: &Arc<RunRecorder>) -> Engine {
    let engine =
        fixture.builder().await.handler("s", Runs(Arc::clone(recorder))).start().await.unwrap();
    fixture.engine = Some(engine.clone());
    engine
}

/// Publishes `actions` for key `k` while the first call waits, waits until the stream read
/// them all (so they queue behind the first), then lets the handler go.
async fn publish_queued(engine: &Engine, recorder: &RunRecorder, actions: &[&str]) -> u64 {
    let mut last = 0;
    for action in actions {
        last = publish(engine, "t", "k", action).await;
    }
    eventually("the stream reads every event", async || {
        let subscriptions = engine.subscriptions().await.unwrap();
        subscriptions[0].streams[0].status.read_position >= last
    })
    .await;
    recorder.open();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_queued_events_come_in_runs_of_at_most_max_run_in_log_order() {
    let recorder = RunRecorder::new(4, 1);
    let mut fixture = fixture(FailurePolicy::Skip);
    let engine = start(&mut fixture, &recorder).await;
    let last = publish_queued(&engine, &recorder, &["ok"; 11]).await;
    assert_eq!(settle(&engine, "t", last).await, EventStatus::Processed);
    // The first event went alone (nothing else was queued); the ten behind it in runs of 4.
    assert_eq!(recorder.calls(), [vec![1], vec![2, 3, 4, 5], vec![6, 7, 8, 9], vec![10, 11]]);
    assert_eq!(recorder.handled(), (1..=11).collect::<Vec<_>>());
    assert_eq!(*recorder.overlaps.lock().unwrap(), 0, "never two calls of a key at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_part_way_keeps_its_prefix_and_retries_the_failed_event_before_the_rest() {
    let recorder = RunRecorder::new(8, 3); // `bad` fails on attempts 1 and 2
    let mut fixture = fixture(FailurePolicy::Skip);
    let engine = start(&mut fixture, &recorder).await;
    let last = publish_queued(&engine, &recorder, &["ok", "ok", "ok", "bad", "ok", "ok"]).await;
    assert_eq!(settle(&engine, "t", last).await, EventStatus::Processed);
    assert_eq!(recorder.handled(), [1, 2, 3, 4, 5, 6], "each once, in log order");
    assert_eq!(recorder.attempts_of(4), [1, 2, 3], "the failed event's attempts count as alone");
    // The retries of 4 go alone, after their backoff; then the rest is a run again.
    assert_eq!(recorder.calls(), [vec![1], vec![2, 3, 4, 5, 6], vec![4], vec![4], vec![5, 6]]);
    assert!(parked_reason(&engine, "s", "t", 4).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_in_a_run_past_its_attempts_is_parked_and_blocks_the_rest() {
    let recorder = RunRecorder::new(8, u32::MAX); // `bad` always fails
    let mut fixture = fixture(FailurePolicy::Block);
    let engine = start(&mut fixture, &recorder).await;
    let last = publish_queued(&engine, &recorder, &["ok", "ok", "bad", "ok", "ok"]).await;
    // Blocked followers are not done (they run once the key is unblocked): wait for the last.
    eventually("the followers are parked as blocked", async || {
        parked_reason(&engine, "s", "t", last).await == Some(ParkReason::Blocked)
    })
    .await;
    assert_eq!(recorder.handled(), [1, 2], "the prefix is kept, nothing after the failure runs");
    assert_eq!(recorder.attempts_of(3), [1, 2, 3], "max_attempts, then parked");
    assert_eq!(parked_reason(&engine, "s", "t", 3).await, Some(ParkReason::Failed));
    for follower in [4, 5] {
        assert_eq!(parked_reason(&engine, "s", "t", follower).await, Some(ParkReason::Blocked));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skip_an_event_parked_in_a_run_lets_the_rest_of_the_run_go_on() {
    let recorder = RunRecorder::new(8, u32::MAX);
    let mut fixture = fixture(FailurePolicy::Skip);
    let engine = start(&mut fixture, &recorder).await;
    let last = publish_queued(&engine, &recorder, &["ok", "bad", "ok", "ok"]).await;
    settle(&engine, "t", last).await;
    assert_eq!(recorder.handled(), [1, 3, 4]);
    assert_eq!(parked_reason(&engine, "s", "t", 2).await, Some(ParkReason::Failed));
    assert_eq!(
        engine.wait_event_status("t", last, Some("s"), PATIENCE).await.unwrap(),
        EventStatus::Processed
    );
}
