//! What a stop leaves behind: a `201 Created` means the event is on disk at that position,
//! through `kill -9` of the server in the middle of concurrent publishes and through a graceful
//! SIGTERM, and publishing the same ids again never makes a second copy.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{ServerProcess, client, read_all};
use serde_json::json;

const CONFIG: &str = r#"
[[topics]]
name = "orders"
"#;

/// Publishers each sending their own key in order until the server goes away.
const PUBLISHERS: usize = 8;

/// What one publisher learned: every id the server acknowledged, with its position, and the id
/// that was in flight when the connection broke (it may or may not be on disk).
#[derive(Debug, Default)]
struct Sent {
    key: String,
    acked: Vec<(String, u64)>,
    in_flight: Option<String>,
}

async fn publisher(base: String, key: String, acked: Arc<AtomicUsize>) -> Sent {
    let client = client();
    let mut sent = Sent { key, ..Sent::default() };
    for i in 0.. {
        let id = format!("{}-{i:06}", sent.key);
        let event = json!({
            "specversion": "1.0", "id": id, "source": "/crash", "type": "tick",
            "partitionkey": sent.key, "data": {"i": i},
        });
        sent.in_flight = Some(id.clone());
        let response = client
            .post(format!("{base}/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await;
        let Ok(response) = response else { return sent };
        if response.status().as_u16() != 201 {
            return sent;
        }
        let Ok(body) = response.json::<serde_json::Value>().await else { return sent };
        sent.acked.push((id, body["position"].as_u64().unwrap()));
        sent.in_flight = None;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    unreachable!("the loop only ends when the server goes away")
}

/// Starts the publishers (keys `{round}-{n}`), waits until `threshold` publishes were acknowledged, stops the server
/// with `stop`, and returns what every publisher sent.
async fn publish_until_stopped(
    server: &mut ServerProcess,
    round: usize,
    threshold: usize,
    stop: impl FnOnce(&mut ServerProcess),
) -> Vec<Sent> {
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|n| {
            let key = format!("{round}-{n}");
            tokio::spawn(publisher(server.base.clone(), key, Arc::clone(&acked)))
        })
        .collect();
    while acked.load(Ordering::Relaxed) < threshold {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(server);
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await.unwrap());
    }
    sent
}

/// Checks the log against what the publishers were told: every acknowledged id at its position,
/// no id twice, no gap in positions, and each publisher's events in the order it sent them.
async fn assert_log_holds_every_acknowledged_event(server: &ServerProcess, sent: &[Sent]) {
    let events = read_all(server, "orders").await;
    let mut by_id = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let position = event["position"].as_u64().unwrap();
        assert_eq!(position, index as u64 + 1, "positions have no gaps");
        let id = event["id"].as_str().unwrap().to_owned();
        assert!(by_id.insert(id.clone(), position).is_none(), "{id} is in the log twice");
    }
    for sent in sent {
        for (id, position) in &sent.acked {
            assert_eq!(by_id.get(id), Some(position), "acknowledged {id} is at its position");
        }
        let in_log: Vec<_> = events
            .iter()
            .filter(|e| e["partitionkey"] == sent.key.as_str())
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let mut sorted = in_log.clone();
        sorted.sort_unstable();
        assert_eq!(in_log, sorted, "publisher {}'s events are in the order it sent them", sent.key);
        assert!(
            in_log.len() <= sent.acked.len() + usize::from(sent.in_flight.is_some()),
            "only acknowledged events and the one in flight can be in the log"
        );
    }
}

/// Publishing every id again returns the positions already given and appends nothing.
async fn assert_publishing_again_deduplicates(server: &ServerProcess, sent: &[Sent]) {
    let before = read_all(server, "orders").await.len();
    let client = client();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for sent in sent {
        expected.extend(sent.acked.iter().cloned());
    }
    for (id, position) in expected.iter().step_by(7) {
        let event = json!({"specversion": "1.0", "id": id, "source": "/crash", "type": "tick"});
        let response = client
            .post(server.url("/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["position"], *position, "{id} is deduplicated to its first position");
    }
    assert_eq!(read_all(server, "orders").await.len(), before, "nothing was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_publishes_loses_no_acknowledged_event() {
    let mut server = ServerProcess::start(CONFIG);
    for round in 1..=3 {
        let sent = publish_until_stopped(&mut server, round, 300, ServerProcess::kill9).await;
        server.restart();
        assert_log_holds_every_acknowledged_event(&server, &sent).await;
        assert_publishing_again_deduplicates(&server, &sent).await;
        eprintln!("round {round}: {} events survive", read_all(&server, "orders").await.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_publishes_in_flight_and_exits_cleanly() {
    let mut server = ServerProcess::start(CONFIG);
    let mut exit = None;
    let sent =
        publish_until_stopped(&mut server, 1, 300, |server| exit = Some(server.terminate())).await;
    assert!(exit.unwrap().success(), "a graceful stop exits with 0");
    server.restart();
    assert_log_holds_every_acknowledged_event(&server, &sent).await;
    let acknowledged: usize = sent.iter().map(|s| s.acked.len()).sum();
    let in_log = read_all(&server, "orders").await.len();
    assert!(in_log >= acknowledged);
}
