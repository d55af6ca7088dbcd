//! Ordering modes, patterns and concurrency: per key never concurrent, never out of order;
//! other keys in parallel, within the keys-in-flight limit.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Fixture, Recorder, RecordingHandler, event, publish, settle, subscription};
use inorder::{Event, Ordering, ParkReason, SubscriptionConfig, TopicConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_handles_each_key_in_log_order_and_keys_in_parallel() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("orders")).subscription(subscription("s", "orders"))
    });
    let handler = RecordingHandler::ok(&recorder).slow(Duration::from_millis(2));
    let engine = fixture.start(vec![("s", handler)]).await;
    let mut expected: std::collections::HashMap<String, Vec<u64>> =
        std::collections::HashMap::new();
    let events: Vec<Event> =
        (0..200).map(|i| event("orders", &format!("k{}", i % 10), "a")).collect();
    for chunk in events.chunks(25) {
        let positions = engine.publish_batch(chunk.to_vec()).await.unwrap();
        for (event, position) in chunk.iter().zip(positions) {
            expected.entry(event.key.clone()).or_default().push(position);
        }
    }
    settle(&engine, "orders", 200).await;
    assert_eq!(recorder.handled_by_key(), expected);
    assert_eq!(recorder.overlaps(), 0, "two calls for one key never run at once");
    assert!(recorder.max_concurrent() > 1, "different keys run in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_in_flight_limit_bounds_parallel_handler_calls() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("orders"))
            .subscription(subscription("s", "orders").max_keys_in_flight(3))
    });
    let engine = fixture
        .start(vec![("s", RecordingHandler::ok(&recorder).slow(Duration::from_millis(5)))])
        .await;
    let events: Vec<Event> = (0..60).map(|i| event("orders", &format!("k{i}"), "a")).collect();
    engine.publish_batch(events).await.unwrap();
    settle(&engine, "orders", 60).await;
    assert_eq!(recorder.calls().len(), 60);
    assert!(recorder.max_concurrent() <= 3, "saw {} calls at once", recorder.max_concurrent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_ordering_runs_one_key_in_parallel() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("logs"))
            .subscription(subscription("s", "logs").ordering(Ordering::None))
    });
    let engine = fixture
        .start(vec![("s", RecordingHandler::ok(&recorder).slow(Duration::from_millis(20)))])
        .await;
    let events: Vec<Event> = (0..20).map(|_| event("logs", "same-key", "a")).collect();
    engine.publish_batch(events).await.unwrap();
    settle(&engine, "logs", 20).await;
    assert_eq!(recorder.calls().len(), 20);
    assert!(recorder.overlaps() > 0, "without a per-key constraint one key runs in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_ordering_follows_producer_numbers() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("ledger"))
            .subscription(subscription("s", "ledger").ordering(Ordering::Sequence))
    });
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let numbered =
        |n: u64| Event::builder("ledger", "acct", format!("n{n}")).sequence(n).build().unwrap();
    for n in [3, 1, 4, 2, 2] {
        engine.publish(numbered(n)).await.unwrap();
    }
    settle(&engine, "ledger", 5).await;
    assert_eq!(recorder.actions_of("acct"), ["n1", "n2", "n3", "n4"]);
    let parked = engine.parked("s", None, 10).await.unwrap();
    assert_eq!(
        parked.iter().map(|p| (p.position, p.reason)).collect::<Vec<_>>(),
        [(5, ParkReason::Duplicate)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_match_whole_topic_names_only() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|mut c| {
        c.auto_create_topics = true;
        c.subscription(SubscriptionConfig::new("users", Vec::<String>::new()).pattern(r"user\..*"))
    });
    let engine = fixture.start(vec![("users", RecordingHandler::ok(&recorder))]).await;
    publish(&engine, "user.created", "u1", "a").await;
    publish(&engine, "superuser.x", "u1", "a").await;
    publish(&engine, "user", "u1", "a").await;
    settle(&engine, "user.created", 1).await;
    assert_eq!(engine.subscriptions_of(&"superuser.x".parse().unwrap()), Vec::<String>::new());
    assert_eq!(engine.subscriptions_of(&"user.created".parse().unwrap()), ["users"]);
    let streams: Vec<String> =
        engine.subscriptions().await.unwrap()[0].streams.iter().map(|s| s.topic.clone()).collect();
    assert_eq!(streams, ["user.created"], "no stream reads the topics the pattern does not match");
    assert_eq!(recorder.calls().len(), 1, "only user.created matched: {:?}", recorder.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_several_topics_orders_each_topic_independently() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("a"))
            .topic(TopicConfig::new("b"))
            .subscription(SubscriptionConfig::new("both", ["a", "b"]))
    });
    let engine = fixture.start(vec![("both", RecordingHandler::ok(&recorder))]).await;
    for i in 0..10 {
        publish(&engine, "a", "k", &format!("a{i}")).await;
        publish(&engine, "b", "k", &format!("b{i}")).await;
    }
    settle(&engine, "a", 10).await;
    settle(&engine, "b", 10).await;
    let actions = recorder.actions_of("k");
    let of = |prefix: char| {
        actions.iter().filter(|a| a.starts_with(prefix)).cloned().collect::<Vec<_>>()
    };
    assert_eq!(of('a'), (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(of('b'), (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_each_see_every_event() {
    let (first, second) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("t"))
            .subscription(subscription("one", "t"))
            .subscription(subscription("two", "t"))
    });
    let engine = fixture
        .start(vec![("one", RecordingHandler::ok(&first)), ("two", RecordingHandler::ok(&second))])
        .await;
    for i in 0..30 {
        publish(&engine, "t", &format!("k{}", i % 3), "a").await;
    }
    settle(&engine, "t", 30).await;
    assert_eq!(first.handled_by_key(), second.handled_by_key());
    assert_eq!(first.calls().len(), 30);
}

/// A subscription over several topics runs one stream per topic; a key's events in both topics
/// must still never be handled at once (the review reproduced one overlapping call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_never_handled_twice_at_once_across_a_subscriptions_topics() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("orders"))
            .topic(TopicConfig::new("payments"))
            .subscription(SubscriptionConfig::new("s", ["orders", "payments"]))
    });
    let handler = RecordingHandler::ok(&recorder).slow(Duration::from_millis(2));
    let engine = fixture.start(vec![("s", handler)]).await;
    let mut last = [0, 0];
    for round in 0..8 {
        for (t, topic) in ["orders", "payments"].iter().enumerate() {
            let batch: Vec<Event> =
                (0..20).map(|i| event(topic, &format!("k{}", (i + round) % 4), "a")).collect();
            last[t] = *engine.publish_batch(batch).await.unwrap().last().unwrap();
        }
    }
    settle(&engine, "orders", last[0]).await;
    settle(&engine, "payments", last[1]).await;
    assert_eq!(recorder.calls().len(), 320);
    assert_eq!(recorder.overlaps(), 0, "two calls for one key ran at once across topics");
    assert!(recorder.max_concurrent() > 1, "different keys still run in parallel");
}

/// Across a subscription's topics a key's events run in commit order, even when one topic's
/// stream is far behind: `payments` has `k`'s later event read at once, while `orders` cannot
/// read `k`'s earlier one until its read budget frees up. The later event waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_in_commit_order_across_topics_even_when_one_stream_lags() {
    use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

    use inorder::{HandlerError, Reply, limits};

    let retry = common::patient_retry();
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("orders"))
            .topic(TopicConfig::new("payments"))
            .subscription(SubscriptionConfig::new("s", ["orders", "payments"]).retry(retry))
    });
    // `gate-*` events fail (retryably) until the gate opens: `orders`' read budget fills up
    // with them and its stream stops reading before `k`'s first event.
    let open = Arc::new(AtomicBool::new(false));
    let recorder = Arc::new(Recorder::default());
    let handler = RecordingHandler::with(&recorder, {
        let open = Arc::clone(&open);
        Arc::new(move |event, _| {
            if event.key.starts_with("gate") && !open.load(AtomicOrdering::SeqCst) {
                return Err(HandlerError::retry("the gate is closed"));
            }
            Ok(Reply::Null)
        })
    });
    let engine = fixture.start(vec![("s", handler)]).await;
    let filler = limits::STREAM_PENDING_EVENTS_MAX + 8 * limits::STREAM_READ_RECORDS_MAX;
    for chunk in (0..filler).collect::<Vec<_>>().chunks(1000) {
        let batch =
            chunk.iter().map(|i| event("orders", &format!("gate-{}", i % 64), "g")).collect();
        engine.publish_batch(batch).await.unwrap();
    }
    let first = publish(&engine, "orders", "k", "first").await;
    let second = publish(&engine, "payments", "k", "second").await;

    common::eventually("payments read k's second event and orders stopped reading", || async {
        let info = engine.subscriptions().await.unwrap();
        let streams = &info[0].streams;
        let of = |topic: &str| streams.iter().find(|s| s.topic == topic).unwrap().status.clone();
        of("payments").read_position > second && of("orders").read_position <= first
    })
    .await;
    open.store(true, AtomicOrdering::SeqCst);
    settle(&engine, "orders", first).await;
    settle(&engine, "payments", second).await;
    assert_eq!(recorder.actions_of("k"), ["first", "second"], "k's events in commit order");
    assert_eq!(recorder.overlaps(), 0);
}
