//! Several `inorder serve` processes on one PostgreSQL (`[cluster]`), delivering to a webhook
//! receiver in the test process that records every call: each key on one node at a time, in
//! order, nothing lost — through a `kill -9` of a node and its restart, and through a node
//! frozen (SIGSTOP) past its lease, whose late checkpoint fencing refuses before it rejoins; a
//! subscription created, paused and deleted through one node runs, pauses and stops on all.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use common::{ServerProcess, client, eventually, get};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// One webhook call: key, index within the key, start, end.
type Call = (String, u64, Instant, Instant);

#[derive(Default)]
struct Receiver {
    calls: Mutex<Vec<Call>>,
    delay: Duration,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap) -> &'static str {
    let start = Instant::now();
    let id = headers["ce-id"].to_str().unwrap().to_owned();
    let (key, index) = id.rsplit_once('#').unwrap();
    if !receiver.delay.is_zero() {
        tokio::time::sleep(receiver.delay).await;
    }
    receiver.calls.lock().push((key.to_owned(), index.parse().unwrap(), start, Instant::now()));
    "ok"
}

async fn start_receiver(delay: Duration) -> (Arc<Receiver>, SocketAddr) {
    let receiver = Arc::new(Receiver { calls: Mutex::default(), delay });
    let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, address)
}

fn config(url: &str, node: &str, hook: SocketAddr, ttl: &str) -> String {
    format!(
        r#"
[storage.postgres]
url = "{url}"

[cluster]
node = "{node}"
partitions = 16
lease_ttl = "{ttl}"

[[topics]]
name = "orders"

[[subscriptions]]
name = "hook"
topics = ["orders"]
delivery = "webhook"
max_keys_in_flight = 64

[subscriptions.webhook]
url = "http://{hook}/hook"
timeout = "5s"
"#
    )
}

/// Publishes events `from..to` of every key (`keys` keys) through `server`, in batches of 100;
/// event `i` of key `k` has id `k{k}#{i}`. Returns the last position.
async fn publish(server: &ServerProcess, keys: usize, from: u64, to: u64) -> u64 {
    let mut last = 0;
    let all: Vec<Value> = (from..to)
        .flat_map(|i| {
            (0..keys).map(move |k| {
                json!({"specversion": "1.0", "id": format!("k{k}#{i}"), "source": "/test",
                       "type": "placed", "partitionkey": format!("k{k}"), "data": {"i": i}})
            })
        })
        .collect();
    for chunk in all.chunks(100) {
        let response = client()
            .post(server.url("/v1/topics/orders/events:batch"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::from(chunk.to_vec()).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        last = body["positions"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(Value::as_u64)
            .unwrap_or(last);
    }
    last
}

/// Waits until every (key, index) below `per_key` of `keys` keys was delivered at least once.
async fn wait_all(receiver: &Receiver, keys: usize, per_key: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen: BTreeSet<(String, u64)> =
            receiver.calls.lock().iter().map(|c| (c.0.clone(), c.1)).collect();
        if seen.len() as u64 == keys as u64 * per_key {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events delivered",
            seen.len(),
            keys as u64 * per_key
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per key: calls never overlap, and none starts before every earlier index of its key was
/// delivered (a redelivery at a takeover is allowed; a skip or an overtake is not). Returns the
/// redeliveries.
fn check_order(receiver: &Receiver) -> usize {
    let calls = receiver.calls.lock();
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in calls.iter() {
        by_key.entry(call.0.as_str()).or_default().push(call);
    }
    let mut again = 0;
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| c.2);
        for pair in calls.windows(2) {
            assert!(pair[0].3 <= pair[1].2, "key {key}: two calls at once: {pair:?}");
        }
        let mut done = BTreeSet::new();
        for call in calls {
            assert!(
                (0..call.1).all(|i| done.contains(&i)),
                "key {key}: index {} delivered before an earlier one",
                call.1
            );
            if !done.insert(call.1) {
                again += 1;
            }
        }
    }
    again
}

async fn status(server: &ServerProcess, position: u64) -> u16 {
    get(server, &format!("/v1/status/orders/{position}?wait=10s")).await.0
}

async fn metric(server: &ServerProcess, name: &str) -> f64 {
    let text = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_event_in_key_order_through_a_kill_9_and_a_restart() {
    let url = inorder_testpg::fresh_database().unwrap();
    let (receiver, hook) = start_receiver(Duration::ZERO).await;
    let (keys, per_key) = (1_000, 100);
    let mut nodes: Vec<ServerProcess> = (1..=3)
        .map(|n| ServerProcess::start(&config(&url, &format!("n{n}"), hook, "2s")))
        .collect();
    // Publish through all three, a tenth of each key's events at a time.
    let mut last = 0;
    for round in 0..10 {
        let node = &nodes[round % 3];
        last = last.max(publish(node, keys, round as u64 * 10, round as u64 * 10 + 10).await);
        if round == 4 {
            nodes[1].kill9();
        }
        if round == 6 {
            nodes[1].restart();
        }
    }
    wait_all(&receiver, keys, per_key, Duration::from_secs(240)).await;
    let again = check_order(&receiver);
    eprintln!("redelivered at takeovers: {again}");
    for node in &nodes {
        assert_eq!(status(node, last).await, 200, "every node answers for the cluster");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_is_fenced_and_rejoins() {
    let url = inorder_testpg::fresh_database().unwrap();
    let (receiver, hook) = start_receiver(Duration::from_millis(20)).await;
    let (keys, per_key) = (100, 40);
    let first = ServerProcess::start(&config(&url, "first", hook, "1s"));
    let second = ServerProcess::start(&config(&url, "second", hook, "1s"));
    // Both hold partitions before the freeze.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&first, "inorder_leases_held").await < 1.0
        || metric(&second, "inorder_leases_held").await < 1.0
    {
        assert!(Instant::now() < deadline, "the partitions were never split");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&first, keys, 0, per_key / 2).await;
    // Freeze `second` while it has calls in flight, past its lease: `first` takes everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&first, "inorder_leases_held").await < 16.0 {
        assert!(Instant::now() < deadline, "the frozen node's partitions were never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = publish(&first, keys, per_key / 2, per_key).await;
    second.signal("CONT");
    wait_all(&receiver, keys, per_key, Duration::from_secs(120)).await;
    // Its late checkpoints were refused, and it rejoins: it holds partitions again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&second, "inorder_leases_held").await < 1.0 {
        assert!(Instant::now() < deadline, "the thawed node never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&second, "inorder_leases_lost_total").await >= 1.0);
    assert!(
        metric(&second, "inorder_checkpoints_fenced_total").await >= 1.0,
        "the frozen node's checkpoints after the takeover were refused"
    );
    check_order(&receiver);
    for node in [&first, &second] {
        assert_eq!(status(node, last).await, 200);
    }
}

/// The subscriptions `server` runs, by name, with their `paused` flag.
async fn running(server: &ServerProcess) -> BTreeMap<String, bool> {
    let (status, body) = get(server, "/v1/subscriptions").await;
    assert_eq!(status, 200, "{body}");
    body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["paused"].as_bool().unwrap_or(false)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_through_one_node_runs_pauses_and_stops_on_every_node() {
    let url = inorder_testpg::fresh_database().unwrap();
    let (receiver, hook) = start_receiver(Duration::ZERO).await;
    // Nodes without a declared subscription: only the topic.
    let bare = |node: &str| {
        let full = config(&url, node, hook, "1s");
        full[..full.find("[[subscriptions]]").unwrap()].to_owned()
    };
    let (one, two) = (ServerProcess::start(&bare("one")), ServerProcess::start(&bare("two")));
    let definition = json!({"topics": ["orders"], "delivery": "webhook", "max_keys_in_flight": 64,
                            "webhook": {"url": format!("http://{hook}/hook")}});
    let response = client()
        .put(one.url("/v1/subscriptions/hook"))
        .header("content-type", "application/json")
        .body(definition.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    eventually("the other node runs it", Duration::from_secs(20), async || {
        let seen = running(&two).await;
        if seen.contains_key("hook") { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    eventually("node two takes its share", Duration::from_secs(20), async || {
        let held = metric(&two, "inorder_leases_held").await;
        if held >= 1.0 { Ok(()) } else { Err(format!("{held}")) }
    })
    .await;
    // Both nodes hand events over: every key delivered, in order, part of them by node two.
    let (keys, per_key) = (100, 20);
    publish(&two, keys, 0, per_key).await;
    wait_all(&receiver, keys, per_key, Duration::from_secs(60)).await;
    check_order(&receiver);
    eventually("node two delivered its partitions' events", Duration::from_secs(20), async || {
        let sent = metric(&two, "inorder_webhook_requests_total").await;
        if sent > 0.0 { Ok(()) } else { Err(format!("{sent}")) }
    })
    .await;
    // A pause through node two holds node one's calls too; a delete through it stops node one.
    let (status, body) = common::post_json(&two, "/v1/subscriptions/hook:pause", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    eventually("node one paused", Duration::from_secs(20), async || {
        let seen = running(&one).await;
        if seen.get("hook") == Some(&true) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    let response = client().delete(two.url("/v1/subscriptions/hook")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    eventually("node one stopped it", Duration::from_secs(20), async || {
        let seen = running(&one).await;
        if seen.contains_key("hook") { Err(format!("{seen:?}")) } else { Ok(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_pulling_from_every_node_gets_every_event_in_key_order() {
    let url = inorder_testpg::fresh_database().unwrap();
    let (_unused, hook) = start_receiver(Duration::ZERO).await;
    // The webhook subscription replaced by a pull one (the default delivery).
    let pulled = |node: &str| {
        let full = config(&url, node, hook, "2s");
        format!(
            "{}[[subscriptions]]\nname = \"jobs\"\ntopics = [\"orders\"]\n",
            &full[..full.find("[[subscriptions]]").unwrap()]
        )
    };
    let nodes = [ServerProcess::start(&pulled("one")), ServerProcess::start(&pulled("two"))];
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&nodes[0], "inorder_leases_held").await < 1.0
        || metric(&nodes[1], "inorder_leases_held").await < 1.0
    {
        assert!(Instant::now() < deadline, "the partitions were never split");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (keys, per_key) = (50, 20);
    publish(&nodes[0], keys, 0, per_key).await;
    let total = keys * 20;
    // One consumer, pulling from each node in turn, acking what it got before the next pull.
    let receiver = Receiver::default();
    let mut from_node = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0;
    loop {
        let seen: BTreeSet<(String, u64)> =
            receiver.calls.lock().iter().map(|c| (c.0.clone(), c.1)).collect();
        if seen.len() == total {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {total} pulled", seen.len());
        let node = &nodes[turn % 2];
        let messages = common::pull(node, "jobs", 100, "100ms").await;
        let start = Instant::now();
        let leases: Vec<&str> = messages.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        if !leases.is_empty() {
            common::ack(node, "jobs", &leases).await;
        }
        let end = Instant::now();
        for message in &messages {
            let id = message["event"]["id"].as_str().unwrap();
            let (key, index) = id.rsplit_once('#').unwrap();
            receiver.calls.lock().push((key.to_owned(), index.parse().unwrap(), start, end));
        }
        from_node[turn % 2] += messages.len();
        turn += 1;
    }
    check_order(&receiver);
    assert!(
        from_node.iter().all(|&n| n > 0),
        "each node leased its partitions' events: {from_node:?}"
    );
}
