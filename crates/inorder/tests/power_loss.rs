//! The engine through power losses: it runs on the simulated file system (`SimVfs`, which keeps
//! what was written apart from what was made durable), publishes, handles, checkpoints and
//! parks; power is cut at a random point; the engine reopens what the power loss left. On the
//! survivors, the guarantees:
//!
//! 1. every acknowledged publish is in the log, at its position, with its id;
//! 2. no position is handed out twice (the next publish takes the next position; a retry of an
//!    acknowledged id answers its position);
//! 3. no resolution is lost: each stream's watermark is at least what it published before the
//!    power loss, and a parked event is still parked;
//! 4. per key, handlers ran in log order, one at a time: across the power loss at most the event
//!    a key had in flight is handled again.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering as AtomicOrdering},
    },
    time::Duration,
};

use inorder::{
    Engine, EngineConfig, Event, EventStatus, FsyncPolicy, Handler, HandlerContext, HandlerError,
    Reply, RetryPolicy, SubscriptionConfig, TopicConfig, storage::FileStorage,
};
use inorder_log::{
    LogOptions,
    vfs::{Vfs, sim::SimVfs},
};

/// Successful calls: (epoch, key, position).
type Calls = Arc<Mutex<Vec<(u32, String, u64)>>>;

/// Succeeds, except: a first attempt at every third position fails (retried), an action
/// `bad` fails for good (parked). Records successes with the epoch (0 before the power loss).
struct Flaky {
    calls: Calls,
    epoch: Arc<AtomicU32>,
    running: Mutex<HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        {
            let mut running = self.running.lock().unwrap();
            let count = running.entry(event.key.clone()).or_default();
            assert_eq!(*count, 0, "two calls of key {} at once", event.key);
            *count += 1;
        }
        tokio::task::yield_now().await;
        self.running.lock().unwrap().insert(event.key.clone(), 0);
        if event.action == "bad" {
            return Err(HandlerError::permanent("bad"));
        }
        if context.attempt == 1 && event.position.is_multiple_of(3) {
            return Err(HandlerError::retry("flaky"));
        }
        let epoch = self.epoch.load(AtomicOrdering::SeqCst);
        self.calls.lock().unwrap().push((epoch, event.key.clone(), event.position));
        Ok(Reply::Null)
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let retry = RetryPolicy {
        initial: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        ..RetryPolicy::default()
    };
    EngineConfig::new(dir)
        .topic(TopicConfig::new("t"))
        .subscription(SubscriptionConfig::new("s", ["t"]).retry(retry))
}

async fn start(dir: &std::path::Path, vfs: Arc<dyn Vfs>, handler: &Arc<Flaky>) -> Engine {
    let options = LogOptions { fsync: FsyncPolicy::Group, ..LogOptions::default() };
    // The previous engine's tasks may still hold the state tree for a moment.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let storage = loop {
        match FileStorage::open_with_vfs(Arc::clone(&vfs), dir, options) {
            Ok(storage) => break storage,
            Err(error) if std::time::Instant::now() < deadline => {
                assert!(error.to_string().contains("Locked"), "{error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    Engine::builder(config(dir))
        .storage(Arc::new(storage))
        .shared_handler("s", Arc::clone(handler) as Arc<dyn Handler>)
        .start()
        .await
        .unwrap()
}

/// What the first run saw acknowledged before the power loss.
#[derive(Default)]
struct Before {
    /// position → (id, key)
    published: HashMap<u64, (String, String)>,
    /// position → commit position, of the acknowledged events
    commits: HashMap<u64, u64>,
    watermark: u64,
    parked: Vec<u64>,
}

async fn run_until_power_loss(engine: &Engine, rng: &mut fastrand::Rng, ops: usize) -> Before {
    let mut before = Before::default();
    for op in 0..ops {
        let count = rng.usize(1..=4);
        let events: Vec<Event> = (0..count)
            .map(|i| {
                let key = format!("k{}", rng.u8(0..5));
                let action = if rng.u8(0..12) == 0 { "bad" } else { "ok" };
                Event::builder("t", key.as_str(), action).id(format!("e{op}-{i}")).build().unwrap()
            })
            .collect();
        let sent: Vec<(String, String)> =
            events.iter().map(|e| (e.id.clone(), e.key.clone())).collect();
        let positions = engine.publish_batch(events).await.unwrap();
        for (position, sent) in positions.into_iter().zip(sent) {
            before.published.insert(position, sent);
        }
        if rng.bool() {
            tokio::time::sleep(Duration::from_micros(rng.u64(0..1500))).await;
        }
    }
    for event in engine.read("t", 1, 1000).await.unwrap() {
        if before.published.contains_key(&event.position) {
            before.commits.insert(event.position, event.commit);
        }
    }
    let status = engine.subscriptions().await.unwrap()[0].streams[0].status.clone();
    before.watermark = status.watermark;
    for position in 1..=status.watermark {
        if let EventStatus::Parked(_) = engine.event_status("t", position, None).await.unwrap() {
            before.parked.push(position);
        }
    }
    before
}

fn check_one_seed(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(SimVfs::new());
    let calls: Calls = Arc::default();
    let epoch = Arc::new(AtomicU32::new(0));
    let handler = Arc::new(Flaky {
        calls: Arc::clone(&calls),
        epoch: Arc::clone(&epoch),
        running: Mutex::default(),
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let ops = rng.usize(1..25);

    let first =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let before = first.block_on(async {
        let engine = start(dir.path(), Arc::clone(&vfs) as Arc<dyn Vfs>, &handler).await;
        run_until_power_loss(&engine, &mut rng, ops).await
    });
    // Power loss: every task stops where it is (no handler call runs on after this); what the
    // disk holds is what was durable.
    first.shutdown_timeout(Duration::from_secs(10));
    let image: Arc<dyn Vfs> = Arc::new(vfs.crash_power(seed));
    epoch.store(1, AtomicOrdering::SeqCst);
    handler.running.lock().unwrap().clear();

    let second =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    second.block_on(async {
        let engine = start(dir.path(), image, &handler).await;
        let status = engine.subscriptions().await.unwrap()[0].streams[0].status.clone();
        assert!(status.watermark >= before.watermark, "seed {seed}: the watermark went back");
        for position in &before.parked {
            let status = engine.event_status("t", *position, None).await.unwrap();
            assert!(matches!(status, EventStatus::Parked(_)), "seed {seed}: {position} unparked");
        }
        // 1. Every acknowledged publish, where it was.
        let last = engine.topics().await.unwrap()[0].last_position;
        let stored = engine.read("t", 1, 1000).await.unwrap();
        for (position, (id, key)) in &before.published {
            let event = stored.iter().find(|e| e.position == *position);
            let event =
                event.unwrap_or_else(|| panic!("seed {seed}: acknowledged {position} lost"));
            assert_eq!((&event.id, &event.key), (id, key), "seed {seed}: position {position}");
        }
        // Acknowledged events keep their commit positions, which grow with positions.
        for event in &stored {
            if let Some(commit) = before.commits.get(&event.position) {
                assert_eq!(event.commit, *commit, "seed {seed}: commit of {}", event.position);
            }
        }
        assert!(stored.windows(2).all(|w| w[0].commit < w[1].commit), "seed {seed}: commits");
        // 2. No position twice (nor commit position).
        let next =
            engine.publish(Event::builder("t", "after", "ok").build().unwrap()).await.unwrap();
        assert_eq!(next, last + 1, "seed {seed}");
        let after = engine.read("t", next, 1).await.unwrap()[0].commit;
        let highest = before.commits.values().chain(stored.iter().map(|e| &e.commit)).max();
        assert!(highest.is_none_or(|highest| after > *highest), "seed {seed}: commit reused");
        if let Some((position, (id, key))) = before.published.iter().next() {
            let retry = Event::builder("t", key.as_str(), "ok").id(id.as_str()).build().unwrap();
            assert_eq!(engine.publish(retry).await.unwrap(), *position, "seed {seed}: dedupe");
        }
        // 4. Drain, then per key: log order, at most the in-flight event again.
        common::settle(&engine, "t", next).await;
        let stored = engine.read("t", 1, 1000).await.unwrap();
        let mut by_key: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        for (epoch, key, position) in calls.lock().unwrap().iter() {
            by_key.entry(key.clone()).or_default().push((*epoch, *position));
        }
        for (key, handled) in by_key {
            let mut kept: Vec<(u32, u64)> = Vec::new();
            for call in handled {
                match kept.last() {
                    Some(last) if last.1 == call.1 => {
                        assert!(call.0 > last.0, "seed {seed}: key {key} handled {} twice", call.1);
                    }
                    Some(last) => {
                        assert!(
                            call.1 > last.1,
                            "seed {seed}: key {key} out of order at {}",
                            call.1
                        );
                        kept.push(call);
                    }
                    None => kept.push(call),
                }
            }
            let expected: Vec<u64> = stored
                .iter()
                .filter(|e| e.key == key && e.action != "bad")
                .map(|e| e.position)
                .collect();
            let handled: Vec<u64> = kept.iter().map(|(_, p)| *p).collect();
            assert_eq!(handled, expected, "seed {seed}: key {key}");
        }
        engine.shutdown().await;
    });
}

#[test]
fn the_guarantees_hold_on_what_a_power_loss_leaves() {
    if common::TestStorage::from_env() != common::TestStorage::File {
        return; // file storage only: the Postgres pass has no file system to cut
    }
    for seed in 0..40 {
        check_one_seed(seed);
    }
}
