//! Managing a running engine: subscriptions and topics added and removed, a subscription
//! paused, resumed or rewound — without a restart.
//!
//! One primitive underlies the changes to a subscription: **stop** takes it out of the live
//! map, aborts its streams (their handler calls in flight are abandoned, exactly as in a crash:
//! at-least-once, the durable progress is where the next start begins), stops its turn keeper
//! and waits until the checkpointer finished what the streams sent; **start** builds a fresh
//! runtime (keys-in-flight permits, key locks, commit-order turns) and starts a stream on every
//! registered topic it consumes. Remove = stop + forget its progress; rewind = stop + reset the
//! progress of its streams + start. Starting and registering a topic both hold the engine's
//! `creating` lock, so a topic created meanwhile never gets a second stream of one subscription.
//! Management calls are serialised by their own lock.
//!
//! **Pause** takes every keys-in-flight permit of the subscription (waiting for the calls in
//! flight to finish): its streams read up to their budgets and start no handler call; status
//! answers pending for what it has not handled. Resume gives the permits back. A pause is
//! durable (kept through restarts, as the storage definition `paused`).
//!
//! What the engine stores of these changes is only the paused flags and the progress; the
//! definitions of subscriptions and topics made through an API are the caller's to store
//! ([`Engine::put_definition`]), since only the caller can build their handlers again.

use std::sync::Arc;

use bytes::Bytes;
use inorder_log::Name;

use crate::{
    config::{SubscriptionConfig, TopicConfig},
    engine::{Engine, spawn_keeper, stop_stream},
    error::{Error, Result},
    handler::Handler,
    runtime::SubscriptionRuntime,
    state::StreamId,
    stream::supervisor::checkpoints_settled,
};

/// The storage definition kind of paused flags.
const PAUSED: &str = "paused";

/// Where a rewind starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewind {
    /// The next event handled is at `position` of `topic` (the topic may be left out when the
    /// subscription consumes one).
    Position {
        /// The topic, if the subscription consumes several.
        topic: Option<String>,
        /// The first position handled again.
        position: u64,
    },
    /// In every topic, from the first event whose time is at or after this (microseconds
    /// since the Unix epoch; assumes event times grow with positions, as entity status does).
    Time(i64),
}

impl Engine {
    /// Adds a subscription and starts its streams on every topic it consumes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::Exists`] if one of that name runs, storage errors.
    pub async fn add_subscription(
        &self,
        config: SubscriptionConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<()> {
        config.validate()?;
        let _managing = self.inner.managing.lock().await;
        let name = Name::new("subscription", &config.name)?;
        if self.inner.subscriptions.read().contains_key(&name) {
            return Err(Error::Exists { what: "subscription", name: name.to_string() });
        }
        self.start_subscription(config, handler).await
    }

    /// Replaces a running subscription's definition (same name), keeping its progress: its
    /// streams stop and start again under the new one (calls in flight are abandoned and handed
    /// over again, at least once). If the new one cannot start, the old one is started again.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::UnknownSubscription`], storage errors.
    pub async fn replace_subscription(
        &self,
        config: SubscriptionConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<()> {
        config.validate()?;
        let _managing = self.inner.managing.lock().await;
        let runtime = self.subscription(&config.name)?;
        let (old, old_handler) = self.stop_subscription(&runtime.name).await?;
        match self.start_subscription(config, handler).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.start_subscription(old, old_handler).await?;
                Err(error)
            }
        }
    }

    /// Changes a topic's retention while the engine runs (from the next retention round on).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidConfig`].
    pub fn set_retention(&self, topic: &str, retention: crate::retention::Retention) -> Result<()> {
        let topic = self.existing_topic(topic)?;
        retention.validate(topic.name.as_str())?;
        *topic.retention.write() = retention;
        Ok(())
    }

    /// Stops a subscription and deletes its progress, key states and parked events.
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], storage errors (the subscription is stopped then; deleting
    /// its state again is safe).
    pub async fn remove_subscription(&self, name: &str) -> Result<()> {
        let _managing = self.inner.managing.lock().await;
        let runtime = self.subscription(name)?;
        self.stop_subscription(&runtime.name).await?;
        self.inner.storage.put_definition(PAUSED, runtime.name.as_str(), None).await?;
        self.inner.storage.forget_subscription(&runtime.name).await
    }

    /// Pauses a subscription: no handler call starts until [`Engine::resume_subscription`];
    /// calls in flight finish. Durable.
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], storage errors.
    pub async fn pause_subscription(&self, name: &str) -> Result<()> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused subscription (a running one stays running). Durable.
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], storage errors.
    pub async fn resume_subscription(&self, name: &str) -> Result<()> {
        self.set_paused(name, false).await
    }

    /// Stores the paused flag, then holds or gives back the subscription's permits.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let _managing = self.inner.managing.lock().await;
        let runtime = self.subscription(name)?;
        let flag = paused.then(Bytes::new);
        self.inner.storage.put_definition(PAUSED, runtime.name.as_str(), flag).await?;
        if paused {
            runtime.pause();
        } else {
            runtime.resume();
        }
        Ok(())
    }

    /// Whether a subscription is paused.
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`].
    pub fn is_paused(&self, name: &str) -> Result<bool> {
        Ok(self.subscription(name)?.is_paused())
    }

    /// Starts a subscription over from a position or a time: its streams stop, their progress
    /// goes back (never forward: a start past what a stream resolved leaves it where it is) (key states cleared, parked events at or after the new start removed — they are
    /// handled again; those before stay), and they start again. Status answers pending for
    /// events after the new start until they are handled again. Returns, per topic, the
    /// position the subscription now resumes after.
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], [`Error::UnknownTopic`], [`Error::InvalidConfig`] for a
    /// position without its topic on a subscription of several topics, storage errors (the
    /// subscription is started again whatever happened).
    pub async fn rewind_subscription(&self, name: &str, to: Rewind) -> Result<Vec<(String, u64)>> {
        if self.inner.cluster.is_some() {
            // Its partitions run on several nodes: one node cannot stop them all first.
            return Err(Error::config(
                "rewinding a subscription is not available in cluster mode (stop every node, \
                 rewind on one without [cluster], start them again)",
            ));
        }
        let _managing = self.inner.managing.lock().await;
        let runtime = self.subscription(name)?;
        let topics: Vec<Name> = {
            let registered = self.inner.topics.read();
            let mut topics: Vec<Name> =
                registered.keys().filter(|t| runtime.consumes(t)).cloned().collect();
            topics.sort();
            topics
        };
        let mut targets = Vec::new();
        match to {
            Rewind::Position { topic, position } => {
                let topic = match (topic, topics.as_slice()) {
                    (Some(topic), _) => self.existing_topic(&topic)?.name.clone(),
                    (None, [only]) => only.clone(),
                    (None, _) => {
                        return Err(Error::config(format!(
                            "subscription {name} consumes {} topics: name the topic to rewind",
                            topics.len()
                        )));
                    }
                };
                if !runtime.consumes(&topic) {
                    return Err(Error::config(format!(
                        "subscription {name} does not consume {topic}"
                    )));
                }
                let (_, last) = self.inner.storage.positions(&topic).await?;
                targets.push((topic, position.clamp(1, last + 1) - 1));
            }
            Rewind::Time(micros) => {
                for topic in topics {
                    let start = self.first_at_or_after(&topic, micros).await?;
                    targets.push((topic, start - 1));
                }
            }
        }
        let (config, handler) = self.stop_subscription(&runtime.name).await?;
        let mut reset = Ok(());
        for (topic, watermark) in &mut targets {
            let stream = StreamId::new(runtime.name.clone(), topic.clone());
            // A rewind only goes back: moving a watermark forward would mark events resolved
            // that no handler saw (and status would call them processed).
            reset = match self.inner.storage.stream_state(&stream).await {
                Ok(state) => {
                    *watermark = (*watermark).min(state.map_or(0, |s| s.watermark));
                    self.inner.storage.reset_stream(&stream, *watermark).await
                }
                Err(error) => Err(error),
            };
            if reset.is_err() {
                break;
            }
        }
        let started = self.start_subscription(config, handler).await;
        reset?;
        started?;
        tracing::info!(subscription = name, ?targets, "subscription rewound");
        Ok(targets.into_iter().map(|(topic, watermark)| (topic.to_string(), watermark)).collect())
    }

    /// Registers a topic while the engine runs (creating it in the storage if needed) and starts
    /// the streams of every subscription consuming it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::Exists`] if it is registered, [`Error::TopicLimit`],
    /// storage errors.
    pub async fn add_topic(&self, config: TopicConfig) -> Result<()> {
        config.validate()?;
        let name = Name::new("topic", &config.name)?;
        let _creating = self.inner.creating.lock().await;
        if self.inner.topics.read().contains_key(&name) {
            return Err(Error::Exists { what: "topic", name: name.to_string() });
        }
        let count = self.inner.topics.read().len();
        if count >= self.inner.config.max_topics {
            return Err(Error::TopicLimit {
                topic: name.to_string(),
                max: self.inner.config.max_topics,
            });
        }
        self.expect_turns(&name);
        self.register_topic(name, config).await.map(drop)
    }

    /// Deletes a topic: the streams on it stop, then its events and every stream's progress on
    /// it are deleted. Subscriptions consuming it stay (a topic created again under the name
    /// starts at position 1 and gets their streams).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], storage errors.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let _managing = self.inner.managing.lock().await;
        let topic = self.existing_topic(name)?;
        let _creating = self.inner.creating.lock().await;
        let handles: Vec<_> = {
            let mut streams = self.inner.streams.write();
            let ids: Vec<StreamId> =
                streams.keys().filter(|id| id.topic == topic.name).cloned().collect();
            ids.iter().filter_map(|id| streams.remove(id)).collect()
        };
        for handle in handles {
            stop_stream(handle).await;
        }
        for subscription in self.inner.subscriptions() {
            if let Some(turns) = &subscription.turns {
                turns.leave(&topic.name);
            }
        }
        self.inner.topics.write().remove(&topic.name);
        checkpoints_settled(&self.inner.checkpointer).await?;
        self.inner.storage.delete_topic(&topic.name).await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Stores (or with `None` removes) a definition of `kind` made through an API, durably, in
    /// the engine's storage (see [`Storage::put_definition`](crate::storage::Storage)).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn put_definition(&self, kind: &str, name: &str, value: Option<Bytes>) -> Result<()> {
        self.inner.storage.put_definition(kind, name, value).await
    }

    /// The stored definitions of `kind`, by name.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn definitions(&self, kind: &str) -> Result<Vec<(String, Bytes)>> {
        self.inner.storage.definitions(kind).await
    }

    /// The first position of `topic` whose event time is at or after `micros` (one past the last
    /// if none is), by binary search: assumes times grow with positions.
    async fn first_at_or_after(&self, topic: &Name, micros: i64) -> Result<u64> {
        let (first, last) = self.inner.storage.positions(topic).await?;
        let (mut low, mut high) = (first, last + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            // Lost records have no event: the next event stands for them.
            let events = self.read(topic.as_str(), middle, 16).await?;
            let early = events.first().is_none_or(|event| event.time_micros < micros);
            if early {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// Pauses and resumes running subscriptions as their stored flags say — in cluster mode, a
    /// pause or resume another node took. Returns how many changed.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn apply_stored_pauses(&self) -> Result<usize> {
        let _managing = self.inner.managing.lock().await;
        let paused: std::collections::BTreeSet<String> =
            self.inner.storage.definitions(PAUSED).await?.into_iter().map(|(n, _)| n).collect();
        let mut changed = 0;
        for runtime in self.inner.subscriptions() {
            match (paused.contains(runtime.name.as_str()), runtime.is_paused()) {
                (true, false) => runtime.pause(),
                (false, true) => runtime.resume(),
                _ => continue,
            }
            changed += 1;
        }
        Ok(changed)
    }

    /// Pauses, before any stream starts, the subscriptions stored as paused.
    pub(crate) async fn restore_pauses(&self) -> Result<()> {
        for (name, _) in self.inner.storage.definitions(PAUSED).await? {
            if let Ok(runtime) = self.subscription(&name) {
                runtime.pause();
            }
        }
        Ok(())
    }

    /// Builds a fresh runtime for `config` and starts its streams (paused first if stored so).
    async fn start_subscription(
        &self,
        config: SubscriptionConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<()> {
        self.inner.config.check_clustered(&config)?;
        let runtime = Arc::new(SubscriptionRuntime::new(config, handler)?);
        let paused = self.inner.storage.definitions(PAUSED).await?;
        if paused.iter().any(|(name, _)| name == runtime.name.as_str()) {
            runtime.pause();
        }
        let _creating = self.inner.creating.lock().await;
        let topics: Vec<_> = {
            let registered = self.inner.topics.read();
            registered.values().filter(|t| runtime.consumes(&t.name)).cloned().collect()
        };
        if let Some(turns) = &runtime.turns {
            for topic in &topics {
                turns.expect(&topic.name);
            }
        }
        self.inner.subscriptions.write().insert(runtime.name.clone(), Arc::clone(&runtime));
        if let Some(keeper) = spawn_keeper(&runtime, &self.inner.storage) {
            self.inner.keepers.lock().insert(runtime.name.clone(), keeper);
        }
        for topic in topics {
            self.inner.start_streams(&runtime, &topic).await;
        }
        tracing::info!(subscription = %runtime.name, "subscription started");
        Ok(())
    }

    /// Takes a subscription out of the engine and stops its streams and keeper; returns what
    /// starts it again. Waits until every checkpoint its streams sent is done.
    async fn stop_subscription(
        &self,
        name: &Name,
    ) -> Result<(SubscriptionConfig, Arc<dyn Handler>)> {
        let runtime = self
            .inner
            .subscriptions
            .write()
            .remove(name)
            .ok_or_else(|| Error::UnknownSubscription { subscription: name.to_string() })?;
        let handles: Vec<_> = {
            let mut streams = self.inner.streams.write();
            let ids: Vec<StreamId> =
                streams.keys().filter(|id| id.subscription == *name).cloned().collect();
            ids.iter().filter_map(|id| streams.remove(id)).collect()
        };
        for handle in handles {
            stop_stream(handle).await;
        }
        let keeper = self.inner.keepers.lock().remove(name);
        if let Some(keeper) = keeper {
            keeper.abort();
            let _ = keeper.await;
        }
        runtime.resume();
        runtime.in_flight.close();
        checkpoints_settled(&self.inner.checkpointer).await?;
        tracing::info!(subscription = %name, "subscription stopped");
        Ok((runtime.config.clone(), Arc::clone(&runtime.handler)))
    }
}
