//! CQRS benchmarks, each beside a baseline measured in the same run:
//!
//! - `cqrs.command`: commands through a `CommandBus` (64 concurrent writers on distinct
//!   aggregates: decide, `publish_new` at the expected version, apply) vs the bare engine
//!   publishing one event per call from 64 tasks (same fsync policy).
//! - `cqrs.load`: cold loads of 1000-event streams with snapshots every 100 events vs the same
//!   loads replaying every event (snapshots off).
//!
//! `cargo run --release -p inorder-cqrs --example cqrs_bench -- [--quick]`

use std::{
    path::Path,
    time::{Duration, Instant},
};

use inorder::{Engine, EngineConfig, Event, TopicConfig};
use inorder_cqrs::{Aggregate, BusOptions, CommandBus, DomainEvent};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WRITERS: usize = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Added {
    amount: u64,
}

impl DomainEvent for Added {
    fn action(&self) -> &'static str {
        "counter.added"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TOPIC: &'static str = "counters";
    type Command = u64;
    type Event = Added;
    type Error = Never;

    fn handle(&self, amount: &u64) -> Result<Vec<Added>, Never> {
        Ok(vec![Added { amount: *amount }])
    }

    fn apply(&mut self, event: &Added) {
        self.total += event.amount;
    }
}

fn report(name: &str, unit: &str, ours: f64, baseline: &str, baseline_value: f64) {
    println!(
        "BENCH name={name} unit={unit} ours={ours:.1} baseline={baseline} baseline_value={baseline_value:.1} ratio={:.3}",
        ours / baseline_value
    );
}

async fn engine(dir: &Path) -> Result<Engine, BoxError> {
    let mut config = EngineConfig::new(dir).topic(TopicConfig::new("bare"));
    for topic in inorder_cqrs::aggregate::topics::<Counter>() {
        config = config.topic(topic);
    }
    Ok(Engine::builder(config).start().await?)
}

/// Runs `op(writer, i)` from `WRITERS` tasks for `period`; returns operations per second.
async fn throughput<F, Fut>(period: Duration, op: F) -> Result<f64, BoxError>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while started.elapsed() < period {
                    op(writer, done).await?;
                    done += 1;
                }
                Ok::<_, BoxError>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let period = Duration::from_secs(if quick { 3 } else { 10 });
    let dir = tempfile::tempdir()?;
    let engine = engine(dir.path()).await?;

    let bare = engine.clone();
    let baseline = throughput(period, move |writer, i| {
        let engine = bare.clone();
        async move {
            let event = Event::builder("bare", format!("k-{writer}"), "counter.added").build()?;
            engine.publish(event).await?;
            let _ = i;
            Ok(())
        }
    })
    .await?;
    let bus = CommandBus::<Counter>::new(engine.clone(), BusOptions::default())?;
    let ours = throughput(period, move |writer, _| {
        let bus = bus.clone();
        async move {
            bus.execute(&format!("c-{writer}"), 1).await.map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await?;
    report("cqrs.command", "cmd/s", ours, "engine_publish", baseline);

    // Cold loads of 1000-event streams.
    let streams = if quick { 4 } else { 16 };
    let writer = CommandBus::<Counter>::new(engine.clone(), BusOptions::default())?;
    for s in 0..streams {
        for _ in 0..1000 {
            writer.execute(&format!("long-{s}"), 1).await.map_err(|e| e.to_string())?;
        }
    }
    let mut rates = Vec::new();
    for snapshot_every in [100, 0] {
        let started = Instant::now();
        let mut loads = 0u32;
        while started.elapsed() < period / 2 {
            let cold = CommandBus::<Counter>::new(
                engine.clone(),
                BusOptions { snapshot_every, ..BusOptions::default() },
            )?;
            let loaded = cold.state(&format!("long-{}", loads % streams)).await?;
            assert_eq!(loaded.version, 1000);
            loads += 1;
        }
        rates.push(f64::from(loads) / started.elapsed().as_secs_f64());
    }
    report("cqrs.load.1000", "loads/s", rates[0], "replay_all_events", rates[1]);
    engine.shutdown().await;
    Ok(())
}
