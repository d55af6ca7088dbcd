//! Process managers: emission with causation ids, hydration before new events, checkpoints,
//! out-of-sequence detection, failing handlers.

#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::PATIENCE;
use inorder::{
    Engine, EngineConfig, Event, HandlerError, Name, StreamId, StreamState, TopicConfig,
};
use inorder_cqrs::{Emit, Error, ProcessManager, process};

/// Emits `customer.vip` when a customer places their third order.
struct VipDetector;

impl ProcessManager for VipDetector {
    type State = HashMap<String, u32>;

    fn topics(&self) -> Vec<String> {
        vec!["orders".into()]
    }

    fn handle(&self, orders: &Self::State, event: &Event) -> Result<Vec<Emit>, HandlerError> {
        if event.action == "order.fail" {
            return Err(HandlerError::permanent("cannot handle order.fail"));
        }
        let before = orders.get(&event.key).copied().unwrap_or(0);
        Ok(if before + 1 == 3 {
            vec![Emit::new(
                "customers",
                &event.key,
                "customer.vip",
                serde_json::json!({"orders": 3}),
            )]
        } else {
            Vec::new()
        })
    }

    fn apply(&self, orders: &mut Self::State, event: &Event) {
        *orders.entry(event.key.clone()).or_default() += 1;
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig::new(dir).topic(TopicConfig::new("orders")).topic(TopicConfig::new("customers"))
}

async fn order(engine: &Engine, customer: &str) -> u64 {
    engine
        .publish(Event::builder("orders", customer, "order.placed").build().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_hydrates_from_its_history_before_handling_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(config(dir.path())).start().await.unwrap();
    order(&engine, "c-1").await;
    order(&engine, "c-1").await;
    let manager = process::start(engine.clone(), "vip", VipDetector).await.unwrap();
    assert!(manager.wait_handled("orders", 2, PATIENCE).await);
    manager.stop().await.unwrap();
    assert!(engine.read("customers", 1, 10).await.unwrap().is_empty());

    // Restarted, it must remember the two orders of c-1 (hydration), not start from zero.
    let manager = process::start(engine.clone(), "vip", VipDetector).await.unwrap();
    let third = order(&engine, "c-1").await;
    order(&engine, "c-2").await;
    assert!(manager.wait_handled("orders", 4, PATIENCE).await);
    let emitted = engine.read("customers", 1, 10).await.unwrap();
    assert_eq!(emitted.len(), 1, "{emitted:?}");
    let vip = &emitted[0];
    assert_eq!((vip.key.as_str(), vip.action.as_str()), ("c-1", "customer.vip"));
    let source = &engine.read("orders", third, 1).await.unwrap()[0];
    assert_eq!(vip.causation_id.as_deref(), Some(source.id.as_str()), "caused by the 3rd order");
    assert_eq!(vip.id, format!("vip:orders:{third}:0"));
    manager.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_ends_before_the_checkpoint_stops_the_manager_naming_both_positions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(config(dir.path())).start().await.unwrap();
    for _ in 0..5 {
        order(&engine, "c-1").await;
    }
    // The state says the manager handled 10 orders: the log is an older backup than the state.
    let stream = StreamId::new(
        Name::new("subscription", "vip").unwrap(),
        Name::new("topic", "orders").unwrap(),
    );
    let state = StreamState { watermark: 10, ..StreamState::default() };
    engine
        .storage()
        .commit(vec![inorder::storage::StateOp::Stream { stream, state }], true)
        .await
        .unwrap();
    let refused = process::start(engine.clone(), "vip", VipDetector).await;
    match refused {
        Err(error @ Error::OutOfSequence { expected: 11, found: 5, .. }) => {
            let text = error.to_string();
            assert!(text.contains("11") && text.contains('5') && text.contains("orders"), "{text}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a manager started on a log behind its checkpoint"),
    }
    assert!(engine.read("customers", 1, 10).await.unwrap().is_empty(), "nothing handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_stops_the_manager_without_checkpointing_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(config(dir.path())).start().await.unwrap();
    order(&engine, "c-1").await;
    engine.publish(Event::builder("orders", "c-1", "order.fail").build().unwrap()).await.unwrap();
    let manager = process::start(engine.clone(), "vip", VipDetector).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !manager.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "the manager did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!manager.wait_handled("orders", 2, Duration::from_millis(10)).await);
    let stopped = manager.stop().await;
    assert!(
        matches!(&stopped, Err(Error::Handler { reason, .. }) if reason.contains("order.fail"))
    );
    // Its checkpoint is before the failing event: a fixed manager would handle it next.
    let again = process::start(engine.clone(), "vip", VipDetector).await.unwrap();
    assert!(!again.wait_handled("orders", 2, Duration::from_millis(200)).await);
    assert!(again.stop().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_unknown_topics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(config(dir.path())).start().await.unwrap();
    assert!(matches!(
        process::start(engine.clone(), "no spaces", VipDetector).await,
        Err(Error::Config(_))
    ));
    struct Nowhere;
    impl ProcessManager for Nowhere {
        type State = ();
        fn topics(&self) -> Vec<String> {
            vec!["missing".into()]
        }
        fn handle(&self, (): &(), _: &Event) -> Result<Vec<Emit>, HandlerError> {
            Ok(Vec::new())
        }
        fn apply(&self, (): &mut (), _: &Event) {}
    }
    let refused = process::start(engine.clone(), "nowhere", Nowhere).await;
    assert!(refused.is_err(), "a topic that does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_over_a_topic_whose_retention_deletes_events_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::new(dir.path())
        .topic(TopicConfig::new("orders").retention(inorder::Retention::forever().max_events(10)))
        .topic(TopicConfig::new("customers"));
    let engine = Engine::builder(config).start().await.unwrap();
    match process::start(engine.clone(), "vip", VipDetector).await {
        Err(Error::Config(reason)) => {
            assert!(reason.contains("orders") && reason.contains("retention"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a manager started over a topic whose events retention deletes"),
    }
    engine.shutdown().await;
}
