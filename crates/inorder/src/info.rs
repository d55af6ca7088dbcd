//! The engine's topics and subscriptions at a glance: extents, progress, lag, health.

use std::sync::atomic::Ordering as AtomicOrdering;

use inorder_log::Name;

use crate::{
    config::Ordering,
    engine::Engine,
    error::Result,
    retention::Retention,
    runtime::TopicRuntime,
    state::StreamId,
    stream::handle::{StreamHealth, StreamStatus},
};

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
    /// Bytes its events take (segment files; payload bytes on PostgreSQL).
    pub bytes: u64,
    /// Which of its oldest events may be deleted.
    pub retention: Retention,
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
    /// Events the topics' retention deleted before this subscription resolved them (skipped,
    /// never handled), since start.
    pub skipped_by_retention: u64,
}

impl Engine {
    /// Every topic with its extent and consumers.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>> {
        let topics: Vec<_> = {
            let topics = self.inner.topics.read();
            let mut list: Vec<_> = topics.values().cloned().collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        };
        let mut infos = Vec::with_capacity(topics.len());
        for topic in topics {
            infos.push(self.topic_info_of(&topic).await?);
        }
        Ok(infos)
    }

    /// One topic with its extent and consumers (one storage call, not one per topic).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`](crate::Error::UnknownTopic), storage errors.
    pub async fn topic_info(&self, topic: &str) -> Result<TopicInfo> {
        let topic = self.existing_topic(topic)?;
        self.topic_info_of(&topic).await
    }

    async fn topic_info_of(&self, topic: &TopicRuntime) -> Result<TopicInfo> {
        let footprint = self.inner.storage.footprint(&topic.name).await?;
        let subscriptions = self
            .inner
            .subscriptions()
            .into_iter()
            .filter(|s| s.consumes(&topic.name))
            .map(|s| s.name.to_string())
            .collect();
        Ok(TopicInfo {
            name: topic.name.to_string(),
            first_position: footprint.first,
            last_position: footprint.last,
            actions: topic.config.actions.clone(),
            subscriptions,
            bytes: footprint.bytes,
            retention: *topic.retention.read(),
        })
    }

    /// Every subscription with its streams' progress and health. Answers while the storage is
    /// unreachable (the topics' last positions then come from what the streams read).
    ///
    /// # Errors
    /// None today; kept fallible for storages that must be asked.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        let statuses: Vec<(StreamId, StreamStatus)> = {
            let streams = self.inner.streams.read();
            streams.iter().map(|(id, s)| (id.clone(), s.status.borrow().clone())).collect()
        };
        let mut infos = Vec::new();
        for subscription in self.inner.subscriptions() {
            let mut streams = Vec::new();
            for (id, status) in
                statuses.iter().filter(|(id, _)| id.subscription == subscription.name)
            {
                // While the storage is unreachable the streams' own view still answers: what
                // matters then is their health, not an exact lag.
                let last = match self.inner.storage.positions(&id.topic).await {
                    Ok((_, last)) => last,
                    Err(_) => status.read_position.saturating_sub(1),
                };
                streams.push(StreamInfo {
                    topic: id.topic.to_string(),
                    status: status.clone(),
                    last_position: last,
                    lag: last.saturating_sub(status.watermark),
                });
            }
            let stats = &subscription.stats;
            let load =
                |counter: &std::sync::atomic::AtomicU64| counter.load(AtomicOrdering::Relaxed);
            infos.push(SubscriptionInfo {
                name: subscription.name.to_string(),
                ordering: subscription.config.ordering,
                streams,
                handled: load(&stats.handled),
                failed_attempts: load(&stats.failed_attempts),
                parked: load(&stats.parked),
                skipped_by_retention: load(&stats.skipped_by_retention),
            });
        }
        Ok(infos)
    }

    /// The names of the subscriptions consuming `topic`.
    #[must_use]
    pub fn subscriptions_of(&self, topic: &Name) -> Vec<String> {
        self.inner
            .subscriptions()
            .into_iter()
            .filter(|s| s.consumes(topic))
            .map(|s| s.name.to_string())
            .collect()
    }

    /// The streams that do not run (`failed`), with their error: what a readiness check
    /// reports.
    #[must_use]
    pub fn failed_streams(&self) -> Vec<(StreamId, String)> {
        let streams = self.inner.streams.read();
        streams
            .iter()
            .filter_map(|(id, handle)| match &handle.status.borrow().health {
                StreamHealth::Failed { error } => Some((id.clone(), error.to_string())),
                _ => None,
            })
            .collect()
    }
}
