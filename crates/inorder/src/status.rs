//! Process status: "has this been processed yet?" — by position, by entity and time — and the
//! engine's topics and subscriptions at a glance.
//!
//! Every answer comes from durable progress: a stream publishes its watermark and latest event
//! time only after the checkpoint that recorded them, so a status once true stays true across a
//! restart. Event times are a monotonic maximum (EventStreamex overwrote them with older values).
//! Waiting is event-driven: waiters sleep on the streams' status watches, no polling loop.

use std::time::Duration;

use futures_util::future::select_all;
use inorder_log::Name;
use tokio::sync::watch;

use crate::{
    config::Ordering,
    engine::Engine,
    error::{Error, Result},
    limits::WAIT_MAX,
    state::StreamId,
    stream::StreamStatus,
};

/// What has been processed of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessedMark {
    /// The last position processed (for a topic: the lowest watermark of its subscriptions).
    pub position: u64,
    /// The latest event time processed, microseconds since the Unix epoch.
    pub time_micros: i64,
}

/// A topic and its extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// First position still stored.
    pub first_position: u64,
    /// Last durable position.
    pub last_position: u64,
    /// Its actions contract (empty: any action).
    pub actions: Vec<String>,
    /// Subscriptions consuming it.
    pub subscriptions: Vec<String>,
}

/// One stream of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The topic.
    pub topic: String,
    /// Its status.
    pub status: StreamStatus,
    /// The topic's last position.
    pub last_position: u64,
    /// Events not yet processed (`last_position - watermark`).
    pub lag: u64,
}

/// A subscription at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    /// Name.
    pub name: String,
    /// Ordering.
    pub ordering: Ordering,
    /// One entry per topic consumed.
    pub streams: Vec<StreamInfo>,
    /// Successful handler calls since start.
    pub handled: u64,
    /// Failed handler calls since start.
    pub failed_attempts: u64,
    /// Events parked since start.
    pub parked: u64,
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
        let streams = self.inner.streams.read().unwrap_or_else(|e| e.into_inner());
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

    pub(crate) fn processed_by_stream(&self, id: &StreamId, position: u64) -> bool {
        let streams = self.inner.streams.read().unwrap_or_else(|e| e.into_inner());
        streams.get(id).is_some_and(|s| s.status.borrow().watermark >= position)
    }

    /// Whether every subscription of `topic` has processed (handled or parked) `position`.
    /// A position not yet appended is not processed.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    pub async fn processed(&self, topic: &str, position: u64) -> Result<bool> {
        self.processed_narrowed(topic, position, None).await
    }

    /// Whether `subscription` has processed `position` of `topic`.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`].
    pub async fn processed_by(
        &self,
        subscription: &str,
        topic: &str,
        position: u64,
    ) -> Result<bool> {
        self.processed_narrowed(topic, position, Some(subscription)).await
    }

    async fn processed_narrowed(
        &self,
        topic: &str,
        position: u64,
        subscription: Option<&str>,
    ) -> Result<bool> {
        let watches = self.status_watches(topic, subscription)?;
        let (_, last) = self.inner.storage.positions(&self.existing_topic(topic)?.name).await?;
        Ok(position <= last && watches.iter().all(|(_, w)| w.borrow().watermark >= position))
    }

    /// Waits until `position` of `topic` is processed (by `subscription`, or by all), at most
    /// `timeout`; returns whether it is.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownSubscription`].
    pub async fn wait_processed(
        &self,
        topic: &str,
        position: u64,
        subscription: Option<&str>,
        timeout: Duration,
    ) -> Result<bool> {
        let name = self.existing_topic(topic)?.name.clone();
        let mut watches = self.status_watches(topic, subscription)?;
        let wait_all = async {
            let mut appended = self.inner.storage.watch(&name).await?;
            appended.wait_for(|last| *last >= position).await.map_err(|_| Error::Stopped)?;
            for (_, watch) in &mut watches {
                watch.wait_for(|s| s.watermark >= position).await.map_err(|_| Error::Stopped)?;
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(timeout.min(WAIT_MAX), wait_all).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
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
                    let status = *watch.borrow();
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
            match tokio::time::timeout_at(deadline, changed).await {
                Ok((Ok(()), _, _)) => {}
                Ok((Err(_), _, _)) => return Err(Error::Stopped),
                Err(_) => return Ok(false),
            }
        }
    }

    /// Every topic with its extent and consumers.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>> {
        let topics: Vec<_> = {
            let topics = self.inner.topics.read().unwrap_or_else(|e| e.into_inner());
            let mut list: Vec<_> = topics.values().cloned().collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        };
        let mut infos = Vec::with_capacity(topics.len());
        for topic in topics {
            let (first, last) = self.inner.storage.positions(&topic.name).await?;
            let subscriptions = self
                .inner
                .subscriptions
                .values()
                .filter(|s| s.consumes(&topic.name))
                .map(|s| s.name.to_string())
                .collect();
            infos.push(TopicInfo {
                name: topic.name.to_string(),
                first_position: first,
                last_position: last,
                actions: topic.config.actions.clone(),
                subscriptions,
            });
        }
        Ok(infos)
    }

    /// Every subscription with its streams' progress.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        let statuses: Vec<(StreamId, StreamStatus)> = {
            let streams = self.inner.streams.read().unwrap_or_else(|e| e.into_inner());
            streams.iter().map(|(id, s)| (id.clone(), *s.status.borrow())).collect()
        };
        let mut infos = Vec::new();
        for subscription in self.inner.subscriptions.values() {
            let mut streams = Vec::new();
            for (id, status) in
                statuses.iter().filter(|(id, _)| id.subscription == subscription.name)
            {
                let (_, last) = self.inner.storage.positions(&id.topic).await?;
                streams.push(StreamInfo {
                    topic: id.topic.to_string(),
                    status: *status,
                    last_position: last,
                    lag: last.saturating_sub(status.watermark),
                });
            }
            let stats = &subscription.stats;
            let load = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed)
            };
            infos.push(SubscriptionInfo {
                name: subscription.name.to_string(),
                ordering: subscription.config.ordering,
                streams,
                handled: load(&stats.handled),
                failed_attempts: load(&stats.failed_attempts),
                parked: load(&stats.parked),
            });
        }
        Ok(infos)
    }

    /// The names of the subscriptions consuming `topic`.
    #[must_use]
    pub fn subscriptions_of(&self, topic: &Name) -> Vec<String> {
        self.inner
            .subscriptions
            .values()
            .filter(|s| s.consumes(topic))
            .map(|s| s.name.to_string())
            .collect()
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
