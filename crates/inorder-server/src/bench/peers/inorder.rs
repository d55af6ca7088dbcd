//! The inorder side of the comparison: `inorder serve` as a child process and its clients
//! (publish by request, by stream and by batch; consume by pull, runs and consume stream;
//! latency by pull and by consume stream).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Child,
};

use super::workload::{
    ACKS_IN_FLIGHT, IN_FLIGHT, KEYS, LATENCY_RATE, RUN_PER_KEY, STREAM_CHUNK_EVENTS, STREAMS,
    at_rate, free_port, micros_since, payload, ready, spawn_quiet, spread,
};

/// `inorder serve` as a child process.
pub(super) struct Inorder {
    child: Child,
    base: String,
    round: u64,
}

impl Inorder {
    pub(super) async fn start(dir: &Path) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let data = dir.join("inorder-data");
        let config = dir.join("inorder.toml");
        let mut toml = format!(
            "data_dir = {data:?}\nlisten = \"{addr}\"\nauto_create_topics = true\n\n\
             [[subscriptions]]\nname = \"consume\"\ntopics = [\"batch\"]\ndelivery = \"pull\"\n\
             max_keys_in_flight = {KEYS}\n\n\
             [[subscriptions]]\nname = \"consume_runs\"\ntopics = [\"batch\"]\ndelivery = \"pull\"\n\
             max_keys_in_flight = {KEYS}\nmax_per_key = {RUN_PER_KEY}\n\n\
             [[subscriptions]]\nname = \"consume_stream\"\ntopics = [\"batch\"]\ndelivery = \"pull\"\n\
             max_keys_in_flight = {KEYS}\nmax_per_key = {RUN_PER_KEY}\n\n"
        );
        toml.push_str(
            "[[subscriptions]]\nname = \"latency\"\ntopics = [\"latency\"]\ndelivery = \"pull\"\n\
             start = \"latest\"\n\n\
             [[subscriptions]]\nname = \"latency_stream\"\ntopics = [\"latency_stream\"]\n\
             delivery = \"pull\"\nstart = \"latest\"\n",
        );
        std::fs::write(&config, toml)?;
        let mut serve = tokio::process::Command::new(std::env::current_exe()?);
        serve.args(["serve", "--config"]).arg(&config);
        let child = spawn_quiet(serve, "inorder serve")?;
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        ready("inorder serve", || async {
            let answer = client.get(format!("{base}/readyz")).send().await;
            answer.is_ok_and(|r| r.status().is_success())
        })
        .await?;
        Ok(Self { child, base, round: 0 })
    }

    /// Publishes `events` to topic `single` (one per request) or `batch` (`per_request` each).
    pub(super) async fn publish(
        &mut self,
        client: &reqwest::Client,
        events: u64,
        per_request: u64,
    ) -> anyhow::Result<f64> {
        self.round += 1;
        let (topic, path) =
            if per_request == 1 { ("single", "events") } else { ("batch", "events:batch") };
        let url = reqwest::Url::parse(&format!("{}/v1/topics/{topic}/{path}", self.base))?;
        let round = self.round;
        let payload = Arc::new(payload());
        spread(events, per_request, |worker, requests| {
            let (client, url, payload) = (client.clone(), url.clone(), Arc::clone(&payload));
            async move {
                let mut request = worker as u64;
                while request < requests {
                    let first = request * per_request;
                    let body = if per_request == 1 {
                        event_json(round, first, &payload, 0).to_string()
                    } else {
                        let batch: Vec<Json> = (first..first + per_request)
                            .map(|i| event_json(round, i, &payload, 0))
                            .collect();
                        Json::Array(batch).to_string()
                    };
                    let content_type = if per_request == 1 {
                        "application/cloudevents+json"
                    } else {
                        "application/cloudevents-batch+json"
                    };
                    post_events(&client, url.clone(), content_type, body).await?;
                    request += IN_FLIGHT as u64;
                }
                Ok(())
            }
        })
        .await
    }

    /// Publishes `events` to topic `stream` over STREAMS publish streams, each event acked.
    ///
    /// The client is a plain HTTP/1.1 connection (chunked request body written while the
    /// response is read): what a producer library does; reqwest's streamed bodies flush each
    /// item on its own and hold the sender to a few thousand events per second.
    pub(super) async fn publish_stream(&mut self, events: u64) -> anyhow::Result<f64> {
        self.round += 1;
        let address = self.base.trim_start_matches("http://").to_owned();
        let (round, payload) = (self.round, Arc::new(payload()));
        let per_stream = events / STREAMS as u64;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for stream in 0..STREAMS as u64 {
            let (address, payload) = (address.clone(), Arc::clone(&payload));
            tasks.push(tokio::spawn(async move {
                let connection = tokio::net::TcpStream::connect(&address).await?;
                connection.set_nodelay(true)?;
                let (mut reader, mut writer) = connection.into_split();
                let first = stream * per_stream;
                let sender = tokio::spawn(async move {
                    let head = format!(
                        "POST /v1/topics/stream/events:stream HTTP/1.1\r\nhost: {address}\r\n\
                         content-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    writer.write_all(head.as_bytes()).await?;
                    let mut next = first;
                    while next < first + per_stream {
                        // Up to STREAM_CHUNK_EVENTS lines per chunk, written without waiting.
                        let end = (next + STREAM_CHUNK_EVENTS).min(first + per_stream);
                        let mut lines = String::new();
                        for i in next..end {
                            lines.push_str(&event_json(round, i, &payload, 0).to_string());
                            lines.push('\n');
                        }
                        let chunk = format!("{:x}\r\n{lines}\r\n", lines.len());
                        writer.write_all(chunk.as_bytes()).await?;
                        next = end;
                    }
                    writer.write_all(b"0\r\n\r\n").await?;
                    anyhow::Ok(writer)
                });
                // Counts acknowledgements (`"seq"`) in the answer, whatever its chunking.
                let mut acked = 0;
                let mut buffer = vec![0u8; 1 << 16];
                let mut carry: Vec<u8> = Vec::new();
                while acked < per_stream {
                    let n = reader.read(&mut buffer).await?;
                    anyhow::ensure!(n > 0, "the stream ended after {acked} acks");
                    carry.extend_from_slice(&buffer[..n]);
                    anyhow::ensure!(
                        !carry.windows(8).any(|w| w == b"\"error\":"),
                        "a streamed event was refused: {}",
                        String::from_utf8_lossy(&carry)
                    );
                    acked += carry.windows(5).filter(|w| *w == b"\"seq\"").count() as u64;
                    let keep = carry.len().saturating_sub(4);
                    carry.drain(..keep);
                }
                drop(sender.await??);
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok((per_stream * STREAMS as u64) as f64 / started.elapsed().as_secs_f64())
    }

    /// Consumes `events` of topic `batch` through subscription `consume_stream`: one consume
    /// stream brings the leases, acks go out on other connections as they are read.
    pub(super) async fn consume_stream(
        &mut self,
        client: &reqwest::Client,
        events: u64,
    ) -> anyhow::Result<f64> {
        let url = format!("{}/v1/subscriptions/consume_stream/consume", self.base);
        let ack = format!("{}/v1/subscriptions/consume_stream/ack", self.base);
        let started = Instant::now();
        let response = client.post(&url).json(&json!({ "window": 1000 })).send().await?;
        anyhow::ensure!(response.status().is_success(), "consume: {}", response.status());
        let mut body = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut acks = tokio::task::JoinSet::new();
        let (mut received, mut acked) = (0u64, 0u64);
        while received < events {
            let Some(chunk) = body.next().await else { bail!("the consume stream ended") };
            pending.extend_from_slice(&chunk?);
            let mut leases = Vec::new();
            while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                let mut message: Json = serde_json::from_slice(&line)?;
                leases.push(message["lease"].take());
                received += 1;
            }
            if leases.is_empty() {
                continue;
            }
            while acks.len() >= ACKS_IN_FLIGHT {
                acked += acks.join_next().await.context("an ack task")???;
            }
            let (client, ack) = (client.clone(), ack.clone());
            acks.spawn(async move {
                let count = leases.len() as u64;
                let response = client.post(&ack).json(&json!({ "leases": leases })).send().await?;
                anyhow::ensure!(response.status().is_success(), "ack: {}", response.status());
                anyhow::Ok(count)
            });
        }
        while let Some(count) = acks.join_next().await {
            acked += count??;
        }
        anyhow::ensure!(acked == events, "{acked} of {events} acked");
        Ok(acked as f64 / started.elapsed().as_secs_f64())
    }

    /// Pulls and acks `events` of topic `batch` through `subscription`.
    pub(super) async fn consume(
        &mut self,
        client: &reqwest::Client,
        subscription: &str,
        events: u64,
    ) -> anyhow::Result<f64> {
        let pull = format!("{}/v1/subscriptions/{subscription}/pull", self.base);
        let ack = format!("{}/v1/subscriptions/{subscription}/ack", self.base);
        let started = Instant::now();
        let mut acked = 0;
        while acked < events {
            let messages = pull_messages(client, &pull, 1000).await?;
            let leases: Vec<&Json> = messages.iter().map(|m| &m["lease"]).collect();
            if leases.is_empty() {
                continue;
            }
            let response = client.post(&ack).json(&json!({ "leases": leases })).send().await?;
            anyhow::ensure!(response.status().is_success(), "ack: {}", response.status());
            acked += leases.len() as u64;
        }
        Ok(acked as f64 / started.elapsed().as_secs_f64())
    }

    /// Publishes to `latency` at LATENCY_RATE for `duration` while a pull consumer receives;
    /// returns publish → received in microseconds.
    /// With `stream`, the consumer is a consume stream on topic `latency_stream` (acks sent on
    /// another connection without waiting), else pulls on topic `latency`.
    pub(super) async fn latency(
        &mut self,
        client: &reqwest::Client,
        duration: Duration,
        stream: bool,
    ) -> anyhow::Result<Vec<u64>> {
        let base = Instant::now();
        let topic = if stream { "latency_stream" } else { "latency" };
        let url = format!("{}/v1/topics/{topic}/events", self.base);
        let payload = Arc::new(payload());
        let total = LATENCY_RATE * duration.as_secs();
        let publisher = {
            let client = client.clone();
            tokio::spawn(at_rate(total, move |i| {
                let (client, url, payload) = (client.clone(), url.clone(), Arc::clone(&payload));
                async move {
                    let body = event_json(0, i, &payload, micros_since(base)).to_string();
                    post_events(&client, url, "application/cloudevents+json", body).await
                }
            }))
        };
        let samples = if stream {
            self.received_by_stream(client, base, total).await?
        } else {
            self.received_by_pulls(client, base, total).await?
        };
        publisher.await??;
        Ok(samples)
    }

    /// Receives `total` events of `latency_stream` on a consume stream; publish → received, µs.
    async fn received_by_stream(
        &self,
        client: &reqwest::Client,
        base: Instant,
        total: u64,
    ) -> anyhow::Result<Vec<u64>> {
        let url = format!("{}/v1/subscriptions/latency_stream/consume", self.base);
        let ack = format!("{}/v1/subscriptions/latency_stream/ack", self.base);
        let response = client.post(&url).json(&json!({ "window": 100 })).send().await?;
        anyhow::ensure!(response.status().is_success(), "consume: {}", response.status());
        let mut body = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut acks = tokio::task::JoinSet::new();
        let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        while (samples.len() as u64) < total {
            let Some(chunk) = body.next().await else { bail!("the consume stream ended") };
            let now = micros_since(base);
            pending.extend_from_slice(&chunk?);
            let mut leases = Vec::new();
            while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                let mut message: Json = serde_json::from_slice(&line)?;
                let sent = message["event"]["data"]["t"].as_u64().context("no t in the event")?;
                samples.push(now.saturating_sub(sent));
                leases.push(message["lease"].take());
            }
            if !leases.is_empty() {
                let (client, ack) = (client.clone(), ack.clone());
                acks.spawn(async move {
                    client.post(&ack).json(&json!({ "leases": leases })).send().await
                });
            }
            while let Some(done) = acks.try_join_next() {
                done??;
            }
        }
        while let Some(done) = acks.join_next().await {
            done??;
        }
        Ok(samples)
    }

    /// Receives `total` events of `latency` by pull, acking each pull's before the next;
    /// publish → received, µs.
    async fn received_by_pulls(
        &self,
        client: &reqwest::Client,
        base: Instant,
        total: u64,
    ) -> anyhow::Result<Vec<u64>> {
        let pull = format!("{}/v1/subscriptions/latency/pull", self.base);
        let ack = format!("{}/v1/subscriptions/latency/ack", self.base);
        let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        while (samples.len() as u64) < total {
            let messages = pull_messages(client, &pull, 100).await?;
            let now = micros_since(base);
            let mut leases = Vec::with_capacity(messages.len());
            for message in &messages {
                let sent = message["event"]["data"]["t"].as_u64().context("no t in the event")?;
                samples.push(now.saturating_sub(sent));
                leases.push(&message["lease"]);
            }
            if !leases.is_empty() {
                client.post(&ack).json(&json!({ "leases": leases })).send().await?;
            }
        }
        Ok(samples)
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Publishes one request's events (`content_type` says structured or batch).
async fn post_events(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    content_type: &str,
    body: String,
) -> anyhow::Result<()> {
    let response = client.post(url).header("content-type", content_type).body(body).send().await?;
    anyhow::ensure!(response.status().is_success(), "publish: {}", response.status());
    response.bytes().await?;
    Ok(())
}

/// A structured CloudEvent: key `k{i % KEYS}`, `data` with the send time `t` (µs).
fn event_json(round: u64, i: u64, payload: &str, t: u64) -> Json {
    json!({
        "specversion": "1.0", "id": format!("{round}-{i}"), "source": "/bench",
        "type": "bench.event", "partitionkey": format!("k{}", i % KEYS),
        "datacontenttype": "application/json", "data": { "t": t, "p": payload },
    })
}

async fn pull_messages(client: &reqwest::Client, url: &str, max: u64) -> anyhow::Result<Vec<Json>> {
    let response = client.post(url).json(&json!({ "max": max, "wait": "1s" })).send().await?;
    anyhow::ensure!(response.status().is_success(), "pull: {}", response.status());
    let mut body: Json = response.json().await?;
    match body["messages"].take() {
        Json::Array(messages) => Ok(messages),
        other => bail!("pull answered {other}"),
    }
}
