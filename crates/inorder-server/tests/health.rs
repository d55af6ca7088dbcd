//! A stream that cannot go on (here: it meets a corrupt record in its log) is visible
//! everywhere an operator looks — `/readyz` 503 naming it, `GET /v1/subscriptions`, `/metrics`,
//! `inorder subscriptions`, the status of the events it will not reach — while `/healthz` stays
//! 200 and the other streams keep working. Probes need no token.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    ServerProcess, ack, client, event, eventually, get, inorder, lease_and_type, post_event,
    problem_type, pull, stdout,
};
use inorder::{Event, codec, limits::INDEXED_MARK_POSITIONS};
use inorder_log::{Log, LogOptions, limits::SEGMENT_BYTES_MIN};
use serde_json::{Value, json};

/// Subscription `s` consumes two topics: two streams, `s/broken` and `s/fine`.
const CONFIG: &str = r#"
[[topics]]
name = "broken"

[[topics]]
name = "fine"

[[subscriptions]]
name = "s"
topics = ["broken", "fine"]
ordering = "fifo"
"#;

/// Publishes one event to `topic` (its action names the topic), leases it from `s` (which
/// consumes both topics), acks it and waits until it is processed.
async fn handle_one(server: &ServerProcess, topic: &str) -> u64 {
    let (status, body) = post_event(server, topic, &event(topic, "k")).await;
    assert_eq!(status, 201, "{body}");
    let position = body["position"].as_u64().unwrap();
    let wanted = |m: &&Value| m["event"]["type"] == topic && m["event"]["position"] == position;
    let lease = eventually(&format!("{topic}/{position} leased"), TIMEOUT, async || {
        let messages = pull(server, "s", 10, "1s").await;
        let found = messages.iter().find(wanted);
        found.map(|m| lease_and_type(m).0.to_owned()).ok_or(format!("{} others", messages.len()))
    })
    .await;
    ack(server, "s", &[&lease]).await;
    let (status, body) = get(server, &format!("/v1/status/{topic}/{position}?wait=5s")).await;
    assert_eq!(status, 200, "{topic}/{position}: {body}");
    position
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `count` events to `topic` in one batch.
async fn publish_batch(server: &ServerProcess, topic: &str, count: u64) {
    let batch: Vec<Value> = (0..count).map(|_| event("bulk", "bulk")).collect();
    let response = client()
        .post(server.url(&format!("/v1/topics/{topic}/events:batch")))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::from(batch).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
}

async fn metrics(server: &ServerProcess) -> String {
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

/// The streams of subscription `s` as `GET /v1/subscriptions` shows them, by topic.
async fn streams(server: &ServerProcess) -> (Value, Vec<Value>) {
    let (status, body) = get(server, "/v1/subscriptions").await;
    assert_eq!(status, 200, "{body}");
    let subscription = body["subscriptions"][0].clone();
    let mut streams = subscription["topics"].as_array().unwrap().clone();
    streams.sort_by_key(|s| s["topic"].as_str().unwrap().to_owned());
    (subscription["state"].clone(), streams)
}

/// Damages broken/2 on disk while the server is stopped, the way a bad disk would: the log is
/// rolled with one more valid event, so that broken/2's segment is sealed (only the last segment
/// is checked when a log opens; a sealed one as it is read), and one byte of broken/2's data is
/// flipped. Returns the damaged segment's file name.
fn damage_broken_2(server: &ServerProcess) -> String {
    let log_dir = server.dir.path().join("data/topics/broken");
    // Small segments (appends only; opening checks records against the format's own limit).
    let options = LogOptions {
        segment_bytes: SEGMENT_BYTES_MIN,
        record_payload_bytes_max: 1024,
        ..LogOptions::default()
    };
    let log = Log::open(&log_dir, options).unwrap();
    let valid = Event::builder("broken", "k", "a").build().unwrap();
    let position = *log.append_blocking([codec::encode(&valid)]).unwrap().start();
    drop(log);
    let sealed = "00000000000000000001.seg";
    let next = format!("{position:020}.seg");
    assert!(log_dir.join(next).exists(), "the valid event began a new segment");
    let path = log_dir.join(sealed);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(MARKER.len()).position(|w| w == MARKER.as_bytes()).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    sealed.to_owned()
}

/// In broken/2's data, to find it on disk.
const MARKER: &str = "damage-me-here";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_meets_a_corrupt_record_is_failed_and_visible_everywhere() {
    let mut server = ServerProcess::start(CONFIG);
    // Healthy: ready, every stream running, the failure gauge at 0 before anything failed.
    assert_eq!(get(&server, "/readyz").await, (200, json!({"ready": true})));
    assert!(metrics(&server).await.lines().any(|l| l == "inorder_streams_failed 0"));
    // `s` is a fifo subscription over two topics: its turn keeper shows how many keys wait for
    // an earlier commit in the other topic.
    eventually("the turn keeper's gauge", TIMEOUT, async || {
        let scraped = metrics(&server).await;
        let gauge = r#"inorder_turns_waiting{subscription="s"} 0"#;
        scraped.lines().any(|l| l == gauge).then_some(()).ok_or(scraped)
    })
    .await;
    let (state, healthy) = streams(&server).await;
    assert_eq!(state, "running");
    for stream in &healthy {
        assert_eq!((&stream["state"], &stream["error"]), (&json!("running"), &Value::Null));
    }
    assert_eq!(handle_one(&server, "broken").await, 1);
    let mut second = event("a", "k");
    second["data"] = json!({"pad": "x".repeat(5000), "marker": MARKER}); // more than a segment
    assert_eq!(post_event(&server, "broken", &second).await.0, 201);
    // The engine re-reads (and decodes) at start what its id index may not hold: up to
    // INDEXED_MARK_POSITIONS (1024) records. Damage there stops the engine from starting at
    // all; damage below that mark is met only by the stream, which is what this test is about.
    for _ in 0..2 {
        publish_batch(&server, "broken", INDEXED_MARK_POSITIONS.div_ceil(2)).await;
    }

    // Given broken/2 damaged on disk while the server is stopped.
    assert!(server.terminate().success());
    let segment = damage_broken_2(&server);
    server.restart();

    // Then its stream is failed, naming the damaged file, and the server is not ready.
    let failed = eventually("s/broken failed", TIMEOUT, async || {
        let (status, body) = get(&server, "/readyz").await;
        if status == 503 { Ok(body) } else { Err(body.to_string()) }
    })
    .await;
    assert_eq!(problem_type(&failed), "not-ready", "{failed}");
    let named = failed["failed"].as_array().unwrap();
    assert_eq!(named.len(), 1, "{failed}");
    assert_eq!(named[0]["stream"], "s/broken");
    let error = named[0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&segment), "names the damaged segment: {error}");
    assert_eq!(get(&server, "/healthz").await.0, 200, "the process still serves: alive");

    let (state, streams) = streams(&server).await;
    assert_eq!(state, "failed", "a subscription is as bad as its worst stream");
    assert_eq!((&streams[0]["topic"], &streams[0]["state"]), (&json!("broken"), &json!("failed")));
    assert_eq!(streams[0]["error"], error);
    assert_eq!((&streams[1]["topic"], &streams[1]["state"]), (&json!("fine"), &json!("running")));
    assert_eq!(streams[1]["error"], Value::Null);
    let scraped = metrics(&server).await;
    assert!(scraped.lines().any(|l| l == "inorder_streams_failed 1"), "{scraped}");
    let restarts = |l: &&str| {
        l.starts_with("inorder_stream_restarts_total{")
            && l.contains(r#"subscription="s""#)
            && l.contains(r#"topic="broken""#)
    };
    let line = scraped.lines().find(restarts).unwrap_or_else(|| panic!("{scraped}"));
    assert!(line.ends_with("} 0"), "corruption is not retried: {line}");

    let cli = inorder(&server, &["subscriptions"], None);
    assert!(cli.status.success(), "{cli:?}");
    let printed = stdout(&cli);
    let line = |topic: &str| {
        printed
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["s", topic]))
            .unwrap_or_else(|| panic!("no line for s/{topic}: {printed}"))
            .to_owned()
    };
    assert!(line("broken").ends_with(&format!("failed: {error}")), "{printed}");
    assert!(line("fine").ends_with("running"), "{printed}");

    // What the failed stream handled stays processed; what it will not reach is 503, not 425.
    assert_eq!(get(&server, "/v1/status/broken/1").await.0, 200);
    for position in [2, 3, INDEXED_MARK_POSITIONS] {
        let (status, body) = get(&server, &format!("/v1/status/broken/{position}")).await;
        assert_eq!((status, problem_type(&body)), (503, "storage-unavailable"), "{body}");
        assert!(body["detail"].as_str().unwrap().contains("s/broken"), "{body}");
    }

    // The other topic's stream keeps working.
    assert_eq!(handle_one(&server, "fine").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_no_token_and_everything_else_does() {
    let server = ServerProcess::start(&format!("[auth]\ntokens = [\"s3cret\"]\n{CONFIG}"));
    assert_eq!(get(&server, "/healthz").await.0, 200);
    assert_eq!(get(&server, "/readyz").await, (200, json!({"ready": true})));
    for path in ["/v1/subscriptions", "/metrics"] {
        assert_eq!(get(&server, path).await.0, 401, "{path}");
    }
}
