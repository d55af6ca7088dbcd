//! Conditional publishing (`publish_new`) and lookups by id (`positions_of`): the compare-and-set
//! that the CQRS layer's optimistic concurrency relies on.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Fixture, Recorder, RecordingHandler, settle, subscription};
use inorder::{Error, Event, TopicConfig};

fn fixture() -> Fixture {
    Fixture::new(|c| {
        c.topic(TopicConfig::new("accounts")).subscription(subscription("s", "accounts"))
    })
}

fn versioned(key: &str, version: u64, writer: &str) -> Event {
    Event::builder("accounts", key, "account.changed")
        .id(format!("{key}@{version}"))
        .source(writer)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_writers_racing_for_one_version_exactly_one_appends_its_whole_batch() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    // Sixteen writers all loaded version 0 of a-1; each appends versions 1..=3.
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let writer = format!("w{w}");
                let batch = (1..=3).map(|v| versioned("a-1", v, &writer)).collect();
                (writer, engine.publish_new(batch).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (writer, Ok(positions)) => winners.push((writer, positions)),
            (_, Err(Error::IdTaken { id, .. })) => assert!(id.starts_with("a-1@")),
            (_, Err(other)) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "one writer wins version 1");
    let (winner, positions) = &winners[0];
    assert_eq!(positions, &vec![1, 2, 3]);
    let stored = engine.read("accounts", 1, 10).await.unwrap();
    assert_eq!(stored.len(), 3, "no loser appended anything");
    assert!(stored.iter().all(|e| &e.source == winner), "the whole batch is the winner's");
    settle(&engine, "accounts", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_is_refused_before_and_after_it_is_indexed_and_after_restart() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    engine.publish_new(vec![versioned("a-1", 1, "first")]).await.unwrap();
    let again = engine.publish_new(vec![versioned("a-1", 1, "second")]).await;
    assert!(matches!(again, Err(Error::IdTaken { .. })), "{again:?}");
    settle(&engine, "accounts", 1).await;
    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    // A batch whose *second* id is taken appends nothing, not even its new first event.
    let batch = vec![versioned("a-2", 1, "x"), versioned("a-1", 1, "x")];
    let refused = engine.publish_new(batch).await;
    assert!(matches!(&refused, Err(Error::IdTaken { id, .. }) if id == "a-1@1"), "{refused:?}");
    assert_eq!(engine.read("accounts", 1, 10).await.unwrap().len(), 1);
    // The refused batch released its claim on a-2@1.
    assert_eq!(engine.publish_new(vec![versioned("a-2", 1, "x")]).await.unwrap(), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_of_finds_fresh_indexed_and_missing_ids() {
    let recorder = Arc::new(Recorder::default());
    let mut fixture = fixture();
    let engine = fixture.start(vec![("s", RecordingHandler::ok(&recorder))]).await;
    let batch = (1..=3).map(|v| versioned("a-1", v, "w")).collect();
    engine.publish_new(batch).await.unwrap();
    let ids = || ["a-1@1", "a-1@3", "a-1@4"].map(String::from).to_vec();
    // Right after the append (claims may still hold them) and after a restart (index only).
    assert_eq!(engine.positions_of("accounts", ids()).await.unwrap(), [Some(1), Some(3), None]);
    settle(&engine, "accounts", 3).await;
    let engine = fixture.restart(vec![("s", RecordingHandler::ok(&recorder))]).await;
    assert_eq!(engine.positions_of("accounts", ids()).await.unwrap(), [Some(1), Some(3), None]);
    let too_many = vec![String::from("x"); inorder::limits::LOOKUP_IDS_MAX + 1];
    assert!(matches!(
        engine.positions_of("accounts", too_many).await,
        Err(Error::InvalidBatch { .. })
    ));
    assert!(matches!(engine.positions_of("nope", ids()).await, Err(Error::UnknownTopic { .. })));
}

/// Two nodes on one PostgreSQL: each has its own engine (its own claims), so only the storage
/// can decide. Round after round both race for the next version of one key; exactly one of them
/// appends it, and the topic holds each version once. (File storage: one node per directory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_nodes_racing_for_one_version_exactly_one_appends_it() {
    let mut fixture = Fixture::new(|c| c.topic(TopicConfig::new("accounts")));
    if fixture.storage == common::TestStorage::File {
        eprintln!("file storage: one node per data directory; nothing to check here");
        return;
    }
    let first = fixture.start(vec![]).await;
    let second = fixture.builder().await.start().await.unwrap();
    for version in 1..=50 {
        let race = |engine: &inorder::Engine, writer: &'static str| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine.publish_new(vec![versioned("a-1", version, writer)]).await
            })
        };
        let (one, two) = (race(&first, "node-1"), race(&second, "node-2"));
        let results = [one.await.unwrap(), two.await.unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "version {version}: {results:?}");
        for result in &results {
            if let Err(error) = result {
                assert!(matches!(error, Error::IdTaken { .. }), "version {version}: {error}");
            }
        }
    }
    let stored = first.read("accounts", 1, 1000).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    let expected: Vec<String> = (1..=50).map(|v| format!("a-1@{v}")).collect();
    assert_eq!(ids, expected, "each version once, in order");
    second.shutdown().await;
    fixture.stop().await;
}
