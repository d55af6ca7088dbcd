//! The batch sink against a real PostgreSQL: every event lands exactly once, in per-key order,
//! acknowledged only after commit; outages delay but lose nothing; bad settings fail at start.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use inorder::Handler as _;
use inorder::{
    Engine, EngineConfig, Event, FsyncPolicy, HandlerContext, Name, Ordering, SubscriptionConfig,
    TopicConfig,
};
use inorder_postgres::{Error, PostgresSink, SinkConfig};
use inorder_testpg::{Cluster, fresh_database};
use tokio_postgres::{Client, NoTls};

const PATIENCE: Duration = Duration::from_secs(30);

async fn client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn count(url: &str, sql: &str) -> i64 {
    client(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

fn engine_config(dir: &std::path::Path, sink: &SinkConfig, ordering: Ordering) -> EngineConfig {
    let mut config = EngineConfig::new(dir).topic(TopicConfig::new("orders")).subscription(
        SubscriptionConfig::new("archive", ["orders"])
            .ordering(ordering)
            .max_keys_in_flight(sink.keys_in_flight()),
    );
    config.fsync = FsyncPolicy::Never;
    config
}

async fn start_engine(config: EngineConfig, sink: SinkConfig) -> Engine {
    let sink = PostgresSink::start(sink).await.unwrap();
    Engine::builder(config).handler("archive", sink).start().await.unwrap()
}

fn order_event(key: &str, n: usize) -> Event {
    Event::builder("orders", key, "order.placed")
        .json(&serde_json::json!({"n": n, "note": "x".repeat(100)}))
        .correlation_id(format!("c-{key}"))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_with_its_fields_and_per_key_order_holds_across_writers() {
    let url = fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SinkConfig::new(&url, "archived_events").unwrap();
    sink.batch_size = 50;
    sink.workers = 4;
    let engine = start_engine(engine_config(dir.path(), &sink, Ordering::Fifo), sink).await;
    let keys = 20;
    let events: Vec<Event> = (0..1000).map(|n| order_event(&format!("k{}", n % keys), n)).collect();
    let mut last = 0;
    for chunk in events.chunks(100) {
        last = *engine.publish_batch(chunk.to_vec()).await.unwrap().last().unwrap();
    }
    assert!(engine.wait_processed("orders", last, None, PATIENCE).await.unwrap());

    assert_eq!(count(&url, "SELECT count(*) FROM archived_events").await, 1000);
    assert_eq!(count(&url, "SELECT count(DISTINCT position) FROM archived_events").await, 1000);
    let db = client(&url).await;
    let row = db
        .query_one(
            "SELECT key, action, topic, data->>'n', correlation_id, data_bytes IS NULL, \
             (extract(epoch FROM time) * 1000000)::bigint FROM archived_events WHERE position = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "k0");
    assert_eq!(row.get::<_, String>(1), "order.placed");
    assert_eq!(row.get::<_, String>(2), "orders");
    assert_eq!(row.get::<_, String>(3), "0");
    assert_eq!(row.get::<_, String>(4), "c-k0");
    assert!(row.get::<_, bool>(5));
    let time: i64 = row.get(6);
    assert!((time - events[0].time_micros).abs() <= 1, "time kept to the microsecond");
    // Per key, a later position never committed in an earlier transaction: archived_at is the
    // transaction's start, so along positions it never decreases.
    let out_of_order = count(
        &url,
        "SELECT count(*) FROM (SELECT archived_at < lag(archived_at) OVER \
         (PARTITION BY key ORDER BY position) AS back FROM archived_events) t WHERE back",
    )
    .await;
    assert_eq!(out_of_order, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_event_is_not_written_twice() {
    let url = fresh_database().unwrap();
    let sink = PostgresSink::start(SinkConfig::new(&url, "archive.events").unwrap()).await.unwrap();
    let mut event = order_event("k", 1);
    event.position = 7;
    let context =
        HandlerContext { subscription: Name::new("subscription", "s").unwrap(), attempt: 1 };
    sink.handle(&event, &context).await.unwrap();
    sink.handle(&event, &context).await.unwrap();
    assert_eq!(count(&url, "SELECT count(*) FROM archive.events").await, 1);
}

#[tokio::test]
async fn payloads_that_are_not_json_go_to_data_bytes_and_a_refused_row_is_parked_alone() {
    let url = fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = SinkConfig::new(&url, "archived_events").unwrap();
    let config = engine_config(dir.path(), &sink, Ordering::None);
    let engine = start_engine(config, sink).await;
    let binary = Event::builder("orders", "b", "blob")
        .data(vec![0u8, 159, 146, 150], Some("application/octet-stream".into()))
        .build()
        .unwrap();
    let nul_in_json = Event::builder("orders", "j", "x")
        .data(&b"{\"a\": \"\\u0000\"}"[..], Some("application/json".into()))
        .build()
        .unwrap();
    // PostgreSQL's text type refuses NUL: this row cannot be written, the others must be.
    let refused = Event::builder("orders", "bad\0key", "x").build().unwrap();
    let good = order_event("g", 1);
    let positions = engine.publish_batch(vec![binary, nul_in_json, refused, good]).await.unwrap();
    assert!(engine.wait_processed("orders", positions[3], None, PATIENCE).await.unwrap());

    assert_eq!(count(&url, "SELECT count(*) FROM archived_events").await, 3);
    assert_eq!(
        count(&url, "SELECT count(*) FROM archived_events WHERE data_bytes IS NOT NULL").await,
        2
    );
    let parked = engine.parked("archive", None, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, positions[2]);
    assert!(parked[0].error.as_deref().unwrap_or("").contains("postgres refused"));
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_settings_fail_at_start_with_a_clear_error() {
    for table in ["Events", "a;drop table x", "a.b.c", ""] {
        assert!(matches!(
            SinkConfig::new("postgres://x@127.0.0.1/db", table),
            Err(Error::InvalidConfig(_))
        ));
    }
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = SinkConfig::new(format!("postgres://u:secret@127.0.0.1:{port}/db"), "t").unwrap();
    let error = PostgresSink::start(config).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(!error.to_string().contains("secret"), "the password leaked: {error}");
    let mut config = SinkConfig::new("postgres://u@127.0.0.1/db", "t").unwrap();
    config.batch_size = 0;
    assert!(matches!(PostgresSink::start(config).await, Err(Error::InvalidConfig(_))));
    // A table that exists with another shape.
    let url = fresh_database().unwrap();
    client(&url).await.batch_execute("CREATE TABLE taken (id int)").await.unwrap();
    let error = PostgresSink::start(SinkConfig::new(&url, "taken").unwrap()).await.unwrap_err();
    assert!(matches!(error, Error::Query { .. }), "{error}");
}

#[tokio::test]
async fn the_ttl_sweeper_deletes_rows_older_than_the_ttl() {
    let url = fresh_database().unwrap();
    let mut config = SinkConfig::new(&url, "archived_events").unwrap();
    config.ttl = Some(Duration::from_secs(3600));
    config.sweep_interval = Some(Duration::from_millis(100));
    let sink = PostgresSink::start(config).await.unwrap();
    let context =
        HandlerContext { subscription: Name::new("subscription", "s").unwrap(), attempt: 1 };
    let now = inorder::now_micros();
    for (n, age_hours) in [(1, 0), (2, 2), (3, 30_000 * 24)] {
        let mut event = Event::builder("orders", "k", "x")
            .time_micros(now - age_hours * 3_600_000_000)
            .build()
            .unwrap();
        event.position = n;
        sink.handle(&event, &context).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count(&url, "SELECT count(*) FROM archived_events").await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "expired rows were not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&url, "SELECT position FROM archived_events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_delays_the_sink_the_log_keeps_accepting_and_nothing_is_lost() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap().unwrap());
    let url = cluster.create_database("sink").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SinkConfig::new(&url, "archived_events").unwrap();
    sink.batch_size = 20;
    let engine = start_engine(engine_config(dir.path(), &sink, Ordering::Fifo), sink).await;
    let publish = |range: std::ops::Range<usize>| {
        let engine = engine.clone();
        async move {
            let events = range.map(|n| order_event(&format!("k{}", n % 7), n)).collect();
            *engine.publish_batch(events).await.unwrap().last().unwrap()
        }
    };
    let first = publish(0..100).await;
    assert!(engine.wait_processed("orders", first, None, PATIENCE).await.unwrap());

    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop()).await.unwrap().unwrap();
    let last = publish(100..300).await; // the log keeps accepting
    let lag: u64 = engine.subscriptions().await.unwrap()[0].streams.iter().map(|s| s.lag).sum();
    assert!(lag > 0, "the lag shows the outage");

    let resuming = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || resuming.resume()).await.unwrap().unwrap();
    assert!(engine.wait_processed("orders", last, None, PATIENCE).await.unwrap());
    assert_eq!(count(&url, "SELECT count(*) FROM archived_events").await, 300);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_delays_the_sink_without_parking_anything() {
    let url = fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = SinkConfig::new(&url, "archived_events").unwrap();
    let engine = start_engine(engine_config(dir.path(), &sink, Ordering::Fifo), sink).await;
    let db = client(&url).await;
    db.batch_execute("ALTER TABLE archived_events RENAME TO moved_away").await.unwrap();
    let rollbacks = || {
        count(&url, "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()")
    };
    let before = rollbacks().await;
    let events = (0..20).map(|n| order_event(&format!("k{}", n % 3), n)).collect();
    let last = *engine.publish_batch(events).await.unwrap().last().unwrap();
    // Wait for the state we mean: the sink tried to write, and PostgreSQL refused, twice.
    let deadline = std::time::Instant::now() + PATIENCE;
    while rollbacks().await < before + 2 {
        assert!(std::time::Instant::now() < deadline, "the sink never tried to write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!engine.processed("orders", last).await.unwrap(), "nothing is written meanwhile");
    assert!(engine.parked("archive", None, 10).await.unwrap().is_empty(), "nothing is parked");

    db.batch_execute("ALTER TABLE moved_away RENAME TO archived_events").await.unwrap();
    assert!(engine.wait_processed("orders", last, None, PATIENCE).await.unwrap());
    assert_eq!(count(&url, "SELECT count(*) FROM archived_events").await, 20);
    assert!(engine.parked("archive", None, 10).await.unwrap().is_empty());
    engine.shutdown().await;
}
