//! Topics: opening one (the checks it passes before it takes events), registering it with its
//! subscriptions' streams, and finding or creating it on first use.
//!
//! A topic takes no event before two checks of what a crash or a restore left on disk: no
//! subscription has resolved positions past the end of its log (else new events would take
//! positions already answered *processed*), and every stored event's id is in the id index
//! (else a producer's retry would be appended twice). A topic failing them with damage is
//! registered as failed, visibly, and the engine runs on.

use std::{collections::BTreeMap, sync::Arc};

use inorder_log::{FsyncPolicy, Name};

use crate::{
    codec,
    config::TopicConfig,
    engine::Engine,
    error::{Error, Result, StorageError, StorageErrorKind},
    limits::{PUBLISH_BATCH_EVENTS_MAX, STREAM_READ_RECORDS_MAX},
    runtime::TopicRuntime,
    state::StreamId,
    storage::StateOp,
};

impl Engine {
    /// Opens configured and existing topics and starts their streams.
    pub(crate) async fn open_topics(&self) -> Result<()> {
        let inner = &self.inner;
        let mut wanted: BTreeMap<Name, TopicConfig> = BTreeMap::new();
        for topic in &inner.config.topics {
            wanted.insert(Name::new("topic", &topic.name)?, topic.clone());
        }
        if inner.config.auto_create_topics {
            for topic in inner.storage.topics().await? {
                wanted.entry(topic.clone()).or_insert_with(|| TopicConfig::new(topic.as_str()));
            }
            for subscription in inner.subscriptions() {
                for topic in &subscription.topics {
                    wanted.entry(topic.clone()).or_insert_with(|| TopicConfig::new(topic.as_str()));
                }
            }
        }
        // Every topic holds its subscriptions' commit-order turns back until its stream has
        // read, before any stream starts: a key's earlier event may be in any of them.
        for name in wanted.keys() {
            self.expect_turns(name);
        }
        for (name, config) in wanted {
            self.register_topic(name, config).await?;
        }
        Ok(())
    }

    /// Creates (if needed) and registers a topic, rebuilds its id index, starts its streams.
    ///
    /// A topic whose storage is damaged (its log does not open, or an event to index does not
    /// decode) is registered as **failed**: publishes to it are refused with the damage, and
    /// its streams start and fail visibly — the engine and its other topics run on.
    pub(crate) async fn register_topic(
        &self,
        name: Name,
        config: TopicConfig,
    ) -> Result<Arc<TopicRuntime>> {
        let inner = &self.inner;
        let opened = async {
            inner.storage.create_topic(&name).await?;
            self.check_progress_against_log(&name).await?;
            self.index_unindexed_ids(&name).await
        };
        let topic = match opened.await {
            Ok(indexed) => {
                let topic = TopicRuntime::new(name.clone(), config, None);
                topic.dedupe.set_indexed(indexed);
                topic
            }
            Err(error) if error.storage_kind() == Some(StorageErrorKind::Corrupt) => {
                tracing::error!(topic = %name, %error, "topic is damaged; it takes no events");
                TopicRuntime::new(name.clone(), config, Some(error.to_string()))
            }
            Err(error) => return Err(error),
        };
        let topic = Arc::new(topic);
        // Before the topic takes events: none may be granted a turn ahead of them.
        self.expect_turns(&name);
        inner.topics.write().insert(name.clone(), Arc::clone(&topic));
        for subscription in inner.subscriptions().into_iter().filter(|s| s.consumes(&name)) {
            inner.start_streams(&subscription, &topic).await;
        }
        Ok(topic)
    }

    /// Makes `topic` part of the commit-order turns of every subscription consuming it.
    pub(crate) fn expect_turns(&self, topic: &Name) {
        for subscription in self.inner.subscriptions().into_iter().filter(|s| s.consumes(topic)) {
            if let Some(turns) = &subscription.turns {
                turns.expect(topic);
            }
        }
    }

    /// Checks that no subscription has resolved positions beyond the topic's log: new events
    /// would take positions the subscription believes handled — handled zero times, answered
    /// processed. That happens when the log lost acknowledged records: a cut, a restored backup
    /// (the topic is then refused: `Error::Storage` of kind corrupt), or a power loss under
    /// `fsync = never`, where it is expected: the lost positions are filled with *lost*
    /// records (see [`codec::lost`]) saying why, so that the next event takes a fresh position.
    async fn check_progress_against_log(&self, topic: &Name) -> Result<()> {
        let storage = &self.inner.storage;
        let (_, last) = storage.positions(topic).await?;
        let mut ahead: Option<(Name, u64)> = None;
        for subscription in self.inner.subscriptions().into_iter().filter(|s| s.consumes(topic)) {
            let id = StreamId::new(subscription.name.clone(), topic.clone());
            let Some(state) = storage.stream_state(&id).await? else { continue };
            let resolved = state.done_above.last().map_or(state.watermark, |(r, _)| *r.end());
            let resolved = resolved.max(state.watermark);
            if resolved > last && ahead.as_ref().is_none_or(|(_, seen)| resolved > *seen) {
                ahead = Some((subscription.name.clone(), resolved));
            }
        }
        let Some((subscription, resolved)) = ahead else { return Ok(()) };
        let expected = storage.backend() == "file" && self.inner.config.fsync == FsyncPolicy::Never;
        if !expected {
            return Err(StorageError::corrupt(format!(
                "topic {topic}'s log ends at position {last}, but subscription {subscription} \
                 has resolved it up to {resolved}: acknowledged events are missing from the log \
                 (cut, or restored from an older copy); new events would take positions it \
                 believes handled"
            ))
            .into());
        }
        let reason = format!(
            "lost in a power loss under fsync = never; subscription {subscription} had resolved \
             up to {resolved}"
        );
        tracing::warn!(%topic, last, resolved, %subscription, "filling positions the log lost");
        metrics::counter!("inorder_positions_lost_total", "topic" => topic.to_string())
            .increment(resolved - last);
        let mut next = last + 1;
        while next <= resolved {
            let count = (resolved - next + 1).min(PUBLISH_BATCH_EVENTS_MAX as u64);
            let fillers = (0..count).map(|_| codec::lost(&reason)).collect();
            let range = storage.append(topic, fillers).await?;
            next = range.end() + 1;
        }
        Ok(())
    }

    /// Indexes the ids of events appended after the index's last mark (a crash can leave some).
    /// Returns the position up to which every id is indexed: the topic's last.
    async fn index_unindexed_ids(&self, topic: &Name) -> Result<u64> {
        let storage = &self.inner.storage;
        let indexed = storage.ids_indexed_to(topic).await?;
        let (first, last) = storage.positions(topic).await?;
        // Ids of events retention deleted are not indexed again.
        let mut reader = storage.reader(topic, (indexed + 1).max(first)).await?;
        while reader.next_position() <= last {
            let records = reader.read(STREAM_READ_RECORDS_MAX).await?;
            if records.is_empty() {
                break;
            }
            let mut ops = Vec::with_capacity(records.len() + 1);
            let stored = records.iter().filter(|r| r.position <= last);
            for record in stored.filter(|r| !codec::is_lost(&r.payload)) {
                let event = codec::decode_record(topic, record)?;
                ops.push(StateOp::EventId {
                    topic: topic.clone(),
                    id: event.id,
                    position: record.position,
                });
            }
            let to = records.last().map_or(indexed, |r| r.position.min(last));
            ops.push(StateOp::IdsIndexedTo { topic: topic.clone(), position: to });
            storage.commit(ops, false).await?;
        }
        Ok(last)
    }

    /// The runtime of `topic`, creating the topic if auto-creation is on.
    pub(crate) async fn topic(&self, name: &Name) -> Result<Arc<TopicRuntime>> {
        if let Some(topic) = self.inner.topics.read().get(name) {
            return Ok(Arc::clone(topic));
        }
        if !self.inner.config.auto_create_topics {
            return Err(Error::UnknownTopic { topic: name.to_string() });
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(topic) = self.inner.topics.read().get(name) {
            return Ok(Arc::clone(topic));
        }
        let count = self.inner.topics.read().len();
        if count >= self.inner.config.max_topics {
            return Err(Error::TopicLimit {
                topic: name.to_string(),
                max: self.inner.config.max_topics,
            });
        }
        tracing::info!(topic = %name, "creating topic on first publish");
        self.register_topic(name.clone(), TopicConfig::new(name.as_str())).await
    }

    /// A registered topic, without creating it.
    pub(crate) fn existing_topic(&self, name: &str) -> Result<Arc<TopicRuntime>> {
        let unknown = || Error::UnknownTopic { topic: name.to_owned() };
        let name = Name::new("topic", name).map_err(|_| unknown())?;
        self.inner.topics.read().get(&name).cloned().ok_or_else(unknown)
    }
}
