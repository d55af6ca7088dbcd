//! The management API over real HTTP against the real binary: topics and subscriptions made,
//! changed and deleted at run time survive a `kill -9`; what the file declares is refused with
//! `409 declared`; pause, resume and rewind; concurrent creates and deletes end consistent.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ServerProcess, ack, client, decode, event, get, post_event, pull};
use serde_json::{Value, json};

const CONFIG: &str = r#"
auto_create_topics = false

[[topics]]
name = "declared"

[[subscriptions]]
name = "declared-sub"
topics = ["declared"]
"#;

async fn send(
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, server.url(path));
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    decode(request.send().await.unwrap()).await
}

fn kind(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default().rsplit('/').next().unwrap()
}

/// Waits until `subscription` has read up to `position` of its first topic.
async fn read_up_to(server: &ServerProcess, subscription: &str, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(server, &format!("/v1/subscriptions/{subscription}")).await;
        if body["topics"][0]["position"].as_u64().unwrap_or(0) >= position {
            return;
        }
        assert!(Instant::now() < deadline, "{subscription} did not read {position}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_made_through_the_api_run_and_survive_a_kill() {
    use reqwest::Method;
    let mut server = ServerProcess::start(CONFIG);

    // What the file declares is the file's.
    let (status, body) = send(&server, Method::PUT, "/v1/topics/declared", Some(json!({}))).await;
    assert_eq!((status, kind(&body)), (409, "declared"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("inorder.toml"), "{body}");
    let (status, body) =
        send(&server, Method::DELETE, "/v1/subscriptions/declared-sub", None).await;
    assert_eq!((status, kind(&body)), (409, "declared"), "{body}");

    // A topic and a subscription made at run time.
    let topic = json!({"retention": {"max_events": 1000}});
    let (status, body) = send(&server, Method::PUT, "/v1/topics/orders", Some(topic.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(send(&server, Method::PUT, "/v1/topics/orders", Some(topic)).await.0, 200);
    let audit = json!({"topics": ["orders"], "ordering": "fifo", "max_attempts": 3});
    let (status, body) =
        send(&server, Method::PUT, "/v1/subscriptions/audit", Some(audit.clone())).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        send(&server, Method::PUT, "/v1/subscriptions/audit", Some(json!({"topics": ["x"]}))).await;
    assert_eq!((status, kind(&body)), (409, "exists"), "{body}");
    let (status, body) = send(
        &server,
        Method::PUT,
        "/v1/subscriptions/bad",
        Some(json!({"topics": ["orders"], "ordring": "fifo"})),
    )
    .await;
    assert_eq!((status, kind(&body)), (400, "invalid-request"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("ordring"), "{body}");

    assert_eq!(post_event(&server, "orders", &event("order.placed", "o-1")).await.0, 201);
    let messages = pull(&server, "audit", 10, "5s").await;
    assert_eq!(messages.len(), 1);
    ack(&server, "audit", &[messages[0]["lease"].as_str().unwrap()]).await;
    // An ack is answered before its completion is checkpointed (a crash in between hands the
    // event out again: at least once); the progress this test carries through a crash is the
    // durable one.
    let (status, body) = get(&server, "/v1/status/orders/1?wait=10s&subscription=audit").await;
    assert_eq!(status, 200, "{body}");

    // Through a crash: both are back, with their settings and progress.
    server.kill_and_restart();
    let (status, body) = get(&server, "/v1/topics/orders").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["definition"]["retention"]["max_events"], 1000, "{body}");
    let (status, body) = get(&server, "/v1/subscriptions/audit").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["definition"]["max_attempts"], 3, "{body}");
    assert_eq!(body["declared"], false, "{body}");
    assert_eq!(post_event(&server, "orders", &event("order.paid", "o-1")).await.0, 201);
    let messages = pull(&server, "audit", 10, "5s").await;
    assert_eq!(messages[0]["event"]["type"], "order.paid", "the acked event is not offered again");
    ack(&server, "audit", &[messages[0]["lease"].as_str().unwrap()]).await;

    // PATCH changes a key, kept through a restart.
    let (status, body) =
        send(&server, Method::PATCH, "/v1/subscriptions/audit", Some(json!({"max_attempts": 7})))
            .await;
    assert_eq!(status, 200, "{body}");
    server.kill_and_restart();
    let (_, body) = get(&server, "/v1/subscriptions/audit").await;
    assert_eq!(body["definition"]["max_attempts"], 7, "{body}");

    // Pause: the stream reads, but nothing is offered until resumed.
    let (status, body) = send(&server, Method::POST, "/v1/subscriptions/audit:pause", None).await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    assert_eq!(post_event(&server, "orders", &event("order.shipped", "o-1")).await.0, 201);
    read_up_to(&server, "audit", 3).await;
    assert!(pull(&server, "audit", 10, "0s").await.is_empty(), "nothing offered while paused");
    assert_eq!(send(&server, Method::POST, "/v1/subscriptions/audit:resume", None).await.0, 200);
    let messages = pull(&server, "audit", 10, "5s").await;
    assert_eq!(messages[0]["event"]["type"], "order.shipped");
    ack(&server, "audit", &[messages[0]["lease"].as_str().unwrap()]).await;

    // Rewind: position 1 is offered again.
    let (status, body) =
        send(&server, Method::POST, "/v1/subscriptions/audit:rewind", Some(json!({"position": 1})))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rewound"][0]["resumes_at"], 1, "{body}");
    let messages = pull(&server, "audit", 10, "5s").await;
    assert_eq!(messages[0]["event"]["type"], "order.placed", "{messages:?}");

    // A consumed topic goes only with force; the subscription goes whole.
    let (status, body) = send(&server, Method::DELETE, "/v1/topics/orders", None).await;
    assert_eq!((status, kind(&body)), (409, "in-use"), "{body}");
    assert_eq!(send(&server, Method::DELETE, "/v1/subscriptions/audit", None).await.0, 204);
    assert_eq!(send(&server, Method::DELETE, "/v1/topics/orders", None).await.0, 204);
    assert_eq!(get(&server, "/v1/topics/orders").await.0, 404);
    server.kill_and_restart();
    assert_eq!(get(&server, "/v1/subscriptions/audit").await.0, 404, "a deletion is durable");
    assert_eq!(get(&server, "/v1/topics/orders").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_deletes_end_as_one_after_another_would() {
    let mut server = ServerProcess::start("auto_create_topics = true\n");
    let base = server.url("");
    let mut tasks = Vec::new();
    for round in 0..40 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("s{}", round % 4);
            let url = format!("{base}/v1/subscriptions/{name}");
            let request = if round % 3 == 0 {
                client().delete(url)
            } else {
                client()
                    .put(url)
                    .header("content-type", "application/json")
                    .body(json!({"topics": ["t"]}).to_string())
            };
            request.send().await.unwrap().status().as_u16()
        }));
    }
    for task in tasks {
        let status = task.await.unwrap();
        assert!([200, 201, 204, 404].contains(&status), "status {status}");
    }
    let listed = |body: Value| -> Vec<String> {
        let mut names: Vec<String> = body["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let before = listed(get(&server, "/v1/subscriptions").await.1);
    for name in &before {
        let (status, body) = get(&server, &format!("/v1/subscriptions/{name}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["definition"].is_object(),
            "a running subscription has its definition: {body}"
        );
    }
    server.kill_and_restart();
    let after = listed(get(&server, "/v1/subscriptions").await.1);
    assert_eq!(before, after, "what runs is what is stored");
}
