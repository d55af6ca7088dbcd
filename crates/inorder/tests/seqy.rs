//! The Seqy contract (`actions` ordering), one test per defect of the original library
//! (vinceurag/seqy 0.1.1): each test says which defect it guards against.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    Fixture, Recorder, RecordingHandler, event, publish, purchase_topic, settle, subscription,
};
use inorder::{Error, Ordering, ParkReason, TopicConfig};

const TOPIC: &str = "user_purchase";

fn actions_fixture(topic: TopicConfig) -> Fixture {
    Fixture::new(|config| {
        config
            .topic(topic)
            .subscription(subscription("purchases", TOPIC).ordering(Ordering::Actions))
    })
}

async fn parked_reasons(fixture: &Fixture) -> Vec<(u64, ParkReason)> {
    let parked = fixture.engine().parked("purchases", None, 100).await.unwrap();
    parked.into_iter().map(|p| (p.position, p.reason)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_published_in_reverse_are_handled_in_order() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic());
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    for action in ["user.paid", "user.purchased", "user.created"] {
        publish(&engine, TOPIC, "u-1", action).await;
    }
    settle(&engine, TOPIC, 3).await;
    assert_eq!(recorder.actions_of("u-1"), ["user.created", "user.purchased", "user.paid"]);
    assert_eq!(recorder.overlaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_is_refused_and_nothing_is_appended() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic());
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    let err = engine.publish(event(TOPIC, "u-1", "user.deleted")).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownAction { action, .. } if action == "user.deleted"),
        "{err}"
    );
    assert_eq!(publish(&engine, TOPIC, "u-1", "user.created").await, 1, "no position was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_parked_not_dropped() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic());
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "u-1", "user.purchased").await; // 1: waits
    publish(&engine, TOPIC, "u-1", "user.purchased").await; // 2: duplicate of a waiting one
    publish(&engine, TOPIC, "u-1", "user.created").await; // 3
    publish(&engine, TOPIC, "u-1", "user.created").await; // 4: duplicate of a handled one
    settle(&engine, TOPIC, 4).await;
    assert_eq!(recorder.actions_of("u-1"), ["user.created", "user.purchased"]);
    assert_eq!(
        parked_reasons(&fixture).await,
        [(2, ParkReason::Duplicate), (4, ParkReason::Duplicate)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_sequence_parks_new_events_unless_the_topic_repeats() {
    for repeat in [false, true] {
        let recorder = Arc::new(Recorder::default());
        let mut fixture = actions_fixture(purchase_topic().repeat(repeat));
        let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
        for action in ["user.created", "user.purchased", "user.paid", "user.created"] {
            publish(&engine, TOPIC, "u-1", action).await;
        }
        settle(&engine, TOPIC, 4).await;
        if repeat {
            assert_eq!(recorder.actions_of("u-1").len(), 4, "a new sequence started");
            assert!(parked_reasons(&fixture).await.is_empty());
        } else {
            assert_eq!(recorder.actions_of("u-1").len(), 3);
            assert_eq!(parked_reasons(&fixture).await, [(4, ParkReason::SequenceComplete)]);
        }
        fixture.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_of_a_completed_sequence_stops() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic());
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    for key in ["u-1", "u-2", "u-3"] {
        for action in ["user.created", "user.purchased", "user.paid"] {
            publish(&engine, TOPIC, key, action).await;
        }
    }
    settle(&engine, TOPIC, 9).await;
    let workers = |engine: &inorder::Engine| {
        let engine = engine.clone();
        async move { engine.subscriptions().await.unwrap()[0].streams[0].status.live_workers }
    };
    // Workers report idle right after their last completion; the next checkpoint shows it.
    publish(&engine, "user_purchase", "u-9", "user.created").await;
    settle(&engine, TOPIC, 10).await;
    assert!(workers(&engine).await <= 1, "finished keys keep no worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_while_a_sequence_completes_are_never_lost() {
    // The original lost events sent while the handler processed its last action. Here a slow
    // handler keeps the last action in flight while more events for the key arrive.
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic().repeat(true));
    let handler = RecordingHandler::ok(&recorder).slow(Duration::from_millis(30));
    let engine = fixture.start(vec![("purchases", handler)]).await;
    for action in ["user.created", "user.purchased", "user.paid"] {
        publish(&engine, TOPIC, "u-1", action).await;
    }
    tokio::time::sleep(Duration::from_millis(70)).await; // the last action is in its handler
    for action in ["user.created", "user.purchased", "user.paid"] {
        publish(&engine, TOPIC, "u-1", action).await;
    }
    settle(&engine, TOPIC, 6).await;
    assert_eq!(recorder.actions_of("u-1").len(), 6, "{:?}", recorder.calls());
    assert_eq!(recorder.overlaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_sequence_resumes_where_it_was() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(purchase_topic());
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "u-1", "user.created").await;
    publish(&engine, TOPIC, "u-1", "user.paid").await; // waits for user.purchased
    settle(&engine, TOPIC, 1).await;
    let engine = fixture.restart(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "u-1", "user.purchased").await;
    settle(&engine, TOPIC, 3).await;
    assert_eq!(
        recorder.actions_of("u-1"),
        ["user.created", "user.purchased", "user.paid"],
        "user.created is not handled twice and the waiting user.paid is re-read from the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_that_waits_too_long_is_parked_and_its_worker_released() {
    let recorder = Arc::new(Recorder::default());
    let topic = purchase_topic().sequence_timeout(Duration::from_millis(150));
    let mut fixture = actions_fixture(topic);
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "u-1", "user.paid").await;
    publish(&engine, TOPIC, "u-1", "user.purchased").await;
    assert!(matches!(settle(&engine, TOPIC, 2).await, inorder::EventStatus::Parked(_)));
    assert_eq!(
        parked_reasons(&fixture).await,
        [(1, ParkReason::Timeout), (2, ParkReason::Timeout)]
    );
    assert!(recorder.calls().is_empty());
    // The missing action still starts the sequence; the parked ones can be retried in order.
    publish(&engine, TOPIC, "u-1", "user.created").await;
    settle(&engine, TOPIC, 3).await;
    engine.retry_parked("purchases", TOPIC, 2).await.unwrap();
    engine.retry_parked("purchases", TOPIC, 1).await.unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while recorder.actions_of("u-1").len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorder.actions_of("u-1"), ["user.created", "user.purchased", "user.paid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_without_actions_loses_nothing() {
    // The original lost the first event when the actions list was empty.
    let recorder = Arc::new(Recorder::default());
    let mut fixture = actions_fixture(TopicConfig::new(TOPIC));
    let engine = fixture.start(vec![("purchases", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, TOPIC, "u-1", "anything").await;
    publish(&engine, TOPIC, "u-1", "else").await;
    settle(&engine, TOPIC, 2).await;
    assert_eq!(recorder.actions_of("u-1"), ["anything", "else"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_crash_keeps_the_sequence_and_is_retried() {
    // The original lost the buffer and restarted the sequence after a handler crash.
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|config| {
        let retry = inorder::RetryPolicy {
            initial: Duration::from_millis(5),
            ..inorder::RetryPolicy::default()
        };
        config
            .topic(purchase_topic())
            .subscription(subscription("purchases", TOPIC).ordering(Ordering::Actions).retry(retry))
    });
    let behaviour: common::Behaviour = Arc::new(|event, attempt| {
        assert!(!(event.action == "user.purchased" && attempt == 1), "handler crashes once");
        Ok(inorder::Reply::Null)
    });
    let engine =
        fixture.start(vec![("purchases", RecordingHandler::with(&recorder, behaviour))]).await;
    for action in ["user.paid", "user.purchased", "user.created"] {
        publish(&engine, TOPIC, "u-1", action).await;
    }
    settle(&engine, TOPIC, 3).await;
    assert_eq!(recorder.actions_of("u-1"), ["user.created", "user.purchased", "user.paid"]);
}
