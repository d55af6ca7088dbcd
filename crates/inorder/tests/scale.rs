//! One million keys that each saw one event leave no live workers and bounded memory.
//!
//! Memory is measured as resident size after the first half-million keys and again after the
//! second: a leak per key would make the second half grow like the first; bounded memory (caches
//! and buffers that fill once) does not grow again.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use common::{Fixture, subscription};
use inorder::{Engine, Event, Handler, HandlerContext, HandlerError, Reply, TopicConfig};

const KEYS: usize = 1_000_000;
const BATCH: usize = 1000;

/// Counts calls, keeping nothing per event.
struct Counting(Arc<AtomicU64>);

#[async_trait::async_trait]
impl Handler for Counting {
    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        self.0.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(Reply::Null)
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

/// Publishes one event for each key in `keys` and waits until all are processed.
async fn one_event_per_key(engine: &Engine, keys: std::ops::Range<usize>) {
    for start in keys.clone().step_by(BATCH) {
        let events = (start..start + BATCH)
            .map(|k| Event::builder("users", format!("user-{k}"), "seen").build().unwrap())
            .collect();
        engine.publish_batch(events).await.unwrap();
    }
    let last = u64::try_from(keys.end).unwrap();
    assert!(engine.wait_processed("users", last, None, Duration::from_secs(600)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_keys_leave_no_workers_and_bounded_memory() {
    let calls = Arc::new(AtomicU64::new(0));
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("users"))
            .subscription(subscription("s", "users").max_keys_in_flight(4096))
    });
    let engine = Engine::builder(fixture.config.clone())
        .handler("s", Counting(Arc::clone(&calls)))
        .start()
        .await
        .unwrap();
    fixture.engine = Some(engine.clone());
    let start = rss_bytes();
    one_event_per_key(&engine, 0..KEYS / 2).await;
    let half = rss_bytes();
    one_event_per_key(&engine, KEYS / 2..KEYS).await;
    let full = rss_bytes();

    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let status = loop {
        let status = engine.subscriptions().await.unwrap()[0].streams[0].status.clone();
        if status.live_workers == 0 || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.live_workers, 0, "no key keeps a worker");
    assert_eq!(status.pending, 0);
    assert_eq!(calls.load(AtomicOrdering::Relaxed), u64::try_from(KEYS).unwrap());
    let mib = |bytes: u64| bytes >> 20;
    let (first, second) = (half.saturating_sub(start), full.saturating_sub(half));
    eprintln!(
        "resident memory: +{} MiB for the first 500k keys, +{} MiB for the next 500k",
        mib(first),
        mib(second)
    );
    assert!(second < 96 << 20, "the second half-million keys grew memory by {} MiB", mib(second));
    assert!(
        full.saturating_sub(start) < 384 << 20,
        "a million keys grew memory by {} MiB",
        mib(full - start)
    );
    let last = u64::try_from(KEYS).unwrap();
    assert_eq!(
        engine.last_processed(&format!("users/user-{}", KEYS - 1)).await.unwrap().unwrap().position,
        last
    );
}
