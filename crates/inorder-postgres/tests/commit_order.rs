//! The commit position on PostgreSQL under writers of several nodes: an append whose transaction
//! has taken commit positions but not committed holds back every later commit — another append
//! waits for it instead of committing a higher commit position first, so a reader can never see
//! commit `N + 1` while `N` may still appear (the gap problem of `nextval`, which commits out of
//! order). The other node is a raw SQL transaction, so the test can stop it half-way.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use inorder::{Name, storage::Storage};
use inorder_postgres::{PgStorage, PgStorageOptions};
use tokio_postgres::{Client, NoTls};

const PATIENCE: Duration = Duration::from_secs(30);

async fn client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_append_holds_back_every_later_commit() {
    let url = tokio::task::spawn_blocking(inorder_testpg::fresh_database).await.unwrap().unwrap();
    let storage = Arc::new(PgStorage::connect(&url, PgStorageOptions::default()).await.unwrap());
    let (slow, fast) = (Name::new("topic", "slow").unwrap(), Name::new("topic", "fast").unwrap());
    storage.create_topic(&slow).await.unwrap();
    storage.create_topic(&fast).await.unwrap();

    // Another node's append to `slow`, in flight: commit and position taken, row written, no
    // COMMIT yet.
    let other = client(&url).await;
    other
        .batch_execute(
            "BEGIN; \
             WITH clock AS (UPDATE inorder_commit_clock SET last_commit = last_commit + 1 \
                            RETURNING last_commit), \
                  counter AS (UPDATE inorder_topics SET last_position = last_position + 1 \
                              WHERE name = 'slow' RETURNING last_position) \
             INSERT INTO inorder_events (topic, position, commit_position, payload) \
             SELECT 'slow', last_position, last_commit, '\\x01'::bytea FROM clock, counter",
        )
        .await
        .unwrap();

    let appending = {
        let (storage, fast) = (Arc::clone(&storage), fast.clone());
        tokio::spawn(async move { storage.append(&fast, vec![Bytes::from_static(b"f")]).await })
    };
    // Wait for the state we mean: our append waits on a lock held by the other transaction.
    let observer = client(&url).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(!appending.is_finished(), "the append committed past an uncommitted commit");
        assert!(std::time::Instant::now() < deadline, "the append never waited for the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(storage.read_all(1, 10).await.unwrap().is_empty(), "nothing is committed yet");

    other.batch_execute("COMMIT").await.unwrap();
    let positions = appending.await.unwrap().unwrap();
    assert_eq!(positions, 1..=1);
    let read: Vec<(String, u64, u64)> = storage
        .read_all(1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(topic, record)| (topic.to_string(), record.position, record.commit))
        .collect();
    assert_eq!(read, [("slow".to_owned(), 1, 1), ("fast".to_owned(), 1, 2)]);
}

/// Appends of many topics share one statement per group: every topic's positions stay gap-free
/// and in commit order, commits are unique across topics, and a topic that does not exist gets
/// its own error without failing the others of its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_appends_of_many_topics_keep_positions_and_commits_apart() {
    let url = tokio::task::spawn_blocking(inorder_testpg::fresh_database).await.unwrap().unwrap();
    let storage = Arc::new(PgStorage::connect(&url, PgStorageOptions::default()).await.unwrap());
    let topics: Vec<Name> = (0..4).map(|t| Name::new("topic", &format!("t{t}")).unwrap()).collect();
    for topic in &topics[..3] {
        storage.create_topic(topic).await.unwrap();
    }
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let (storage, topic) = (Arc::clone(&storage), topics[writer % 4].clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for round in 0..20 {
                let payloads = vec![Bytes::from(format!("{writer}-{round}")); 1 + round % 3];
                results.push((topic.clone(), storage.append(&topic, payloads).await));
            }
            results
        }));
    }
    let mut appended = 0;
    for task in tasks {
        for (topic, result) in task.await.unwrap() {
            match result {
                Ok(positions) => appended += positions.count(),
                Err(inorder::Error::UnknownTopic { topic: unknown }) => {
                    assert_eq!((topic.as_str(), unknown.as_str()), ("t3", "t3"));
                }
                Err(other) => panic!("{topic}: {other}"),
            }
        }
    }
    let all = storage.read_all(1, 100_000).await.unwrap();
    assert_eq!(all.len(), appended);
    let commits: Vec<u64> = all.iter().map(|(_, r)| r.commit).collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "unique, in order");
    for topic in &topics[..3] {
        let positions: Vec<u64> =
            all.iter().filter(|(t, _)| t == topic).map(|(_, r)| r.position).collect();
        let expected: Vec<u64> = (1..=u64::try_from(positions.len()).unwrap()).collect();
        assert_eq!(positions, expected, "{topic}: gap-free, in commit order");
    }
}

/// `commit_marks` (what the commit-order turns of a subscription over several topics trust):
/// every event with a commit up to the visible commit it answers lies at or below the last
/// position it answers for its topic — checked against every answer taken while four writers
/// append to two topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_marks_cover_every_visible_commit_with_the_topics_last_positions() {
    let url = tokio::task::spawn_blocking(inorder_testpg::fresh_database).await.unwrap().unwrap();
    let storage = Arc::new(PgStorage::connect(&url, PgStorageOptions::default()).await.unwrap());
    let topics = [Name::new("topic", "a").unwrap(), Name::new("topic", "b").unwrap()];
    for topic in &topics {
        storage.create_topic(topic).await.unwrap();
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (storage, topics) = (Arc::clone(&storage), topics.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    let topic = &topics[(w + i) % 2];
                    storage.append(topic, vec![Bytes::from_static(b"e")]).await.unwrap();
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) {
        answers.push(storage.commit_marks(&topics).await.unwrap());
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let unknown = Name::new("topic", "nowhere").unwrap();
    let (_, lasts) = storage.commit_marks(&[unknown]).await.unwrap();
    assert_eq!(lasts, [0], "a topic that does not exist ends at 0");

    let events = storage.read_all(0, 1000).await.unwrap();
    assert_eq!(events.len(), 200);
    assert!(answers.len() > 1, "answers taken while writing: {}", answers.len());
    for (visible, lasts) in &answers {
        for (topic, record) in &events {
            let index = topics.iter().position(|t| t == topic).unwrap();
            if record.commit <= *visible {
                assert!(
                    record.position <= lasts[index],
                    "commit {} of {topic} at {} is visible ({visible}) past its last position {}",
                    record.commit,
                    record.position,
                    lasts[index]
                );
            }
        }
    }
}
