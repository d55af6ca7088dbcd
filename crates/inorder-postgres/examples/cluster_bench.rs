//! `bench cluster`: handled events/s with 1, 2 and 3 cluster nodes (engines in this process, each
//! with its own connections) on one PostgreSQL, against one engine without cluster mode on the
//! same server in the same run — and the database transactions per handled event, read from
//! `pg_stat_database`, which is what coordination costs.
//!
//! Each run: a fresh database, the nodes started and the 16 partitions spread over them, then
//! `EVENTS` events over 1,000 keys published in batches of 100 and timed until every node's
//! status says the last one is processed. On a 2-core machine every node shares the same cores
//! with PostgreSQL, so the absolute figures say little; the ratios and transactions per event
//! say how the cost of coordination grows with nodes.
//!
//! ```sh
//! cargo run --release -p inorder-postgres --example cluster_bench -- --quick
//! ```

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)] // a report, not an input path

use std::{
    error::Error,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use inorder::{
    ClusterConfig, Engine, EngineConfig, Event, EventStatus, Name, Reply, SubscriptionConfig,
    TopicConfig, handler_fn, storage::Storage,
};
use inorder_postgres::{PgStorage, PgStorageOptions};
use inorder_testpg::{Cluster, Options};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const PARTITIONS: u16 = 16;
const KEYS: usize = 1_000;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let events: usize = if quick { 20_000 } else { 100_000 };
    let cluster = Cluster::start_with(Options { durable: true }, std::process::id())?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!("# cluster_bench: {events} events over {KEYS} keys, {PARTITIONS} partitions");
    let url = cluster.create_database("single")?;
    let (baseline, baseline_tx) = runtime.block_on(run(&url, 0, events))?;
    println!("# one engine without cluster mode: {baseline:.0} ev/s, {baseline_tx:.3} tx/event");
    for nodes in 1..=3 {
        let url = cluster.create_database(&format!("nodes{nodes}"))?;
        let (ours, tx) = runtime.block_on(run(&url, nodes, events))?;
        println!(
            "BENCH name=cluster.handled.nodes{nodes} unit=events/s ours={ours:.1} \
             baseline=one_engine_no_cluster baseline_value={baseline:.1} ratio={:.3} \
             tx_per_event={tx:.3} baseline_tx_per_event={baseline_tx:.3}",
            ours / baseline
        );
    }
    Ok(())
}

/// Handled events/s and database transactions per event with `nodes` cluster nodes (0: one
/// engine without cluster mode).
async fn run(url: &str, nodes: usize, events: usize) -> Result<(f64, f64)> {
    let handled = Arc::new(AtomicU64::new(0));
    let mut engines = Vec::new();
    for node in 0..nodes.max(1) {
        let mut config = EngineConfig::new("unused")
            .topic(TopicConfig::new("orders"))
            .subscription(SubscriptionConfig::new("billing", ["orders"]));
        if nodes > 0 {
            let mut cluster = ClusterConfig::new(format!("node-{node}"));
            cluster.partitions = PARTITIONS;
            cluster.lease_ttl = Duration::from_secs(3);
            config.cluster = Some(cluster);
        }
        let counter = Arc::clone(&handled);
        let handler = handler_fn(move |_event, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(Reply::default()) }
        });
        let storage = PgStorage::connect(url, PgStorageOptions::default()).await?;
        let engine = Engine::builder(config)
            .handler("billing", handler)
            .storage(Arc::new(storage) as Arc<dyn Storage>)
            .start()
            .await?;
        engines.push(engine);
    }
    if nodes > 1 {
        spread(&engines[0], nodes).await?;
    }
    let before = transactions(url).await?;
    let started = Instant::now();
    let mut last = 0;
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Event> = chunk
            .iter()
            .map(|i| {
                Event::builder("orders", format!("k{}", i % KEYS), "placed")
                    .data(format!("{{\"i\":{i}}}"), Some("application/json".into()))
                    .build()
                    .unwrap()
            })
            .collect();
        let engine = &engines[chunk[0] / 100 % engines.len()];
        last = *engine.publish_batch(batch).await?.last().unwrap_or(&last);
    }
    for engine in &engines {
        let status =
            engine.wait_event_status("orders", last, None, Duration::from_secs(600)).await?;
        assert_eq!(status, EventStatus::Processed);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for engine in engines {
        engine.shutdown().await;
    }
    // Backends flush their statistics when they exit: read after every connection closed (what
    // the nodes' start-up left unflushed is counted too: a few hundred transactions).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = transactions(url).await? - before;
    Ok((events as f64 / elapsed, spent as f64 / events as f64))
}

/// Waits until every node holds a partition.
async fn spread(engine: &Engine, nodes: usize) -> Result<()> {
    let coordination = engine.storage().coordination().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holders = coordination.holders(&"billing".parse::<Name>()?).await?;
        let distinct: std::collections::BTreeSet<_> = holders.iter().map(|h| &h.1).collect();
        if holders.len() == usize::from(PARTITIONS) && distinct.len() == nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("partitions never spread: {holders:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Committed and rolled-back transactions of the database so far.
async fn transactions(url: &str) -> Result<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // The statistics collector publishes with a delay: ask for a fresh snapshot.
    client.batch_execute("SELECT pg_stat_clear_snapshot()").await?;
    let row = client
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
             WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
