//! Retention over real HTTP against the real binary: a topic with `[topics.retention]` deletes
//! its oldest segments, `GET /v1/topics` shows the policy and what is stored, and reads and
//! status below the first retained position answer `410 Gone`, type `purged`, naming the
//! first available position.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ServerProcess, client, decode, get};
use serde_json::{Value, json};

const CONFIG: &str = r#"
segment_bytes = "4160KiB"
retention_interval = "20ms"
body_limit = "2MiB"

[[topics]]
name = "orders"
[topics.retention]
max_events = 2000
"#;

async fn topic(server: &ServerProcess) -> Value {
    let (status, body) = get(server, "/v1/topics").await;
    assert_eq!(status, 200, "{body}");
    body["topics"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_below_the_first_retained_event_are_gone_with_a_problem() {
    let server = ServerProcess::start(CONFIG);
    let pad = "x".repeat(4000);
    for round in 0..30 {
        let batch: Vec<Value> = (0..200)
            .map(|n| {
                json!({"specversion": "1.0", "type": "order.placed", "source": "/tests",
                       "id": format!("e{round}-{n}"), "partitionkey": format!("k{n}"),
                       "datacontenttype": "application/json", "data": {"pad": pad}})
            })
            .collect();
        let response = client()
            .post(server.url("/v1/topics/orders/events:batch"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let orders = loop {
        let orders = topic(&server).await;
        if orders["events"].as_u64().unwrap() <= 2000 {
            break orders;
        }
        assert!(Instant::now() < deadline, "retention did not run: {orders}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(orders["retention"]["max_events"], 2000, "{orders}");
    assert_eq!(orders["retention"]["until_consumed"], false, "{orders}");
    assert!(orders["bytes"].as_u64().unwrap() > 0, "{orders}");
    let first = orders["first_position"].as_u64().unwrap();
    assert!(first > 1 && orders["last_position"] == 6000, "{orders}");

    for path in ["/v1/topics/orders/events?from=1&limit=5", "/v1/status/orders/1"] {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let (status, body) = decode(response).await;
        assert_eq!(status, 410, "{path}: {body}");
        assert!(body["type"].as_str().unwrap().ends_with("/purged"), "{body}");
        assert_eq!(body["first_available"], first, "{body}");
    }
    let (status, body) =
        get(&server, &format!("/v1/topics/orders/events?from={first}&limit=1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["position"], first, "{body}");
}
