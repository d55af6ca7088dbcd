//! The retainer: one task per engine that applies every topic's [`Retention`] and publishes
//! what each topic holds.
//!
//! Every `retention_interval` it goes over the open topics with a policy (every
//! [`RETENTION_METRICS_EVERY`] rounds over all of them, for their gauges). For a topic with a
//! policy it works out what every subscription consumed (`until_consumed`: below the lowest durable watermark
//! and the lowest event still parked, of every subscription of the topic) and asks the storage
//! to purge ([`Storage::purge`]: limits and granularity are the storage's). For each topic it
//! goes over it sets the gauges `inorder_topic_events`, `inorder_topic_bytes` and
//! `inorder_topic_first_position`.
//!
//! A failure (the storage refused or is unreachable) is logged and counted
//! (`inorder_retention_errors_total`) and tried again at the next round: it never ends the task,
//! and deleting less than the policy allows is always safe. The task holds the engine weakly and
//! ends with it or at shutdown.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use inorder_log::Name;
use tokio::sync::watch;

use crate::{
    engine::{Engine, EngineInner},
    error::Result,
    limits::{RETENTION_METRICS_EVERY, RETENTION_PARKED_SCAN_MAX},
    retention::Retention,
    state::StreamId,
};

impl Engine {
    /// Starts the engine's retainer on a task of its own (the engine aborts it at shutdown).
    pub(crate) fn start_retainer(&self) {
        let inner = &self.inner;
        let task = tokio::spawn(run(
            Arc::downgrade(inner),
            inner.config.retention_interval,
            inner.shutdown.subscribe(),
        ));
        *inner.retainer.lock() = Some(task);
    }
}

async fn run(engine: Weak<EngineInner>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        let Some(inner) = engine.upgrade() else { return };
        sweep(&inner, round.is_multiple_of(RETENTION_METRICS_EVERY)).await;
        round = round.wrapping_add(1);
    }
}

/// One round over the open topics: every one with a policy, and (with `all`) the others for
/// their gauges — a storage call each, which a database of many topics need not pay every round.
async fn sweep(inner: &EngineInner, all: bool) {
    let topics: Vec<(Name, Retention)> = inner
        .topics
        .read()
        .values()
        .filter(|topic| topic.failure.is_none())
        .map(|topic| (topic.name.clone(), *topic.retention.read()))
        .filter(|(_, retention)| all || retention.deletes())
        .collect();
    for (topic, retention) in topics {
        if let Err(error) = keep(inner, &topic, &retention).await {
            tracing::warn!(%topic, %error, "retention: will try again");
            metrics::counter!("inorder_retention_errors_total", "topic" => topic.to_string())
                .increment(1);
        }
    }
}

async fn keep(inner: &EngineInner, topic: &Name, retention: &Retention) -> Result<()> {
    let storage = &inner.storage;
    let footprint = if retention.deletes() {
        let consumed =
            if retention.until_consumed { consumed_below(inner, topic).await? } else { None };
        let before = storage.footprint(topic).await?;
        let after = storage.purge(topic, &retention.request(consumed)).await?;
        let purged = after.first.saturating_sub(before.first);
        if purged > 0 {
            metrics::counter!("inorder_retention_purged_events_total", "topic" => topic.to_string())
                .increment(purged);
        }
        after
    } else {
        storage.footprint(topic).await?
    };
    let label = topic.to_string();
    #[allow(clippy::cast_precision_loss)] // gauges
    {
        metrics::gauge!("inorder_topic_events", "topic" => label.clone())
            .set(footprint.events() as f64);
        metrics::gauge!("inorder_topic_bytes", "topic" => label.clone())
            .set(footprint.bytes as f64);
        metrics::gauge!("inorder_topic_first_position", "topic" => label)
            .set(footprint.first as f64);
    }
    Ok(())
}

/// The position below which every subscription of `topic` resolved everything and keeps nothing
/// parked; `None` if no subscription consumes it.
async fn consumed_below(inner: &EngineInner, topic: &Name) -> Result<Option<u64>> {
    let mut lowest: Option<u64> = None;
    for subscription in inner.subscriptions().into_iter().filter(|s| s.consumes(topic)) {
        let id = StreamId::new(subscription.name.clone(), topic.clone());
        // Every stream of the subscription on the topic: one, or (cluster mode) one per
        // partition, mirrors of other nodes' partitions included.
        let statuses: Vec<_> = inner
            .streams
            .read()
            .iter()
            .filter(|(other, _)| other.subscription == id.subscription && other.topic == id.topic)
            .map(|(_, handle)| handle.status.borrow().clone())
            .collect();
        let (watermark, parked) = if statuses.is_empty() {
            let stored = inner.storage.stream_state(&id).await?;
            (stored.map_or(0, |state| state.watermark), 1)
        } else {
            let lowest = statuses.iter().map(|s| s.watermark).min().unwrap_or(0);
            (lowest, statuses.iter().map(|s| s.parked.max(u64::from(s.may_have_parked()))).sum())
        };
        let mut below = watermark.saturating_add(1);
        if parked > 0
            && let Some(first_parked) = first_parked(inner, &id).await?
        {
            below = below.min(first_parked);
        }
        lowest = Some(lowest.map_or(below, |seen| seen.min(below)));
    }
    Ok(lowest)
}

/// The first event of the stream still parked (not discarded): its retry needs it. Past
/// [`RETENTION_PARKED_SCAN_MAX`] discarded ones, the last one read (keeps more, never less).
async fn first_parked(inner: &EngineInner, id: &StreamId) -> Result<Option<u64>> {
    let after = Some((id.topic.clone(), 0));
    let parked = inner.storage.parked(&id.subscription, after, RETENTION_PARKED_SCAN_MAX).await?;
    let full = parked.len() == RETENTION_PARKED_SCAN_MAX;
    let mine: Vec<_> = parked.into_iter().take_while(|p| p.topic == id.topic).collect();
    if let Some(waiting) = mine.iter().find(|p| p.discarded_at_micros.is_none()) {
        return Ok(Some(waiting.position));
    }
    Ok(match mine.last() {
        Some(last) if full && mine.len() == RETENTION_PARKED_SCAN_MAX => Some(last.position),
        _ => None,
    })
}
