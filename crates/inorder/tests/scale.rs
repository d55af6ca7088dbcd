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

/// Starts the fixture's engine with a [`Counting`] handler for subscription `s`.
async fn start_counting(fixture: &mut Fixture, calls: &Arc<AtomicU64>) -> Engine {
    let engine = Engine::builder(fixture.config.clone())
        .handler("s", Counting(Arc::clone(calls)))
        .start()
        .await
        .unwrap();
    fixture.engine = Some(engine.clone());
    engine
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
    caught_up(engine, "users", last).await;
}

/// Waits until the stream of `topic` reaches `done` (polling its status); fails on a failed
/// stream or after ten minutes.
async fn reaches(
    engine: &Engine,
    topic: &str,
    what: &str,
    done: impl Fn(&inorder::StreamStatus) -> bool,
) -> inorder::StreamStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let infos = engine.subscriptions().await.unwrap();
        let stream = infos.iter().flat_map(|i| &i.streams).find(|s| s.topic == topic).unwrap();
        let status = stream.status.clone();
        assert!(
            !matches!(status.health, inorder::StreamHealth::Failed { .. }),
            "{topic}: {:?}",
            status.health
        );
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{topic} did not reach {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the watermark of `topic`'s stream reaches `last`.
async fn caught_up(engine: &Engine, topic: &str, last: u64) -> inorder::StreamStatus {
    reaches(engine, topic, &format!("watermark {last}"), |s| s.watermark >= last).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_keys_leave_no_workers_and_bounded_memory() {
    let calls = Arc::new(AtomicU64::new(0));
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("users"))
            .subscription(subscription("s", "users").max_keys_in_flight(4096))
    });
    let engine = start_counting(&mut fixture, &calls).await;
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

/// Publishes `count` events: for 1,000 keys round robin, each key's actions `first`, `second`
/// in turn (the topic repeats), in batches.
async fn cycling_keys(engine: &Engine, count: usize) -> u64 {
    let mut last = 0;
    for start in (0..count).step_by(BATCH) {
        let events = (start..start + BATCH)
            .map(|i| {
                let action = if (i / 1000) % 2 == 0 { "first" } else { "second" };
                Event::builder("orders", format!("order-{}", i % 1000), action).build().unwrap()
            })
            .collect();
        last = *engine.publish_batch(events).await.unwrap().last().unwrap();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_waiting_forever_holds_the_watermark_not_memory_nor_other_keys_status() {
    const LATER: usize = 1_000_000;
    let calls = Arc::new(AtomicU64::new(0));
    let mut fixture = Fixture::new(|c| {
        c.topic(TopicConfig::new("orders").actions(["first", "second"]).repeat(true)).subscription(
            subscription("s", "orders")
                .ordering(inorder::Ordering::Actions)
                .max_keys_in_flight(1024),
        )
    });
    let engine = start_counting(&mut fixture, &calls).await;
    // "second" before "first": this key waits, and no sequence timeout ends the wait.
    let held =
        engine.publish(Event::builder("orders", "held", "second").build().unwrap()).await.unwrap();
    let resolved_after_held =
        |last: u64| move |s: &inorder::StreamStatus| *s.done_above == [held + 1..=last];
    let start = rss_bytes();
    let half = cycling_keys(&engine, LATER / 2).await;
    reaches(&engine, "orders", "half", resolved_after_held(half)).await;
    let middle = rss_bytes();
    let last = cycling_keys(&engine, LATER / 2).await;
    let status = reaches(&engine, "orders", "the end", resolved_after_held(last)).await;
    let end = rss_bytes();

    assert_eq!(status.watermark, held - 1, "the waiting key holds the watermark");
    assert_eq!(&*status.done_above, &[held + 1..=last], "a million later events are one range");
    assert_eq!(
        engine.event_status("orders", held, None).await.unwrap(),
        inorder::EventStatus::Pending
    );
    assert_eq!(
        engine.event_status("orders", last, None).await.unwrap(),
        inorder::EventStatus::Pending,
        "position status is a prefix: the waiting key holds it (a sequence_timeout ends that)"
    );
    assert_eq!(calls.load(AtomicOrdering::Relaxed), u64::try_from(LATER).unwrap());
    let mib = |bytes: u64| bytes >> 20;
    eprintln!(
        "resident memory: +{} MiB for the first 500k later events, +{} MiB for the next 500k",
        mib(middle.saturating_sub(start)),
        mib(end.saturating_sub(middle))
    );
    assert!(
        end.saturating_sub(middle) < 32 << 20,
        "the second half-million events grew memory by {} MiB",
        mib(end.saturating_sub(middle))
    );
}

/// Waits until every call has started, then lets them all finish at once.
struct AllAtOnce {
    started: Arc<tokio::sync::Barrier>,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Handler for AllAtOnce {
    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        self.started.wait().await;
        self.calls.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(Reply::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_handlers_finishing_at_once_with_1_kib_keys_are_all_checkpointed() {
    const SUBSCRIPTIONS: usize = 8;
    const PER_SUBSCRIPTION: usize = 12_500;
    let calls = Arc::new(AtomicU64::new(0));
    let started = Arc::new(tokio::sync::Barrier::new(SUBSCRIPTIONS * PER_SUBSCRIPTION));
    let mut fixture = Fixture::new(|mut c| {
        for s in 0..SUBSCRIPTIONS {
            c = c.topic(TopicConfig::new(format!("burst-{s}"))).subscription(
                subscription(&format!("s{s}"), &format!("burst-{s}"))
                    .max_keys_in_flight(PER_SUBSCRIPTION),
            );
        }
        c
    });
    let mut builder = fixture.builder().await;
    for s in 0..SUBSCRIPTIONS {
        let handler = AllAtOnce { started: Arc::clone(&started), calls: Arc::clone(&calls) };
        builder = builder.handler(&format!("s{s}"), handler);
    }
    let engine = builder.start().await.unwrap();
    fixture.engine = Some(engine.clone());
    for s in 0..SUBSCRIPTIONS {
        let topic = format!("burst-{s}");
        for start in (0..PER_SUBSCRIPTION).step_by(BATCH) {
            let events = (start..(start + BATCH).min(PER_SUBSCRIPTION))
                .map(|k| {
                    let key = format!("{k:0>1024}"); // a 1 KiB key
                    Event::builder(topic.as_str(), key, "done").build().unwrap()
                })
                .collect();
            engine.publish_batch(events).await.unwrap();
        }
    }
    let last = u64::try_from(PER_SUBSCRIPTION).unwrap();
    for s in 0..SUBSCRIPTIONS {
        let topic = format!("burst-{s}");
        assert!(engine.failed_streams().is_empty(), "{:?}", engine.failed_streams());
        caught_up(&engine, &topic, last).await;
    }
    assert_eq!(
        calls.load(AtomicOrdering::Relaxed),
        u64::try_from(SUBSCRIPTIONS * PER_SUBSCRIPTION).unwrap()
    );
    assert!(engine.failed_streams().is_empty());
    // What was checkpointed is durable: after a restart nothing is handed over again.
    fixture.stop().await;
    let engine = fixture.builder().await;
    let mut engine = engine;
    for s in 0..SUBSCRIPTIONS {
        engine = engine.handler(&format!("s{s}"), Counting(Arc::clone(&calls)));
    }
    let engine = engine.start().await.unwrap();
    for s in 0..SUBSCRIPTIONS {
        assert!(engine.processed(&format!("burst-{s}"), last).await.unwrap());
    }
    assert_eq!(
        calls.load(AtomicOrdering::Relaxed),
        u64::try_from(SUBSCRIPTIONS * PER_SUBSCRIPTION).unwrap()
    );
    engine.shutdown().await;
}

/// OS threads of this process (Linux).
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap()
}

#[test]
fn threads_do_not_grow_with_topics() {
    // Each file-backed topic holds two file descriptors (its lock and its segment) and the
    // machine allows 20,000: 4,000 topics, each with a stream of a pattern subscription. The log
    // alone is tested with 10,000 (crates/inorder-log/tests/threads.rs).
    const TOPICS: usize = 4_000;
    const BLOCKING_THREADS_MAX: usize = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let calls = Arc::new(AtomicU64::new(0));
        let mut fixture = Fixture::new(|mut c| {
            c.auto_create_topics = true;
            c.max_topics = TOPICS;
            c.subscription(
                inorder::SubscriptionConfig::new("all", Vec::<String>::new()).pattern("t-.*"),
            )
        });
        let mut builder = fixture.builder().await;
        builder = builder.handler("all", Counting(Arc::clone(&calls)));
        let engine = builder.start().await.unwrap();
        fixture.engine = Some(engine.clone());
        let before = threads();
        for round in 0..2 {
            for topic in 0..TOPICS {
                let event = Event::builder(&format!("t-{topic}"), "k", "a").build().unwrap();
                engine.publish(event).await.unwrap();
            }
            let cores = std::thread::available_parallelism().map_or(2, usize::from);
            let now = threads();
            eprintln!("round {round}: {before} threads before, {now} with {TOPICS} topics");
            // The runtime's workers and blocking pool, the log's pool (sized by cores), the
            // state store's background threads: a constant plus the cores, whatever the topics.
            assert!(
                now <= before + BLOCKING_THREADS_MAX + 16 + cores,
                "{now} threads with {TOPICS} topics (started with {before})"
            );
        }
        for topic in (0..TOPICS).step_by(97) {
            assert!(
                engine
                    .wait_processed(&format!("t-{topic}"), 2, None, common::PATIENCE)
                    .await
                    .unwrap()
            );
        }
        assert_eq!(engine.topics().await.unwrap().len(), TOPICS);
        fixture.stop().await;
    });
}
