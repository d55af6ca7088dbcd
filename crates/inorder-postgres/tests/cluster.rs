//! Cluster mode on a real PostgreSQL: leases and their fencing at the storage, then engines
//! sharing the work of one subscription — each key on one node at a time, in order, status the
//! same on every node, partitions moving when a node leaves.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use inorder::{
    ClusterConfig, Engine, EngineConfig, Error, EventStatus, Name, StreamId, StreamState,
    SubscriptionConfig, TopicConfig, handler_fn,
    storage::{Fence, Lease, StateOp, Storage},
};
use inorder_postgres::{PgStorage, PgStorageOptions};

const PATIENCE: Duration = Duration::from_secs(30);

async fn fresh() -> String {
    tokio::task::spawn_blocking(inorder_testpg::fresh_database).await.unwrap().unwrap()
}

async fn open(url: &str) -> Arc<PgStorage> {
    Arc::new(PgStorage::connect(url, PgStorageOptions::default()).await.unwrap())
}

/// Waits until `node` holds `count` leases, each renewed at least `rounds` lease rounds
/// (`ttl`/3 each) after this call began, in the database's clock: the lease rounds have run,
/// whatever the machine's speed.
async fn renewed_for_rounds(url: &str, node: &str, count: i64, ttl: Duration, rounds: u32) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let since: std::time::SystemTime = client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let ahead = (ttl + ttl / 3 * rounds).as_secs_f64();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let renewed: i64 = client
            .query_one(
                "SELECT count(*) FROM inorder_leases \
                 WHERE owner = $1 AND expires_at > $2::timestamptz + make_interval(secs => $3::float8)",
                &[&node, &since, &ahead],
            )
            .await
            .unwrap()
            .get(0);
        if renewed == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: {renewed} of {count} leases renewed {rounds} rounds on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn fence(lease: &Lease, node: &str) -> Fence {
    Fence {
        subscription: lease.subscription.clone(),
        partition: lease.partition,
        node: node.to_owned(),
        epoch: lease.epoch,
    }
}

fn progress(lease: &Lease, watermark: u64) -> StateOp {
    StateOp::Stream {
        stream: StreamId::partitioned(lease.subscription.clone(), name("t"), lease.partition),
        state: StreamState { watermark, ..StreamState::default() },
    }
}

/// Waits until `node` can take `max` partitions (they expire), returning them.
async fn take_when_free(storage: &PgStorage, node: &str, max: usize, ttl: Duration) -> Vec<Lease> {
    let coordination = storage.coordination().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let taken = coordination.acquire(node, &name("s"), max, ttl).await.unwrap();
        if !taken.is_empty() || Instant::now() > deadline {
            return taken;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_lease_can_store_nothing_more_for_that_partition() {
    let url = fresh().await;
    let storage = open(&url).await;
    let coordination = storage.coordination().unwrap();
    let ttl = Duration::from_secs(1);
    coordination.ensure_partitions(&name("s"), 2).await.unwrap();
    let a = coordination.acquire("a", &name("s"), 1, ttl).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].epoch, 1, "first take");
    storage
        .commit(vec![progress(&a[0], 10), StateOp::Fence(fence(&a[0], "a"))], true)
        .await
        .unwrap();

    // While a holds it, b gets only the other partition.
    let b_other = coordination.acquire("b", &name("s"), 2, ttl).await.unwrap();
    assert_eq!(b_other.len(), 1);
    assert_ne!(b_other[0].partition, a[0].partition);

    // a stops renewing; after the TTL b takes the partition with the next epoch.
    let b = take_when_free(&storage, "b", 1, Duration::from_secs(60)).await;
    let b = b.iter().find(|l| l.partition == a[0].partition).cloned().unwrap_or_else(|| {
        panic!("b took {b:?}, not partition {}", a[0].partition);
    });
    assert_eq!(b.epoch, 2);

    // a's late checkpoint is refused whole, and changes nothing.
    let late =
        storage.commit(vec![progress(&a[0], 99), StateOp::Fence(fence(&a[0], "a"))], true).await;
    assert!(
        matches!(late, Err(Error::Fenced { partition, .. }) if partition == a[0].partition),
        "{late:?}"
    );
    let stored = storage
        .stream_state(&StreamId::partitioned(name("s"), name("t"), a[0].partition))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.watermark, 10, "the fenced commit wrote nothing");
    assert!(coordination.renew("a", ttl).await.unwrap().is_empty(), "a holds nothing now");

    // The new owner stores.
    storage.commit(vec![progress(&b, 11), StateOp::Fence(fence(&b, "b"))], true).await.unwrap();
    // The partition count is fixed once chosen.
    let other = coordination.ensure_partitions(&name("s"), 4).await;
    assert!(matches!(other, Err(Error::InvalidConfig { .. })), "{other:?}");
    // Released leases are free at once.
    coordination.release("b", std::slice::from_ref(&b)).await.unwrap();
    let again = coordination.acquire("c", &name("s"), 2, ttl).await.unwrap();
    let taken: Vec<_> = again.iter().map(|l| (l.partition, l.epoch)).collect();
    assert!(taken.contains(&(b.partition, 3)), "{taken:?}");
}

/// One handler call: (node, key, position, start, end).
type Call = (String, String, u64, Instant, Instant);
/// What the handlers saw.
type Calls = Arc<Mutex<Vec<Call>>>;

async fn node(url: &str, node: &str, calls: &Calls) -> Engine {
    let mut config = EngineConfig::new("unused-with-postgres")
        .topic(TopicConfig::new("orders"))
        .subscription(SubscriptionConfig::new("billing", ["orders"]));
    config.cluster = Some(ClusterConfig {
        node: node.to_owned(),
        partitions: 8,
        lease_ttl: Duration::from_secs(1),
    });
    let (calls, who) = (Arc::clone(calls), node.to_owned());
    let handler = handler_fn(move |event, _| {
        let (calls, who) = (Arc::clone(&calls), who.clone());
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_micros(200)).await;
            calls.lock().unwrap().push((
                who,
                event.key.clone(),
                event.position,
                start,
                Instant::now(),
            ));
            Ok(inorder::Reply::default())
        }
    });
    Engine::builder(config)
        .handler("billing", handler)
        .storage(open(url).await as Arc<dyn Storage>)
        .start()
        .await
        .unwrap()
}

async fn publish(engine: &Engine, from: usize, to: usize) -> u64 {
    let mut last = 0;
    for i in from..to {
        let event = inorder::Event::builder("orders", format!("k-{}", i % 40), "placed")
            .data(format!("{{\"i\":{i}}}"), Some("application/json".to_owned()))
            .build()
            .unwrap();
        last = engine.publish(event).await.unwrap();
    }
    last
}

/// Every key's calls never overlap, and none starts before every earlier event of its key was
/// handled (at-least-once: an event handed over between nodes may be handled again, never
/// skipped or overtaken); returns the positions handled per key.
fn check_order(calls: &Calls) -> BTreeMap<String, Vec<u64>> {
    let calls = calls.lock().unwrap();
    let mut by_key: BTreeMap<String, Vec<&Call>> = BTreeMap::new();
    for call in calls.iter() {
        by_key.entry(call.1.clone()).or_default().push(call);
    }
    let mut positions = BTreeMap::new();
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| c.3);
        for pair in calls.windows(2) {
            assert!(pair[0].4 <= pair[1].3, "key {key}: calls overlap: {pair:?}");
        }
        let all: std::collections::BTreeSet<u64> = calls.iter().map(|c| c.2).collect();
        let mut done = std::collections::BTreeSet::new();
        for call in &calls {
            let missing: Vec<_> = all.range(..call.2).filter(|p| !done.contains(*p)).collect();
            assert!(missing.is_empty(), "key {key}: {call:?} before {missing:?}");
            done.insert(call.2);
        }
        positions.insert(key, all.into_iter().collect());
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_subscription_by_key_and_one_takes_all_when_the_other_leaves() {
    let url = fresh().await;
    let calls: Calls = Arc::default();
    let a = node(&url, "node-a", &calls).await;
    let b = node(&url, "node-b", &calls).await;
    // Both publish; wait until the work is split (each holds partitions) and everything is done.
    publish(&a, 0, 200).await;
    let last = publish(&b, 200, 400).await;
    for engine in [&a, &b] {
        let status = engine.wait_event_status("orders", last, None, PATIENCE).await.unwrap();
        assert_eq!(status, EventStatus::Processed, "status answers for the whole cluster");
    }
    let deadline = Instant::now() + PATIENCE;
    while calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "the second node never took partitions");
        let last = publish(&a, 0, 40).await;
        a.wait_event_status("orders", last, None, PATIENCE).await.unwrap();
    }
    let positions = check_order(&calls);
    let handled: std::collections::BTreeSet<u64> = positions.values().flatten().copied().collect();
    let published = a.read("orders", 1, 10_000).await.unwrap().len() as u64;
    assert_eq!(handled.len() as u64, published, "every event handled");

    // b leaves (releasing its partitions): a handles every key from now on.
    b.shutdown().await;
    calls.lock().unwrap().clear();
    let last = publish(&a, 400, 600).await;
    let status = a.wait_event_status("orders", last, None, PATIENCE).await.unwrap();
    assert_eq!(status, EventStatus::Processed);
    check_order(&calls);
    let nodes: std::collections::BTreeSet<String> =
        calls.lock().unwrap().iter().map(|c| c.0.clone()).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["node-a"]);
    a.shutdown().await;
}

/// A node that does not run a subscription (declared on the other node only) takes no share of
/// it: the node that runs it handles every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_one_node_runs_is_handled_whole_by_that_node() {
    let url = fresh().await;
    let calls: Calls = Arc::default();
    let runs = node(&url, "runs-it", &calls).await;
    let mut config = EngineConfig::new("unused-with-postgres").topic(TopicConfig::new("orders"));
    config.cluster = Some(ClusterConfig {
        node: "does-not".to_owned(),
        partitions: 8,
        lease_ttl: Duration::from_secs(1),
    });
    let other = Engine::builder(config)
        .storage(open(&url).await as Arc<dyn Storage>)
        .start()
        .await
        .unwrap();
    // Once now, and once after four lease rounds (ttl/3 each), when each node has long seen the
    // other's heartbeat and any share would have been given up.
    for (from, to) in [(0, 100), (100, 200)] {
        let last = publish(&other, from, to).await;
        let status = runs.wait_event_status("orders", last, None, PATIENCE).await.unwrap();
        assert_eq!(status, EventStatus::Processed, "events {from}..{to}");
        renewed_for_rounds(&url, "runs-it", 8, Duration::from_secs(1), 4).await;
    }
    let positions = check_order(&calls);
    assert_eq!(positions.values().map(Vec::len).sum::<usize>(), 200);
    other.shutdown().await;
    runs.shutdown().await;
}
