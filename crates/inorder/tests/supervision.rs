//! Supervision: a stream never stops silently. Transient storage failures restart it (counted,
//! visible as `retrying`) and lose nothing; corruption, gaps and repeated panics fail it
//! visibly — only that stream — and it refuses operator commands with the reason.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    Fixture, Recorder, RecordingHandler, event, eventually,
    faults::{Fault, Faults},
    processed, publish, subscription,
};
use inorder::{Engine, EventStatus, RetryPolicy, StorageErrorKind, StreamHealth, TopicConfig};

fn two_topics() -> Fixture {
    let retry = RetryPolicy { initial: Duration::from_millis(5), ..RetryPolicy::default() };
    Fixture::new(|c| {
        c.topic(TopicConfig::new("t1"))
            .topic(TopicConfig::new("t2"))
            .subscription(subscription("s1", "t1").retry(retry))
            .subscription(subscription("s2", "t2").retry(retry))
    })
}

/// Two topics, each with a recording subscription, on storage behind fresh faults (readers
/// leave out the `hidden` positions from the start).
async fn start_two_topics(hidden: &[(&str, u64)]) -> (Fixture, Engine, Arc<Faults>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let faults = Arc::new(Faults::default());
    for (topic, position) in hidden {
        faults.hide(topic, *position);
    }
    let mut fixture = two_topics();
    let handlers =
        vec![("s1", RecordingHandler::ok(&recorder)), ("s2", RecordingHandler::ok(&recorder))];
    let engine = fixture.start_faulty(&faults, handlers).await;
    (fixture, engine, faults, recorder)
}

async fn health(engine: &Engine, subscription: &str) -> StreamHealth {
    let infos = engine.subscriptions().await.unwrap();
    let info = infos.iter().find(|i| i.name == subscription).unwrap();
    info.streams[0].status.health.clone()
}

async fn publish_keys(engine: &Engine, topic: &str, count: usize) -> u64 {
    let mut last = 0;
    for i in 0..count {
        last = publish(engine, topic, &format!("k{}", i % 5), "a").await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_checkpoint_restarts_the_stream_until_the_storage_heals_and_loses_nothing() {
    let (_fixture, engine, faults, recorder) = start_two_topics(&[]).await;
    faults.fail_commits(Fault::Error(StorageErrorKind::Transient), usize::MAX);
    let last = publish_keys(&engine, "t1", 40).await;
    eventually("the stream is retrying after repeated failures", || async {
        matches!(health(&engine, "s1").await, StreamHealth::Retrying { restarts: 2.., .. })
    })
    .await;
    let StreamHealth::Retrying { error, .. } = health(&engine, "s1").await else { unreachable!() };
    assert!(error.contains("injected transient fault"), "{error}");
    assert_eq!(engine.event_status("t1", last, None).await.unwrap(), EventStatus::Pending);

    faults.heal();
    processed(&engine, "t1", last).await;
    assert_eq!(health(&engine, "s1").await, StreamHealth::Running);
    let handled = recorder.handled_by_key();
    for (key, positions) in &handled {
        let mut sorted = positions.clone();
        sorted.dedup();
        assert!(sorted.is_sorted(), "key {key} out of order: {positions:?}");
    }
    let distinct: usize = handled
        .values()
        .map(|p| {
            let mut p = p.clone();
            p.dedup();
            p.len()
        })
        .sum();
    assert_eq!(distinct, 40, "every event handled (again after each restart, at least once)");
    assert_eq!(recorder.overlaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_fails_only_its_stream_visibly_and_refuses_operator_commands() {
    let (_fixture, engine, faults, _recorder) = start_two_topics(&[]).await;
    faults.fail_reads(Fault::Error(StorageErrorKind::Corrupt), usize::MAX, Some("t1"));
    publish(&engine, "t1", "k", "a").await;
    let last = publish_keys(&engine, "t2", 10).await;
    processed(&engine, "t2", last).await;
    eventually("s1/t1 is failed", || async {
        matches!(health(&engine, "s1").await, StreamHealth::Failed { .. })
    })
    .await;
    let failed = engine.failed_streams();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0.to_string(), "s1/t1");
    assert!(failed[0].1.contains("injected corrupt fault"), "{}", failed[0].1);
    assert_eq!(health(&engine, "s2").await, StreamHealth::Running, "other topics keep working");
    let error = engine.retry_parked("s1", "t1", 1).await.unwrap_err();
    assert!(matches!(error, inorder::Error::StreamFailed { .. }), "{error}");
    let error = engine.event_status("t1", 1, None).await.unwrap_err();
    assert!(matches!(error, inorder::Error::StreamFailed { .. }), "never pending forever: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_storage_restarts_the_stream_and_repeated_panics_fail_it() {
    let (_fixture, engine, faults, _recorder) = start_two_topics(&[]).await;
    faults.fail_reads(Fault::Panic, 1, Some("t1"));
    let last = publish_keys(&engine, "t1", 5).await;
    processed(&engine, "t1", last).await;
    assert_eq!(faults.injected.load(std::sync::atomic::Ordering::SeqCst), 1, "one panic");
    assert_eq!(health(&engine, "s1").await, StreamHealth::Running, "restarted after the panic");

    faults.fail_reads(Fault::Panic, usize::MAX, Some("t1"));
    publish(&engine, "t1", "k", "a").await;
    eventually("the stream fails after panics in a row", || async {
        matches!(health(&engine, "s1").await, StreamHealth::Failed { .. })
    })
    .await;
    let StreamHealth::Failed { error } = health(&engine, "s1").await else { unreachable!() };
    assert!(error.contains("panicked") && error.contains("injected panic"), "{error}");
    publish(&engine, "t2", "k", "a").await;
    processed(&engine, "t2", 1).await;
    let panics = faults.injected.load(std::sync::atomic::Ordering::SeqCst) - 1;
    assert_eq!(panics, 3, "failed after STREAM_PANICS_MAX panics in a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_is_a_typed_error_and_appends_nothing() {
    let (_fixture, engine, faults, _recorder) = start_two_topics(&[]).await;
    faults.fail_appends(Fault::Error(StorageErrorKind::Transient), 1);
    let retried = event("t1", "k", "a");
    let error = engine.publish(retried.clone()).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(error.storage_kind(), Some(StorageErrorKind::Transient));
    assert_eq!(engine.publish(retried).await.unwrap(), 1, "the retry is the first event");
    processed(&engine, "t1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_positions_fails_the_stream_as_corrupt_and_skips_nothing() {
    let (_fixture, engine, _faults, recorder) = start_two_topics(&[("t1", 3)]).await;
    for key in ["a", "b"] {
        publish(&engine, "t1", key, "x").await;
    }
    processed(&engine, "t1", 2).await;
    for key in ["c", "d", "e"] {
        publish(&engine, "t1", key, "x").await;
    }
    eventually("the stream fails at the gap", || async {
        matches!(health(&engine, "s1").await, StreamHealth::Failed { .. })
    })
    .await;
    let StreamHealth::Failed { error } = health(&engine, "s1").await else { unreachable!() };
    assert!(error.contains("from position 3 to 4"), "names both positions: {error}");
    let mut handled: Vec<u64> = recorder.calls().iter().map(|c| c.position).collect();
    handled.sort_unstable();
    assert_eq!(handled, [1, 2], "nothing after the gap is handled");
    let error = engine.event_status("t1", 4, None).await.unwrap_err();
    assert!(matches!(error, inorder::Error::StreamFailed { .. }), "{error}");
}

/// A fifo subscription over `t1` and `t2` (commit order per key across them), on storage behind
/// fresh faults.
async fn start_across_topics() -> (Fixture, Engine, Arc<Faults>, Arc<Recorder>) {
    let retry = RetryPolicy { initial: Duration::from_millis(5), ..RetryPolicy::default() };
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("t1"))
            .topic(TopicConfig::new("t2"))
            .subscription(inorder::SubscriptionConfig::new("both", ["t1", "t2"]).retry(retry))
    });
    let recorder = Arc::new(Recorder::default());
    let faults = Arc::new(Faults::default());
    let engine =
        fixture.start_faulty(&faults, vec![("both", RecordingHandler::ok(&recorder))]).await;
    (fixture, engine, faults, recorder)
}

async fn stream_health(engine: &Engine, subscription: &str, topic: &str) -> StreamHealth {
    let infos = engine.subscriptions().await.unwrap();
    let info = infos.iter().find(|i| i.name == subscription).unwrap();
    info.streams.iter().find(|s| s.topic == topic).unwrap().status.health.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_stream_holds_its_keys_later_events_in_other_topics_until_it_read_again() {
    let (_fixture, engine, faults, recorder) = start_across_topics().await;
    faults.fail_reads(Fault::Error(StorageErrorKind::Transient), usize::MAX, Some("t1"));
    let first = publish(&engine, "t1", "k", "first").await;
    let second = publish(&engine, "t2", "k", "second").await;
    eventually("both/t1 is retrying", || async {
        matches!(
            stream_health(&engine, "both", "t1").await,
            StreamHealth::Retrying { restarts: 2.., .. }
        )
    })
    .await;
    faults.heal();
    processed(&engine, "t1", first).await;
    processed(&engine, "t2", second).await;
    assert_eq!(recorder.actions_of("k"), ["first", "second"], "commit order across the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_no_longer_holds_back_the_subscriptions_other_topics() {
    let (_fixture, engine, faults, recorder) = start_across_topics().await;
    faults.fail_reads(Fault::Error(StorageErrorKind::Corrupt), usize::MAX, Some("t1"));
    publish(&engine, "t1", "k", "lost").await;
    let second = publish(&engine, "t2", "k", "second").await;
    eventually("both/t1 is failed", || async {
        matches!(stream_health(&engine, "both", "t1").await, StreamHealth::Failed { .. })
    })
    .await;
    processed(&engine, "t2", second).await;
    assert_eq!(recorder.actions_of("k"), ["second"], "t2 goes on; t1's event waits for a repair");
}
