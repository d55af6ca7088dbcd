//! The live counterparts of configured topics and subscriptions, shared by streams and workers.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
};

use inorder_log::Name;
use tokio::sync::Semaphore;

use crate::{
    cluster::LeaseClock,
    codec,
    config::{Ordering, SubscriptionConfig, TopicConfig, TopicPattern},
    dedupe::Dedupe,
    error::{Error, Result, StorageError},
    event::Event,
    handler::{self, HandlerContext, HandlerError, Reply, RunReply, SharedHandler},
    key_locks::KeyLocks,
    key_turns::KeyTurns,
    state::StreamId,
    storage::{StateOp, Storage},
    stream::sequencer::Contract,
};

/// A topic as the engine runs it.
pub(crate) struct TopicRuntime {
    pub name: Name,
    pub config: TopicConfig,
    /// Action name → index in `config.actions`.
    pub action_index: Arc<HashMap<String, u32>>,
    pub dedupe: Arc<Dedupe>,
    /// Why the topic takes no events, if its storage is damaged.
    pub failure: Option<String>,
    /// `inorder_published_total{topic}`, registered once.
    pub published: metrics::Counter,
    /// Its retention: `config.retention` at first, changed at run time by
    /// [`Engine::set_retention`](crate::Engine::set_retention).
    pub retention: parking_lot::RwLock<crate::retention::Retention>,
}

impl TopicRuntime {
    pub(crate) fn new(name: Name, config: TopicConfig, failure: Option<String>) -> Self {
        let action_index = config
            .actions
            .iter()
            .enumerate()
            .map(|(i, action)| (action.clone(), u32::try_from(i).expect("at most 64 actions")))
            .collect();
        let retention = parking_lot::RwLock::new(config.retention);
        let published = metrics::counter!("inorder_published_total", "topic" => name.to_string());
        Self {
            published,
            name,
            config,
            action_index: Arc::new(action_index),
            dedupe: Arc::default(),
            failure,
            retention,
        }
    }

    /// Refuses events while the topic's storage is damaged.
    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.failure {
            None => Ok(()),
            Some(failure) => Err(StorageError::corrupt(format!(
                "topic {} takes no events until it is repaired: {failure}",
                self.name
            ))
            .into()),
        }
    }

    /// Refuses an action the topic does not list (nothing is appended).
    pub(crate) fn check_action(&self, action: &str) -> Result<()> {
        if self.config.actions.is_empty() || self.action_index.contains_key(action) {
            return Ok(());
        }
        Err(Error::UnknownAction {
            topic: self.name.to_string(),
            action: action.to_owned(),
            allowed: self.config.actions.clone(),
        })
    }

    /// The per-key ordering contract a subscription with `ordering` applies to this topic.
    pub(crate) fn contract(&self, ordering: Ordering) -> Option<Contract> {
        match ordering {
            Ordering::Actions if !self.config.actions.is_empty() => Some(Contract::Actions {
                index: Arc::clone(&self.action_index),
                count: u32::try_from(self.config.actions.len()).expect("at most 64 actions"),
                repeat: self.config.repeat,
            }),
            Ordering::Sequence => Some(Contract::Sequence),
            Ordering::Actions | Ordering::Fifo | Ordering::None => None,
        }
    }
}

/// Counters of a subscription (relaxed atomics: statistics).
#[derive(Debug, Default)]
pub(crate) struct SubscriptionStats {
    pub handled: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub parked: AtomicU64,
    /// Events retention deleted before this subscription resolved them (since start).
    pub skipped_by_retention: AtomicU64,
}

impl SubscriptionStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, AtomicOrdering::Relaxed);
    }
}

/// A subscription's metric handles, registered once (labels are not rebuilt per call).
pub(crate) struct SubscriptionMetrics {
    pub handle_seconds: metrics::Histogram,
    pub failures: metrics::Counter,
    pub handled: metrics::Counter,
    pub parked: metrics::Counter,
}

/// A subscription as the engine runs it.
pub(crate) struct SubscriptionRuntime {
    pub name: Name,
    pub config: SubscriptionConfig,
    pub handler: SharedHandler,
    pub topics: Vec<Name>,
    pub patterns: Vec<TopicPattern>,
    /// Permits for handler calls: the keys-in-flight limit.
    pub in_flight: Arc<Semaphore>,
    /// One call per key at a time across the subscription's topics (more than one topic).
    pub key_locks: Option<Arc<KeyLocks>>,
    /// Per-key commit order across the subscription's topics (`fifo` over more than one topic).
    pub turns: Option<Arc<KeyTurns>>,
    pub stats: SubscriptionStats,
    pub metrics: SubscriptionMetrics,
    /// While paused: the task that takes (and then holds) every keys-in-flight permit.
    paused: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SubscriptionRuntime {
    pub(crate) fn new(config: SubscriptionConfig, handler: SharedHandler) -> Result<Self> {
        let name = Name::new("subscription", &config.name)?;
        let topics: Vec<Name> =
            config.topics.iter().map(|t| Name::new("topic", t)).collect::<Result<_, _>>()?;
        let patterns: Vec<TopicPattern> =
            config.topic_patterns.iter().map(|p| TopicPattern::new(p)).collect::<Result<_>>()?;
        let label = name.to_string();
        let metrics = SubscriptionMetrics {
            handle_seconds: metrics::histogram!("inorder_handle_seconds", "subscription" => label.clone()),
            failures: metrics::counter!("inorder_handler_failures_total", "subscription" => label.clone()),
            handled: metrics::counter!("inorder_handled_total", "subscription" => label.clone()),
            parked: metrics::counter!("inorder_parked_total", "subscription" => label),
        };
        let several_topics =
            (topics.len() > 1 || !patterns.is_empty()) && config.ordering != Ordering::None;
        Ok(Self {
            name,
            metrics,
            key_locks: several_topics.then(Arc::default),
            turns: (several_topics && config.ordering == Ordering::Fifo).then(Arc::default),
            in_flight: Arc::new(Semaphore::new(config.max_keys_in_flight)),
            config,
            handler,
            topics,
            patterns,
            stats: SubscriptionStats::default(),
            paused: parking_lot::Mutex::new(None),
        })
    }

    /// Takes every keys-in-flight permit (as calls in flight finish) and holds them: no handler
    /// call starts until [`SubscriptionRuntime::resume`].
    pub(crate) fn pause(&self) {
        let mut paused = self.paused.lock();
        if paused.is_some() {
            return;
        }
        let permits = Arc::clone(&self.in_flight);
        let all = u32::try_from(self.config.max_keys_in_flight).unwrap_or(u32::MAX);
        *paused = Some(tokio::spawn(async move {
            let _held = permits.acquire_many_owned(all).await;
            std::future::pending::<()>().await;
        }));
    }

    /// Gives the permits back.
    pub(crate) fn resume(&self) {
        if let Some(task) = self.paused.lock().take() {
            task.abort();
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.lock().is_some()
    }

    /// Whether the subscription consumes `topic` (exact name or whole-name pattern).
    pub(crate) fn consumes(&self, topic: &Name) -> bool {
        self.topics.contains(topic) || self.patterns.iter().any(|p| p.matches(topic.as_str()))
    }
}

/// What a stream and its workers share.
pub(crate) struct StreamContext {
    pub id: StreamId,
    pub subscription: Arc<SubscriptionRuntime>,
    pub topic: Arc<TopicRuntime>,
    pub storage: Arc<dyn Storage>,
    /// Cluster mode: the lease of the stream's partition.
    pub lease: Option<Arc<LeaseClock>>,
}

/// Calls the subscription's handler once (attempt `attempt`), timing it; a panic is a failure.
pub(crate) async fn call_handler(
    subscription: &SubscriptionRuntime,
    event: &Event,
    attempt: u32,
) -> std::result::Result<Reply, HandlerError> {
    let context = HandlerContext { subscription: subscription.name.clone(), attempt };
    let started = std::time::Instant::now();
    let result = handler::call(&subscription.handler, event, &context).await;
    subscription.metrics.handle_seconds.record(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            SubscriptionStats::add(&subscription.stats.handled, 1);
            subscription.metrics.handled.increment(1);
        }
        Err(_) => {
            SubscriptionStats::add(&subscription.stats.failed_attempts, 1);
            subscription.metrics.failures.increment(1);
        }
    }
    result
}

/// Calls the subscription's handler once for a run of one key's events (each on its first
/// attempt), timing it; a panic fails the run's first event.
pub(crate) async fn call_run_handler(
    subscription: &SubscriptionRuntime,
    events: &[Event],
) -> RunReply {
    let context = HandlerContext { subscription: subscription.name.clone(), attempt: 1 };
    let started = std::time::Instant::now();
    let reply = handler::call_run(&subscription.handler, events, &context).await;
    subscription.metrics.handle_seconds.record(started.elapsed().as_secs_f64());
    let handled = reply.replies.len().min(events.len()) as u64;
    SubscriptionStats::add(&subscription.stats.handled, handled);
    subscription.metrics.handled.increment(handled);
    if reply.failed.is_some() {
        SubscriptionStats::add(&subscription.stats.failed_attempts, 1);
        subscription.metrics.failures.increment(1);
    }
    reply
}

impl StreamContext {
    /// Whether the stream handles `key` (in cluster mode, keys of its partition only).
    pub(crate) fn owns(&self, key: &str) -> bool {
        self.lease.as_ref().is_none_or(|lease| lease.owns(key))
    }

    /// The fence its commits carry, in cluster mode.
    pub(crate) fn fence(&self) -> Option<StateOp> {
        self.lease.as_ref().map(|lease| StateOp::Fence(lease.fence.clone()))
    }

    /// Reads the event at `position` of the stream's topic.
    pub(crate) async fn read_event(&self, position: u64) -> Result<Event> {
        read_event(self.storage.as_ref(), &self.topic.name, position).await
    }
}

/// Reads the event at `position` of `topic`.
pub(crate) async fn read_event(
    storage: &dyn Storage,
    topic: &Name,
    position: u64,
) -> Result<Event> {
    let mut reader = storage.reader(topic, position).await?;
    let record =
        reader.read(1).await?.into_iter().next().filter(|r| r.position == position).ok_or_else(
            || Error::Decode { topic: topic.to_string(), position, reason: "no such event" },
        )?;
    codec::decode_record(topic, &record)
}
