//! The commit position: one order across all topics. Every event gets, besides its position in
//! its topic, a node-wide commit position that grows with positions within a topic and follows
//! the order of appends across topics; `Engine::read_all` reads every topic in that order, and a
//! reader going on from the `next` commit it was given never misses an event — the classic gap
//! problem of sequences that commit out of order — also while many topics are written at once,
//! and (on PostgreSQL) while several nodes append. Commits never go back across a restart.
//!
//! Runs on both storages (`INORDER_TEST_STORAGE`).

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use common::{Fixture, TestStorage, event, publish};
use inorder::{Engine, EngineConfig, Event, TopicConfig};

fn topics(names: &[&str]) -> impl FnOnce(EngineConfig) -> EngineConfig {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    move |mut config| {
        config.topics = names.iter().map(TopicConfig::new).collect();
        config
    }
}

/// Every event from `from` on, page by page of `page` events, following `next`.
async fn read_all_from(engine: &Engine, mut from: u64, page: usize) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let (events, next) = engine.read_all(from, page).await.unwrap();
        if next == from {
            return all;
        }
        all.extend(events);
        from = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_positions_follow_the_appends_across_topics_and_positions_within_one() {
    let mut fixture = Fixture::new(topics(&["orders", "payments"]));
    let engine = fixture.start(vec![]).await;
    let mut published = Vec::new();
    for i in 0..30 {
        let topic = if i % 3 == 0 { "payments" } else { "orders" };
        let position = publish(&engine, topic, &format!("k-{}", i % 4), "a").await;
        published.push((topic.to_owned(), position));
    }
    let batch: Vec<Event> = (0..5).map(|i| event("orders", &format!("b-{i}"), "a")).collect();
    for position in engine.publish_batch(batch).await.unwrap() {
        published.push(("orders".to_owned(), position));
    }

    // One order across both topics: the order of the appends.
    let all = read_all_from(&engine, 1, 7).await;
    let read: Vec<(String, u64)> =
        all.iter().map(|e| (e.topic.as_str().to_owned(), e.position)).collect();
    assert_eq!(read, published);
    let commits: Vec<u64> = all.iter().map(|e| e.commit).collect();
    assert!(commits[0] >= 1 && commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");

    // Within a topic, commits grow with positions, and topic reads carry the same commits.
    for topic in ["orders", "payments"] {
        let events = engine.read(topic, 1, 100).await.unwrap();
        let by_commit: BTreeMap<u64, u64> = events.iter().map(|e| (e.commit, e.position)).collect();
        let positions: Vec<u64> = by_commit.values().copied().collect();
        assert_eq!(positions, (1..=u64::try_from(events.len()).unwrap()).collect::<Vec<_>>());
        for event in &events {
            assert!(all.iter().any(|e| e.topic == event.topic
                && e.position == event.position
                && e.commit == event.commit));
        }
    }

    // A page starts at its commit; past the end a read is empty and `next` stays.
    let from = all[10].commit;
    let (page, _) = engine.read_all(from, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.commit).collect::<Vec<_>>(), commits[10..13]);
    let after = commits.last().unwrap() + 1;
    assert_eq!(engine.read_all(after, 10).await.unwrap(), (vec![], after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_go_back_across_a_restart() {
    let mut fixture = Fixture::new(topics(&["orders", "payments"]));
    let engine = fixture.start(vec![]).await;
    publish(&engine, "orders", "k", "a").await;
    publish(&engine, "payments", "k", "a").await;
    let before = read_all_from(&engine, 1, 100).await;
    let highest = before.iter().map(|e| e.commit).max().unwrap();

    let engine = fixture.restart(vec![]).await;
    publish(&engine, "payments", "k", "b").await;
    publish(&engine, "orders", "k", "b").await;
    let after = read_all_from(&engine, 1, 100).await;
    assert_eq!(after[..2], before[..]);
    assert!(after[2].commit > highest && after[3].commit > after[2].commit, "{after:?}");
    assert_eq!((after[2].topic.as_str(), after[3].topic.as_str()), ("payments", "orders"));
}

/// Readers across topics wait on a watch of the visible commit, raised by appends of any topic
/// (on PostgreSQL, also of other nodes, through `NOTIFY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_watch_rises_with_appends_of_any_topic() {
    let mut fixture = Fixture::new(topics(&["orders", "payments"]));
    let engine = fixture.start(vec![]).await;
    let mut watch = engine.storage().watch_commit().await.unwrap();
    let start = *watch.borrow_and_update();
    let other = fixture.builder().await;
    publish(&engine, "orders", "k", "a").await;
    let (events, _) = engine.read_all(1, 10).await.unwrap();
    let first = events.last().unwrap().commit;
    let seen = tokio::time::timeout(common::PATIENCE, watch.wait_for(|c| *c >= first)).await;
    assert!(*seen.unwrap().unwrap() >= first && first > start);
    if fixture.storage != TestStorage::File {
        // Another node's append raises this node's watch.
        let node = other.start().await.unwrap();
        publish(&node, "payments", "k", "a").await;
        let (events, _) = engine.read_all(first + 1, 10).await.unwrap();
        let second = events.last().unwrap().commit;
        let seen = tokio::time::timeout(common::PATIENCE, watch.wait_for(|c| *c >= second)).await;
        assert!(*seen.unwrap().unwrap() >= second);
        node.shutdown().await;
    }
}

const WRITERS: usize = 6;
const TOPICS: usize = 5;
const ROUNDS: usize = 60;

/// Publishes from `WRITERS` tasks at once, single events and small batches over `TOPICS` topics;
/// returns every (topic, position) acknowledged.
async fn write_concurrently(engines: &[Engine]) -> BTreeSet<(String, u64)> {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let engine = engines[writer % engines.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..ROUNDS {
                let topic = format!("t{}", (writer * 7 + round * 3) % TOPICS);
                let size = 1 + (writer + round) % 3;
                let batch: Vec<Event> =
                    (0..size).map(|i| event(&topic, &format!("w{writer}-{i}"), "a")).collect();
                for position in engine.publish_batch(batch).await.unwrap() {
                    acknowledged.push((topic.clone(), position));
                }
            }
            acknowledged
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Tails `read_all` from commit 1, following `next`, until it has `expected` events or the
/// writers are done and a read brings nothing more; returns what it saw, in order.
async fn tail(
    engine: Engine,
    writers_done: Arc<tokio::sync::Notify>,
    expected: usize,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let mut from = 1;
    let done = writers_done.notified();
    tokio::pin!(done);
    let mut finishing = false;
    loop {
        let (events, next) = engine.read_all(from, 17).await.unwrap();
        let empty = events.is_empty();
        seen.extend(events);
        from = next;
        if seen.len() >= expected || (finishing && empty) {
            return seen;
        }
        if empty {
            tokio::select! {
                () = &mut done, if !finishing => finishing = true,
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }
}

async fn a_tailing_reader_sees_every_event_once_in_commit_order(engines: Vec<Engine>) {
    let expected = WRITERS * ROUNDS * 2; // sizes 1, 2, 3 in turn: 2 on average
    let writers_done = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(tail(engines[0].clone(), Arc::clone(&writers_done), expected));
    let acknowledged = write_concurrently(&engines).await;
    writers_done.notify_one();
    let seen = reader.await.unwrap();

    let commits: Vec<u64> = seen.iter().map(|e| e.commit).collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "commit order, each once");
    let seen: BTreeSet<(String, u64)> =
        seen.iter().map(|e| (e.topic.as_str().to_owned(), e.position)).collect();
    assert_eq!(acknowledged.len(), expected);
    let missed: Vec<_> = acknowledged.difference(&seen).collect();
    assert!(missed.is_empty(), "the tailing reader skipped {} events: {missed:?}", missed.len());
    assert_eq!(seen, acknowledged);
}

fn concurrent_topics(config: EngineConfig) -> EngineConfig {
    topics(&["t0", "t1", "t2", "t3", "t4"])(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_next_never_misses_an_event_while_topics_are_written_at_once() {
    let mut fixture = Fixture::new(concurrent_topics);
    let engine = fixture.start(vec![]).await;
    a_tailing_reader_sees_every_event_once_in_commit_order(vec![engine]).await;
}

/// Several nodes on one database: each appends through its own storage (its own connections and
/// appender tasks), and a reader on one of them still never sees a commit before an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_several_nodes_appending_keep_the_commit_order() {
    let mut fixture = Fixture::new(concurrent_topics);
    if fixture.storage == TestStorage::File {
        eprintln!("file storage: one node per data directory; nothing to check here");
        return;
    }
    let first = fixture.start(vec![]).await;
    let second = fixture.builder().await.start().await.unwrap();
    let third = fixture.builder().await.start().await.unwrap();
    a_tailing_reader_sees_every_event_once_in_commit_order(vec![
        first,
        second.clone(),
        third.clone(),
    ])
    .await;
    second.shutdown().await;
    third.shutdown().await;
}

/// The gap problem made deterministic: an append to `slow` takes commit 1 and waits for its
/// fsync (held on the simulated disk) while an append to `fast` takes commit 2 and is durable.
/// Until commit 1 is durable a read returns nothing — returning commit 2 would let a reader
/// going on from 3 skip commit 1 for ever. (File storage: the disk is simulated.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_not_read_while_an_earlier_one_is_not_durable() {
    use inorder::storage::FileStorage;
    use inorder_log::{
        LogOptions,
        vfs::{Vfs, sim::SimVfs},
    };

    let dir = tempfile::tempdir().unwrap();
    let config = topics(&["slow", "fast"])(EngineConfig::new(dir.path()));
    let vfs = Arc::new(SimVfs::new());
    let storage = FileStorage::open_with_vfs(
        Arc::clone(&vfs) as Arc<dyn Vfs>,
        dir.path(),
        LogOptions::default(),
    )
    .unwrap();
    let engine = Engine::builder(config).storage(Arc::new(storage)).start().await.unwrap();

    let hold = vfs.hold_syncs(dir.path().join("topics/slow"));
    let slow = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.publish(event("slow", "k", "a")).await.unwrap() })
    };
    let segment = dir.path().join("topics/slow/00000000000000000001.seg");
    common::eventually("the slow append is written and waits for its fsync", || async {
        vfs.read_file(&segment).is_some_and(|bytes| bytes.len() > 32)
    })
    .await;
    assert_eq!(publish(&engine, "fast", "k", "a").await, 1, "fast is durable");
    assert_eq!(engine.read_all(1, 10).await.unwrap(), (vec![], 1), "commit 1 may still come");
    assert!(!slow.is_finished());

    drop(hold);
    assert_eq!(slow.await.unwrap(), 1);
    let (events, next) = engine.read_all(1, 10).await.unwrap();
    let order: Vec<(&str, u64)> = events.iter().map(|e| (e.topic.as_str(), e.commit)).collect();
    assert_eq!(order, [("slow", 1), ("fast", 2)]);
    assert_eq!(next, 3);
    engine.shutdown().await;
}
