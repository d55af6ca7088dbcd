//! Process status: "has this been processed yet?" — by position, and by entity and time.
//!
//! **By position**, an event has one of three answers ([`EventStatus`]):
//!
//! | what the subscriptions did | answer |
//! |---|---|
//! | every one handled it successfully | `Processed` |
//! | one has not reached it, is handling or retrying it, or holds it behind a parked event of its key (`on_failure = block`) | `Pending` |
//! | one parked it (failed, duplicate, timeout, …), or an operator discarded it | `Parked`, with the record |
//!
//! The answers come from the **watermark**, a contiguous prefix: `Processed` for position `p`
//! also says that every earlier event of the topic is resolved (handled or parked) — what a
//! client waiting for "my write is in the read model" and a test waiting for "everything so far"
//! both need. So a key waiting for a missing action holds back the answers for later positions
//! of its topic until it is resolved or its `sequence_timeout` parks it; its progress above the
//! watermark is visible in [`StreamStatus::done_above`]. A parked event is never called
//! processed: the watermark moves past it (so later events are not held back), but a stream that
//! ever parked looks its positions up in the parked records.
//!
//! **By entity and time**, the question is "is everything of `topic` (or `topic/key`) up to
//! event time T handled?". For a key: the latest event time its handler succeeded on (keys go
//! in order). For a topic: the latest event time handled *at or below the watermark* — never
//! the time of a fast later event while an earlier one is still running. Event times are the
//! producers': the answer assumes they grow with position; a back-dated event appended later is
//! covered by its position, not by time.
//!
//! Every answer comes from durable progress: a stream publishes its watermark and time mark only
//! after the checkpoint that recorded them, so a status once true stays true across a restart.
//! Waiting is event-driven: waiters sleep on the streams' status watches, no polling loop.

use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::watch;

use crate::{
    engine::Engine,
    error::{Error, Result},
    limits::WAIT_MAX,
    state::{ParkReason, ParkedEvent, StreamId},
    stream::handle::{StreamHealth, StreamStatus},
};

/// A change of one of the watches a status wait sleeps on.
type Change<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), watch::error::RecvError>> + Send + 'a>,
>;

/// Whether an event has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    /// Every subscription asked about handled it successfully.
    Processed,
    /// Not yet: not appended or not reached, being handled or retried, or waiting behind a
    /// parked event of its key (it runs once an operator retries or discards that one).
    Pending,
    /// A subscription parked it, or an operator discarded it: it will not be handled unless an
    /// operator retries it. The record says why.
    Parked(ParkedEvent),
}

/// What has been processed of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessedMark {
    /// The last position processed (for a topic: the lowest watermark of its subscriptions).
    pub position: u64,
    /// The latest event time processed, microseconds since the Unix epoch.
    pub time_micros: i64,
}

/// The subject of an entity query: `topic` or `topic/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entity {
    Topic(String),
    Key(String, String),
}

impl Entity {
    fn parse(entity: &str) -> Self {
        match entity.split_once('/') {
            Some((topic, key)) => Self::Key(topic.to_owned(), key.to_owned()),
            None => Self::Topic(entity.to_owned()),
        }
    }

    fn topic(&self) -> &str {
        match self {
            Self::Topic(topic) | Self::Key(topic, _) => topic,
        }
    }
}

impl Engine {
    /// The status watches of the streams of `topic` (narrowed to one subscription if given).
    fn status_watches(
        &self,
        topic: &str,
        subscription: Option<&str>,
    ) -> Result<Vec<(StreamId, watch::Receiver<StreamStatus>)>> {
        let topic = self.existing_topic(topic)?;
        let only =
            subscription.map(|s| self.subscription(s).map(|s| s.name.clone())).transpose()?;
        let streams = self.inner.streams.read();
        let watches: Vec<_> = streams
            .iter()
            .filter(|(id, _)| {
                id.topic == topic.name && only.as_ref().is_none_or(|s| *s == id.subscription)
            })
            .map(|(id, handle)| (id.clone(), handle.status.clone()))
            .collect();
        if let Some(subscription) = only
            && watches.is_empty()
        {
            return Err(Error::UnknownSubscription {
                subscription: format!("{subscription} (it does not consume {})", topic.name),
            });
        }
        Ok(watches)
    }

    /// [`Error::Stopped`] once the engine is shutting down.
    fn check_running(&self) -> Result<()> {
        if *self.inner.shutdown.borrow() { Err(Error::Stopped) } else { Ok(()) }
    }

    /// Whether `id` is a mirror of a partition another node holds.
    pub(crate) fn is_remote(&self, id: &StreamId) -> bool {
        let streams = self.inner.streams.read();
        streams.get(id).is_some_and(|s| s.status.borrow().health == StreamHealth::Remote)
    }

    pub(crate) fn processed_by_stream(&self, id: &StreamId, position: u64) -> bool {
        let streams = self.inner.streams.read();
        streams.get(id).is_some_and(|s| s.status.borrow().watermark >= position)
    }

    /// Whether every subscription of `topic` handled `position` successfully (see
    /// [`Engine::event_status`]: a parked event is not processed).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], storage errors.
    pub async fn processed(&self, topic: &str, position: u64) -> Result<bool> {
        Ok(self.event_status(topic, position, None).await? == EventStatus::Processed)
    }

    /// Whether `subscription` handled `position` of `topic` successfully.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`], storage errors.
    pub async fn processed_by(
        &self,
        subscription: &str,
        topic: &str,
        position: u64,
    ) -> Result<bool> {
        Ok(self.event_status(topic, position, Some(subscription)).await? == EventStatus::Processed)
    }

    /// What became of `position` of `topic` in every subscription (or in `subscription`).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`], storage errors, and
    /// [`Error::StreamFailed`] when a failed stream has not resolved the position (it never
    /// will until repaired), [`Error::Purged`] when retention deleted it.
    pub async fn event_status(
        &self,
        topic: &str,
        position: u64,
        subscription: Option<&str>,
    ) -> Result<EventStatus> {
        let watches = self.status_watches(topic, subscription)?;
        self.status_of(topic, position, &watches).await
    }

    async fn status_of(
        &self,
        topic: &str,
        position: u64,
        watches: &[(StreamId, watch::Receiver<StreamStatus>)],
    ) -> Result<EventStatus> {
        let (first, last) = self.inner.storage.positions(&self.existing_topic(topic)?.name).await?;
        if position > last {
            return Ok(EventStatus::Pending);
        }
        if position > 0 && position < first {
            // Deleted by retention: whether it was handled, or skipped by a subscription that
            // fell behind, is no longer known. Never "processed" for an event never handled.
            return Err(Error::Purged {
                topic: topic.to_owned(),
                requested: position,
                first_available: first,
            });
        }
        let mut answer = EventStatus::Processed;
        for (id, watch) in watches {
            let (resolved, may_have_parked, failed) = {
                let status = watch.borrow();
                let failed = match &status.health {
                    StreamHealth::Failed { error } => Some(error.to_string()),
                    _ => None,
                };
                (status.watermark >= position, status.may_have_parked(), failed)
            };
            if let (false, Some(error)) = (resolved, failed) {
                // It will not get there: say so instead of "not yet" forever.
                return Err(Error::StreamFailed { stream: id.to_string(), error });
            }
            if !resolved {
                answer = EventStatus::Pending;
                continue;
            }
            if !may_have_parked {
                continue;
            }
            match self.inner.storage.parked_event(id, position).await? {
                Some(parked)
                    if parked.reason == ParkReason::Blocked
                        && parked.discarded_at_micros.is_none() =>
                {
                    answer = EventStatus::Pending;
                }
                Some(parked) => return Ok(EventStatus::Parked(parked)),
                None => {}
            }
        }
        Ok(answer)
    }

    /// Waits until `position` of `topic` is processed (by `subscription`, or by all), at most
    /// `timeout`; returns whether it is. A parked event ends the wait early (`false`).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`], storage errors.
    pub async fn wait_processed(
        &self,
        topic: &str,
        position: u64,
        subscription: Option<&str>,
        timeout: Duration,
    ) -> Result<bool> {
        let status = self.wait_event_status(topic, position, subscription, timeout).await?;
        Ok(status == EventStatus::Processed)
    }

    /// Waits until `position` of `topic` is no longer pending (processed, or parked), at most
    /// `timeout` (capped at [`WAIT_MAX`]); returns the status then.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`], storage errors.
    pub async fn wait_event_status(
        &self,
        topic: &str,
        position: u64,
        subscription: Option<&str>,
        timeout: Duration,
    ) -> Result<EventStatus> {
        let deadline = tokio::time::Instant::now() + timeout.min(WAIT_MAX);
        let name = self.existing_topic(topic)?.name.clone();
        let mut watches = self.status_watches(topic, subscription)?;
        let mut appended = self.inner.storage.watch(&name).await?;
        loop {
            appended.mark_unchanged();
            for (_, watch) in &mut watches {
                watch.mark_unchanged();
            }
            let status = self.status_of(topic, position, &watches).await?;
            if status != EventStatus::Pending {
                return Ok(status);
            }
            let mut changes: Vec<Change<'_>> =
                watches.iter_mut().map(|(_, w)| Box::pin(w.changed()) as Change<'_>).collect();
            changes.push(Box::pin(appended.changed()));
            let replaced = match tokio::time::timeout_at(deadline, select_all(changes)).await {
                Ok((Ok(()), _, _)) => false,
                Ok((Err(_), _, _)) => true,
                Err(_) => return Ok(EventStatus::Pending),
            };
            if replaced {
                // A stream was replaced (a partition moved between nodes, a subscription
                // changed): watch the ones running now.
                self.check_running()?;
                watches = self.status_watches(topic, subscription)?;
            }
        }
    }

    /// What every subscription of the entity's topic has processed of `entity` (`topic` or
    /// `topic/key`): the last position and the latest event time. `None` if some subscription
    /// has processed nothing of it.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], storage errors.
    pub async fn last_processed(&self, entity: &str) -> Result<Option<ProcessedMark>> {
        let entity = Entity::parse(entity);
        let watches = self.status_watches(entity.topic(), None)?;
        let mut lowest: Option<ProcessedMark> = None;
        for (id, watch) in &watches {
            let mark = match &entity {
                Entity::Topic(_) => {
                    let status = watch.borrow();
                    (status.watermark > 0).then_some(ProcessedMark {
                        position: status.watermark,
                        time_micros: status.max_time_micros,
                    })
                }
                Entity::Key(_, key) => {
                    self.inner.storage.key_state(id, key).await?.map(|state| ProcessedMark {
                        position: state.last_position,
                        time_micros: state.last_time_micros,
                    })
                }
            };
            let Some(mark) = mark else { return Ok(None) };
            lowest = Some(match lowest {
                None => mark,
                Some(low) => ProcessedMark {
                    position: low.position.min(mark.position),
                    time_micros: low.time_micros.min(mark.time_micros),
                },
            });
        }
        Ok(lowest)
    }

    /// Whether every subscription has processed an event of `entity` with event time
    /// `time_micros` or later.
    ///
    /// # Errors
    /// As [`Engine::last_processed`].
    pub async fn processed_entity(&self, entity: &str, time_micros: i64) -> Result<bool> {
        Ok(self.last_processed(entity).await?.is_some_and(|mark| mark.time_micros >= time_micros))
    }

    /// Waits until [`Engine::processed_entity`] holds, at most `timeout`; returns whether it does.
    ///
    /// # Errors
    /// As [`Engine::last_processed`].
    pub async fn wait_processed_entity(
        &self,
        entity: &str,
        time_micros: i64,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout.min(WAIT_MAX);
        let mut watches: Vec<_> = self
            .status_watches(Entity::parse(entity).topic(), None)?
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        loop {
            for watch in &mut watches {
                watch.mark_unchanged();
            }
            if self.processed_entity(entity, time_micros).await? {
                return Ok(true);
            }
            if watches.is_empty() {
                return Ok(false);
            }
            let changed = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            let replaced = match tokio::time::timeout_at(deadline, changed).await {
                Ok((Ok(()), _, _)) => false,
                Ok((Err(_), _, _)) => true,
                Err(_) => return Ok(false),
            };
            if replaced {
                self.check_running()?;
                watches = self
                    .status_watches(Entity::parse(entity).topic(), None)?
                    .into_iter()
                    .map(|(_, w)| w)
                    .collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entity_is_a_topic_or_a_topic_and_a_key() {
        assert_eq!(Entity::parse("orders"), Entity::Topic("orders".into()));
        assert_eq!(
            Entity::parse("orders/o-1/line-2"),
            Entity::Key("orders".into(), "o-1/line-2".into())
        );
    }
}
