//! Pull consumers over HTTP: the ordering mode holds across consumers (never two events of one
//! key leased at once; in `actions` only a key's next action), ack, nack with delay, lease
//! expiry with attempt + 1, and parking after `max_attempts`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ServerProcess, ack, event, get, lease_and_type, post_event, post_json, pull};
use serde_json::json;

fn config(ordering: &str, extra: &str) -> String {
    format!(
        r#"
[[topics]]
name = "t"
actions = {actions}

[[subscriptions]]
name = "s"
topics = ["t"]
ordering = "{ordering}"
{extra}
"#,
        actions = if ordering == "actions" { r#"["a1", "a2", "a3"]"# } else { "[]" }
    )
}

async fn publish(server: &ServerProcess, action: &str, key: &str) -> u64 {
    let (status, body) = post_event(server, "t", &event(action, key)).await;
    assert_eq!(status, 201, "{body}");
    body["position"].as_u64().unwrap()
}

/// Waits until subscription `s` has read `events` events of its topic: whatever it has not leased
/// by then waits behind its key, so a pull that finds nothing more tests something.
async fn read_everything(server: &ServerProcess, events: u64) {
    common::eventually("the subscription reads every event", Duration::from_secs(20), async || {
        let (_, body) = get(server, "/v1/subscriptions").await;
        let read = body["subscriptions"][0]["topics"][0]["position"].as_u64();
        if read == Some(events) { Ok(()) } else { Err(body.to_string()) }
    })
    .await;
}

fn types(messages: &[serde_json::Value]) -> Vec<String> {
    let mut types: Vec<String> = messages.iter().map(|m| lease_and_type(m).1.to_owned()).collect();
    types.sort();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_leases_one_event_per_key_until_it_is_acked() {
    let server = ServerProcess::start(&config("fifo", ""));
    publish(&server, "k1-first", "k1").await;
    publish(&server, "k1-second", "k1").await;
    publish(&server, "k2-first", "k2").await;
    let first = pull(&server, "s", 10, "2s").await;
    read_everything(&server, 3).await; // every key has offered what it can
    let more = pull(&server, "s", 10, "200ms").await;
    let leased: Vec<_> = first.iter().chain(&more).cloned().collect();
    assert_eq!(types(&leased), ["k1-first", "k2-first"], "k1-second waits for k1-first");
    let leases: Vec<&str> = leased.iter().map(|m| lease_and_type(m).0).collect();
    ack(&server, "s", &leases).await;
    let next = pull(&server, "s", 10, "2s").await;
    assert_eq!(types(&next), ["k1-second"]);
    assert_eq!(next[0]["attempt"], 1);
    assert_eq!(next[0]["event"]["partitionkey"], "k1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_per_key_a_pull_leases_a_keys_next_events_together_and_no_other_pull_gets_them() {
    let server = ServerProcess::start(&config("fifo", "max_per_key = 4"));
    for i in 1..=7 {
        publish(&server, &format!("k1-{i}"), "k1").await;
    }
    publish(&server, "k2-1", "k2").await;
    read_everything(&server, 8).await;
    // Each key's first event was offered alone, before the rest queued behind it.
    let first = pull(&server, "s", 100, "2s").await;
    assert_eq!(types(&first), ["k1-1", "k2-1"]);
    let leases: Vec<&str> = first.iter().map(|m| lease_and_type(m).0).collect();
    ack(&server, "s", &leases).await;
    // Then k1's next four together, in log order, on one pull.
    let run = pull(&server, "s", 100, "2s").await;
    let in_order: Vec<&str> = run.iter().map(|m| lease_and_type(m).1).collect();
    assert_eq!(in_order, ["k1-2", "k1-3", "k1-4", "k1-5"]);
    assert!(pull(&server, "s", 100, "200ms").await.is_empty(), "k1 is held by the first pull");
    // Acked as a prefix: the first two; the third nacked ends the run there.
    let leases: Vec<&str> = run.iter().map(|m| lease_and_type(m).0).collect();
    ack(&server, "s", &leases[..2]).await;
    let (status, body) = post_json(
        &server,
        "/v1/subscriptions/s/nack",
        &json!({"leases": [leases[2]], "delay": "0s"}),
    )
    .await;
    assert_eq!((status, &body["nacked"]), (200, &json!(1)), "{body}");
    let (_, body) =
        post_json(&server, "/v1/subscriptions/s/ack", &json!({"leases": [leases[3]]})).await;
    assert_eq!(body["unknown"], json!([leases[3]]), "its lease ended with the run");
    let again = pull(&server, "s", 100, "2s").await;
    let in_order: Vec<(u64, &str)> =
        again.iter().map(|m| (m["attempt"].as_u64().unwrap(), lease_and_type(m).1)).collect();
    assert_eq!(in_order, [(2, "k1-4")], "the nacked event alone, on its next attempt");
    ack(&server, "s", &[lease_and_type(&again[0]).0]).await;
    let rest = pull(&server, "s", 100, "2s").await;
    let in_order: Vec<&str> = rest.iter().map(|m| lease_and_type(m).1).collect();
    assert_eq!(in_order, ["k1-5", "k1-6", "k1-7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_leases_only_the_next_action_of_a_key() {
    let server = ServerProcess::start(&config("actions", ""));
    for action in ["a3", "a2", "a1"] {
        publish(&server, action, "u1").await;
    }
    for expected in ["a1", "a2", "a3"] {
        let messages = pull(&server, "s", 10, "2s").await;
        read_everything(&server, 3).await; // u1's other actions wait in its reorder buffer
        let extra = pull(&server, "s", 10, "100ms").await;
        assert!(extra.is_empty(), "only one action of u1 may be leased: {extra:?}");
        assert_eq!(types(&messages), [expected]);
        ack(&server, "s", &[lease_and_type(&messages[0]).0]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_leases_by_producer_number() {
    let server = ServerProcess::start(&config("sequence", ""));
    for n in [2, 1] {
        let mut e = event(&format!("n{n}"), "acct");
        e["sequence"] = json!(n.to_string());
        assert_eq!(post_event(&server, "t", &e).await.0, 201);
    }
    let first = pull(&server, "s", 10, "2s").await;
    assert_eq!(types(&first), ["n1"]);
    ack(&server, "s", &[lease_and_type(&first[0]).0]).await;
    assert_eq!(types(&pull(&server, "s", 10, "2s").await), ["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_leases_events_of_one_key_together() {
    let server = ServerProcess::start(&config("none", ""));
    for i in 0..3 {
        publish(&server, &format!("e{i}"), "same").await;
    }
    let mut leased = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while leased.len() < 3 && Instant::now() < deadline {
        leased.extend(pull(&server, "s", 10, "500ms").await);
    }
    assert_eq!(types(&leased), ["e0", "e1", "e2"], "no per-key constraint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_event_comes_back_after_its_delay_with_the_next_attempt() {
    let server = ServerProcess::start(&config("fifo", ""));
    publish(&server, "flaky", "k").await;
    let first = pull(&server, "s", 1, "2s").await;
    // Taken before the nack is sent: the server's delay starts when it takes the nack, which is
    // after this and may be well before its answer arrives.
    let nacked_at = Instant::now();
    let (status, body) = post_json(
        &server,
        "/v1/subscriptions/s/nack",
        &json!({"leases": [lease_and_type(&first[0]).0], "delay": "400ms"}),
    )
    .await;
    assert_eq!((status, body["nacked"].clone()), (200, json!(1)));
    assert!(pull(&server, "s", 1, "200ms").await.is_empty(), "not before its delay");
    let again = pull(&server, "s", 1, "3s").await;
    assert!(nacked_at.elapsed() >= Duration::from_millis(400));
    assert_eq!((types(&again), again[0]["attempt"].clone()), (vec!["flaky".to_owned()], json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_redelivered_and_parked_after_max_attempts() {
    let server =
        ServerProcess::start(&config("fifo", "lease_timeout = \"300ms\"\nmax_attempts = 2"));
    publish(&server, "ignored", "k").await;
    publish(&server, "after", "k").await;
    let first = pull(&server, "s", 1, "2s").await;
    assert_eq!(first[0]["attempt"], 1);
    let expired_lease = lease_and_type(&first[0]).0.to_owned();
    let second = pull(&server, "s", 1, "3s").await;
    assert_eq!(
        (types(&second), second[0]["attempt"].clone()),
        (vec!["ignored".to_owned()], json!(2))
    );
    let (_, late) =
        post_json(&server, "/v1/subscriptions/s/ack", &json!({"leases": [expired_lease]})).await;
    assert_eq!(late["unknown"].as_array().unwrap().len(), 1, "an expired lease cannot be acked");
    // The second attempt expires too: the event is parked and the key moves on (skip).
    let third = pull(&server, "s", 1, "3s").await;
    assert_eq!(types(&third), ["after"]);
    let (_, parked) = get(&server, "/v1/subscriptions/s/parked").await;
    let item = &parked["parked"][0];
    assert_eq!(
        (item["reason"].clone(), item["attempts"].clone(), item["id"].clone()),
        (json!("failed"), json!(2), json!("t:1"))
    );
    ack(&server, "s", &[lease_and_type(&third[0]).0]).await;
    // An operator retries it: it is offered again.
    let (status, _) = post_json(&server, "/v1/subscriptions/s/parked/t:1/retry", &json!({})).await;
    assert_eq!(status, 200);
    let retried = pull(&server, "s", 1, "3s").await;
    assert_eq!(types(&retried), ["ignored"]);
    ack(&server, "s", &[lease_and_type(&retried[0]).0]).await;
    let (_, subscriptions) = get(&server, "/v1/subscriptions").await;
    let stream = &subscriptions["subscriptions"][0]["topics"][0];
    assert_eq!((stream["watermark"].clone(), stream["lag"].clone()), (json!(2), json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_expiry_and_ack_work_the_same_in_every_ordering_mode() {
    for ordering in ["fifo", "actions", "sequence", "none"] {
        let server = ServerProcess::start(&config(ordering, "lease_timeout = \"300ms\""));
        let mut e = event("a1", "k");
        e["sequence"] = json!("1");
        let (status, body) = post_event(&server, "t", &e).await;
        assert_eq!(status, 201, "{ordering}: {body}");
        let first = pull(&server, "s", 1, "2s").await;
        assert_eq!(first[0]["attempt"], 1, "{ordering}");
        let nack = json!({"leases": [lease_and_type(&first[0]).0], "delay": "0s"});
        assert_eq!(post_json(&server, "/v1/subscriptions/s/nack", &nack).await.0, 200);
        let nacked = pull(&server, "s", 1, "2s").await;
        assert_eq!(nacked[0]["attempt"], 2, "{ordering}: a nack redelivers with attempt + 1");
        let expired = pull(&server, "s", 1, "3s").await; // nacked[0] is left to expire
        assert_eq!(expired[0]["attempt"], 3, "{ordering}: an expiry redelivers with attempt + 1");
        assert_eq!(get(&server, "/v1/status/t/1").await.0, 425, "{ordering}");
        ack(&server, "s", &[lease_and_type(&expired[0]).0]).await;
        assert_eq!(get(&server, "/v1/status/t/1?wait=2s").await.0, 200, "{ordering}: acked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_delay_above_the_maximum_is_refused_and_the_subscription_goes_on() {
    let server = ServerProcess::start(&config("fifo", ""));
    publish(&server, "first", "k1").await;
    let leased = pull(&server, "s", 1, "2s").await;
    let lease = lease_and_type(&leased[0]).0;
    let (status, body) = post_json(
        &server,
        "/v1/subscriptions/s/nack",
        &json!({"leases": [lease], "delay": "10000000000000000000s"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "https://inorder.dev/problems/invalid-request");
    assert_eq!(body["detail"], r#"delay: "10000000000000000000s" is above the maximum of 1day"#);
    // The refused nack changed nothing: the lease is still held and can be acked.
    assert_eq!(ack(&server, "s", &[lease]).await["acked"], 1);
    assert_eq!(get(&server, "/v1/status/t/1?wait=5s").await.0, 200, "the acked event is processed");
    // And the subscription goes on with another key's event.
    let position = publish(&server, "second", "k2").await;
    let next = pull(&server, "s", 1, "5s").await;
    assert_eq!((types(&next), next[0]["attempt"].clone()), (vec!["second".to_owned()], json!(1)));
    ack(&server, "s", &[lease_and_type(&next[0]).0]).await;
    let (status, body) = get(&server, &format!("/v1/status/t/{position}?wait=5s")).await;
    assert_eq!(status, 200, "{body}");
}

/// Opens a consume stream of subscription `s`; its messages arrive on the receiver.
async fn consume(
    server: &ServerProcess,
    window: u64,
) -> tokio::sync::mpsc::Receiver<serde_json::Value> {
    let response = common::client()
        .post(server.url("/v1/subscriptions/s/consume"))
        .json(&json!({ "window": window }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    common::ndjson_lines(response)
}

async fn next_message(
    messages: &mut tokio::sync::mpsc::Receiver<serde_json::Value>,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(10), messages.recv()).await.unwrap().unwrap()
}

/// (offered, leased) of subscription `s`.
async fn sizes(server: &ServerProcess) -> (u64, u64) {
    let (_, body) = get(server, "/v1/subscriptions").await;
    let s = &body["subscriptions"][0];
    (s["offered"].as_u64().unwrap(), s["leased"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_stream_holds_at_most_its_window_and_leases_more_as_acks_free_it() {
    let server = ServerProcess::start(&config("fifo", ""));
    for key in 1..=6 {
        publish(&server, &format!("k{key}"), &format!("k{key}")).await;
    }
    read_everything(&server, 6).await;
    let mut messages = consume(&server, 4).await;
    let open = "inorder_consume_streams_open{subscription=\"s\"} 1";
    assert!(common::metrics(&server).await.contains(open), "counted while open");
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(next_message(&mut messages).await);
    }
    common::eventually("two offers wait behind the window", Duration::from_secs(10), async || {
        let sizes = sizes(&server).await;
        if sizes == (2, 4) { Ok(()) } else { Err(format!("{sizes:?}")) }
    })
    .await;
    let acked: Vec<&str> = first[..2].iter().map(|m| lease_and_type(m).0).collect();
    ack(&server, "s", &acked).await;
    let more = [next_message(&mut messages).await, next_message(&mut messages).await];
    let mut all: Vec<String> =
        first.iter().chain(&more).map(|m| lease_and_type(m).1.to_owned()).collect();
    all.sort();
    assert_eq!(all, ["k1", "k2", "k3", "k4", "k5", "k6"], "each event once, on one stream");
    assert_eq!(sizes(&server).await, (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_window_out_of_range_is_refused() {
    let server = ServerProcess::start(&config("fifo", ""));
    for window in [0, 1001] {
        let (status, body) =
            post_json(&server, "/v1/subscriptions/s/consume", &json!({ "window": window })).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("window"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_an_open_consume_stream() {
    let server = ServerProcess::start(&config("fifo", ""));
    publish(&server, "k1", "k1").await;
    let mut messages = consume(&server, 4).await;
    next_message(&mut messages).await;
    common::terminate_within_20s(server).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), messages.recv()).await;
    assert!(matches!(ended, Ok(None)), "the stream ended: {ended:?}");
}
