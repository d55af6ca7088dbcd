//! Fixtures for the engine's integration tests: a recording handler that also checks the
//! per-key guarantees on every call, and an engine on a temporary directory that can restart.
//!
//! The storage comes from `INORDER_TEST_STORAGE`: `file` (the default, files under the temporary
//! directory) or `postgres` (a fresh database per [`Fixture`] from `inorder_testpg`; each start
//! connects a new `PgStorage` to it, as a restarted process would).
#![allow(dead_code, clippy::unwrap_used)]

pub mod faults;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use inorder::storage::{FileStorage, Storage};
use inorder::{
    Engine, EngineBuilder, EngineConfig, Event, EventStatus, Handler, HandlerContext, HandlerError,
    ParkReason, Reply, SubscriptionConfig, TopicConfig,
};
use inorder_postgres::{PgStorage, PgStorageOptions};

/// The variable that picks the storage of the engine tests: `file` (default) or `postgres`.
pub const STORAGE_ENV: &str = "INORDER_TEST_STORAGE";

/// The storage an engine test runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStorage {
    /// The embedded file storage under the engine's `data_dir`.
    File,
    /// PostgreSQL: this database, fresh for the test.
    Postgres { url: String },
}

impl TestStorage {
    /// The storage `INORDER_TEST_STORAGE` asks for; for `postgres`, a new empty database.
    pub fn from_env() -> Self {
        let wanted = std::env::var_os(STORAGE_ENV).unwrap_or_default();
        match wanted.to_str() {
            Some("" | "file") => Self::File,
            Some("postgres") => Self::Postgres { url: inorder_testpg::fresh_database().unwrap() },
            _ => panic!("{STORAGE_ENV}={wanted:?}: expected file or postgres"),
        }
    }

    /// Opens the storage itself (as the engine would), to wrap it.
    pub async fn open(&self, config: &EngineConfig) -> Arc<dyn Storage> {
        match self {
            Self::File => {
                let options = inorder_log::LogOptions {
                    fsync: config.fsync,
                    segment_bytes: config.segment_bytes,
                    ..inorder_log::LogOptions::default()
                };
                Arc::new(FileStorage::open(&config.data_dir, options).unwrap())
            }
            Self::Postgres { url } => {
                Arc::new(PgStorage::connect(url, PgStorageOptions::default()).await.unwrap())
            }
        }
    }

    /// Hands the storage to `builder`: for Postgres a new connection each time (a restart).
    pub async fn attach(&self, builder: EngineBuilder) -> EngineBuilder {
        match self {
            Self::File => builder,
            Self::Postgres { url } => {
                let storage = PgStorage::connect(url, PgStorageOptions::default()).await.unwrap();
                builder.storage(Arc::new(storage))
            }
        }
    }
}

/// How long tests wait for something that should happen quickly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One handler call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub key: String,
    pub action: String,
    pub position: u64,
    pub attempt: u32,
    pub ok: bool,
}

/// Decides a call's result from the event and the attempt.
pub type Behaviour = Arc<dyn Fn(&Event, u32) -> Result<Reply, HandlerError> + Send + Sync>;

/// Records calls and checks, on every call, that no other call for the same key is running.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    running: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Successful calls, per key, as positions in the order they were handled.
    pub fn handled_by_key(&self) -> HashMap<String, Vec<u64>> {
        let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
        for call in self.calls().into_iter().filter(|c| c.ok) {
            by_key.entry(call.key).or_default().push(call.position);
        }
        by_key
    }

    /// Successful calls of one key, as actions in order.
    pub fn actions_of(&self, key: &str) -> Vec<String> {
        self.calls().into_iter().filter(|c| c.ok && c.key == key).map(|c| c.action).collect()
    }

    pub fn overlaps(&self) -> usize {
        self.overlaps.load(AtomicOrdering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(AtomicOrdering::SeqCst)
    }
}

/// The handler every test uses.
pub struct RecordingHandler {
    pub recorder: Arc<Recorder>,
    pub behaviour: Behaviour,
    pub delay: Duration,
}

impl RecordingHandler {
    pub fn ok(recorder: &Arc<Recorder>) -> Self {
        Self::with(recorder, Arc::new(|_, _| Ok(Reply::Null)))
    }

    pub fn with(recorder: &Arc<Recorder>, behaviour: Behaviour) -> Self {
        Self { recorder: Arc::clone(recorder), behaviour, delay: Duration::ZERO }
    }

    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[async_trait::async_trait]
impl Handler for RecordingHandler {
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let recorder = &self.recorder;
        {
            let mut running = recorder.running.lock().unwrap();
            let count = running.entry(event.key.clone()).or_default();
            *count += 1;
            if *count > 1 {
                recorder.overlaps.fetch_add(1, AtomicOrdering::SeqCst);
            }
        }
        let now = recorder.concurrent.fetch_add(1, AtomicOrdering::SeqCst) + 1;
        recorder.max_concurrent.fetch_max(now, AtomicOrdering::SeqCst);
        // Leaves the call even if the behaviour panics (the engine catches handler panics).
        let _leave = Leave { recorder, key: &event.key };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let result = (self.behaviour)(event, context.attempt);
        recorder.calls.lock().unwrap().push(Call {
            key: event.key.clone(),
            action: event.action.clone(),
            position: event.position,
            attempt: context.attempt,
            ok: result.is_ok(),
        });
        result
    }
}

struct Leave<'a> {
    recorder: &'a Recorder,
    key: &'a str,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.recorder.concurrent.fetch_sub(1, AtomicOrdering::SeqCst);
        if let Some(count) =
            self.recorder.running.lock().unwrap_or_else(|e| e.into_inner()).get_mut(self.key)
        {
            *count -= 1;
        }
    }
}

/// An engine on a temporary directory (or a fresh database), restartable with the same
/// configuration.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: EngineConfig,
    pub storage: TestStorage,
    pub engine: Option<Engine>,
}

impl Fixture {
    pub fn new(configure: impl FnOnce(EngineConfig) -> EngineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = configure(EngineConfig::new(dir.path()));
        Self { dir, config, storage: TestStorage::from_env(), engine: None }
    }

    /// An engine builder of the configuration on the fixture's storage.
    pub async fn builder(&self) -> EngineBuilder {
        self.storage.attach(Engine::builder(self.config.clone())).await
    }

    /// Starts the engine with these handlers (by subscription).
    pub async fn start(&mut self, handlers: Vec<(&str, RecordingHandler)>) -> Engine {
        let mut builder = self.builder().await;
        for (subscription, handler) in handlers {
            builder = builder.handler(subscription, handler);
        }
        let engine = builder.start().await.unwrap();
        self.engine = Some(engine.clone());
        engine
    }

    /// Starts the engine on its storage behind `faults`.
    pub async fn start_faulty(
        &mut self,
        faults: &Arc<faults::Faults>,
        handlers: Vec<(&str, RecordingHandler)>,
    ) -> Engine {
        let inner = self.storage.open(&self.config).await;
        let storage = faults::FaultyStorage::new(inner, Arc::clone(faults));
        let mut builder = Engine::builder(self.config.clone()).storage(Arc::new(storage));
        for (subscription, handler) in handlers {
            builder = builder.handler(subscription, handler);
        }
        let engine = builder.start().await.unwrap();
        self.engine = Some(engine.clone());
        engine
    }

    /// Stops the engine (releasing its files) and starts it again.
    pub async fn restart(&mut self, handlers: Vec<(&str, RecordingHandler)>) -> Engine {
        self.stop().await;
        self.start(handlers).await
    }

    pub async fn stop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await;
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }
}

/// A topic with the Seqy purchase actions.
pub fn purchase_topic() -> TopicConfig {
    TopicConfig::new("user_purchase").actions(["user.created", "user.purchased", "user.paid"])
}

pub fn subscription(name: &str, topic: &str) -> SubscriptionConfig {
    SubscriptionConfig::new(name, [topic])
}

/// An event of `topic` for `key` with `action`.
pub fn event(topic: &str, key: &str, action: &str) -> Event {
    Event::builder(topic, key, action).build().unwrap()
}

/// Publishes and returns the position.
pub async fn publish(engine: &Engine, topic: &str, key: &str, action: &str) -> u64 {
    engine.publish(event(topic, key, action)).await.unwrap()
}

/// Waits until `position` of `topic` — and so every earlier one — is no longer pending (handled
/// by every subscription, or parked by one) and returns its status; fails the test if it stays
/// pending.
pub async fn settle(engine: &Engine, topic: &str, position: u64) -> EventStatus {
    resolved(engine, topic, position).await
}

/// Waits until `position` of `topic` is no longer pending and returns its status.
pub async fn resolved(engine: &Engine, topic: &str, position: u64) -> EventStatus {
    let status = engine.wait_event_status(topic, position, None, PATIENCE).await.unwrap();
    assert_ne!(status, EventStatus::Pending, "{topic}/{position} still pending after {PATIENCE:?}");
    status
}

/// Waits until every subscription of `topic` handled `position` (that event, whatever became
/// of the others); fails the test otherwise.
pub async fn processed(engine: &Engine, topic: &str, position: u64) {
    let status = resolved(engine, topic, position).await;
    assert_eq!(status, EventStatus::Processed, "{topic}/{position}");
}

/// The reason `position` of `topic` is parked by `subscription`, if it is.
pub async fn parked_reason(
    engine: &Engine,
    subscription: &str,
    topic: &str,
    position: u64,
) -> Option<ParkReason> {
    let parked = engine.parked(subscription, None, 1000).await.unwrap();
    parked.iter().find(|p| p.topic.as_str() == topic && p.position == position).map(|p| p.reason)
}

/// A retry policy for models with transient failures: 1 ms doubling to 5 ms, the default
/// number of attempts.
pub fn fast_retry() -> inorder::RetryPolicy {
    inorder::RetryPolicy {
        initial: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..inorder::RetryPolicy::default()
    }
}

/// Starts an engine of `config` on `storage`, one shared handler for every named subscription.
pub async fn start_shared(
    storage: &TestStorage,
    config: EngineConfig,
    subscriptions: &[&str],
    handler: &Arc<dyn Handler>,
) -> Engine {
    let mut builder = storage.attach(Engine::builder(config)).await;
    for subscription in subscriptions {
        builder = builder.shared_handler(subscription, Arc::clone(handler));
    }
    builder.start().await.unwrap()
}

/// A retry policy that keeps retrying quickly (5 ms doubling to 20 ms, 100,000 attempts): for
/// handlers that fail until the test lets them through.
pub fn patient_retry() -> inorder::RetryPolicy {
    inorder::RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts: 100_000,
        ..inorder::RetryPolicy::default()
    }
}

/// One key's successful calls as `(epoch, position or commit, what)` in call order, with an
/// immediate repeat across a restart (the event in flight when it stopped) collapsed; a repeat
/// within one epoch is a bug and fails the test.
pub fn once_each<T: Clone>(key: &str, calls: &[(u32, u64, T)]) -> Vec<(u64, T)> {
    let mut kept: Vec<(u32, u64, T)> = Vec::new();
    for call in calls {
        if let Some(last) = kept.last()
            && last.1 == call.1
        {
            assert!(call.0 > last.0, "key {key}: {} handled twice without a restart", call.1);
            continue;
        }
        kept.push(call.clone());
    }
    kept.into_iter().map(|(_, at, what)| (at, what)).collect()
}

/// Waits (polling) until `condition` holds; fails the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One key's successful calls as `(position, what)` in call order, for a handler taking runs of
/// up to `max_run` events: after a restart the key's run in flight may be handed again — some
/// of the events last handled (at most `max_run`), in their order, then new ones. Any other
/// repeat, and a repeat within one epoch, fails the test.
pub fn once_each_run<T: Clone>(
    key: &str,
    calls: &[(u32, u64, T)],
    max_run: usize,
) -> Vec<(u64, T)> {
    let mut kept: Vec<(u32, u64, T)> = Vec::new();
    // While a run is handed again: the index in `kept` of the repeat expected next.
    let mut again: Option<usize> = None;
    for call in calls {
        if let Some(next) = again.take()
            && kept.get(next).is_some_and(|k| k.1 == call.1)
        {
            assert!(call.0 > kept[next].0, "key {key}: {} handled twice without a restart", call.1);
            again = Some(next + 1);
            continue;
        }
        match kept.last() {
            Some(last) if call.1 <= last.1 => {
                let Some(at) = kept.iter().rposition(|k| k.1 == call.1) else {
                    panic!("key {key}: {} handled after {}", call.1, last.1);
                };
                assert!(
                    call.0 > kept[at].0,
                    "key {key}: {} handled twice without a restart",
                    call.1
                );
                assert!(
                    kept.len() - at <= max_run,
                    "key {key}: {} events handed again after a restart, more than a run ({max_run})",
                    kept.len() - at
                );
                again = Some(at + 1);
            }
            _ => kept.push(call.clone()),
        }
    }
    kept.into_iter().map(|(_, at, what)| (at, what)).collect()
}
