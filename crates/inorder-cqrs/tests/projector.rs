//! Projections: a rebuild resets the read model, replays every event, and reports its progress
//! from nothing to the total along the way.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, sync::Arc};

use common::PATIENCE;
use inorder::{Engine, EngineConfig, Event, HandlerError, TopicConfig};
use inorder_cqrs::{Error, Projection, Projector, RebuildProgress, StartMode, projector};
use tokio::sync::{Semaphore, mpsc};

const LEDGER_EVENTS: u64 = 250;
/// Events the rebuild is let through before the test looks at the reports in between.
const FIRST_BATCH_EVENTS: u64 = 100;

/// Counts the events it projected; each waits for a permit of its gate.
struct Counter {
    count: parking_lot::Mutex<u64>,
    gate: Semaphore,
}

impl Counter {
    fn gated(permits: usize) -> Arc<Self> {
        Arc::new(Self { count: parking_lot::Mutex::new(0), gate: Semaphore::new(permits) })
    }
}

#[async_trait::async_trait]
impl Projector for Counter {
    async fn project(&self, _: &Event) -> Result<(), HandlerError> {
        self.gate.acquire().await.map_err(|_| HandlerError::retry("gate closed"))?.forget();
        *self.count.lock() += 1;
        Ok(())
    }

    async fn reset(&self) -> Result<(), HandlerError> {
        *self.count.lock() = 0;
        Ok(())
    }
}

async fn start(dir: &Path, counter: &Arc<Counter>, mode: StartMode) -> Engine {
    let projection = Projection::new("ledger_count", ["ledger"], Arc::clone(counter));
    let config = EngineConfig::new(dir)
        .topic(TopicConfig::new("ledger"))
        .subscription(projection.subscription());
    projection.install(Engine::builder(config), mode).start().await.unwrap()
}

/// Waits for the next report, failing the test if none comes.
async fn next(reports: &mut mpsc::UnboundedReceiver<RebuildProgress>) -> Option<RebuildProgress> {
    tokio::time::timeout(PATIENCE, reports.recv()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reports_its_progress_from_nothing_to_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let counter = Counter::gated(Semaphore::MAX_PERMITS);
    let engine = start(dir.path(), &counter, StartMode::FromCheckpoint).await;
    // One key: the projection handles the ledger strictly in order, so its progress is exactly
    // the number of events it was let through.
    let ledger = (0..LEDGER_EVENTS)
        .map(|_| Event::builder("ledger", "book", "ledger.entry").build().unwrap())
        .collect();
    let last = *engine.publish_batch(ledger).await.unwrap().last().unwrap();
    assert!(engine.wait_processed("ledger", last, Some("ledger_count"), PATIENCE).await.unwrap());
    assert_eq!(*counter.count.lock(), LEDGER_EVENTS);
    engine.shutdown().await;

    let rebuilt = Counter::gated(0); // closed: the rebuild waits for the test
    let engine = start(dir.path(), &rebuilt, StartMode::Rebuild).await;
    let (report, mut reports) = mpsc::unbounded_channel();
    let follower = tokio::spawn({
        let engine = engine.clone();
        async move {
            projector::follow_rebuild(&engine, "ledger_count", |progress| {
                report.send(progress).unwrap();
            })
            .await
        }
    });
    let at_start = next(&mut reports).await;
    assert_eq!(at_start, Some(RebuildProgress { handled: 0, total: LEDGER_EVENTS }));
    // A report without progress (while the gate is closed, or at any time) would repeat a
    // `handled` figure: the strictly increasing check at the end catches it.
    rebuilt.gate.add_permits(usize::try_from(FIRST_BATCH_EVENTS).unwrap());
    let mut seen = vec![at_start.unwrap()];
    while seen.last().unwrap().handled < FIRST_BATCH_EVENTS {
        seen.push(next(&mut reports).await.unwrap());
    }
    assert_eq!(
        seen.last(),
        Some(&RebuildProgress { handled: FIRST_BATCH_EVENTS, total: LEDGER_EVENTS }),
        "the gate let exactly {FIRST_BATCH_EVENTS} events through: {seen:?}"
    );
    assert!(!seen.last().unwrap().is_done());

    rebuilt.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let replayed = tokio::time::timeout(PATIENCE, follower).await.unwrap().unwrap().unwrap();
    assert_eq!(replayed, LEDGER_EVENTS);
    while let Some(progress) = reports.recv().await {
        seen.push(progress);
    }
    let done = RebuildProgress { handled: LEDGER_EVENTS, total: LEDGER_EVENTS };
    assert_eq!(seen.last(), Some(&done), "the last report is done: {seen:?}");
    assert!(done.is_done());
    assert!(
        seen.windows(2).all(|pair| pair[0].handled < pair[1].handled),
        "each report moved forward: {seen:?}"
    );
    assert!(seen.iter().all(|progress| progress.total == LEDGER_EVENTS), "{seen:?}");
    assert_eq!(
        *rebuilt.count.lock(),
        LEDGER_EVENTS,
        "the read model was rebuilt from the first event"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_an_unknown_projection_is_a_configuration_error_and_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), &Counter::gated(0), StartMode::FromCheckpoint).await;
    let mut reports = Vec::new();
    let refused = tokio::time::timeout(
        PATIENCE,
        projector::follow_rebuild(&engine, "no_such_projection", |progress| reports.push(progress)),
    )
    .await
    .unwrap();
    assert!(
        matches!(&refused, Err(Error::Config(reason)) if reason.contains("no_such_projection")),
        "{refused:?}"
    );
    assert!(reports.is_empty());
    engine.shutdown().await;
}
