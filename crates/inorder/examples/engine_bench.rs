//! Engine benchmarks, each printed next to a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p inorder --example engine_bench -- [--quick]
//! ```
//!
//! - `engine.dispatch.fifo`: events already in the log over 10k keys, no-op handler, events/s
//!   from log to handler; baseline `bare_tokio`: the same records read and decoded, one router
//!   task sending by `hash(key) % W` to W worker tasks on bounded tokio channels, same handler.
//! - `engine.dispatch.actions`: the same with 3-action sequences published in reverse order.
//! - `engine.e2e.group`: publish → durable → handled with 64 concurrent publishers (fsync=group);
//!   baseline `raw_fdatasync`: a write+fdatasync loop at the batching the log achieved.
//! - `engine.e2e.group.topics16`, `.topics256`: the same spread over 16 and 256 topics, one
//!   subscription over all of them (how the per-append commit position scales with topics).
//!
//! `BENCH_ONLY_E2E=1` runs only the e2e figures; `BENCH_ONLY_FIFO=1` only the fifo dispatch, without
//! its baseline (to profile it).
//!
//! `--quick` uses 210k events for dispatch (the full run uses 1.02M: 102 rounds over the keys,
//! so every 3-action sequence completes).

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::unwrap_used)]

use std::{
    collections::hash_map::DefaultHasher,
    fs::OpenOptions,
    hash::{Hash, Hasher},
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use inorder::{
    Engine, EngineConfig, Event, Handler, HandlerContext, HandlerError, Ordering, Reply,
    SubscriptionConfig, TopicConfig, codec,
};

const KEYS: usize = 10_000;
const WORKERS: usize = 64;
const PUBLISHERS: usize = 64;
const KEYS_IN_FLIGHT: usize = 4096;
const ACTIONS: [&str; 3] = ["a1", "a2", "a3"];

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The no-op handler both sides call.
struct Noop;

#[async_trait::async_trait]
impl Handler for Noop {
    async fn handle(
        &self,
        event: &Event,
        _: &HandlerContext,
    ) -> std::result::Result<Reply, HandlerError> {
        std::hint::black_box(event.position);
        Ok(Reply::Null)
    }
}

fn report(name: &str, unit: &str, ours: f64, baseline: &str, baseline_value: f64) {
    println!(
        "BENCH name={name} unit={unit} ours={ours:.1} baseline={baseline} baseline_value={baseline_value:.1} ratio={:.3}",
        ours / baseline_value
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // A multiple of 3 rounds over the keys, so every 3-action sequence completes.
    let events = if quick { 210_000 } else { 1_020_000 };
    let root = std::env::var_os("INORDER_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(&root)?;
    println!("# engine_bench: dir={} events={events} keys={KEYS}", dir.path().display());

    if std::env::var_os("BENCH_ONLY_E2E").is_none() {
        dispatch_benches(dir.path(), events).await?;
    }
    if std::env::var_os("BENCH_ONLY_FIFO").is_some() {
        return Ok(()); // a profile of the dispatch alone
    }
    let run_for = Duration::from_secs(if quick { 3 } else { 10 });
    for topics in [1, 16, 256] {
        let name = if topics == 1 {
            "engine.e2e.group".to_owned()
        } else {
            format!("engine.e2e.group.topics{topics}")
        };
        let (ours, batch) = e2e(&dir.path().join(format!("e2e{topics}")), topics, run_for).await?;
        println!("# {name}: group commit put {batch:.1} events behind each fdatasync");
        let raw = raw_fdatasync(
            &dir.path().join(format!("raw{topics}")),
            batch.round().max(1.0) as usize,
            Duration::from_secs(3),
        )?;
        report(&name, "events/s", ours, "raw_fdatasync", raw);
    }
    Ok(())
}

async fn dispatch_benches(dir: &std::path::Path, events: usize) -> Result<()> {
    if std::env::var_os("BENCH_ONLY_FIFO").is_some() {
        let fifo = dir.join("fifo");
        fill(&fifo, events, false).await?;
        let ours = dispatch(&fifo, events, Ordering::Fifo).await?;
        println!("fifo only: {ours:.0} events/s");
        return Ok(());
    }
    let fifo = dir.join("fifo");
    fill(&fifo, events, false).await?;
    let baseline = bare_tokio(&fifo, events).await?;
    let ours = dispatch(&fifo, events, Ordering::Fifo).await?;
    report("engine.dispatch.fifo", "events/s", ours, "bare_tokio", baseline);

    let actions = dir.join("actions");
    fill(&actions, events, true).await?;
    let baseline = bare_tokio(&actions, events).await?;
    let ours = dispatch(&actions, events, Ordering::Actions).await?;
    report("engine.dispatch.actions", "events/s", ours, "bare_tokio", baseline);
    Ok(())
}

fn topic_config() -> TopicConfig {
    TopicConfig::new("bench").actions(ACTIONS).repeat(true)
}

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig::new(dir).topic(topic_config())
}

/// Publishes `events` over KEYS keys (no subscription running yet). With `reversed`, each key's
/// 3-action sequences are published a3, a2, a1.
async fn fill(dir: &std::path::Path, events: usize, reversed: bool) -> Result<()> {
    let engine = Engine::builder(config(dir)).start().await?;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..events {
        let key = i % KEYS;
        let round = i / KEYS;
        let action = if reversed { ACTIONS[2 - round % 3] } else { ACTIONS[round % 3] };
        batch.push(
            Event::builder("bench", format!("key-{key}"), action).id(format!("e{i}")).build()?,
        );
        if batch.len() == 1000 {
            engine.publish_batch(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        engine.publish_batch(batch).await?;
    }
    engine.shutdown().await;
    Ok(())
}

/// Starts a subscription over the filled topic and measures until every event is processed.
async fn dispatch(dir: &std::path::Path, events: usize, ordering: Ordering) -> Result<f64> {
    let subscription = SubscriptionConfig::new("bench", ["bench"])
        .ordering(ordering)
        .max_keys_in_flight(KEYS_IN_FLIGHT);
    // Timed from when the engine is open, like the baseline (which opens the storage first).
    let engine = Engine::builder(config(dir).subscription(subscription))
        .handler("bench", Noop)
        .start()
        .await?;
    let started = Instant::now();
    let done =
        engine.wait_processed("bench", events as u64, None, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    assert!(done, "not every event was processed");
    engine.shutdown().await;
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// The baseline: read and decode the same records, route by hash(key) % W to W tasks.
async fn bare_tokio(dir: &std::path::Path, events: usize) -> Result<f64> {
    let engine = Engine::builder(config(dir)).start().await?;
    let storage = Arc::clone(engine.storage());
    let topic: inorder::Name = "bench".parse()?;
    let started = Instant::now();
    let handled = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(WORKERS);
    let mut workers = Vec::with_capacity(WORKERS);
    let handler: Arc<dyn Handler> = Arc::new(Noop);
    for _ in 0..WORKERS {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Event>(64);
        let (handler, handled) = (Arc::clone(&handler), Arc::clone(&handled));
        workers.push(tokio::spawn(async move {
            let context = HandlerContext { subscription: "bench".parse().unwrap(), attempt: 1 };
            while let Some(event) = receiver.recv().await {
                handler.handle(&event, &context).await.unwrap();
                handled.fetch_add(1, AtomicOrdering::Relaxed);
            }
        }));
        senders.push(sender);
    }
    let mut reader = storage.reader(&topic, 1).await?;
    let mut read = 0;
    while read < events {
        for record in reader.read(1024).await? {
            let event = codec::decode(&topic, record.position, &record.payload)?;
            let mut hasher = DefaultHasher::new();
            event.key.hash(&mut hasher);
            let worker = (hasher.finish() % WORKERS as u64) as usize;
            senders[worker].send(event).await?;
            read += 1;
        }
    }
    drop(senders);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    assert_eq!(handled.load(AtomicOrdering::Relaxed), events as u64);
    engine.shutdown().await;
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// 64 publishers publishing one event at a time over `topics` topics; one subscription over all
/// of them handles them. Returns handled events/s and the logs' records per fdatasync.
async fn e2e(dir: &std::path::Path, topics: usize, run_for: Duration) -> Result<(f64, f64)> {
    let names: Vec<String> = if topics == 1 {
        vec!["bench".into()]
    } else {
        (0..topics).map(|t| format!("t{t}")).collect()
    };
    let subscription = SubscriptionConfig::new("bench", names.clone()).max_keys_in_flight(1024);
    let mut config = EngineConfig::new(dir).subscription(subscription);
    config.max_topics = topics.max(config.max_topics);
    for name in &names {
        config = config.topic(TopicConfig::new(name));
    }
    let engine = Engine::builder(config).handler("bench", Noop).start().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let names = Arc::new(names);
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let (engine, stop, published) = (engine.clone(), Arc::clone(&stop), Arc::clone(&published));
        let names = Arc::clone(&names);
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(AtomicOrdering::Relaxed) {
                let key = format!("key-{}", (publisher * 1000 + (i as usize % 1000)) % KEYS);
                let topic = &names[(publisher + i as usize) % names.len()];
                engine.publish(Event::builder(topic, key, "a1").build().unwrap()).await.unwrap();
                published.fetch_add(1, AtomicOrdering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(run_for).await;
    stop.store(true, AtomicOrdering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let (mut records, mut syncs) = (0u64, 0u64);
    for name in names.iter() {
        let topic = name.parse()?;
        let (_, last) = engine.storage().positions(&topic).await?;
        if last > 0 {
            assert!(engine.wait_processed(name, last, None, Duration::from_secs(120)).await?);
        }
        let stats = engine.storage().log_stats(&topic).await?.expect("the file log has stats");
        (records, syncs) = (records + stats.records, syncs + stats.data_syncs);
    }
    let elapsed = started.elapsed();
    let handled = published.load(AtomicOrdering::Relaxed);
    engine.shutdown().await;
    Ok((handled as f64 / elapsed.as_secs_f64(), records as f64 / syncs.max(1) as f64))
}

fn raw_fdatasync(path: &std::path::Path, batch: usize, run_for: Duration) -> Result<f64> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    let frame = vec![0x5Au8; 120 * batch];
    let started = Instant::now();
    let mut records = 0u64;
    while started.elapsed() < run_for {
        file.write_all(&frame)?;
        file.sync_data()?;
        records += batch as u64;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}
