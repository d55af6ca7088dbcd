//! A proptest model of one `fifo` subscription over three topics: random interleavings of
//! publishes to the topics (single events and bursts that make one stream lag), transient
//! handler failures and restarts. Per key, the events must be handled in commit order across the
//! topics — each once, except an event in flight at a restart, which may be handled again right
//! after it — and never two calls of one key at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use inorder::{
    Engine, EngineConfig, Event, Handler, HandlerContext, HandlerError, Reply, SubscriptionConfig,
    TopicConfig,
};
use proptest::prelude::*;

const TOPICS: [&str; 3] = ["orders", "payments", "refunds"];
const KEYS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    /// `count` events of `key-{key}` to one topic, in one batch.
    Publish {
        topic: usize,
        key: u8,
        count: u8,
    },
    /// A burst over every key to one topic: its stream has more to read than the others.
    Burst {
        topic: usize,
        count: u16,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TOPICS.len(), 0..KEYS, 1u8..4).prop_map(|(topic, key, count)| Op::Publish { topic, key, count }),
        2 => (0..TOPICS.len(), 50u16..400).prop_map(|(topic, count)| Op::Burst { topic, count }),
        1 => Just(Op::Restart),
    ]
}

/// A successful call: (epoch, key, commit).
type ModelCall = (u32, String, u64);

/// Records successful calls and overlapping calls of one key; fails attempt 1 of some events.
struct ModelHandler {
    calls: Mutex<Vec<ModelCall>>,
    running: Mutex<HashMap<(u32, String), usize>>,
    overlaps: AtomicUsize,
    epoch: AtomicU32,
    fail_one_in: u64,
}

#[async_trait::async_trait]
impl Handler for ModelHandler {
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let epoch = self.epoch.load(AtomicOrdering::SeqCst);
        let running = (epoch, event.key.clone());
        {
            let mut all = self.running.lock().unwrap();
            let count = all.entry(running.clone()).or_default();
            *count += 1;
            if *count > 1 {
                self.overlaps.fetch_add(1, AtomicOrdering::SeqCst);
            }
        }
        if event.commit.is_multiple_of(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let result = if context.attempt == 1 && event.commit.is_multiple_of(self.fail_one_in) {
            Err(HandlerError::retry("transient"))
        } else {
            self.calls.lock().unwrap().push((epoch, event.key.clone(), event.commit));
            Ok(Reply::Null)
        };
        *self.running.lock().unwrap().get_mut(&running).unwrap() -= 1;
        result
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let retry = common::fast_retry();
    let mut config = EngineConfig::new(dir);
    for topic in TOPICS {
        config = config.topic(TopicConfig::new(topic));
    }
    config.subscription(SubscriptionConfig::new("all", TOPICS).retry(retry))
}

async fn start(
    dir: &std::path::Path,
    storage: &common::TestStorage,
    handler: &Arc<ModelHandler>,
) -> Engine {
    let handler = Arc::clone(handler) as Arc<dyn Handler>;
    common::start_shared(storage, config(dir), &["all"], &handler).await
}

async fn run(ops: Vec<Op>, fail_one_in: u64) {
    let dir = tempfile::tempdir().unwrap();
    let handler = Arc::new(ModelHandler {
        calls: Mutex::default(),
        running: Mutex::default(),
        overlaps: AtomicUsize::new(0),
        epoch: AtomicU32::new(0),
        fail_one_in,
    });
    let storage = common::TestStorage::from_env();
    let mut engine = start(dir.path(), &storage, &handler).await;
    let mut published: HashMap<String, usize> = HashMap::new();
    let mut last = [0u64; TOPICS.len()];
    for op in ops {
        let batch: Vec<(usize, String)> = match op {
            Op::Publish { topic, key, count } => {
                (0..count).map(|_| (topic, format!("key-{key}"))).collect()
            }
            Op::Burst { topic, count } => {
                (0..count).map(|i| (topic, format!("key-{}", i % u16::from(KEYS)))).collect()
            }
            Op::Restart => {
                engine.shutdown().await;
                handler.epoch.fetch_add(1, AtomicOrdering::SeqCst);
                engine = start(dir.path(), &storage, &handler).await;
                continue;
            }
        };
        let topic = batch[0].0;
        let events =
            batch.iter().map(|(t, key)| Event::builder(TOPICS[*t], key, "x").build().unwrap());
        let positions = engine.publish_batch(events.collect()).await.unwrap();
        last[topic] = *positions.last().unwrap();
        for (_, key) in batch {
            *published.entry(key).or_default() += 1;
        }
    }
    for (topic, last) in TOPICS.iter().zip(last) {
        if last > 0 {
            common::settle(&engine, topic, last).await;
        }
    }
    engine.shutdown().await;

    assert_eq!(handler.overlaps.load(AtomicOrdering::SeqCst), 0, "a key ran twice at once");
    let mut by_key: HashMap<String, Vec<(u32, u64, ())>> = HashMap::new();
    for (epoch, key, commit) in handler.calls.lock().unwrap().iter() {
        by_key.entry(key.clone()).or_default().push((*epoch, *commit, ()));
    }
    for (key, count) in published {
        let handled: Vec<u64> =
            common::once_each(&key, &by_key[&key]).into_iter().map(|(commit, ())| commit).collect();
        assert!(
            handled.windows(2).all(|w| w[0] < w[1]),
            "key {key}: not in commit order: {handled:?}"
        );
        let distinct: BTreeSet<u64> = handled.iter().copied().collect();
        assert_eq!(distinct.len(), count, "key {key}: every event handled");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn per_key_commit_order_holds_across_topics_through_failures_and_restarts(
        ops in prop::collection::vec(op(), 1..20),
        fail_one_in in 2u64..6,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(ops, fail_one_in));
    }
}
