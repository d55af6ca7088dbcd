//! Streaming publish over real HTTP: one long-lived request of NDJSON events in, one ack per
//! event out, in order, each once durable, while the request is still open; a refused line is
//! refused alone; a line over the body limit ends the stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, get};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const TOPIC: &str = "[[topics]]\nname = \"t\"\n";

/// An open publish stream: send lines, receive acks.
struct Stream {
    lines: Option<mpsc::Sender<String>>,
    acks: mpsc::Receiver<Value>,
    status: u16,
}

impl Stream {
    async fn open(server: &ServerProcess, content_type: &str) -> Self {
        let (lines, outgoing) = mpsc::channel::<String>(16);
        let body = futures_util::stream::unfold(outgoing, |mut outgoing| async move {
            let line = outgoing.recv().await?;
            Some((Ok::<_, std::io::Error>(format!("{line}\n")), outgoing))
        });
        let response = common::client()
            .post(server.url("/v1/topics/t/events:stream"))
            .header("content-type", content_type)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("the answer starts before the request ends")
            .unwrap();
        let status = response.status().as_u16();
        Self { lines: Some(lines), acks: common::ndjson_lines(response), status }
    }

    async fn send(&self, line: impl Into<String>) {
        self.lines.as_ref().unwrap().send(line.into()).await.unwrap();
    }

    /// The next ack; fails the test if none comes.
    async fn ack(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("an ack within 10 s")
            .expect("the stream is open")
    }

    /// Ends the request body.
    fn finish(&mut self) {
        self.lines = None;
    }
}

fn event(id: &str, key: &str) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": "a", "partitionkey": key, "data": {"id": id}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_acknowledged_while_the_stream_stays_open() {
    let server = ServerProcess::start(TOPIC);
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    assert_eq!(stream.status, 200);
    // Each ack comes before the next event is even sent: acks do not wait for the body's end.
    for i in 1..=3u64 {
        stream.send(event(&format!("e{i}"), "k")).await;
        assert_eq!(stream.ack().await, json!({"seq": i, "position": i}));
    }
    let open = "inorder_publish_streams_open{topic=\"t\"}";
    assert!(common::metrics(&server).await.contains(&format!("{open} 1")), "counted while open");
    stream.finish();
    common::eventually(
        "the ended stream is no longer counted",
        Duration::from_secs(10),
        async || {
            let text = common::metrics(&server).await;
            if text.contains(&format!("{open} 0")) { Ok(()) } else { Err(text) }
        },
    )
    .await;
    let (_, status) = get(&server, "/v1/status/t/3?wait=5s").await;
    assert_eq!(status["processed"], true, "acked means durable and readable: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_line_is_refused_alone_and_the_others_keep_their_order() {
    let server = ServerProcess::start(TOPIC);
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    stream.send(event("a", "k")).await;
    stream.send("{not json").await;
    stream.send("[1, 2]").await; // JSON, not an event
    stream.send(event("b", "k")).await;
    stream.send(event("a", "k")).await; // published before: its position again
    let acks: Vec<Value> = [stream.ack().await, stream.ack().await, stream.ack().await]
        .into_iter()
        .chain([stream.ack().await, stream.ack().await])
        .collect();
    assert_eq!(acks[0], json!({"seq": 1, "position": 1}));
    for refused in &acks[1..3] {
        let kind = refused["error"]["type"].as_str().unwrap();
        assert!(kind.ends_with("/invalid-cloudevent"), "{refused}");
        assert_eq!(refused["error"]["status"], 400);
    }
    assert_eq!((&acks[1]["seq"], &acks[2]["seq"]), (&json!(2), &json!(3)));
    assert_eq!(acks[3], json!({"seq": 4, "position": 2}));
    assert_eq!(
        acks[4],
        json!({"seq": 5, "position": 1}),
        "an id already stored is not stored twice"
    );
    let (_, read) = get(&server, "/v1/topics/t/events?from=1&limit=10").await;
    let ids: Vec<&str> =
        read["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_without_waiting_land_in_the_order_they_were_sent() {
    let server = ServerProcess::start(TOPIC);
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    let sender = stream.lines.clone().unwrap();
    let sending = tokio::spawn(async move {
        for i in 0..2000 {
            sender.send(event(&format!("e{i}"), &format!("k{}", i % 7))).await.unwrap();
        }
    });
    let mut last = 0;
    for seq in 1..=2000u64 {
        let ack = stream.ack().await;
        assert_eq!(ack["seq"], seq);
        let position = ack["position"].as_u64().unwrap();
        assert!(position > last, "seq {seq} at {position}, after {last}");
        last = position;
    }
    sending.await.unwrap();
    assert_eq!(last, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_body_limit_ends_the_stream_after_the_acks_before_it() {
    let server = ServerProcess::start(&format!("body_limit = \"2KiB\"\n{TOPIC}"));
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    stream.send(event("ok", "k")).await;
    assert_eq!(stream.ack().await["position"], 1);
    stream.send(format!("{{\"pad\": \"{}\"}}", "x".repeat(4096))).await;
    let refused = stream.ack().await;
    assert_eq!(refused["seq"], 2);
    assert!(
        refused["error"]["type"].as_str().unwrap().ends_with("/payload-too-large"),
        "{refused}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.acks.recv()).await;
    assert!(matches!(ended, Ok(None)), "the stream ended: {ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_many_lines_longer_than_the_body_limit_is_not_one_long_line() {
    let server = ServerProcess::start(TOPIC); // a body limit of 1 MiB
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    // Sent in one go, ~1.5 MB of complete lines of ~150 B: more than one append takes, and
    // more than the limit left after it. Every line is an event of its own.
    let burst: Vec<String> = (0..10_000).map(|i| event(&format!("e{i}"), "k")).collect();
    stream.send(burst.join("\n")).await;
    for seq in 1..=10_000u64 {
        assert_eq!(stream.ack().await, json!({"seq": seq, "position": seq}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_media_type_is_refused() {
    let server = ServerProcess::start(TOPIC);
    let stream = Stream::open(&server, "application/json").await;
    assert_eq!(stream.status, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_an_open_publish_stream_after_its_acks() {
    let server = ServerProcess::start(TOPIC);
    let mut stream = Stream::open(&server, "application/x-ndjson").await;
    stream.send(event("before-stop", "k")).await;
    assert_eq!(stream.ack().await["position"], 1);
    // The request stays open (the client neither ends it nor goes): the server still stops.
    common::terminate_within_20s(server).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.acks.recv()).await;
    assert!(matches!(ended, Ok(None)), "the stream ended: {ended:?}");
}
