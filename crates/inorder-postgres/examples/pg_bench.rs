//! PostgreSQL benchmarks, each against a baseline measured in the same run on the same server:
//!
//! - `pg.sink`: events (≈150 B of JSON data) from the log into a table through the batch sink,
//!   rows/s, against `psql \copy … (format binary)` of the same rows into an identical table.
//! - `pg.append`: Postgres-backend appends with 64 concurrent publishers, appends/s, against
//!   `pgbench` running single-row `INSERT` transactions at the same concurrency.
//! - `pg.append.topics16`: the same spread over 16 topics (appends of different topics share the
//!   commit clock's row lock: what that costs).
//!
//! `BENCH_ONLY_APPEND=1` runs only the append figures.
//!
//! The server is a throw-away cluster with PostgreSQL's durability settings on (fsync,
//! synchronous commit), started from the system's binaries (`inorder-testpg`).
//!
//! ```sh
//! cargo run --release -p inorder-postgres --example pg_bench -- --quick
//! ```

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)] // a report, not an input path

use std::{
    error::Error,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use inorder::{
    Engine, EngineConfig, Event, FsyncPolicy, Name, Ordering, SubscriptionConfig, TopicConfig,
    storage::Storage,
};
use inorder_postgres::{PgStorage, PgStorageOptions, PostgresSink, SinkConfig, sink::COLUMNS};
use inorder_testpg::{Cluster, Options};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const PUBLISHERS: usize = 64;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let events: usize = if quick { 300_000 } else { 1_000_000 };
    let append_for = if quick { Duration::from_secs(4) } else { Duration::from_secs(10) };
    let cluster = Cluster::start_with(Options { durable: true }, std::process::id())?;
    let url = cluster.create_database("bench")?;
    let dir = tempfile::tempdir()?;
    println!("# pg_bench: {events} events, server {}", inorder_postgres::redact_url(&url));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    if std::env::var_os("BENCH_ONLY_APPEND").is_none() {
        let (ours, file) = runtime.block_on(sink(&cluster, &url, dir.path(), events))?;
        let baseline = copy_baseline(&cluster, &url, &file, events)?;
        report("pg.sink", "rows/s", ours, "psql_copy_binary", baseline);
    }

    let baseline = pgbench(&cluster, &url, dir.path(), append_for)?;
    let ours = runtime.block_on(append(&url, 1, append_for))?;
    report("pg.append", "appends/s", ours, "pgbench_insert", baseline);
    let ours = runtime.block_on(append(&url, 16, append_for))?;
    report("pg.append.topics16", "appends/s", ours, "pgbench_insert", baseline);
    Ok(())
}

fn report(name: &str, unit: &str, ours: f64, baseline: &str, baseline_value: f64) {
    println!(
        "BENCH name={name} unit={unit} ours={ours:.1} baseline={baseline} \
         baseline_value={baseline_value:.1} ratio={:.3}",
        ours / baseline_value
    );
}

/// Publishes `events` (untimed), then times the sink draining them into `archived_events`.
/// Returns rows/s and a binary COPY file of the rows for the baseline.
async fn sink(
    cluster: &Cluster,
    url: &str,
    dir: &Path,
    events: usize,
) -> Result<(f64, std::path::PathBuf)> {
    let data_dir = dir.join("engine");
    let mut config = EngineConfig::new(&data_dir).topic(TopicConfig::new("orders"));
    config.fsync = FsyncPolicy::Never;
    let engine = Engine::builder(config.clone()).start().await?;
    let note = "n".repeat(100);
    let mut last = 0;
    for chunk in 0..events / 1000 {
        let batch: Vec<Event> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                Event::builder("orders", format!("customer-{}", n % 10_000), "order.placed")
                    .json(&serde_json::json!({"n": n, "amount": 1999, "note": note}))
                    .build()
                    .unwrap()
            })
            .collect();
        last = *engine.publish_batch(batch).await?.last().unwrap_or(&0);
    }
    engine.shutdown().await;

    let mut sink = SinkConfig::new(url, "archived_events")?;
    sink.batch_size = 5000;
    sink.workers = 2;
    let subscription = SubscriptionConfig::new("archive", ["orders"])
        .ordering(Ordering::None)
        .max_keys_in_flight(sink.keys_in_flight());
    let config = config.subscription(subscription);
    let start = Instant::now();
    let sink = PostgresSink::start(sink).await?;
    let engine = Engine::builder(config).handler("archive", sink).start().await?;
    let done = engine.wait_processed("orders", last, None, Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    assert!(done, "the sink did not finish");
    engine.shutdown().await;
    let rows = events as f64 / elapsed.as_secs_f64();
    println!("# sink: {events} rows in {elapsed:.2?}");

    let file = dir.join("rows.bin");
    psql(
        cluster,
        url,
        &format!(
            "\\copy (SELECT {COLUMNS} FROM archived_events) TO '{}' (FORMAT binary)",
            file.display()
        ),
    )?;
    Ok((rows, file))
}

/// `\copy` of the same rows into a table with the same columns and indexes, timed.
fn copy_baseline(cluster: &Cluster, url: &str, file: &Path, rows: usize) -> Result<f64> {
    let ddl = "CREATE TABLE copy_baseline (LIKE archived_events INCLUDING ALL)";
    psql(cluster, url, ddl)?;
    let copy =
        format!("\\copy copy_baseline ({COLUMNS}) FROM '{}' (FORMAT binary)", file.display());
    let start = Instant::now();
    psql(cluster, url, &copy)?;
    let elapsed = start.elapsed();
    println!("# psql \\copy binary: {rows} rows in {elapsed:.2?}");
    Ok(rows as f64 / elapsed.as_secs_f64())
}

/// 64 tasks appending one 200-byte event at a time to the Postgres backend.
async fn append(url: &str, topics: usize, run_for: Duration) -> Result<f64> {
    let storage = Arc::new(PgStorage::connect(url, PgStorageOptions::default()).await?);
    let mut names = Vec::new();
    for t in 0..topics {
        let topic = Name::new("topic", &format!("appends{topics}-{t}"))?;
        storage.create_topic(&topic).await?;
        names.push(topic);
    }
    let payload = Bytes::from(vec![b'x'; 200]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let topic = names[publisher % topics].clone();
        let (storage, payload) = (Arc::clone(&storage), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut appended = 0u64;
            while start.elapsed() < run_for {
                storage.append(&topic, vec![payload.clone()]).await.unwrap();
                appended += 1;
            }
            appended
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    let elapsed = start.elapsed();
    storage.close().await;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// pgbench: single-row INSERT transactions from 64 clients.
fn pgbench(cluster: &Cluster, url: &str, dir: &Path, run_for: Duration) -> Result<f64> {
    psql(
        cluster,
        url,
        "CREATE TABLE pgbench_events (id bigserial PRIMARY KEY, topic text, payload bytea)",
    )?;
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO pgbench_events (topic, payload) VALUES ('appends', convert_to(repeat('x', 200), 'UTF8'));\n",
    )?;
    let out = Command::new(cluster.bin_dir().join("pgbench"))
        .args(["-n", "-c", &PUBLISHERS.to_string(), "-j", "2", "-T"])
        .arg(run_for.as_secs().to_string())
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| {
            format!("pgbench printed no tps: {text}{}", String::from_utf8_lossy(&out.stderr))
        })?;
    Ok(tps)
}

/// `psql -c command` with the cluster's own client.
fn psql(cluster: &Cluster, url: &str, command: &str) -> Result<()> {
    let out = Command::new(cluster.bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", command])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned().into())
    }
}
