//! Managing a running engine: subscriptions added and removed, paused and resumed (through a
//! restart), rewound by position and by time; topics added and deleted.
//!
//! Runs on the file storage, and on PostgreSQL with `INORDER_TEST_STORAGE=postgres`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Fixture, PATIENCE, Recorder, RecordingHandler, eventually, processed, publish};
use inorder::{EngineConfig, Error, Event, EventStatus, Rewind, SubscriptionConfig, TopicConfig};

const TOPIC: &str = "orders";

fn config() -> impl FnOnce(EngineConfig) -> EngineConfig {
    |config| config.topic(TopicConfig::new(TOPIC))
}

fn positions(recorder: &Recorder) -> Vec<u64> {
    recorder.calls().iter().filter(|c| c.ok).map(|c| c.position).collect()
}

#[tokio::test]
async fn a_subscription_added_at_run_time_handles_from_the_first_event_and_is_removed_whole() {
    let mut fixture = Fixture::new(config());
    let engine = fixture.start(Vec::new()).await;
    for n in 0..5 {
        publish(&engine, TOPIC, &format!("k{n}"), "a").await;
    }
    let recorder = Arc::new(Recorder::default());
    let added = SubscriptionConfig::new("late", [TOPIC]);
    engine
        .add_subscription(added.clone(), Arc::new(RecordingHandler::ok(&recorder)))
        .await
        .unwrap();
    processed(&engine, TOPIC, 5).await;
    assert_eq!(positions(&recorder), vec![1, 2, 3, 4, 5]);
    let again = engine.add_subscription(added.clone(), Arc::new(RecordingHandler::ok(&recorder)));
    assert!(matches!(again.await, Err(Error::Exists { .. })), "one name, one subscription");

    engine.remove_subscription("late").await.unwrap();
    assert!(engine.subscriptions().await.unwrap().is_empty());
    assert!(matches!(
        engine.remove_subscription("late").await,
        Err(Error::UnknownSubscription { .. })
    ));
    // Created again under its name, it starts afresh: its progress went with it.
    let fresh = Arc::new(Recorder::default());
    engine.add_subscription(added, Arc::new(RecordingHandler::ok(&fresh))).await.unwrap();
    processed(&engine, TOPIC, 5).await;
    assert_eq!(positions(&fresh), vec![1, 2, 3, 4, 5]);
    fixture.stop().await;
}

#[tokio::test]
async fn a_paused_subscription_starts_no_call_until_resumed_even_across_a_restart() {
    let mut fixture =
        Fixture::new(|c| config()(c).subscription(SubscriptionConfig::new("s", [TOPIC])));
    let recorder = Arc::new(Recorder::default());
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "k", "a").await;
    processed(&engine, TOPIC, 1).await;
    engine.pause_subscription("s").await.unwrap();
    assert!(engine.is_paused("s").unwrap());
    let last = publish(&engine, TOPIC, "k", "b").await;
    // The stream reads the event; with no permit it starts no call.
    eventually("the paused stream read the event", || async {
        let info = engine.subscriptions().await.unwrap();
        info[0].streams[0].status.read_position > last
    })
    .await;
    assert_eq!(engine.event_status(TOPIC, last, None).await.unwrap(), EventStatus::Pending);

    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert!(engine.is_paused("s").unwrap(), "a pause is durable");
    eventually("the restarted stream read the event", || async {
        let info = engine.subscriptions().await.unwrap();
        info[0].streams[0].status.read_position > last
    })
    .await;
    assert_eq!(positions(&recorder), vec![1], "nothing handled while paused");
    engine.resume_subscription("s").await.unwrap();
    processed(&engine, TOPIC, last).await;
    assert_eq!(positions(&recorder), vec![1, 2]);
    fixture.stop().await;
}

#[tokio::test]
async fn a_rewind_hands_the_events_from_its_start_to_the_handler_again() {
    let mut fixture =
        Fixture::new(|c| config()(c).subscription(SubscriptionConfig::new("s", [TOPIC])));
    let recorder = Arc::new(Recorder::default());
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let mut times = Vec::new();
    for n in 1..=6 {
        let time = 1_700_000_000_000_000 + n * 1_000_000;
        times.push(time);
        let event = Event::builder(TOPIC, format!("k{}", n % 2), "a").time_micros(time).build();
        engine.publish(event.unwrap()).await.unwrap();
    }
    processed(&engine, TOPIC, 6).await;

    let rewound = engine
        .rewind_subscription("s", Rewind::Position { topic: None, position: 4 })
        .await
        .unwrap();
    assert_eq!(rewound, vec![(TOPIC.to_owned(), 3)]);
    processed(&engine, TOPIC, 6).await;
    assert_eq!(positions(&recorder), vec![1, 2, 3, 4, 5, 6, 4, 5, 6]);

    // By time: from the first event at or after the second one's time.
    engine.rewind_subscription("s", Rewind::Time(times[1])).await.unwrap();
    processed(&engine, TOPIC, 6).await;
    assert_eq!(positions(&recorder)[9..], [2, 3, 4, 5, 6]);
    fixture.stop().await;
}

#[tokio::test]
async fn a_deleted_topic_is_gone_and_starts_at_one_when_added_again() {
    // Without auto-creation a subscription names topics made at run time by pattern.
    let mut subscription = SubscriptionConfig::new("s", Vec::<String>::new());
    subscription.topic_patterns = vec!["runtime".to_owned()];
    let mut fixture = Fixture::new(|c| c.subscription(subscription));
    let recorder = Arc::new(Recorder::default());
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    engine.add_topic(TopicConfig::new("runtime")).await.unwrap();
    assert!(matches!(
        engine.add_topic(TopicConfig::new("runtime")).await,
        Err(Error::Exists { .. })
    ));
    for n in 0..3 {
        publish(&engine, "runtime", &format!("k{n}"), "a").await;
    }
    processed(&engine, "runtime", 3).await;
    engine.delete_topic("runtime").await.unwrap();
    assert!(matches!(engine.read("runtime", 1, 10).await, Err(Error::UnknownTopic { .. })));
    assert!(engine.topics().await.unwrap().is_empty());

    engine.add_topic(TopicConfig::new("runtime")).await.unwrap();
    let position = publish(&engine, "runtime", "k0", "a").await;
    assert_eq!(position, 1, "a topic created again starts at position 1");
    processed(&engine, "runtime", 1).await;
    assert_eq!(positions(&recorder), vec![1, 2, 3, 1], "its subscription's stream starts afresh");
    tokio::time::timeout(PATIENCE, fixture.stop()).await.unwrap();
}

/// Management calls while publishers run: pauses, resumes, rewinds and replacements of one
/// subscription never run two calls of one key at once (the recorder counts overlaps), never
/// lose an event (every position is handled at least once after the last rewind), and the
/// engine still stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_calls_under_load_keep_one_call_per_key_and_lose_nothing() {
    let mut fixture =
        Fixture::new(|c| config()(c).subscription(SubscriptionConfig::new("s", [TOPIC])));
    let recorder = Arc::new(Recorder::default());
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let publisher = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for n in 0..2000 {
                last = publish(&engine, TOPIC, &format!("k{}", n % 16), "a").await;
            }
            last
        })
    };
    for round in 0..12 {
        match round % 4 {
            0 => engine.pause_subscription("s").await.unwrap(),
            1 => engine.resume_subscription("s").await.unwrap(),
            2 => {
                let to = Rewind::Position { topic: None, position: 1 + round * 10 };
                engine.rewind_subscription("s", to).await.unwrap();
            }
            _ => {
                let handler = Arc::new(RecordingHandler::ok(&recorder));
                let config = SubscriptionConfig::new("s", [TOPIC]).max_keys_in_flight(8);
                engine.replace_subscription(config, handler).await.unwrap();
            }
        }
        tokio::task::yield_now().await;
    }
    engine.resume_subscription("s").await.unwrap();
    let last = publisher.await.unwrap();
    processed(&engine, TOPIC, last).await;
    assert_eq!(recorder.overlaps(), 0, "two calls of one key at once");
    let handled: std::collections::BTreeSet<u64> = positions(&recorder).into_iter().collect();
    assert!((1..=last).all(|p| handled.contains(&p)), "every event handled");
    tokio::time::timeout(PATIENCE, fixture.stop()).await.unwrap();
}
