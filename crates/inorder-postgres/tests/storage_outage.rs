//! A Postgres-backed engine while PostgreSQL stops and comes back: publishes fail with a
//! transient, typed error (nothing half-done), the stream that cannot checkpoint is visibly
//! `retrying`, and once the server is back it runs again and every event is handled — the one in
//! flight at the outage at least once, nothing lost.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use inorder::{
    Engine, EngineConfig, Event, Handler, HandlerContext, HandlerError, Reply, RetryPolicy,
    StorageErrorKind, StreamHealth, SubscriptionConfig, TopicConfig,
};
use inorder_postgres::{PgStorage, PgStorageOptions};
use inorder_testpg::Cluster;

const PATIENCE: Duration = Duration::from_secs(30);

/// Records handled positions; holds calls for key `held` while the gate is closed.
struct Gated {
    open: Arc<AtomicBool>,
    entered: Arc<AtomicBool>,
    handled: Arc<Mutex<Vec<u64>>>,
}

#[async_trait::async_trait]
impl Handler for Gated {
    async fn handle(&self, event: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        if event.key == "held" {
            self.entered.store(true, AtomicOrdering::SeqCst);
        }
        while event.key == "held" && !self.open.load(AtomicOrdering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.handled.lock().unwrap().push(event.position);
        Ok(Reply::Null)
    }
}

async fn health(engine: &Engine) -> StreamHealth {
    engine.subscriptions().await.unwrap()[0].streams[0].status.health.clone()
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_makes_the_stream_retry_and_it_resumes_losing_nothing() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap().unwrap());
    let url = cluster.create_database("outage").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let retry = RetryPolicy { initial: Duration::from_millis(5), ..RetryPolicy::default() };
    let config = EngineConfig::new(dir.path())
        .topic(TopicConfig::new("orders"))
        .subscription(SubscriptionConfig::new("s", ["orders"]).retry(retry));
    let open = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let storage = PgStorage::connect(&url, PgStorageOptions::default()).await.unwrap();
    let engine = Engine::builder(config)
        .storage(Arc::new(storage))
        .handler(
            "s",
            Gated {
                open: Arc::clone(&open),
                entered: Arc::clone(&entered),
                handled: Arc::clone(&handled),
            },
        )
        .start()
        .await
        .unwrap();
    let event = |key: &str| Event::builder("orders", key, "placed").build().unwrap();
    for i in 0..10 {
        engine.publish(event(&format!("k{i}"))).await.unwrap();
    }
    assert!(engine.wait_processed("orders", 10, None, PATIENCE).await.unwrap());
    let held = engine.publish(event("held")).await.unwrap();
    eventually("the held event is in its handler", || async {
        entered.load(AtomicOrdering::SeqCst)
    })
    .await;

    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop()).await.unwrap().unwrap();
    let error = engine.publish(event("k-during")).await.unwrap_err();
    assert_eq!(error.storage_kind(), Some(StorageErrorKind::Transient), "{error}");
    open.store(true, AtomicOrdering::SeqCst); // its checkpoint now meets the outage
    eventually("the stream retries, visibly", || async {
        matches!(health(&engine).await, StreamHealth::Retrying { .. })
    })
    .await;

    let resuming = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || resuming.resume()).await.unwrap().unwrap();
    eventually("the stream runs again", || async {
        health(&engine).await == StreamHealth::Running
    })
    .await;
    let after = engine.publish(event("k-after")).await.unwrap();
    assert_eq!(after, held + 1, "the failed publish appended nothing");
    assert!(engine.wait_processed("orders", after, None, PATIENCE).await.unwrap());
    let mut positions = handled.lock().unwrap().clone();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions, (1..=after).collect::<Vec<_>>(), "every event handled");
    engine.shutdown().await;
}
