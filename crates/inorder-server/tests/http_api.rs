//! The HTTP contract over real HTTP against the real binary: publishing in the three modes,
//! reading back every attribute, status 425 → 200 and its long-poll, every bad input, auth and
//! overload.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ServerProcess, ack, client, decode, event, get, post_event, pull};
use serde_json::{Value, json};

const ORDERS: &str = r#"
[[topics]]
name = "orders"
actions = ["order.created", "order.paid"]

[[subscriptions]]
name = "billing"
topics = ["orders"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_in_all_three_modes_read_back_with_every_attribute() {
    let server = ServerProcess::start(ORDERS);
    let structured = json!({
        "specversion": "1.0", "id": "s-1", "source": "/shop", "type": "order.created",
        "subject": "sub", "time": "2026-11-23T10:00:00Z", "datacontenttype": "application/json",
        "data": {"total": 12}, "partitionkey": "o-1", "tenant": "acme", "priority": 3,
    });
    let response = client()
        .post(server.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["inorder-position"], "orders/1");
    assert_eq!(decode(response).await, (201, json!({"position": 1})));

    let binary = client()
        .post(server.url("/v1/topics/orders/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "b-1")
        .header("ce-source", "/shop")
        .header("ce-type", "order.paid")
        .header("ce-partitionkey", "o-1")
        .header("content-type", "text/plain")
        .body("paid in full")
        .send()
        .await
        .unwrap();
    assert_eq!(decode(binary).await, (201, json!({"position": 2})));

    let batch = json!([event("order.created", "o-2"), event("order.paid", "o-2")]);
    let response = client()
        .post(server.url("/v1/topics/orders/events:batch"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(decode(response).await, (201, json!({"positions": [3, 4]})));

    let (status, body) = get(&server, "/v1/topics/orders/events?from=1&limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(body["next"], 5);
    let events = body["events"].as_array().unwrap();
    let mut first = events[0].clone();
    assert_eq!((&first["position"], &first["commit"]), (&json!(1), &json!(1)));
    first.as_object_mut().unwrap().remove("position");
    first.as_object_mut().unwrap().remove("commit");
    assert_eq!(first, structured, "every attribute comes back, plus position and commit");
    assert_eq!(
        (events[1]["data"].clone(), events[1]["partitionkey"].clone()),
        (json!("paid in full"), json!("o-1"))
    );
    assert_eq!(events[3]["position"], 4);
}

const TWO_TOPICS: &str = r#"
[[topics]]
name = "orders"

[[topics]]
name = "payments"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_reads_in_one_commit_order_page_by_page() {
    let server = ServerProcess::start(TWO_TOPICS);
    let mut published = Vec::new();
    for i in 0..7 {
        let topic = if i % 2 == 0 { "orders" } else { "payments" };
        let (status, body) = post_event(&server, topic, &event("a", &format!("k-{i}"))).await;
        assert_eq!(status, 201, "{body}");
        published.push((topic.to_owned(), body["position"].as_u64().unwrap()));
    }
    let (mut read, mut from, mut last_commit) = (Vec::new(), 1, 0);
    loop {
        let (status, body) = get(&server, &format!("/v1/events?from={from}&limit=3")).await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(body["next"], from, "past the end, next stays");
            break;
        }
        for event in events {
            let commit = event["commit"].as_u64().unwrap();
            assert!(commit > last_commit, "commit order: {event}");
            last_commit = commit;
            read.push((
                event["topic"].as_str().unwrap().to_owned(),
                event["position"].as_u64().unwrap(),
            ));
        }
        from = body["next"].as_u64().unwrap();
    }
    assert_eq!(read, published);
    let (status, body) = get(&server, "/v1/events?from=x").await;
    assert_eq!(status, 400, "{body}");

    // A long-poll past the end answers with the next event once it is there.
    let waiting = {
        let url = server.url(&format!("/v1/events?from={from}&wait=20s"));
        tokio::spawn(async move { decode(client().get(url).send().await.unwrap()).await })
    };
    let (status, _) = post_event(&server, "payments", &event("a", "late")).await;
    assert_eq!(status, 201);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["partitionkey"], "late", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_425_until_processed_and_the_long_poll_resolves_when_it_is() {
    let server = ServerProcess::start(ORDERS);
    let (_, created) = post_event(&server, "orders", &event("order.created", "o-1")).await;
    let position = created["position"].as_u64().unwrap();
    let response =
        client().get(server.url(&format!("/v1/status/orders/{position}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 425);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], "application/problem+json");

    let waiter = {
        let url = server.url(&format!("/v1/status/orders/{position}?wait=10s"));
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = pull(&server, "billing", 10, "5s").await;
    let (lease, _) = common::lease_and_type(&messages[0]);
    ack(&server, "billing", &[lease]).await;
    let (status, waited) = waiter.await.unwrap();
    assert_eq!(status, 200, "the long-poll resolves once processed");
    assert!(
        waited < Duration::from_secs(5),
        "it resolved when processed, not at its timeout: {waited:?}"
    );
    assert_eq!(
        get(&server, &format!("/v1/status/orders/{position}?subscription=billing")).await.0,
        200
    );
    let started = Instant::now();
    assert_eq!(get(&server, "/v1/status/orders/99?wait=300ms").await.0, 425);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

async fn problem(response: reqwest::Response) -> (u16, String) {
    assert_eq!(response.headers().get("content-type").unwrap(), "application/problem+json");
    let (status, body) = decode(response).await;
    let kind = body["type"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    assert!(!body["detail"].as_str().unwrap().is_empty());
    (status, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_a_problem_and_changes_nothing() {
    let server = ServerProcess::start(&format!("body_limit = \"2KiB\"\n{ORDERS}"));
    let post = |topic: &str, content_type: &str, body: String| {
        client()
            .post(server.url(&format!("/v1/topics/{topic}/events")))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cloudevent = "application/cloudevents+json";
    let cases = [
        (
            post("orders", cloudevent, "{not json".into()).await.unwrap(),
            (400, "invalid-cloudevent"),
        ),
        (
            post("orders", cloudevent, r#"{"specversion":"1.0"}"#.into()).await.unwrap(),
            (400, "invalid-cloudevent"),
        ),
        (
            post("nope", cloudevent, event("x", "k").to_string()).await.unwrap(),
            (404, "unknown-topic"),
        ),
        (
            post("orders", cloudevent, event("order.refunded", "k").to_string()).await.unwrap(),
            (422, "unknown-action"),
        ),
        (post("orders", cloudevent, "x".repeat(4096)).await.unwrap(), (413, "payload-too-large")),
        (post("orders", "text/csv", "a,b".into()).await.unwrap(), (415, "unsupported-media-type")),
        (
            post("..%2F..%2Fetc", cloudevent, event("x", "k").to_string()).await.unwrap(),
            (400, "invalid-name"),
        ),
        (
            client().get(server.url("/v1/status/orders/x")).send().await.unwrap(),
            (400, "invalid-request"),
        ),
        (
            client().get(server.url("/v1/topics/orders/events?from=abc")).send().await.unwrap(),
            (400, "invalid-request"),
        ),
        (
            client()
                .post(server.url("/v1/subscriptions/nope/pull"))
                .body("{}")
                .send()
                .await
                .unwrap(),
            (404, "unknown-subscription"),
        ),
        (
            client()
                .post(server.url("/v1/subscriptions/billing/pull"))
                .body(r#"{"max":"ten"}"#)
                .send()
                .await
                .unwrap(),
            (400, "invalid-request"),
        ),
        (
            client()
                .delete(server.url("/v1/subscriptions/billing/parked/orders:9"))
                .send()
                .await
                .unwrap(),
            (404, "unknown-parked-event"),
        ),
        (client().get(server.url("/v2/anything")).send().await.unwrap(), (404, "not-found")),
    ];
    for (response, (status, kind)) in cases {
        assert_eq!(problem(response).await, (status, kind.to_owned()));
    }
    let batch = json!([event("order.created", "k"), event("order.shipped", "k")]).to_string();
    let response = client()
        .post(server.url("/v1/topics/orders/events:batch"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(response).await,
        (422, "unknown-action".to_owned()),
        "one bad event refuses the batch"
    );
    let (_, topics) = get(&server, "/v1/topics").await;
    assert_eq!(topics["topics"][0]["last_position"], 0, "nothing was appended");
    assert!(!server.dir.path().join("data/topics/nope").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_every_route_but_healthz_needs_a_bearer() {
    let server =
        ServerProcess::start(&format!("[auth]\ntokens = [\"s3cret\", \"other\"]\n{ORDERS}"));
    assert_eq!(get(&server, "/healthz").await.0, 200);
    let response = client().get(server.url("/v1/topics")).send().await.unwrap();
    assert_eq!(problem(response).await, (401, "unauthorized".to_owned()));
    let wrong = client().get(server.url("/v1/topics")).bearer_auth("s3cre").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = client().get(server.url("/v1/topics")).bearer_auth("other").send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
    let publish = client()
        .post(server.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event("order.created", "k").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status().as_u16(), 401, "an unauthorized publish appends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_publishes_at_once_get_503_with_retry_after() {
    let server = ServerProcess::start(
        "fsync = \"always\"\npublish_in_flight = 1\nauto_create_topics = true\n",
    );
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let url = server.url("/v1/topics/load/events");
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .header("content-type", "application/cloudevents+json")
                    .body(event("a", &format!("k{i}")).to_string())
                    .send()
                    .await
                    .unwrap();
                let retry_after =
                    response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let (status, body) = decode(response).await;
                (status, retry_after, body)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (201, _, body) => accepted.push(body["position"].as_u64().unwrap()),
            (503, Some(retry_after), body) => {
                assert_eq!(
                    (retry_after.as_str(), body["type"].as_str()),
                    ("1", Some("https://inorder.dev/problems/overloaded"))
                );
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused > 0, "with one publish in flight allowed, 64 at once must overflow");
    accepted.sort_unstable();
    let (_, topics) = get(&server, "/v1/topics").await;
    assert_eq!(
        topics["topics"][0]["last_position"],
        Value::from(accepted.len()),
        "only accepted events were appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_above_the_maximum_is_refused_naming_the_field_and_the_maximum() {
    let server = ServerProcess::start(ORDERS);
    let (status, body) = post_event(&server, "orders", &event("order.created", "o-1")).await;
    assert_eq!(status, 201, "{body}");
    let too_long = [
        client().get(server.url("/v1/status/orders/1?wait=31s")),
        client().get(server.url("/v1/status/orders/1?wait=10000000000000000000s")),
        client().get(server.url("/v1/topics/orders/events?from=2&wait=31s")),
        client().post(server.url("/v1/subscriptions/billing/pull")).body(r#"{"wait":"31s"}"#),
    ];
    for request in too_long {
        let (status, body) = decode(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["type"], "https://inorder.dev/problems/invalid-request");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.starts_with("wait: ") && detail.ends_with("the maximum of 30s"), "{body}");
    }
    // Nothing was leased by the refused pull: the event is still there to pull.
    let messages = pull(&server, "billing", 10, "5s").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["attempt"], 1);
}
