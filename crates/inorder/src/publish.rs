//! Publishing: appending events with dedupe by id, all or nothing per batch, and waiting for
//! an event's outcome.
//!
//! A publish validates the whole batch first (bad input changes nothing), then *claims* every
//! id (see [`crate::dedupe`]): an id another caller is publishing waits for that caller's
//! position, an id already indexed answers its stored position, and only the rest is appended —
//! in one append, so the batch is all or nothing. Positions come back once durable.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    codec,
    dedupe::{Claim, ClaimGuard},
    engine::Engine,
    error::{Error, Result, StorageError},
    event::Event,
    indexer::IndexJob,
    limits::{PUBLISH_BATCH_EVENTS_MAX, WAIT_MAX},
    outcome::Outcome,
    runtime::TopicRuntime,
    state::StreamId,
    status::EventStatus,
};

impl Engine {
    /// Appends an event; returns its position once durable. An id the topic already holds
    /// returns the earlier position without appending.
    ///
    /// # Errors
    /// Input errors ([`Error::UnknownTopic`], [`Error::UnknownAction`], [`Error::InvalidEvent`])
    /// change nothing; [`Error::Storage`] if the storage failed (its kind says whether to try
    /// again).
    pub async fn publish(&self, event: Event) -> Result<u64> {
        let positions = self.publish_batch(vec![event]).await?;
        Ok(positions[0])
    }

    /// Appends events of one topic, all or nothing; returns their positions in order.
    ///
    /// # Errors
    /// As [`Engine::publish`], and [`Error::InvalidBatch`] for an empty or mixed batch.
    pub async fn publish_batch(&self, events: Vec<Event>) -> Result<Vec<u64>> {
        let topic = self.check_batch(&events).await?;
        let storage = &self.inner.storage;
        let mut positions = vec![0u64; events.len()];
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match topic.dedupe.claim(&event.id) {
                Claim::Mine(guard) => mine.push((i, guard)),
                Claim::Theirs(position) => theirs.push((i, position)),
            }
        }
        for (i, mut position) in theirs {
            let found = position.wait_for(Option::is_some).await.map(|p| *p);
            positions[i] = found.ok().flatten().ok_or_else(|| {
                StorageError::transient(
                    "a concurrent publish of the same event id failed; publish again",
                )
            })?;
        }
        let ids: Vec<String> = mine.iter().map(|(i, _)| events[*i].id.clone()).collect();
        let known = if ids.is_empty() {
            Vec::new()
        } else {
            storage.event_positions(&topic.name, ids).await?
        };
        let mut append = Vec::new();
        for ((i, guard), known) in mine.into_iter().zip(known) {
            match known {
                Some(position) => {
                    positions[i] = position;
                    let id = guard.resolve(position);
                    topic.dedupe.release([id.as_str()]); // already indexed
                }
                None => append.push((i, guard)),
            }
        }
        self.append_claimed(&topic, &events, append, &mut positions, Append::Always).await?;
        Ok(positions)
    }

    /// Appends the events whose ids this caller claimed (`events[i]` for each claim), resolves
    /// the claims to their positions (written into `positions`) and queues the ids for indexing.
    ///
    /// The append runs in a task of its own that owns the claims: a publisher that stops
    /// waiting (a dropped future, an HTTP client that timed out) must not release claims whose
    /// append still lands, or its retry would be stored twice. The task releases them only once
    /// the outcome is known — resolved and indexed, or the append failed.
    pub(crate) async fn append_claimed(
        &self,
        topic: &Arc<TopicRuntime>,
        events: &[Event],
        append: Vec<(usize, ClaimGuard)>,
        positions: &mut [u64],
        condition: Append,
    ) -> Result<()> {
        if append.is_empty() {
            return Ok(());
        }
        let payloads: Vec<Bytes> = append.iter().map(|(i, _)| codec::encode(&events[*i])).collect();
        let new_ids: Option<Vec<String>> = (condition == Append::New
            && self.inner.storage.decides_ids())
        .then(|| append.iter().map(|(i, _)| events[*i].id.clone()).collect());
        let (indices, guards): (Vec<usize>, Vec<ClaimGuard>) = append.into_iter().unzip();
        let storage = Arc::clone(&self.inner.storage);
        let indexer = self.inner.indexer.clone();
        let topic = Arc::clone(topic);
        let appended = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let count = payloads.len() as u64;
            // Failed (or an id taken): the guards release their claims.
            let range = match new_ids {
                Some(ids) => storage.append_new(&topic.name, payloads, ids).await?,
                None => storage.append(&topic.name, payloads).await?,
            };
            publish_seconds().record(started.elapsed().as_secs_f64());
            topic.published.increment(count);
            let ids: Vec<(String, u64)> =
                guards.into_iter().zip(range.clone()).map(|(g, p)| (g.resolve(p), p)).collect();
            if let Err(mpsc::error::SendError(job)) = indexer.send(IndexJob { topic, ids }).await {
                job.release(); // stopping: the next start indexes these ids from the log
            }
            Ok::<_, Error>(range)
        });
        let range = appended
            .await
            .map_err(|e| Error::Internal { what: format!("the append task ended: {e}") })??;
        for (i, position) in indices.into_iter().zip(range) {
            positions[i] = position;
        }
        Ok(())
    }

    pub(crate) async fn check_batch(&self, events: &[Event]) -> Result<Arc<TopicRuntime>> {
        let Some(first) = events.first() else {
            return Err(Error::InvalidBatch { reason: "a batch needs at least one event".into() });
        };
        if events.len() > PUBLISH_BATCH_EVENTS_MAX {
            return Err(Error::InvalidBatch {
                reason: format!("{} events; at most {PUBLISH_BATCH_EVENTS_MAX}", events.len()),
            });
        }
        let mut ids = HashSet::with_capacity(events.len());
        for event in events {
            if event.topic != first.topic {
                return Err(Error::InvalidBatch {
                    reason: "all events of a batch must share a topic".into(),
                });
            }
            if !ids.insert(event.id.as_str()) {
                return Err(Error::InvalidBatch {
                    reason: format!("event id {:?} appears twice", event.id),
                });
            }
            event.validate()?;
        }
        let topic = self.topic(&first.topic).await?;
        topic.check_usable()?;
        for event in events {
            topic.check_action(&event.action)?;
        }
        Ok(topic)
    }

    /// Publishes `event` and waits for the outcome of its handler — for that very event —
    /// in the topic's only subscription.
    ///
    /// # Errors
    /// [`Error::AmbiguousWait`] if the topic has not exactly one subscription,
    /// [`Error::Timeout`], and the errors of [`Engine::publish`].
    pub async fn publish_and_wait(&self, event: Event, timeout: Duration) -> Result<Outcome> {
        let topic = event.topic.clone();
        let consumers: Vec<_> = self
            .inner
            .subscriptions()
            .into_iter()
            .filter(|s| s.consumes(&topic))
            .map(|s| s.name.clone())
            .collect();
        match consumers.as_slice() {
            [only] => self.publish_and_wait_on(event, only.as_str(), timeout).await,
            _ => Err(Error::AmbiguousWait { topic: topic.to_string(), count: consumers.len() }),
        }
    }

    /// Publishes `event` and waits for its outcome in `subscription`.
    ///
    /// # Errors
    /// As [`Engine::publish_and_wait`]; [`Error::UnknownSubscription`].
    pub async fn publish_and_wait_on(
        &self,
        event: Event,
        subscription: &str,
        timeout: Duration,
    ) -> Result<Outcome> {
        let runtime = self.subscription(subscription)?;
        let timeout = timeout.min(WAIT_MAX);
        let mut registration =
            self.inner.waiters.register(&runtime.name, &event.id).ok_or_else(|| {
                Error::InvalidBatch {
                    reason: format!("someone already waits for event {:?}", event.id),
                }
            })?;
        let topic = event.topic.clone();
        let key = event.key.clone();
        let position = self.publish(event).await?;
        let mut id = StreamId::new(runtime.name.clone(), topic);
        if let Some(cluster) = &self.inner.cluster {
            id.partition = Some(crate::cluster::partition_of(&key, cluster.config.partitions));
            if self.is_remote(&id) {
                // Another node handles the key: its reply stays there; its status is shared.
                drop(registration);
                let status = self
                    .wait_event_status(id.topic.as_str(), position, Some(subscription), timeout)
                    .await?;
                return match status {
                    EventStatus::Processed => Ok(Outcome::HandledElsewhere { position }),
                    EventStatus::Parked(parked) => {
                        Ok(Outcome::Parked { reason: parked.reason, error: parked.error })
                    }
                    EventStatus::Pending => Err(Error::Timeout { waited: timeout }),
                };
            }
        }
        if self.processed_by_stream(&id, position) {
            // Outcomes are delivered before the watermark is published: if it is processed and
            // nothing was delivered, it was handled before this wait (a deduplicated publish).
            return Ok(registration.delivered().unwrap_or(Outcome::Deduplicated { position }));
        }
        match tokio::time::timeout(timeout, registration.outcome()).await {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout { waited: timeout }),
        }
    }
}

/// Whether an append is conditional on its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Append {
    /// Whatever ids the topic holds (producer retries were sorted out by the claims).
    Always,
    /// Only if none of its ids is held: decided by the storage when it can
    /// ([`Storage::decides_ids`](crate::storage::Storage::decides_ids)), across processes.
    New,
}

/// `inorder_publish_seconds`, registered once per process (a lookup per append costs more than
/// recording). Tests install recorders per process too, so one handle serves them all.
fn publish_seconds() -> &'static metrics::Histogram {
    static HISTOGRAM: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    HISTOGRAM.get_or_init(|| metrics::histogram!("inorder_publish_seconds"))
}
