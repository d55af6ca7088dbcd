//! `kill -9` of a process streaming events into PostgreSQL, several times, then a final run.
//!
//! The child publishes batches (printing `PUB position` once a publish returned) while its sink
//! archives them. The parent kills it at random moments. In the end the table holds every event
//! of the log exactly once: nothing acknowledged before its commit was lost, nothing redelivered
//! was written twice.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use inorder::{Engine, EngineConfig, Event, FsyncPolicy, SubscriptionConfig, TopicConfig};
use inorder_postgres::{PostgresSink, SinkConfig};
use tokio_postgres::NoTls;

const CHILD_ENV: &str = "INORDER_SINK_CRASH_CHILD";
const ROUNDS: u32 = 3;
const TEST: &str = "kill_9_mid_stream_leaves_every_event_in_the_table_exactly_once";

fn sink_config(url: &str) -> SinkConfig {
    let mut sink = SinkConfig::new(url, "archived_events").unwrap();
    sink.batch_size = 100;
    sink.workers = 2;
    sink
}

fn engine_config(dir: &str, sink: &SinkConfig) -> EngineConfig {
    let mut config = EngineConfig::new(dir).topic(TopicConfig::new("t")).subscription(
        SubscriptionConfig::new("archive", ["t"]).max_keys_in_flight(sink.keys_in_flight()),
    );
    config.fsync = FsyncPolicy::Group;
    config
}

async fn start(dir: &str, url: &str) -> Engine {
    let sink = sink_config(url);
    let config = engine_config(dir, &sink);
    let sink = PostgresSink::start(sink).await.unwrap();
    Engine::builder(config).handler("archive", sink).start().await.unwrap()
}

async fn rows(url: &str) -> (i64, i64, i64) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT position), coalesce(max(position), 0) \
             FROM archived_events",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn kill_9_mid_stream_leaves_every_event_in_the_table_exactly_once() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, url) = spec.split_once('|').unwrap();
        child(dir, url);
    }
    let url = inorder_testpg::fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let mut acknowledged = Vec::new();
    for _ in 0..ROUNDS {
        for line in run_child_and_kill(&format!("{dir}|{url}")) {
            if let Some(position) = line.strip_prefix("PUB ") {
                acknowledged.push(position.parse::<u64>().unwrap());
            }
        }
    }
    assert!(acknowledged.len() > 100, "the children published only {}", acknowledged.len());

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let before = rows(&url).await;
        let engine = start(&dir, &url).await;
        let last = engine.topics().await.unwrap()[0].last_position;
        assert!(last >= acknowledged.iter().copied().max().unwrap());
        assert!(engine.wait_processed("t", last, None, Duration::from_secs(60)).await.unwrap());
        let (count, distinct, max) = rows(&url).await;
        eprintln!(
            "{} publishes acknowledged, {last} in the log, {} rows before the final run",
            acknowledged.len(),
            before.0
        );
        let last = i64::try_from(last).unwrap();
        assert_eq!((count, distinct, max), (last, last, last), "each event exactly once");
        engine.shutdown().await;
    });
}

fn run_child_and_kill(spec: &str) -> Vec<String> {
    // Wait for the child to be streaming, then kill it at a random moment.
    let after = Duration::from_millis(700 + fastrand::u64(0..600));
    inorder_testpg::child::run_and_kill(TEST, CHILD_ENV, spec, after).unwrap()
}

fn child(dir: &str, url: &str) -> ! {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let engine = start(dir, url).await;
        for round in 0u64.. {
            let batch: Vec<Event> = (0..50)
                .map(|i| {
                    Event::builder("t", format!("k{}", (round + i) % 13), "a")
                        .json(&serde_json::json!({"round": round, "i": i}))
                        .build()
                        .unwrap()
                })
                .collect();
            for position in engine.publish_batch(batch).await.unwrap() {
                println!("PUB {position}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    unreachable!("the child runs until it is killed")
}
