//! Failures: retries with backoff, parking after the last attempt, `block` versus `skip`, and
//! parked events that stay listable, retryable and discardable across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use common::{
    Behaviour, Fixture, PATIENCE, Recorder, RecordingHandler, eventually, parked_reason, processed,
    publish, settle, subscription,
};
use inorder::{
    EventStatus, FailurePolicy, HandlerError, ParkReason, Reply, RetryPolicy, TopicConfig,
};

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        factor: 2.0,
        max_delay: Duration::from_millis(100),
        max_attempts,
        jitter: 0.0,
    }
}

fn fixture(policy: FailurePolicy, max_attempts: u32) -> Fixture {
    Fixture::new(|c| {
        c.topic(TopicConfig::new("t")).subscription(
            subscription("s", "t").retry(quick_retries(max_attempts)).on_failure(policy),
        )
    })
}

/// Fails every call for events whose action is "bad" while `failing` is set.
fn fail_bad(failing: &Arc<AtomicBool>) -> Behaviour {
    let failing = Arc::clone(failing);
    Arc::new(move |event, _| {
        if event.action == "bad" && failing.load(AtomicOrdering::SeqCst) {
            Err(HandlerError::retry("downstream unavailable"))
        } else {
            Ok(Reply::Null)
        }
    })
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_retried_with_growing_delays_then_parked() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 4);
    let failing = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let engine =
        fixture.start(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    publish(&engine, "t", "k", "bad").await;
    let status = settle(&engine, "t", 1).await;
    assert!(
        matches!(&status, EventStatus::Parked(p) if p.reason == ParkReason::Failed && p.attempts == 4),
        "a parked event is not processed: {status:?}"
    );
    let attempts: Vec<u32> = recorder.calls().iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(started.elapsed() >= Duration::from_millis(20 + 40 + 80), "backoff waited");
    let parked = engine.parked("s", None, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].reason, parked[0].attempts), (ParkReason::Failed, 4));
    assert_eq!(parked[0].error.as_deref(), Some("downstream unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_parks_at_once() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 5);
    let behaviour: Behaviour = Arc::new(|_, _| Err(HandlerError::permanent("invalid order")));
    let engine = fixture.start(vec![("s", RecordingHandler::with(&recorder, behaviour))]).await;
    publish(&engine, "t", "k", "a").await;
    assert!(matches!(settle(&engine, "t", 1).await, EventStatus::Parked(_)));
    assert_eq!(recorder.calls().len(), 1, "no retry for a permanent error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_moves_the_key_on_past_a_parked_event() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 2);
    let failing = Arc::new(AtomicBool::new(true));
    let engine =
        fixture.start(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    for action in ["ok1", "bad", "ok2"] {
        publish(&engine, "t", "k", action).await;
    }
    processed(&engine, "t", 3).await;
    assert!(matches!(settle(&engine, "t", 2).await, EventStatus::Parked(_)));
    assert_eq!(recorder.actions_of("k"), ["ok1", "ok2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_holds_the_key_until_an_operator_retries_then_runs_the_rest_in_order() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Block, 2);
    let failing = Arc::new(AtomicBool::new(true));
    let engine =
        fixture.start(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    for action in ["ok1", "bad", "ok2", "ok3"] {
        publish(&engine, "t", "k", action).await;
    }
    publish(&engine, "t", "other", "ok").await;
    processed(&engine, "t", 5).await;
    eventually("the followers are parked as blocked", || async {
        parked_reason(&engine, "s", "t", 4).await == Some(ParkReason::Blocked)
    })
    .await;
    assert_eq!(recorder.actions_of("k"), ["ok1"], "the key waits behind the parked event");
    assert_eq!(recorder.actions_of("other"), ["ok"], "other keys are not blocked");
    for follower in [3, 4] {
        let status = engine.event_status("t", follower, None).await.unwrap();
        assert_eq!(status, EventStatus::Pending, "a blocked follower is pending, not processed");
    }
    let status = engine.event_status("t", 2, None).await.unwrap();
    assert!(matches!(status, EventStatus::Parked(ref p) if p.reason == ParkReason::Failed));
    let reasons: Vec<_> = engine
        .parked("s", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.position, p.reason))
        .collect();
    assert_eq!(
        reasons,
        [(2, ParkReason::Failed), (3, ParkReason::Blocked), (4, ParkReason::Blocked)]
    );

    // The block survives a restart.
    let engine =
        fixture.restart(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    publish(&engine, "t", "k", "ok4").await;
    eventually("the new follower is blocked too", || async {
        parked_reason(&engine, "s", "t", 6).await == Some(ParkReason::Blocked)
    })
    .await;
    assert_eq!(recorder.actions_of("k"), ["ok1"]);
    assert_eq!(engine.event_status("t", 6, None).await.unwrap(), EventStatus::Pending);

    failing.store(false, AtomicOrdering::SeqCst);
    engine.retry_parked("s", "t", 2).await.unwrap();
    processed(&engine, "t", 6).await;
    assert_eq!(recorder.actions_of("k"), ["ok1", "bad", "ok2", "ok3", "ok4"]);
    for position in 1..=6 {
        assert_eq!(engine.event_status("t", position, None).await.unwrap(), EventStatus::Processed);
    }
    wait_for(|| no_parked(&engine)).await;
    assert_eq!(recorder.overlaps(), 0);
}

/// True once the subscription has no parked events (checked synchronously for `wait_for`).
fn no_parked(engine: &inorder::Engine) -> bool {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(engine.parked("s", None, 10)).unwrap().is_empty()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_the_blocking_event_releases_the_key() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Block, 1);
    let failing = Arc::new(AtomicBool::new(true));
    let engine =
        fixture.start(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    for action in ["bad", "ok1", "ok2"] {
        publish(&engine, "t", "k", action).await;
    }
    eventually("the followers are blocked", || async {
        parked_reason(&engine, "s", "t", 3).await == Some(ParkReason::Blocked)
    })
    .await;
    engine.discard_parked("s", "t", 1).await.unwrap();
    processed(&engine, "t", 3).await;
    assert_eq!(recorder.actions_of("k"), ["ok1", "ok2"]);
    wait_for(|| no_parked(&engine)).await;
    let status = engine.event_status("t", 1, None).await.unwrap();
    assert!(
        matches!(&status, EventStatus::Parked(p) if p.discarded_at_micros.is_some()),
        "a discarded event was never handled: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_survive_a_restart_and_can_be_retried_or_discarded() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 1);
    let failing = Arc::new(AtomicBool::new(true));
    let engine =
        fixture.start(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    publish(&engine, "t", "k1", "bad").await;
    publish(&engine, "t", "k2", "bad").await;
    assert!(matches!(settle(&engine, "t", 2).await, EventStatus::Parked(_)));
    let engine =
        fixture.restart(vec![("s", RecordingHandler::with(&recorder, fail_bad(&failing)))]).await;
    let parked = engine.parked("s", None, 10).await.unwrap();
    assert_eq!(parked.iter().map(|p| p.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(engine.subscriptions().await.unwrap()[0].streams[0].status.parked, 2);

    failing.store(false, AtomicOrdering::SeqCst);
    engine.retry_parked("s", "t", 1).await.unwrap();
    engine.discard_parked("s", "t", 2).await.unwrap();
    wait_for(|| no_parked(&engine)).await;
    assert_eq!(recorder.actions_of("k1").len(), 1);
    assert!(recorder.actions_of("k2").is_empty());
    processed(&engine, "t", 1).await;
    assert!(matches!(engine.event_status("t", 2, None).await.unwrap(), EventStatus::Parked(_)));
    let err = engine.retry_parked("s", "t", 2).await.unwrap_err();
    assert!(matches!(err, inorder::Error::UnknownParked { position: 2, .. }), "discarded: {err}");

    let err = engine.retry_parked("s", "t", 99).await.unwrap_err();
    assert!(matches!(err, inorder::Error::UnknownParked { position: 99, .. }), "{err}");
    let err = engine.retry_parked("nope", "t", 1).await.unwrap_err();
    assert!(matches!(err, inorder::Error::UnknownSubscription { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failure_not_a_crash() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 2);
    let behaviour: Behaviour = Arc::new(|event, _| {
        assert!(event.action != "boom", "handler bug");
        Ok(Reply::Null)
    });
    let engine = fixture.start(vec![("s", RecordingHandler::with(&recorder, behaviour))]).await;
    publish(&engine, "t", "k", "boom").await;
    publish(&engine, "t", "k", "fine").await;
    processed(&engine, "t", 2).await;
    let parked = engine.parked("s", None, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0].error.as_deref().unwrap().contains("handler bug"), "{:?}", parked[0].error);
    assert_eq!(recorder.actions_of("k"), ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_from_a_handler_delays_its_key_and_panics_nothing() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture(FailurePolicy::Skip, 5);
    let behaviour: Behaviour = Arc::new(|event, _| {
        if event.key == "stuck" {
            Err(HandlerError::retry_after("come back much later", Duration::MAX))
        } else {
            Ok(Reply::Null)
        }
    });
    let engine = fixture.start(vec![("s", RecordingHandler::with(&recorder, behaviour))]).await;
    publish(&engine, "t", "stuck", "a").await;
    eventually("the stuck key's first call failed", || async {
        recorder.calls().iter().any(|c| c.key == "stuck")
    })
    .await;
    for i in 0..10 {
        publish(&engine, "t", &format!("k{i}"), "a").await;
    }
    eventually("every other key is handled, durably", || async {
        let info = engine.subscriptions().await.unwrap();
        *info[0].streams[0].status.done_above == [2..=11]
    })
    .await;
    let info = engine.subscriptions().await.unwrap();
    assert_eq!(info[0].streams[0].status.health, inorder::StreamHealth::Running);
    assert_eq!(engine.event_status("t", 1, None).await.unwrap(), EventStatus::Pending);
    assert_eq!(recorder.actions_of("stuck").len(), 0, "its retry waits (cut to RETRY_DELAY_MAX)");
}
