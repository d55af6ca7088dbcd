//! What the status route answers for an event that will not be handled: a parked (or
//! discarded) event is 409 `event-parked` saying which subscription parked it, why, and the id to
//! retry it by — never 200, never an endless 425 — and a long-poll ends as soon as it is parked.
//! A later event of its key blocked behind it (`on_failure = "block"`) is pending (425) until an
//! operator retries the parked one.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    ServerProcess, ack, client, decode, event, eventually, get, inorder, post_event, post_json,
    problem_type, pull, stdout,
};
use serde_json::{Value, json};

/// One topic `t`, one pull subscription `s` that parks an event after a single failed attempt.
fn config(on_failure: &str) -> String {
    format!(
        r#"
[[topics]]
name = "t"

[[subscriptions]]
name = "s"
topics = ["t"]
ordering = "fifo"
on_failure = "{on_failure}"
max_attempts = 1
"#
    )
}

async fn publish(server: &ServerProcess, key: &str) -> u64 {
    let (status, body) = post_event(server, "t", &event("a", key)).await;
    assert_eq!(status, 201, "{body}");
    body["position"].as_u64().unwrap()
}

/// Leases the next event of `s`, which must be `t/{position}`; returns its lease.
async fn lease(server: &ServerProcess, position: u64) -> String {
    let messages = pull(server, "s", 1, "5s").await;
    let positions: Vec<&Value> = messages.iter().map(|m| &m["event"]["position"]).collect();
    assert_eq!(positions, [&json!(position)], "the next leasable event");
    messages[0]["lease"].as_str().unwrap().to_owned()
}

/// Nacks a lease: with `max_attempts = 1` its event is parked.
async fn nack(server: &ServerProcess, lease: &str) {
    let (status, body) =
        post_json(server, "/v1/subscriptions/s/nack", &json!({"leases": [lease], "delay": "0s"}))
            .await;
    assert_eq!((status, &body["nacked"]), (200, &json!(1)), "{body}");
}

/// The members of a 409 `event-parked` answer a client acts on.
fn parked_members(body: &Value) -> Value {
    assert_eq!(problem_type(body), "event-parked", "{body}");
    let members =
        ["status", "subscription", "reason", "parked_id", "error", "attempts", "discarded"];
    members
        .iter()
        .map(|m| ((*m).to_owned(), body[m].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn parked(reason: &str, discarded: bool) -> Value {
    json!({
        "status": 409, "subscription": "s", "reason": reason, "parked_id": "t:1",
        "error": "nacked by the consumer", "attempts": 1, "discarded": discarded,
    })
}

/// Waits until the status at `path` is 200.
async fn processed_eventually(server: &ServerProcess, path: &str) {
    eventually(&format!("{path} processed"), Duration::from_secs(5), async || {
        let (status, body) = get(server, path).await;
        if status == 200 { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
}

/// Waits until `s`'s parked list holds `id` with `reason`.
async fn wait_until_listed(server: &ServerProcess, id: &str, reason: &str) {
    eventually(&format!("{id} listed as {reason}"), Duration::from_secs(5), async || {
        let (_, listed) = get(server, "/v1/subscriptions/s/parked").await;
        let found = listed["parked"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["id"] == id && p["reason"] == reason);
        if found { Ok(()) } else { Err(listed.to_string()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_is_409_and_its_blocked_follower_425_until_an_operator_retries_it() {
    let server = ServerProcess::start(&config("block"));
    assert_eq!(publish(&server, "k").await, 1);
    assert_eq!(publish(&server, "k").await, 2, "the follower: same key");
    let first = lease(&server, 1).await;

    // Given t/1 is parked (its only attempt failed), a long-poll on it ends at once with why.
    let waiter = {
        let url = server.url("/v1/status/t/1?wait=20s");
        tokio::spawn(async move {
            let started = Instant::now();
            (decode(client().get(url).send().await.unwrap()).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // let the long-poll begin
    nack(&server, &first).await;
    let ((status, body), waited) = waiter.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(parked_members(&body), parked("failed", false));
    assert!(waited < Duration::from_secs(10), "the long-poll ended when parked: {waited:?}");
    let (_, narrowed) = get(&server, "/v1/status/t/1?subscription=s").await;
    assert_eq!(parked_members(&narrowed), parked("failed", false));
    let cli = inorder(&server, &["status", "t/1"], None);
    assert_eq!(cli.status.code(), Some(3), "parked: {cli:?}");
    assert!(stdout(&cli).starts_with("t/1: parked ("), "{}", stdout(&cli));

    // Its follower is blocked behind it: pending, not parked, however long one waits.
    wait_until_listed(&server, "t:2", "blocked").await;
    let started = Instant::now();
    let (status, body) = get(&server, "/v1/status/t/2?wait=1s").await;
    assert_eq!((status, problem_type(&body)), (425, "not-processed-yet"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited the whole second");

    // Another key is not held back.
    assert_eq!(publish(&server, "j").await, 3);
    let other = lease(&server, 3).await;
    ack(&server, "s", &[&other]).await;
    assert_eq!(get(&server, "/v1/status/t/3?wait=5s").await.0, 200);

    // The operator retries t/1: it is offered again, then its follower; both are processed.
    let (status, body) =
        post_json(&server, "/v1/subscriptions/s/parked/t:1/retry", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let retried = lease(&server, 1).await;
    ack(&server, "s", &[&retried]).await;
    // (Polled, not long-polled: until the retried call's outcome is durable the engine still
    // answers with the old parked record, and a long-poll would end on it at once.)
    processed_eventually(&server, "/v1/status/t/1").await;
    let follower = lease(&server, 2).await;
    ack(&server, "s", &[&follower]).await;
    assert_eq!(get(&server, "/v1/status/t/2?wait=5s").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_parked_event_is_409_and_still_409_once_discarded() {
    let server = ServerProcess::start(&config("skip"));
    assert_eq!(publish(&server, "k").await, 1);
    assert_eq!(publish(&server, "k").await, 2);
    let first = lease(&server, 1).await;
    nack(&server, &first).await;
    let (status, body) = get(&server, "/v1/status/t/1?wait=5s").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(parked_members(&body), parked("failed", false));
    // Under skip the key moves on.
    let next = lease(&server, 2).await;
    ack(&server, "s", &[&next]).await;
    assert_eq!(get(&server, "/v1/status/t/2?wait=5s").await.0, 200);

    let discard = client().delete(server.url("/v1/subscriptions/s/parked/t:1")).send().await;
    let (status, body) = decode(discard.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    // (The engine answers the discard once queued; it shows when its checkpoint is durable.)
    eventually("t:1 discarded", Duration::from_secs(5), async || {
        let (status, body) = get(&server, "/v1/status/t/1").await;
        if body["discarded"] == true { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
    for path in ["/v1/status/t/1", "/v1/status/t/1?subscription=s", "/v1/status/t/1?wait=5s"] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert_eq!(parked_members(&body), parked("failed", true), "{path}");
    }
    let (_, listed) = get(&server, "/v1/subscriptions/s/parked").await;
    assert_eq!(listed["parked"], json!([]), "a discarded event is no longer listed");
}
