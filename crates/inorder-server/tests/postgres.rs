//! `delivery = "postgres"` through the real binary: events published over HTTP land in the
//! table exactly once, also when the server is killed mid-stream; a sink that cannot start
//! stops the server at start with a clear message.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, client, get, post_json};
use serde_json::json;
use tokio_postgres::NoTls;

fn config(url: &str) -> String {
    format!(
        r#"
[[topics]]
name = "orders"

[[subscriptions]]
name = "archive"
topics = ["orders"]
delivery = "postgres"

[subscriptions.postgres]
url = "{url}"
table = "archived_events"
batch_size = 100
batch_timeout = "20ms"
workers = 2
"#
    )
}

async fn table_counts(url: &str) -> (i64, i64) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT count(*), count(DISTINCT (topic, id)) FROM archived_events", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn publish_batch(server: &ServerProcess, batch: usize) -> Option<u64> {
    let events: Vec<_> = (0..50)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("b{batch}-{i}"), "type": "order.placed",
                   "source": "/tests", "partitionkey": format!("k{}", i % 9), "data": {"i": i}})
        })
        .collect();
    let response = client()
        .post(server.url("/v1/topics/orders/events:batch"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_string(&events).unwrap())
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    body["positions"].as_array()?.last()?.as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_land_in_the_table_once_through_a_kill_9() {
    let url = inorder_testpg::fresh_database().unwrap();
    let mut server = ServerProcess::start(&config(&url));
    let (status, body) = get(&server, "/v1/subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(body["subscriptions"][0]["delivery"], "postgres", "{body}");

    for batch in 0..20 {
        publish_batch(&server, batch).await.unwrap();
    }
    server.kill_and_restart(); // mid-stream: the sink has batches in flight
    let mut last = 0;
    for batch in 20..30 {
        last = publish_batch(&server, batch).await.unwrap();
    }
    // Republishing acknowledged ids changes nothing (deduplicated by id).
    publish_batch(&server, 3).await.unwrap();
    let (status, body) = get(&server, &format!("/v1/status/orders/{last}?wait=20s")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(table_counts(&url).await, (1500, 1500));
    let (status, body) = post_json(&server, "/v1/subscriptions/archive/pull", &json!({})).await;
    assert_eq!(status, 400, "a postgres subscription is not pulled: {body}");
    assert!(body["detail"].as_str().unwrap().contains("not a pull subscription"), "{body}");
}

#[test]
fn a_sink_that_cannot_connect_stops_the_server_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_, stderr) =
        common::serve_refuses(&config(&format!("postgres://u:pw@127.0.0.1:{port}/db")));
    assert!(stderr.contains("subscription archive: starting the postgres sink"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains("pw@"), "the password leaked: {stderr}");
}

#[test]
fn postgres_delivery_settings_are_checked_with_the_key_named() {
    let pg = "delivery = \"postgres\"\n[subscriptions.postgres]\nurl = \"postgres://h/db\"\n";
    let cases = [
        ("delivery = \"postgres\"\n".to_owned(), "subscriptions.archive.delivery"),
        (format!("{pg}table = \"Bad\"\n"), "subscriptions.archive.postgres.table"),
        (format!("{pg}table = \"t\"\nbatch_size = 0\n"), "batch_size"),
        (format!("{pg}table = \"t\"\nttl = \"soon\"\n"), "subscriptions.archive.postgres.ttl"),
    ];
    for (subscription, expected) in cases {
        let (_, stderr) = common::serve_refuses(&format!(
            "[[topics]]\nname = \"orders\"\n[[subscriptions]]\nname = \"archive\"\n\
             topics = [\"orders\"]\n{subscription}"
        ));
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_postgres_keeps_topics_and_progress_in_the_database_across_a_kill_9() {
    let url = inorder_testpg::fresh_database().unwrap();
    let config = format!(
        r#"
auto_create_topics = true

[storage.postgres]
url = "{url}"

[[subscriptions]]
name = "workers"
topics = ["jobs"]
"#
    );
    let mut server = ServerProcess::start(&config);
    let mut last = 0;
    for i in 0..5 {
        let (status, body) =
            common::post_event(&server, "jobs", &common::event("job.queued", &format!("k{i}")))
                .await;
        assert_eq!(status, 201, "{body}");
        last = body["position"].as_u64().unwrap();
    }
    let mut leased = 0;
    while leased < 5 {
        let messages = common::pull(&server, "workers", 10, "5s").await;
        assert!(!messages.is_empty(), "pulled {leased} of 5");
        let leases: Vec<&str> = messages.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        common::ack(&server, "workers", &leases).await;
        leased += leases.len();
    }
    let (status, _) = get(&server, &format!("/v1/status/jobs/{last}?wait=5s")).await;
    assert_eq!(status, 200);

    server.kill_and_restart();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let stored: i64 = client
        .query_one("SELECT count(*) FROM inorder_events WHERE topic = 'jobs'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 5, "the events live in PostgreSQL");
    let (status, _) = get(&server, &format!("/v1/status/jobs/{last}")).await;
    assert_eq!(status, 200, "progress survived the restart");
    assert!(common::pull(&server, "workers", 10, "200ms").await.is_empty(), "nothing redelivered");
}
