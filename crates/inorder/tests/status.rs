//! Process status: "has this been processed yet?", by position and by entity and time, waiting
//! without polling, never going backwards, surviving restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use common::{Behaviour, Fixture, Recorder, RecordingHandler, processed, settle, subscription};
use inorder::{Event, HandlerError, Reply, TopicConfig};

fn two_subscriptions() -> Fixture {
    Fixture::new(|c| {
        c.topic(TopicConfig::new("posts"))
            .subscription(subscription("fast", "posts"))
            .subscription(subscription("slow", "posts"))
    })
}

/// Holds every call until `open` is set.
fn gate(open: &Arc<AtomicBool>) -> Behaviour {
    let open = Arc::clone(open);
    Arc::new(move |_, _| {
        if open.load(AtomicOrdering::SeqCst) {
            Ok(Reply::Null)
        } else {
            Err(HandlerError::retry("gate closed"))
        }
    })
}

fn event_at(key: &str, time_micros: i64) -> Event {
    Event::builder("posts", key, "post.created").time_micros(time_micros).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_is_processed_only_when_every_subscription_processed_it() {
    let recorder = Arc::new(Recorder::default());
    let open = Arc::new(AtomicBool::new(false));
    let mut fixture = two_subscriptions();
    let slow = RecordingHandler::with(&recorder, gate(&open));
    let engine =
        fixture.start(vec![("fast", RecordingHandler::ok(&recorder)), ("slow", slow)]).await;
    let position = engine.publish(event_at("p-1", 100)).await.unwrap();
    assert!(
        engine.wait_processed("posts", position, Some("fast"), common::PATIENCE).await.unwrap()
    );
    assert!(engine.processed_by("fast", "posts", position).await.unwrap());
    assert!(!engine.processed_by("slow", "posts", position).await.unwrap());
    assert!(
        !engine.processed("posts", position).await.unwrap(),
        "425 until every subscription is done"
    );
    assert!(!engine.processed("posts", position + 1).await.unwrap(), "an unpublished position");

    // A waiter resolves the moment the slow subscription catches up.
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.wait_processed("posts", position, None, common::PATIENCE).await
        })
    };
    common::eventually("the slow subscription's handler has failed on the event", || async {
        recorder.calls().iter().any(|c| c.position == position && !c.ok)
    })
    .await;
    assert!(!waiter.is_finished(), "the slow subscription has not handled it");
    open.store(true, AtomicOrdering::SeqCst);
    assert!(waiter.await.unwrap().unwrap());
    assert!(engine.processed("posts", position).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_gives_up_at_its_timeout() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("posts")).subscription(subscription("s", "posts"))
    });
    let closed = Arc::new(AtomicBool::new(false));
    let engine = fixture.start(vec![("s", RecordingHandler::with(&recorder, gate(&closed)))]).await;
    let position = engine.publish(event_at("p", 1)).await.unwrap();
    let started = Instant::now();
    assert!(
        !engine.wait_processed("posts", position, None, Duration::from_millis(100)).await.unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(!engine.wait_processed_entity("posts/p", 1, Duration::from_millis(50)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_status_is_the_latest_event_time_and_never_goes_back() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("posts")).subscription(subscription("s", "posts"))
    });
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    engine.publish(event_at("p-1", 5_000)).await.unwrap();
    engine.publish(event_at("p-1", 3_000)).await.unwrap(); // an older event, handled later
    engine.publish(event_at("p-2", 9_000)).await.unwrap();
    settle(&engine, "posts", 3).await;

    let mark = engine.last_processed("posts/p-1").await.unwrap().unwrap();
    assert_eq!((mark.position, mark.time_micros), (2, 5_000), "the maximum time, not the last one");
    assert!(engine.processed_entity("posts/p-1", 5_000).await.unwrap());
    assert!(engine.processed_entity("posts/p-1", 4_000).await.unwrap());
    assert!(!engine.processed_entity("posts/p-1", 5_001).await.unwrap());
    assert!(engine.processed_entity("posts", 9_000).await.unwrap());
    assert_eq!(engine.last_processed("posts/never").await.unwrap(), None);

    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert!(engine.processed_entity("posts/p-1", 5_000).await.unwrap(), "status survives restart");
    assert!(engine.processed("posts", 3).await.unwrap());
    assert_eq!(engine.last_processed("posts").await.unwrap().unwrap().time_micros, 9_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_entity_resolves_when_its_event_is_handled() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("posts")).subscription(subscription("s", "posts"))
    });
    let engine = fixture
        .start(vec![("s", RecordingHandler::ok(&recorder).slow(Duration::from_millis(30)))])
        .await;
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.wait_processed_entity("posts/p-7", 42, common::PATIENCE).await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.publish(event_at("p-7", 42)).await.unwrap();
    assert!(waiter.await.unwrap().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_subscriptions_are_typed_errors() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("posts")).subscription(subscription("s", "posts"))
    });
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert!(matches!(engine.processed("nope", 1).await, Err(inorder::Error::UnknownTopic { .. })));
    assert!(matches!(engine.processed("../x", 1).await, Err(inorder::Error::UnknownTopic { .. })));
    assert!(matches!(
        engine.processed_by("nope", "posts", 1).await,
        Err(inorder::Error::UnknownSubscription { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_time_mark_waits_for_an_earlier_slow_event() {
    let recorder = Arc::new(Recorder::default());
    let open = Arc::new(AtomicBool::new(false));
    let retry = common::patient_retry();
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("posts")).subscription(subscription("s", "posts").retry(retry))
    });
    let slow_first: Behaviour = {
        let open = Arc::clone(&open);
        Arc::new(move |event, _| {
            if event.key == "p-1" && !open.load(AtomicOrdering::SeqCst) {
                Err(HandlerError::retry("still working"))
            } else {
                Ok(Reply::Null)
            }
        })
    };
    let engine = fixture.start(vec![("s", RecordingHandler::with(&recorder, slow_first))]).await;
    engine.publish(event_at("p-0", 50)).await.unwrap();
    processed(&engine, "posts", 1).await;
    engine.publish(event_at("p-1", 100)).await.unwrap();
    engine.publish(event_at("p-2", 200)).await.unwrap();
    common::eventually("p-2 is handled, durably", || async {
        *engine.subscriptions().await.unwrap()[0].streams[0].status.done_above == [3..=3]
    })
    .await;
    assert!(!engine.processed("posts", 2).await.unwrap());
    assert!(engine.processed_entity("posts", 50).await.unwrap());
    assert!(
        !engine.processed_entity("posts", 100).await.unwrap(),
        "the topic is not processed up to time 100 while the event at 100 is not handled"
    );
    assert!(!engine.processed_entity("posts", 200).await.unwrap());
    assert!(engine.processed_entity("posts/p-2", 200).await.unwrap(), "its own key is");

    open.store(true, AtomicOrdering::SeqCst);
    processed(&engine, "posts", 3).await;
    assert!(engine.wait_processed_entity("posts", 200, common::PATIENCE).await.unwrap());
}
