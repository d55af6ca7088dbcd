//! A proptest model of the engine: random interleavings of publishes over many keys, action
//! sequences published in random order, transient handler failures and restarts. Per key, the
//! handled order must be exactly the log order (fifo) or the action order, each event handled
//! once, except an event in flight at a restart, which may be handled again right after it —
//! or, for a handler taking runs of a key's events ([`Handler::max_run`]), the run in flight,
//! handed again whole or in part, in order, never longer than `max_run`.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering as AtomicOrdering},
    },
};

use inorder::{
    Engine, EngineConfig, Event, Handler, HandlerContext, HandlerError, Ordering, Reply, RunReply,
    SubscriptionConfig, TopicConfig,
};
use proptest::prelude::*;

const ACTIONS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    /// `count` fifo events for key `fifo-{key}`.
    PublishFifo {
        key: u8,
        count: u8,
    },
    /// A fresh key's three actions, published in this order.
    PublishActions {
        order: [usize; 3],
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let permutation = Just([0usize, 1, 2]).prop_shuffle();
    prop_oneof![
        4 => (0u8..5, 1u8..5).prop_map(|(key, count)| Op::PublishFifo { key, count }),
        3 => permutation.prop_map(|v| Op::PublishActions { order: [v[0], v[1], v[2]] }),
        1 => Just(Op::Restart),
    ]
}

/// A successful call: (epoch, key, position, action).
type ModelCall = (u32, String, u64, String);

/// Records successful calls; fails attempt 1 of some events.
struct ModelHandler {
    calls: Arc<Mutex<Vec<ModelCall>>>,
    epoch: Arc<AtomicU32>,
    fail_one_in: u64,
    /// Runs of up to this many events (1: one at a time).
    max_run: usize,
    /// A run call handles at most this many of its events and returns the rest untouched (as a
    /// pull consumer leasing part of a run does).
    cut: usize,
}

#[async_trait::async_trait]
impl Handler for ModelHandler {
    fn max_run(&self) -> usize {
        self.max_run
    }

    async fn handle_run(&self, events: &[Event], context: &HandlerContext) -> RunReply {
        assert!(
            (2..=self.max_run).contains(&events.len()),
            "a run of {} events, max_run {}",
            events.len(),
            self.max_run
        );
        assert!(events.windows(2).all(|w| w[0].key == w[1].key && w[0].position < w[1].position));
        let mut replies = Vec::new();
        for event in events.iter().take(self.cut) {
            match self.handle(event, context).await {
                Ok(reply) => replies.push(reply),
                Err(error) => return RunReply { replies, failed: Some(error) },
            }
        }
        RunReply { replies, failed: None }
    }

    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        if context.attempt == 1 && event.position.is_multiple_of(self.fail_one_in) {
            return Err(HandlerError::retry("transient"));
        }
        let epoch = self.epoch.load(AtomicOrdering::SeqCst);
        self.calls.lock().unwrap().push((
            epoch,
            event.key.clone(),
            event.position,
            event.action.clone(),
        ));
        Ok(Reply::Null)
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let retry = common::fast_retry();
    EngineConfig::new(dir)
        .topic(TopicConfig::new("f"))
        .topic(TopicConfig::new("p").actions(ACTIONS))
        .subscription(SubscriptionConfig::new("fs", ["f"]).retry(retry))
        .subscription(SubscriptionConfig::new("ps", ["p"]).ordering(Ordering::Actions).retry(retry))
}

async fn start(
    dir: &std::path::Path,
    storage: &common::TestStorage,
    handler: &Arc<ModelHandler>,
) -> Engine {
    let handler = Arc::clone(handler) as Arc<dyn Handler>;
    common::start_shared(storage, config(dir), &["fs", "ps"], &handler).await
}

async fn run(ops: Vec<Op>, fail_one_in: u64, max_run: usize, cut: usize) {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let epoch = Arc::new(AtomicU32::new(0));
    let handler = Arc::new(ModelHandler {
        calls: Arc::clone(&calls),
        epoch: Arc::clone(&epoch),
        fail_one_in,
        max_run,
        cut,
    });
    let storage = common::TestStorage::from_env();
    let mut engine = start(dir.path(), &storage, &handler).await;
    let mut fifo_expected: HashMap<String, Vec<u64>> = HashMap::new();
    let mut action_keys = Vec::new();
    let (mut last_f, mut last_p) = (0, 0);
    for (index, op) in ops.into_iter().enumerate() {
        match op {
            Op::PublishFifo { key, count } => {
                let key = format!("fifo-{key}");
                let events = (0..count)
                    .map(|_| Event::builder("f", key.clone(), "x").build().unwrap())
                    .collect();
                let positions = engine.publish_batch(events).await.unwrap();
                last_f = *positions.last().unwrap();
                fifo_expected.entry(key).or_default().extend(positions);
            }
            Op::PublishActions { order } => {
                let key = format!("seq-{index}");
                for i in order {
                    last_p = engine
                        .publish(Event::builder("p", key.clone(), ACTIONS[i]).build().unwrap())
                        .await
                        .unwrap();
                }
                action_keys.push(key);
            }
            Op::Restart => {
                engine.shutdown().await;
                epoch.fetch_add(1, AtomicOrdering::SeqCst);
                engine = start(dir.path(), &storage, &handler).await;
            }
        }
    }
    for (topic, last) in [("f", last_f), ("p", last_p)] {
        common::settle(&engine, topic, last).await;
    }
    engine.shutdown().await;

    let mut by_key: HashMap<String, Vec<(u32, u64, String)>> = HashMap::new();
    for (epoch, key, position, action) in calls.lock().unwrap().iter() {
        by_key.entry(key.clone()).or_default().push((*epoch, *position, action.clone()));
    }
    for (key, expected) in fifo_expected {
        let handled: Vec<u64> = common::once_each_run(&key, &by_key[&key], max_run)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(handled, expected, "key {key}: fifo order");
    }
    for key in action_keys {
        let handled: Vec<String> =
            common::once_each(&key, &by_key[&key]).into_iter().map(|(_, a)| a).collect();
        assert_eq!(handled, ACTIONS, "key {key}: action order");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_holds_through_failures_and_restarts(
        ops in prop::collection::vec(op(), 1..24),
        fail_one_in in 2u64..6,
        max_run in prop_oneof![Just(1usize), 2usize..6],
        cut in 1usize..6,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(ops, fail_one_in, max_run, cut));
    }
}
