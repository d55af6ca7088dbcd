//! `kill -9` of a process running the engine, several times, then a final run that drains.
//!
//! The child publishes from several tasks (printing `PUB position key` once a publish returned)
//! and handles a fifo subscription (printing `START key position` and `DONE key position`). The
//! parent kills it at random moments and checks, over every round:
//!
//! 1. every acknowledged publish is in the log with its key;
//! 2. per key, handler calls follow log order; the only repeat allowed is across a crash, and
//!    only of the event the key had in flight (at most one per key per crash);
//! 3. every event is handled in the end.
//!
//! A second test does the same with a handler that takes runs of up to [`RUN`] events of a key
//! ([`inorder::Handler::max_run`]): across a crash, only the run in flight may be handed again.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use common::{Recorder, RecordingHandler};
use inorder::{
    Engine, EngineConfig, Event, HandlerContext, HandlerError, Reply, SubscriptionConfig,
    TopicConfig,
};

const CHILD_ENV: &str = "INORDER_ENGINE_CRASH_CHILD";
const ROUNDS: u32 = 4;
const KEYS: usize = 12;
/// `max_run` of the handler of the runs test.
const RUN: usize = 8;

fn config(dir: &str) -> EngineConfig {
    EngineConfig::new(dir)
        .topic(TopicConfig::new("t"))
        .subscription(SubscriptionConfig::new("s", ["t"]))
}

#[test]
fn kill_9_loses_no_publish_and_redelivers_only_in_flight_events() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir, 1);
    }
    crash_rounds("kill_9_loses_no_publish_and_redelivers_only_in_flight_events", 1);
}

#[test]
fn kill_9_with_runs_redelivers_at_most_the_run_in_flight() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir, RUN);
    }
    crash_rounds("kill_9_with_runs_redelivers_at_most_the_run_in_flight", RUN);
}

/// Kills a child running `test` ROUNDS times, then drains and checks (see the module).
fn crash_rounds(test: &str, max_run: usize) {
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap().to_owned();
    let mut published: BTreeMap<u64, String> = BTreeMap::new();
    // Per key: (round, position) of every handler start, in order.
    let mut starts: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
    let mut done: Vec<u64> = Vec::new();
    for round in 0..ROUNDS {
        let lines = run_child_and_kill(test, &dir_str);
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["PUB", position, key] => {
                    published.insert(position.parse().unwrap(), (*key).to_owned());
                }
                ["START", key, position] => {
                    starts
                        .entry((*key).to_owned())
                        .or_default()
                        .push((round, position.parse().unwrap()));
                }
                ["DONE", _, position] => done.push(position.parse().unwrap()),
                _ => {}
            }
        }
    }
    assert!(published.len() > 20, "the children published only {} events", published.len());

    // The final run drains everything.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let recorder = Arc::new(Recorder::default());
        let engine =
            Engine::builder(config(&dir_str)).handler("s", RecordingHandler::ok(&recorder)).start().await.unwrap();
        let last = engine.topics().await.unwrap()[0].last_position;
        assert!(last >= *published.keys().last().unwrap(), "an acknowledged publish is missing");
        common::settle(&engine, "t", last).await;
        let events = read_all(&engine, last).await;
        for (position, key) in &published {
            assert_eq!(&events[usize::try_from(*position - 1).unwrap()].key, key, "event {position} kept its key");
        }
        for call in recorder.calls() {
            starts.entry(call.key.clone()).or_default().push((ROUNDS, call.position));
            done.push(call.position);
        }
        let mut handled: Vec<u64> = done.clone();
        handled.sort_unstable();
        handled.dedup();
        assert_eq!(handled, (1..=last).collect::<Vec<_>>(), "every event is handled in the end");
        let repeats: usize = starts
            .values()
            .map(|c| c.len() - c.iter().map(|(_, p)| p).collect::<std::collections::HashSet<_>>().len())
            .sum();
        eprintln!("{} events published, {last} in the log, {repeats} in-flight redeliveries across {ROUNDS} kills", published.len());
        for (key, calls) in &starts {
            let log_order: Vec<u64> = events.iter().filter(|e| &e.key == key).map(|e| e.position).collect();
            if max_run == 1 {
                check_key(key, calls, &log_order);
            } else {
                check_key_runs(key, calls, &log_order, max_run);
            }
        }
        engine.shutdown().await;
    });
}

/// Handler calls of one key follow log order; a repeat only across a crash, of the last call.
fn check_key(key: &str, calls: &[(u32, u64)], log_order: &[u64]) {
    for pair in calls.windows(2) {
        let ((round_a, a), (round_b, b)) = (pair[0], pair[1]);
        if round_a == round_b {
            assert!(b > a, "key {key}: {b} after {a} within one run");
        } else {
            assert!(
                b >= a,
                "key {key}: {b} after {a} across a crash (only the in-flight {a} may repeat)"
            );
        }
    }
    let mut distinct: Vec<u64> = calls.iter().map(|(_, p)| *p).collect();
    distinct.dedup();
    let expected: Vec<u64> = log_order.iter().copied().filter(|p| distinct.contains(p)).collect();
    assert_eq!(distinct, expected, "key {key}: calls in log order");
}

/// As [`check_key`] for a handler taking runs: across a crash, only the run in flight (at
/// most `max_run` events, in order) may be handed again.
fn check_key_runs(key: &str, calls: &[(u32, u64)], log_order: &[u64], max_run: usize) {
    let calls: Vec<(u32, u64, ())> = calls.iter().map(|&(round, p)| (round, p, ())).collect();
    let handled: Vec<u64> =
        common::once_each_run(key, &calls, max_run).into_iter().map(|(p, ())| p).collect();
    assert_eq!(handled, log_order[..handled.len()], "key {key}: calls in log order");
}

async fn read_all(engine: &Engine, last: u64) -> Vec<Event> {
    let mut events = Vec::new();
    while (events.len() as u64) < last {
        events.extend(engine.read("t", events.len() as u64 + 1, 1000).await.unwrap());
    }
    events
}

fn run_child_and_kill(test: &str, dir: &str) -> Vec<String> {
    let after = Duration::from_millis(400 + fastrand::u64(0..400));
    inorder_testpg::child::run_and_kill(test, CHILD_ENV, dir, after).unwrap()
}

/// Prints each call before and after the work, so the parent knows what was in flight; takes
/// runs of up to its `max_run`.
struct Printing {
    max_run: usize,
}

#[async_trait::async_trait]
impl inorder::Handler for Printing {
    fn max_run(&self) -> usize {
        self.max_run
    }

    async fn handle_run(&self, events: &[Event], _: &HandlerContext) -> inorder::RunReply {
        for event in events {
            println!("START {} {}", event.key, event.position);
        }
        for event in events {
            println!("DONE {} {}", event.key, event.position);
        }
        inorder::RunReply { replies: vec![Reply::Null; events.len()], failed: None }
    }

    async fn handle(&self, event: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        // Instant handlers: a worker that did not wait for its checkpoint would run many events
        // of its key ahead of what is durable, and a crash would hand them out again.
        println!("START {} {}", event.key, event.position);
        println!("DONE {} {}", event.key, event.position);
        Ok(Reply::Null)
    }
}

fn child(dir: &str, max_run: usize) -> ! {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let engine =
            Engine::builder(config(dir)).handler("s", Printing { max_run }).start().await.unwrap();
        let mut publishers = Vec::new();
        for task in 0..4 {
            let engine = engine.clone();
            publishers.push(tokio::spawn(async move {
                // Batches give every key a backlog: a worker runs its key's events one
                // checkpoint at a time, so a crash can only catch the one it has in flight.
                // Runs: publish until killed, so that the kill finds runs in flight.
                let rounds = if max_run > 1 { usize::MAX } else { 40 };
                for round in 0usize..rounds {
                    let batch: Vec<Event> = (0..40)
                        .map(|i| {
                            let key = format!("k{}", (task * 3 + (round + i) % 3) % KEYS);
                            Event::builder("t", key, "a").build().unwrap()
                        })
                        .collect();
                    let keys: Vec<String> = batch.iter().map(|e| e.key.clone()).collect();
                    let positions = engine.publish_batch(batch).await.unwrap();
                    for (position, key) in positions.into_iter().zip(keys) {
                        println!("PUB {position} {key}");
                    }
                }
            }));
        }
        for publisher in publishers {
            publisher.await.unwrap();
        }
        std::future::pending::<()>().await; // keep handling until killed
    });
    unreachable!("the child runs until it is killed")
}
