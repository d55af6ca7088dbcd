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
