//! Retention, as a user sees it: limits delete the oldest events, `until_consumed` deletes only
//! what every subscription resolved, reads and status below the first retained position answer
//! `Purged`, ids are deduplicated within the window, and a subscription that fell behind
//! skips what was deleted (counted), never handling or reporting it as processed.
//!
//! Runs on the file storage, and on PostgreSQL with `INORDER_TEST_STORAGE=postgres`.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Fixture, PATIENCE, TestStorage, eventually};
use inorder::{
    Engine, EngineConfig, Error, Event, Reply, Retention, SubscriptionConfig, TopicConfig,
    handler_fn,
};
use tokio::sync::watch;

const TOPIC: &str = "orders";

/// The smallest segment the log accepts with the default record size (the file log deletes
/// whole segments): about a thousand of [`event`]s.
const SEGMENT: u64 = (4 << 20) + (64 << 10);

/// Small segments and a fast retention round.
fn config(
    retention: Retention,
    subscriptions: &[&str],
) -> impl FnOnce(EngineConfig) -> EngineConfig {
    let subscriptions: Vec<String> = subscriptions.iter().map(|s| (*s).to_owned()).collect();
    move |mut config| {
        config.segment_bytes = SEGMENT;
        config.retention_interval = Duration::from_millis(20);
        config = config.topic(TopicConfig::new(TOPIC).retention(retention));
        for name in subscriptions {
            config = config.subscription(SubscriptionConfig::new(name, [TOPIC]));
        }
        config
    }
}

fn event(key: &str, id: &str) -> Event {
    Event::builder(TOPIC, key, "order.placed")
        .id(id)
        .json(&serde_json::json!({ "pad": "x".repeat(4000) }))
        .build()
        .unwrap()
}

/// Publishes `count` events with ids `e1`, `e2`, … in batches; returns the last position.
async fn publish(engine: &Engine, count: usize) -> u64 {
    publish_from(engine, 1, count).await
}

/// Publishes `count` events with ids from `e<start>` on.
async fn publish_from(engine: &Engine, start: usize, count: usize) -> u64 {
    let mut last = 0;
    for chunk in (start..start + count).collect::<Vec<_>>().chunks(100) {
        let batch =
            chunk.iter().map(|n| event(&format!("k{}", n % 10), &format!("e{n}"))).collect();
        last = *engine.publish_batch(batch).await.unwrap().last().unwrap();
    }
    last
}

async fn first_position(engine: &Engine) -> u64 {
    engine.storage().positions(&TOPIC.parse().unwrap()).await.unwrap().0
}

#[tokio::test]
async fn max_events_deletes_the_oldest_and_reads_below_answer_purged() {
    let mut fixture = Fixture::new(config(Retention::forever().max_events(2000), &[]));
    let engine = fixture.start(Vec::new()).await;
    let last = publish(&engine, 6000).await;
    eventually("the topic is within max_events", || async {
        let first = first_position(&engine).await;
        last + 1 - first <= 2000
    })
    .await;
    let first = first_position(&engine).await;
    assert!(last + 1 - first > 500, "no more deleted than a segment: first retained {first}");

    match engine.read(TOPIC, 1, 10).await {
        Err(Error::Purged { requested: 1, first_available, .. }) => {
            assert_eq!(first_available, first);
        }
        other => panic!("a read below the first retained position: {other:?}"),
    }
    assert!(matches!(engine.event_status(TOPIC, 1, None).await, Err(Error::Purged { .. })));
    let retained = engine.read(TOPIC, first, 10).await.unwrap();
    assert_eq!(retained.first().unwrap().position, first);

    // Deduplication holds within the window; a deleted event's id is free again.
    let again = engine.publish(event("k1", &format!("e{last}"))).await.unwrap();
    assert_eq!(again, last, "a retained id is a duplicate");
    let fresh = engine.publish(event("k1", "e1")).await.unwrap();
    assert_eq!(fresh, last + 1, "a deleted event's id appends again");
    let topics = engine.topics().await.unwrap();
    assert_eq!(topics[0].retention.max_events, Some(2000));
    fixture.stop().await;
}

#[tokio::test]
async fn until_consumed_is_held_by_the_slowest_subscription() {
    let mut fixture =
        Fixture::new(config(Retention::forever().until_consumed(), &["fast", "slow"]));
    // The slow subscription handles positions up to the gate's value, then waits.
    let (gate, gated) = watch::channel(0u64);
    let slow = handler_fn(move |event: Event, _| {
        let mut gated = gated.clone();
        async move {
            let position = event.position;
            let _ = gated.wait_for(|open| position <= *open).await;
            Ok(Reply::Null)
        }
    });
    let fast_done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&fast_done);
    let fast = handler_fn(move |event: Event, _| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_max(event.position, std::sync::atomic::Ordering::SeqCst);
            Ok(Reply::Null)
        }
    });
    let engine =
        fixture.builder().await.handler("fast", fast).handler("slow", slow).start().await.unwrap();
    let last = publish(&engine, 3000).await;
    eventually("the fast subscription handled everything", || async {
        engine.wait_processed(TOPIC, last, Some("fast"), Duration::ZERO).await.unwrap_or(false)
    })
    .await;

    // Slow gets to 1500 and waits there: retention goes no further, whatever fast did.
    gate.send_replace(1500);
    eventually("retention deletes what both consumed", || async {
        first_position(&engine).await > 1
    })
    .await;
    // Whatever round deleted something ran after fast had handled all 3000.
    let first = first_position(&engine).await;
    assert!(first <= 1501, "retention deleted up to {first} while slow had handled 1500");
    assert!(engine.wait_processed(TOPIC, 1500, Some("slow"), PATIENCE).await.unwrap());
    gate.send_replace(u64::MAX);
    eventually("retention follows slow to the end", || async {
        first_position(&engine).await > 1501
    })
    .await;
    fixture.stop().await;
}

#[tokio::test]
async fn a_subscription_behind_retention_skips_what_was_deleted() {
    // The subscription's handler is stuck while retention keeps at most the last 2000 events.
    let mut fixture = Fixture::new(config(Retention::forever().max_events(2000), &["late"]));
    let stuck = handler_fn(|_event: Event, _| std::future::pending::<Result<Reply, _>>());
    let engine = fixture.builder().await.handler("late", stuck).start().await.unwrap();
    fixture.engine = Some(engine.clone());
    let last = publish(&engine, 6000).await;
    eventually("the topic is within max_events", || async {
        last + 1 - first_position(&engine).await <= 2000
    })
    .await;
    fixture.stop().await;

    // Started again, it resumes at position 1, which is gone: it skips to the first retained.
    let recorder = Arc::new(common::Recorder::default());
    let engine = fixture.start(vec![("late", common::RecordingHandler::ok(&recorder))]).await;
    let first = first_position(&engine).await;
    common::processed(&engine, TOPIC, last).await;
    let handled: Vec<u64> = recorder.calls().iter().map(|call| call.position).collect();
    assert_eq!(handled.iter().min().copied(), Some(first), "only retained events are handled");
    assert_eq!(handled.len() as u64, last + 1 - first);
    let info = engine.subscriptions().await.unwrap();
    assert_eq!(info[0].skipped_by_retention, first - 1, "the skipped events are counted");
    assert!(
        matches!(engine.event_status(TOPIC, first - 1, None).await, Err(Error::Purged { .. })),
        "a skipped event is never reported processed"
    );
    fixture.stop().await;
}

#[tokio::test]
async fn max_bytes_keeps_the_topic_within_the_bound_plus_one_segment() {
    let bound = 10 << 20;
    let mut fixture = Fixture::new(config(Retention::forever().max_bytes(bound), &[]));
    let engine = fixture.start(Vec::new()).await;
    let topic = TOPIC.parse().unwrap();
    for round in 0..10 {
        publish_from(&engine, round * 500 + 1, 500).await;
        eventually("the topic is within max_bytes", || async {
            engine.storage().footprint(&topic).await.unwrap().bytes <= bound
        })
        .await;
    }
    let footprint = engine.storage().footprint(&topic).await.unwrap();
    assert!(footprint.first > 1 && footprint.events() > 0, "{footprint:?}");
    fixture.stop().await;
}

/// The bytes of the files under `dir`.
fn disk_usage(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum()
}

#[tokio::test]
async fn a_million_events_through_max_bytes_keep_the_disk_within_the_bound() {
    const EVENTS: usize = 1_000_000;
    let bound: u64 = 16 << 20;
    let segment = SEGMENT;
    let mut fixture = Fixture::new(|mut config| {
        config.segment_bytes = segment;
        config.retention_interval = Duration::from_millis(10);
        config.topic(TopicConfig::new(TOPIC).retention(Retention::forever().max_bytes(bound)))
    });
    if fixture.storage != TestStorage::File {
        return; // the bytes on disk of the file log; PostgreSQL's are checked above
    }
    let engine = fixture.start(Vec::new()).await;
    let dir = fixture.dir.path().join("topics").join(TOPIC);
    let mut peak = 0;
    let mut published = 0;
    while published < EVENTS {
        for _ in 0..100 {
            let batch = (0..1000).map(|n| {
                let id = inorder::new_event_id();
                Event::builder(TOPIC, format!("k{}", n % 64), "order.placed")
                    .id(id)
                    .build()
                    .unwrap()
            });
            engine.publish_batch(batch.collect()).await.unwrap();
            published += 1000;
        }
        // Index files and the lock count too: the whole directory stays within bound + segment.
        eventually("the log is within max_bytes", || async { disk_usage(&dir) <= bound + segment })
            .await;
        peak = peak.max(disk_usage(&dir));
    }
    let first = first_position(&engine).await;
    assert!(first > 800_000, "the oldest events went: first retained {first}");
    assert!(peak <= bound + segment, "peak {peak}");
    fixture.stop().await;
}

#[tokio::test]
async fn max_age_deletes_what_was_appended_longer_ago() {
    let mut fixture =
        Fixture::new(config(Retention::forever().max_age(Duration::from_secs(1)), &[]));
    let engine = fixture.start(Vec::new()).await;
    let old = publish(&engine, 3000).await;
    // Everything appended so far ages past one second; then nothing of it is left.
    eventually("what is older than max_age is deleted", || async {
        first_position(&engine).await > old
    })
    .await;
    let fresh = publish_from(&engine, 10_000, 1).await;
    assert_eq!(fresh, old + 1, "positions go on after a purge of everything");
    let kept = engine.read(TOPIC, fresh, 10).await.unwrap();
    assert_eq!(kept.len(), 1, "a fresh event is kept");
    fixture.stop().await;
}

/// Retention deleting segments under a subscription that reads and handles while publishers
/// run: the stream never fails, and every event is either handled or counted as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_under_a_running_subscription_never_fails_its_stream() {
    let mut fixture = Fixture::new(config(Retention::forever().max_events(1500), &["s"]));
    let recorder = Arc::new(common::Recorder::default());
    let handler = common::RecordingHandler::ok(&recorder).slow(Duration::from_micros(200));
    let engine = fixture.start(vec![("s", handler)]).await;
    let last = publish(&engine, 6000).await;
    eventually("the subscription got to the end", || async {
        let info = engine.subscriptions().await.unwrap();
        let stream = &info[0].streams[0];
        assert_eq!(stream.status.health.as_str(), "running", "{:?}", stream.status.health);
        stream.status.watermark >= last
    })
    .await;
    let info = engine.subscriptions().await.unwrap();
    let handled: std::collections::BTreeSet<u64> =
        recorder.calls().iter().filter(|c| c.ok).map(|c| c.position).collect();
    assert_eq!(
        handled.len() as u64 + info[0].skipped_by_retention,
        last,
        "each event handled or skipped, once"
    );
    fixture.stop().await;
}
