//! `inorder bench peers`: the same workload against `inorder serve` and Redis Streams, each in a
//! child process at its strongest durability, measured in one run.
//!
//! - inorder: `inorder serve` (this binary) on a temporary data directory, `fsync = "group"`
//!   (the default: an event is acknowledged after the fdatasync that covers it);
//! - Redis: `redis-server --appendonly yes --appendfsync always` on a temporary directory
//!   (every write fsynced before the reply), found on `PATH` (`scripts/bench-peers` installs it
//!   from the system's packages); without it the comparison is skipped with a message.
//!
//! The workload, ~300 B events over [`KEYS`] keys:
//!
//! | figure | inorder | Redis |
//! |---|---|---|
//! | `peers.publish.single` | one `POST` per event, [`IN_FLIGHT`] connections | one `XADD` per round trip, [`IN_FLIGHT`] connections |
//! | `peers.publish.stream` | [`STREAMS`] publish streams (`events:stream`): events sent without waiting, each acked once durable | the `peers.publish.single` figure (Redis's client answer to pipelining is batches, below) |
//! | `peers.publish.batch100` | `POST …/events:batch` of 100 | 100 pipelined `XADD`s |
//! | `peers.consume.ordered` | one pull consumer: pull ≤ 1000 leases (one per key: fifo), ack them | one group consumer: `XREADGROUP COUNT 1000`, `XACK` them |
//! | `peers.consume.ordered.stream` | a consume stream (`…/consume`, window 1000, `max_per_key = ` [`RUN_PER_KEY`]): leases arrive on one long response, acks go on other connections, [`ACKS_IN_FLIGHT`] at once | the same figure as above |
//! | `peers.consume.ordered.runs` | the same with `max_per_key = ` [`RUN_PER_KEY`]: a pull leases up to that many consecutive events of a key | the same figure as above |
//! | `peers.latency.p50`, `.p99` | publish at [`LATENCY_RATE`]/s, a pull consumer waiting (`wait`), publish → received | the same with `XREADGROUP BLOCK` |
//! | `peers.latency.stream.p50`, `.p99` | the same with a consume stream (window 100, acks on another connection) | the same figure as above |
//!
//! Throughput ratios are ours / Redis (higher is better); latency ratios too (lower is
//! better). The client runs in this process and shares the machine's cores with both servers.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::{process::Child, sync::Mutex};

use super::{
    report::report,
    resp::{Resp, Value, command},
};

/// Keys the events spread over.
const KEYS: u64 = 1000;
/// Requests in flight while publishing.
const IN_FLIGHT: usize = 64;
/// Events per second while measuring latency.
const LATENCY_RATE: u64 = 2000;
/// Payload bytes per event.
const PAYLOAD_BYTES: usize = 256;
/// Connections the latency publisher spreads its events over (so one slow reply does not hold
/// the rate back).
const LATENCY_CONNECTIONS: usize = 16;
/// Publish streams (`events:stream` requests) the streaming publish spreads its events over.
const STREAMS: usize = 4;
/// Events a streaming producer writes at once (one chunk of lines, each acked on its own).
const STREAM_CHUNK_EVENTS: u64 = 64;
/// Ack requests a streaming consumer has in flight at once.
const ACKS_IN_FLIGHT: usize = 4;
/// `max_per_key` of the subscription behind `peers.consume.ordered.runs`.
const RUN_PER_KEY: usize = 100;
/// How long a child server may take to answer.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// Runs the comparison.
pub async fn peers(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    // A figure is measured if its name starts with `only`; a phase runs if one of its figures
    // is, or a later phase needs it.
    let wanted = |figure: &str| only.is_none_or(|prefix| figure.starts_with(prefix));
    let phase = |group: &str| {
        only.is_none_or(|prefix| group.starts_with(prefix) || prefix.starts_with(group))
    };
    let events: u64 = if quick { 50_000 } else { 200_000 };
    let latency_for = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let dir = tempfile::tempdir()?;
    let Some(redis_server) = find_on_path("redis-server") else {
        println!(
            "SKIP peers: redis-server is not on PATH (scripts/bench-peers installs it from the \
             system's packages)"
        );
        return Ok(());
    };
    let mut redis = RedisPeer::start(&redis_server, dir.path()).await?;
    let mut ours = Inorder::start(dir.path()).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT * 2).build()?;

    if wanted("peers.publish.single") {
        let theirs = redis.publish(events, 1).await?;
        let mine = ours.publish(&client, events, 1).await?;
        report("peers.publish.single", "events/s", mine, "redis_streams", theirs);
        if wanted("peers.publish.stream") {
            let mine = ours.publish_stream(events).await?;
            report("peers.publish.stream", "events/s", mine, "redis_streams", theirs);
        }
    }

    // Consumption reads what the batches published.
    if wanted("peers.publish.batch100") || phase("peers.consume") {
        let theirs = redis.publish(events, 100).await?;
        let mine = ours.publish(&client, events, 100).await?;
        if wanted("peers.publish.batch100") {
            report("peers.publish.batch100", "events/s", mine, "redis_streams", theirs);
        }
    }
    if phase("peers.consume") {
        let theirs = redis.consume(events).await?;
        if wanted("peers.consume.ordered") {
            let mine = ours.consume(&client, "consume", events).await?;
            report("peers.consume.ordered", "events/s", mine, "redis_streams", theirs);
        }
        if wanted("peers.consume.ordered.runs") {
            let mine = ours.consume(&client, "consume_runs", events).await?;
            report("peers.consume.ordered.runs", "events/s", mine, "redis_streams", theirs);
        }
        if wanted("peers.consume.ordered.stream") {
            let mine = ours.consume_stream(&client, events).await?;
            report("peers.consume.ordered.stream", "events/s", mine, "redis_streams", theirs);
        }
    }

    if phase("peers.latency") {
        let theirs = redis.latency(latency_for).await?;
        let mine = ours.latency(&client, latency_for, false).await?;
        for (name, index) in [("peers.latency.p50", 50), ("peers.latency.p99", 99)] {
            let (mine, theirs) = (percentile(&mine, index), percentile(&theirs, index));
            report(name, "us", mine, "redis_streams", theirs);
        }
        if wanted("peers.latency.stream") {
            let mine = ours.latency(&client, latency_for, true).await?;
            for (name, index) in
                [("peers.latency.stream.p50", 50), ("peers.latency.stream.p99", 99)]
            {
                let (mine, theirs) = (percentile(&mine, index), percentile(&theirs, index));
                report(name, "us", mine, "redis_streams", theirs);
            }
        }
    }
    ours.stop().await;
    redis.stop().await;
    Ok(())
}

fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The payload every event carries.
fn payload() -> String {
    "x".repeat(PAYLOAD_BYTES)
}

/// Microseconds since `base` (the publish time a consumer compares with).
fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn percentile(samples: &[u64], p: usize) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index] as f64
}

/// Splits `events` over IN_FLIGHT tasks and returns the events per second they reached.
async fn spread<F, Fut>(events: u64, per_request: u64, task: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let requests = events / per_request;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..IN_FLIGHT {
        tasks.push(tokio::spawn(task(worker, requests)));
    }
    for task in tasks {
        task.await??;
    }
    Ok((requests * per_request) as f64 / started.elapsed().as_secs_f64())
}

/// Starts `command` as a child process without output, killed when its handle is dropped.
fn spawn_quiet(mut command: tokio::process::Command, what: &str) -> anyhow::Result<Child> {
    command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    command.spawn().with_context(|| format!("starting {what}"))
}

/// Polls `answers` until it holds, for at most START_PATIENCE.
async fn ready<F, Fut>(what: &str, answers: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_PATIENCE;
    while !answers().await {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `inorder serve` as a child process.
struct Inorder {
    child: Child,
    base: String,
    round: u64,
}

impl Inorder {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
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
    async fn publish(
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
    async fn publish_stream(&mut self, events: u64) -> anyhow::Result<f64> {
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
    async fn consume_stream(
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
    async fn consume(
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
    async fn latency(
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

    async fn stop(mut self) {
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

/// Starts `total` publishes at LATENCY_RATE per second, each on a task of its own (a slow reply
/// does not hold the next one back), and waits for them all.
async fn at_rate<F, Fut>(total: u64, publish: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        // At most LATENCY_RATE × the run's seconds: the offset stays within the run.
        let at = started + Duration::from_micros(i.saturating_mul(1_000_000) / LATENCY_RATE);
        tokio::time::sleep_until(at).await;
        tasks.spawn(publish(i));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// `redis-server` as a child process.
struct RedisPeer {
    child: Child,
    addr: SocketAddr,
}

impl RedisPeer {
    async fn start(program: &Path, dir: &Path) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let data = dir.join("redis-data");
        std::fs::create_dir_all(&data)?;
        let mut server = tokio::process::Command::new(program);
        server
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&data);
        let child = spawn_quiet(server, "redis-server")?;
        ready("redis-server", || async {
            match Resp::connect(addr).await {
                Ok(mut redis) => redis.call(command(["PING"])).await.is_ok(),
                Err(_) => false,
            }
        })
        .await?;
        // The baseline is only what it claims if Redis fsyncs every write before replying.
        let mut redis = Resp::connect(addr).await?;
        let fsync = redis.call(command(["CONFIG", "GET", "appendfsync"])).await?;
        let always = fsync.items().get(1).map(Value::bytes) == Some(b"always".as_slice());
        anyhow::ensure!(always, "redis-server runs with appendfsync {fsync:?}, not always");
        Ok(Self { child, addr })
    }

    /// `XADD`s `events` to stream `single` (one per round trip) or `batch` (`per_request`
    /// pipelined) over IN_FLIGHT connections.
    async fn publish(&mut self, events: u64, per_request: u64) -> anyhow::Result<f64> {
        let stream = if per_request == 1 { "single" } else { "batch" };
        let (addr, payload) = (self.addr, Arc::new(payload()));
        spread(events, per_request, |worker, requests| {
            let payload = Arc::clone(&payload);
            async move {
                let mut redis = Resp::connect(addr).await?;
                let mut request = worker as u64;
                while request < requests {
                    let first = request * per_request;
                    let commands: Vec<_> = (first..first + per_request)
                        .map(|i| xadd(stream, i, &payload, 0))
                        .collect();
                    redis.pipeline(&commands).await?;
                    request += IN_FLIGHT as u64;
                }
                Ok(())
            }
        })
        .await
    }

    /// Reads and acks `events` of stream `batch` as one consumer of a new group.
    async fn consume(&mut self, events: u64) -> anyhow::Result<f64> {
        let mut redis = Resp::connect(self.addr).await?;
        redis.call(command(["XGROUP", "CREATE", "batch", "consume", "0"])).await?;
        let started = Instant::now();
        let mut acked = 0;
        while acked < events {
            let reply = redis
                .call(command([
                    "XREADGROUP",
                    "GROUP",
                    "consume",
                    "c",
                    "COUNT",
                    "1000",
                    "BLOCK",
                    "1000",
                    "STREAMS",
                    "batch",
                    ">",
                ]))
                .await?;
            let ids = entries(&reply).map(|(id, _)| id.to_vec()).collect::<Vec<_>>();
            if ids.is_empty() {
                continue;
            }
            let mut ack = command(["XACK", "batch", "consume"]);
            acked += ids.len() as u64;
            ack.extend(ids);
            redis.call(ack).await?;
        }
        Ok(acked as f64 / started.elapsed().as_secs_f64())
    }

    /// The latency run, as for inorder.
    async fn latency(&mut self, duration: Duration) -> anyhow::Result<Vec<u64>> {
        let mut consumer = Resp::connect(self.addr).await?;
        consumer.call(command(["XGROUP", "CREATE", "latency", "latency", "$", "MKSTREAM"])).await?;
        let mut connections = Vec::new();
        for _ in 0..LATENCY_CONNECTIONS {
            connections.push(Arc::new(Mutex::new(Resp::connect(self.addr).await?)));
        }
        let base = Instant::now();
        let total = LATENCY_RATE * duration.as_secs();
        let payload = Arc::new(payload());
        let publisher = tokio::spawn(at_rate(total, move |i| {
            let slot = usize::try_from(i).unwrap_or(0) % LATENCY_CONNECTIONS;
            let connection = Arc::clone(&connections[slot]);
            let payload = Arc::clone(&payload);
            async move {
                let command = xadd("latency", i, &payload, micros_since(base));
                connection.lock().await.call(command).await.map(|_| ())
            }
        }));
        let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        while (samples.len() as u64) < total {
            let reply = consumer
                .call(command([
                    "XREADGROUP",
                    "GROUP",
                    "latency",
                    "c",
                    "COUNT",
                    "100",
                    "BLOCK",
                    "1000",
                    "STREAMS",
                    "latency",
                    ">",
                ]))
                .await?;
            let now = micros_since(base);
            let mut ack = command(["XACK", "latency", "latency"]);
            for (id, fields) in entries(&reply) {
                let sent = field(fields, b"t").context("no t in the entry")?;
                samples.push(now.saturating_sub(std::str::from_utf8(sent)?.parse()?));
                ack.push(id.to_vec());
            }
            if ack.len() > 3 {
                consumer.call(ack).await?;
            }
        }
        publisher.await??;
        Ok(samples)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn xadd(stream: &str, i: u64, payload: &str, t: u64) -> Vec<Vec<u8>> {
    let key = format!("k{}", i % KEYS);
    command(["XADD", stream, "*", "k", &key, "t", &t.to_string(), "p", payload])
}

/// The `(id, fields)` of every entry in a `XREADGROUP` reply.
fn entries(reply: &Value) -> impl Iterator<Item = (&[u8], &[Value])> {
    reply
        .items()
        .iter()
        .flat_map(|stream| stream.items().get(1).map(Value::items).unwrap_or_default())
        .map(|entry| {
            let items = entry.items();
            let id = items.first().map(Value::bytes).unwrap_or_default();
            let fields = items.get(1).map(Value::items).unwrap_or_default();
            (id, fields)
        })
}

/// The value of field `name` in an entry's field list.
fn field<'a>(fields: &'a [Value], name: &[u8]) -> Option<&'a [u8]> {
    fields
        .chunks(2)
        .find(|pair| pair[0].bytes() == name)
        .and_then(|pair| pair.get(1))
        .map(Value::bytes)
}
