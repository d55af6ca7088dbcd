//! Publishing: positions, deduplication of producer retries, `publish_and_wait` correlation,
//! all-or-nothing batches, and bad input that changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Fixture, Recorder, RecordingHandler, event, publish, settle, subscription};
use inorder::{Error, Event, Outcome, Reply, TopicConfig};

fn fixture() -> Fixture {
    Fixture::new(|c| {
        c.topic(TopicConfig::new("orders").actions(["order.created", "order.paid"]))
            .subscription(subscription("s", "orders"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_published_twice_keeps_its_first_position_even_after_restart() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let first = Event::builder("orders", "o-1", "order.created").id("evt-1").build().unwrap();
    assert_eq!(engine.publish(first.clone()).await.unwrap(), 1);
    assert_eq!(engine.publish(first.clone()).await.unwrap(), 1, "a producer retry");
    settle(&engine, "orders", 1).await;
    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert_eq!(engine.publish(first).await.unwrap(), 1, "still known after restart");
    assert_eq!(publish(&engine, "orders", "o-2", "order.created").await, 2);
    settle(&engine, "orders", 2).await;
    assert_eq!(recorder.calls().len(), 2, "the duplicate was never handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_of_one_id_get_one_position() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let same = Event::builder("orders", "o-1", "order.created").id("evt-same").build().unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (engine, same) = (engine.clone(), same.clone());
            tokio::spawn(async move { engine.publish(same).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 1);
    }
    assert_eq!(publish(&engine, "orders", "o-2", "order.created").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_index_is_rebuilt_for_events_appended_just_before_a_crash() {
    // The index is written after the append and without fsync; on start it is completed from
    // the log. Simulate losing it by publishing through the storage directly.
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let raw = Event::builder("orders", "o-1", "order.created").id("evt-raw").build().unwrap();
    let topic = raw.topic.clone();
    engine.storage().append(&topic, vec![inorder::codec::encode(&raw)]).await.unwrap();
    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert_eq!(engine.publish(raw).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_wait_returns_the_reply_for_that_very_event() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let echo: common::Behaviour = Arc::new(|event, _| Ok(Reply::String(event.id.clone())));
    let handler = RecordingHandler::with(&recorder, echo).slow(Duration::from_millis(5));
    let engine = fixture.start(vec![("s", handler)]).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let event = Event::builder("orders", format!("o-{}", i % 4), "order.created")
                    .id(format!("id-{i}"))
                    .build()
                    .unwrap();
                let outcome = engine.publish_and_wait(event, common::PATIENCE).await.unwrap();
                assert_eq!(outcome, Outcome::Handled(Reply::String(format!("id-{i}"))));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_never_reaches_another_caller() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let echo: common::Behaviour = Arc::new(|event, _| Ok(Reply::String(event.id.clone())));
    let handler = RecordingHandler::with(&recorder, echo).slow(Duration::from_millis(200));
    let engine = fixture.start(vec![("s", handler)]).await;
    let slow = Event::builder("orders", "o-1", "order.created").id("slow").build().unwrap();
    let err = engine.publish_and_wait(slow, Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let next = Event::builder("orders", "o-1", "order.paid").id("next").build().unwrap();
    let outcome = engine.publish_and_wait(next, common::PATIENCE).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Handled(Reply::String("next".into())),
        "not the late reply of \"slow\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let good = event("orders", "o-1", "order.created");
    let bad = event("orders", "o-1", "order.refunded");
    let err = engine.publish_batch(vec![good.clone(), bad]).await.unwrap_err();
    assert!(matches!(err, Error::UnknownAction { .. }), "{err}");
    let mixed = vec![good.clone(), event("other", "o", "x")];
    assert!(matches!(engine.publish_batch(mixed).await, Err(Error::InvalidBatch { .. })));
    assert!(matches!(engine.publish_batch(Vec::new()).await, Err(Error::InvalidBatch { .. })));
    assert_eq!(
        engine.publish_batch(vec![good, event("orders", "o-2", "order.paid")]).await.unwrap(),
        [1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_changes_nothing() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert!(matches!(
        engine.publish(event("nope", "k", "x")).await,
        Err(Error::UnknownTopic { .. })
    ));
    let mut huge = event("orders", "k", "order.created");
    huge.data = vec![0u8; 5 << 20].into();
    let err = engine.publish(huge).await.unwrap_err();
    assert!(matches!(err, Error::InvalidEvent { too_large: true, .. }), "{err}");
    assert!(Event::builder("../../etc", "k", "a").build().is_err());
    assert_eq!(engine.topics().await.unwrap()[0].last_position, 0, "nothing was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_created_topics_appear_on_first_publish_only_when_enabled() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|mut c| {
        c.auto_create_topics = true;
        c.subscription(subscription("s", "orders"))
    });
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert_eq!(publish(&engine, "brand-new", "k", "a").await, 1);
    assert_eq!(publish(&engine, "orders", "k", "a").await, 1);
    settle(&engine, "orders", 1).await;
    let names: Vec<_> = engine.topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["brand-new", "orders"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_dropped_at_any_point_keeps_its_claim_so_its_retry_is_stored_once() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture =
        Fixture::new(|c| c.topic(TopicConfig::new("t")).subscription(subscription("s", "t")));
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    const PUBLISHES: u64 = 300;
    let mut dropped = 0;
    for i in 0..PUBLISHES {
        let event =
            Event::builder("t", format!("k{}", i % 7), "a").id(format!("id-{i}")).build().unwrap();
        // An HTTP client that times out: the publish future is dropped somewhere in flight,
        // after a varying number of polls, while the rest of the runtime goes on.
        let mut publishing = Box::pin(engine.publish(event.clone()));
        let polls = (i * 7919) % 12;
        let mut finished = false;
        for _ in 0..polls {
            if futures_util::FutureExt::now_or_never(publishing.as_mut()).is_some() {
                finished = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(publishing);
        if !finished {
            dropped += 1;
        }
        engine.publish(event).await.unwrap(); // its retry
    }
    assert!(dropped > PUBLISHES / 10, "only {dropped} publishes were dropped in flight");
    let events = engine.read("t", 1, 1000).await.unwrap();
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let stored = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), usize::try_from(PUBLISHES).unwrap(), "every id is stored");
    assert_eq!(stored, ids.len(), "and stored once: {} duplicates", stored - ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_stops_at_max_topics_and_creates_nothing_more() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|mut c| {
        c.auto_create_topics = true;
        c.max_topics = 3;
        c
    });
    let engine = fixture.builder().await.start().await.unwrap();
    fixture.engine = Some(engine.clone());
    drop(recorder);
    for topic in ["a", "b", "c"] {
        publish(&engine, topic, "k", "x").await;
    }
    let error = engine.publish(event("d", "k", "x")).await.unwrap_err();
    assert!(matches!(error, Error::TopicLimit { max: 3, .. }), "{error}");
    assert!(error.is_input_error());
    let topics: Vec<String> = engine.topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(topics, ["a", "b", "c"]);
    assert_eq!(publish(&engine, "a", "k", "x").await, 2, "existing topics still take events");
}
