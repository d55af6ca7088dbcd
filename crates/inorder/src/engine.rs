//! The engine: topics, subscriptions and their streams, publishing, and operator actions.
//!
//! ```no_run
//! # async fn demo() -> inorder::Result<()> {
//! use inorder::{Engine, EngineConfig, Event, Ordering, SubscriptionConfig, TopicConfig, handler_fn};
//!
//! let config = EngineConfig::new("./data")
//!     .topic(TopicConfig::new("user_purchase").actions(["user.created", "user.purchased", "user.paid"]))
//!     .subscription(SubscriptionConfig::new("purchases", ["user_purchase"]).ordering(Ordering::Actions));
//! let engine = Engine::builder(config)
//!     .handler("purchases", handler_fn(|event, _| async move {
//!         println!("{} {}", event.key, event.action);
//!         Ok(serde_json::Value::Null)
//!     }))
//!     .start()
//!     .await?;
//! engine.publish(Event::builder("user_purchase", "u-1", "user.paid").build()?).await?;
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use inorder_log::{LogOptions, Name};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    checkpoint::{self, CommitRequest},
    cluster::{ClusterState, spawn_mirror},
    codec,
    config::EngineConfig,
    error::{Error, Result},
    event::Event,
    handler::{Handler, SharedHandler},
    indexer::{self, IndexJob},
    limits::{PARKED_LIST_MAX, STREAM_READ_RECORDS_MAX},
    replay,
    runtime::{SubscriptionRuntime, TopicRuntime},
    state::{ParkedEvent, StreamId},
    storage::{FileStorage, Storage},
    stream::{
        handle::{StreamHandle, StreamHealth, StreamMsg},
        supervisor::{self, StreamDeps},
    },
    turn_keeper,
    waiters::Waiters,
};

/// Builds an [`Engine`]: configuration, one handler per subscription, optional storage.
#[must_use]
pub struct EngineBuilder {
    config: EngineConfig,
    handlers: HashMap<String, SharedHandler>,
    storage: Option<Arc<dyn Storage>>,
    replay: Vec<String>,
}

impl EngineBuilder {
    /// Registers the handler of `subscription`.
    pub fn handler(mut self, subscription: &str, handler: impl Handler) -> Self {
        self.handlers.insert(subscription.to_owned(), Arc::new(handler));
        self
    }

    /// Registers a shared handler.
    pub fn shared_handler(mut self, subscription: &str, handler: Arc<dyn Handler>) -> Self {
        self.handlers.insert(subscription.to_owned(), handler);
        self
    }

    /// Uses `storage` instead of the embedded file storage under `data_dir`.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Replays `subscription` from the first stored event of every topic it consumes: its
    /// progress is reset (durably) and its handler's [`Handler::on_replay`] called before its
    /// streams start. How a projector rebuilds its read model.
    pub fn replay(mut self, subscription: &str) -> Self {
        self.replay.push(subscription.to_owned());
        self
    }

    /// Validates the configuration, opens the storage, and starts every stream.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (including a subscription without a handler or a handler for no
    /// subscription), storage errors.
    pub async fn start(self) -> Result<Engine> {
        let config = self.config;
        config.validate()?;
        let mut handlers = self.handlers;
        let mut subscriptions = BTreeMap::new();
        for subscription in &config.subscriptions {
            let handler = handlers.remove(&subscription.name).ok_or_else(|| {
                Error::config(format!("subscription {} has no handler", subscription.name))
            })?;
            let runtime = SubscriptionRuntime::new(subscription.clone(), handler)?;
            subscriptions.insert(runtime.name.clone(), Arc::new(runtime));
        }
        if let Some(orphan) = handlers.keys().next() {
            return Err(Error::config(format!(
                "a handler is registered for unknown subscription {orphan}"
            )));
        }
        let storage = match self.storage {
            Some(storage) => storage,
            None => {
                let dir = config.data_dir.clone();
                let log_options = LogOptions {
                    fsync: config.fsync,
                    segment_bytes: config.segment_bytes,
                    ..LogOptions::default()
                };
                let opened =
                    tokio::task::spawn_blocking(move || FileStorage::open(&dir, log_options))
                        .await
                        .map_err(|e| Error::Internal { what: format!("opening storage: {e}") })??;
                Arc::new(opened) as Arc<dyn Storage>
            }
        };
        if config.cluster.is_some() && storage.coordination().is_none() {
            return Err(Error::config(format!(
                "cluster mode needs a storage several nodes share (PostgreSQL); the {} storage \
                 belongs to one process",
                storage.backend()
            )));
        }
        let cluster = config.cluster.clone().map(|c| Arc::new(ClusterState::new(c)));
        replay::reset(storage.as_ref(), &subscriptions, &self.replay).await?;
        let (checkpointer, checkpointer_task) = checkpoint::spawn(Arc::clone(&storage));
        let (shutdown, _) = watch::channel(false);
        let (indexer, indexer_task) = indexer::spawn(Arc::clone(&storage), shutdown.subscribe());
        let keepers = subscriptions
            .values()
            .filter_map(|s| Some((s.name.clone(), spawn_keeper(s, &storage)?)))
            .collect();
        let engine = Engine {
            inner: Arc::new(EngineInner {
                config,
                storage,
                topics: RwLock::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
                managing: tokio::sync::Mutex::new(()),
                subscriptions: RwLock::new(subscriptions),
                streams: RwLock::new(BTreeMap::new()),
                checkpointer,
                checkpointer_task: Mutex::new(Some(checkpointer_task)),
                indexer,
                indexer_task: Mutex::new(Some(indexer_task)),
                keepers: Mutex::new(keepers),
                retainer: Mutex::new(None),
                waiters: Arc::new(Waiters::default()),
                shutdown,
                cluster,
            }),
        };
        engine.restore_pauses().await?;
        engine.open_topics().await?;
        engine.start_cluster().await;
        engine.start_retainer();
        Ok(engine)
    }
}

/// Starts the turn keeper of `subscription` if it keeps commit-order turns.
pub(crate) fn spawn_keeper(
    subscription: &SubscriptionRuntime,
    storage: &Arc<dyn Storage>,
) -> Option<tokio::task::JoinHandle<()>> {
    let turns = Arc::clone(subscription.turns.as_ref()?);
    Some(turn_keeper::spawn(subscription.name.to_string(), turns, Arc::clone(storage)))
}

/// The running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) config: EngineConfig,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) topics: RwLock<HashMap<Name, Arc<TopicRuntime>>>,
    /// Held while a topic is registered (and while a subscription starts its streams).
    pub(crate) creating: tokio::sync::Mutex<()>,
    /// Serialises management calls (see `manage`).
    pub(crate) managing: tokio::sync::Mutex<()>,
    /// Live subscriptions (declared, or added at run time: see `manage`).
    pub(crate) subscriptions: RwLock<BTreeMap<Name, Arc<SubscriptionRuntime>>>,
    pub(crate) streams: RwLock<BTreeMap<StreamId, StreamHandle>>,
    pub(crate) checkpointer: mpsc::Sender<CommitRequest>,
    checkpointer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) indexer: mpsc::Sender<IndexJob>,
    indexer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The turn keepers of subscriptions over several topics (see `turn_keeper`).
    pub(crate) keepers: Mutex<BTreeMap<Name, tokio::task::JoinHandle<()>>>,
    /// The task that applies the topics' retention (see `retainer`).
    pub(crate) retainer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Cluster mode: leases, mirrors (see `cluster`).
    pub(crate) cluster: Option<Arc<ClusterState>>,
}

impl EngineInner {
    /// A snapshot of the live subscriptions.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<SubscriptionRuntime>> {
        self.subscriptions.read().values().cloned().collect()
    }

    /// What a stream started now shares with the others.
    pub(crate) fn stream_deps(&self) -> StreamDeps {
        StreamDeps {
            storage: Arc::clone(&self.storage),
            checkpointer: self.checkpointer.clone(),
            waiters: Arc::clone(&self.waiters),
            shutdown: self.shutdown.subscribe(),
        }
    }

    /// Starts the streams of `subscription` on `topic`: one; in cluster mode one per partition
    /// — a stream where this node holds the partition's lease, a [mirror](crate::cluster)
    /// elsewhere. The caller holds `creating`.
    pub(crate) async fn start_streams(
        &self,
        subscription: &Arc<SubscriptionRuntime>,
        topic: &Arc<TopicRuntime>,
    ) {
        match &self.cluster {
            None => {
                let id = StreamId::new(subscription.name.clone(), topic.name.clone());
                let handle = supervisor::start(
                    Arc::clone(subscription),
                    Arc::clone(topic),
                    None,
                    self.stream_deps(),
                )
                .await;
                self.streams.write().insert(id, handle);
            }
            Some(cluster) => {
                for partition in 0..cluster.config.partitions {
                    self.start_partition(cluster, subscription, topic, partition).await;
                }
            }
        }
    }

    /// Starts the stream (or mirror) of one partition on one topic, replacing what ran there.
    pub(crate) async fn start_partition(
        &self,
        cluster: &ClusterState,
        subscription: &Arc<SubscriptionRuntime>,
        topic: &Arc<TopicRuntime>,
        partition: u16,
    ) {
        let id = StreamId::partitioned(subscription.name.clone(), topic.name.clone(), partition);
        let old = self.streams.write().remove(&id);
        let mut shown = None;
        if let Some(old) = old {
            shown = Some(old.status.borrow().clone());
            stop_stream(old).await;
        }
        let handle = match cluster.lease(&subscription.name, partition) {
            Some(lease) => {
                supervisor::start(
                    Arc::clone(subscription),
                    Arc::clone(topic),
                    Some(lease),
                    self.stream_deps(),
                )
                .await
            }
            None => spawn_mirror(
                id.clone(),
                cluster.remote.subscribe(),
                self.shutdown.subscribe(),
                shown,
            ),
        };
        self.streams.write().insert(id, handle);
    }
}

/// Aborts a stream's task (its calls in flight are abandoned) and waits for it to end; a failed
/// stream leaves the failed-streams gauge.
pub(crate) async fn stop_stream(handle: StreamHandle) {
    if matches!(handle.status.borrow().health, StreamHealth::Failed { .. }) {
        metrics::gauge!("inorder_streams_failed").decrement(1.0);
    }
    handle.task.abort();
    let _ = handle.task.await;
}

impl Engine {
    /// Starts building an engine from `config`.
    pub fn builder(config: EngineConfig) -> EngineBuilder {
        EngineBuilder { config, handlers: HashMap::new(), storage: None, replay: Vec::new() }
    }

    /// The storage the engine runs on.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The configuration the engine was started with.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub(crate) fn subscription(&self, name: &str) -> Result<Arc<SubscriptionRuntime>> {
        let unknown = || Error::UnknownSubscription { subscription: name.to_owned() };
        let name = Name::new("subscription", name).map_err(|_| unknown())?;
        self.inner.subscriptions.read().get(&name).cloned().ok_or_else(unknown)
    }

    /// Parked events of a subscription waiting for an operator (not the discarded ones),
    /// ordered by topic and position, after `after`, at most `max` (capped at
    /// [`PARKED_LIST_MAX`]).
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], storage errors.
    pub async fn parked(
        &self,
        subscription: &str,
        after: Option<(Name, u64)>,
        max: usize,
    ) -> Result<Vec<ParkedEvent>> {
        let runtime = self.subscription(subscription)?;
        let max = max.clamp(1, PARKED_LIST_MAX);
        let mut listed = Vec::new();
        let mut after = after;
        loop {
            let page = self.inner.storage.parked(&runtime.name, after.clone(), max).await?;
            let full = page.len() >= max;
            after = page.last().map(|p| (p.topic.clone(), p.position));
            listed.extend(page.into_iter().filter(|p| p.discarded_at_micros.is_none()));
            if listed.len() >= max || !full {
                listed.truncate(max);
                return Ok(listed);
            }
        }
    }

    /// Hands a parked event to its handler again (through its key's ordering).
    ///
    /// # Errors
    /// [`Error::UnknownSubscription`], [`Error::UnknownTopic`], [`Error::UnknownParked`].
    pub async fn retry_parked(&self, subscription: &str, topic: &str, position: u64) -> Result<()> {
        self.operate(subscription, topic, position, |reply| StreamMsg::Retry { position, reply })
            .await
    }

    /// Drops a parked event; if it blocked its key, the key moves on.
    ///
    /// # Errors
    /// As [`Engine::retry_parked`].
    pub async fn discard_parked(
        &self,
        subscription: &str,
        topic: &str,
        position: u64,
    ) -> Result<()> {
        self.operate(subscription, topic, position, |reply| StreamMsg::Discard { position, reply })
            .await
    }

    async fn operate(
        &self,
        subscription: &str,
        topic: &str,
        position: u64,
        message: impl FnOnce(oneshot::Sender<Result<()>>) -> StreamMsg,
    ) -> Result<()> {
        let mut id = StreamId::new(
            self.subscription(subscription)?.name.clone(),
            self.existing_topic(topic)?.name.clone(),
        );
        if let Some(cluster) = &self.inner.cluster {
            // The stream of the parked event's key's partition (a mirror refuses: another
            // node holds it).
            let parked = self.inner.storage.parked_event(&id, position).await?;
            let partitions = cluster.config.partitions;
            let partition = parked.map_or(0, |p| crate::cluster::partition_of(&p.key, partitions));
            id.partition = Some(partition);
        }
        let inbox = self
            .inner
            .streams
            .read()
            .get(&id)
            .map(|s| s.inbox.clone())
            .ok_or_else(|| Error::UnknownTopic { topic: topic.to_owned() })?;
        let (reply, response) = oneshot::channel();
        inbox.send(message(reply)).await.map_err(|_| Error::Stopped)?;
        response.await.map_err(|_| Error::Stopped)?
    }

    /// Reads up to `max` events of `topic` from position `from`.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], log errors.
    pub async fn read(&self, topic: &str, from: u64, max: usize) -> Result<Vec<Event>> {
        let topic = self.existing_topic(topic)?;
        let mut reader = self.inner.storage.reader(&topic.name, from).await?;
        let records = reader.read(max.min(STREAM_READ_RECORDS_MAX)).await?;
        records
            .iter()
            .filter(|record| !codec::is_lost(&record.payload))
            .map(|record| codec::decode_record(&topic.name, record))
            .collect()
    }

    /// Reads every topic in one order: up to `max` events (at most
    /// [`READ_ALL_EVENTS_MAX`](crate::limits::READ_ALL_EVENTS_MAX)) with a commit position at or
    /// above `from`, in commit order, and the commit to read from next. A read never returns a
    /// commit while an earlier one may still appear (an append of another topic not yet
    /// durable), so a reader that goes on from `next` misses nothing. Commits may have gaps.
    /// `from = 0` includes events stored before commit positions existed (commit 0) first.
    ///
    /// # Errors
    /// [`Error::Storage`]; [`Error::Decode`] for a record that does not decode.
    pub async fn read_all(&self, from: u64, max: usize) -> Result<(Vec<Event>, u64)> {
        let records = self.inner.storage.read_all(from, max).await?;
        let next = records.last().map_or(from, |(_, record)| record.commit + 1);
        let events = records
            .iter()
            .filter(|(_, record)| !codec::is_lost(&record.payload))
            .map(|(topic, record)| codec::decode_record(topic, record))
            .collect::<Result<_>>()?;
        Ok((events, next))
    }

    /// Stops every stream and the checkpointer. In-flight handler calls are abandoned; their
    /// events are handed to the handler again after the next start (at-least-once).
    pub async fn shutdown(&self) {
        self.stop_cluster_tasks().await;
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<_> = {
            let mut streams = self.inner.streams.write();
            std::mem::take(&mut *streams).into_values().map(|s| s.task).collect()
        };
        for task in tasks {
            let _ = task.await;
        }
        for subscription in self.inner.subscriptions() {
            subscription.resume();
            subscription.in_flight.close();
        }
        let retainer = self.inner.retainer.lock().take();
        if let Some(retainer) = retainer {
            retainer.abort();
            let _ = retainer.await;
        }
        let keepers = std::mem::take(&mut *self.inner.keepers.lock());
        for keeper in keepers.into_values() {
            keeper.abort();
            let _ = keeper.await;
        }
        let checkpointer = self.inner.checkpointer_task.lock().take();
        if let Some(checkpointer) = checkpointer {
            checkpointer.abort();
            let _ = checkpointer.await;
        }
        // The indexer saw the shutdown signal: it writes what is queued and stops.
        let indexer = self.inner.indexer_task.lock().take();
        if let Some(indexer) = indexer {
            let _ = indexer.await;
        }
        self.leave_cluster().await;
        self.inner.storage.close().await;
    }
}
