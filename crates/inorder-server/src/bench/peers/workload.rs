//! What both sides of the comparison share: the workload's sizes and rates, the payload, and
//! the helpers that drive requests and child processes.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::process::Child;

/// Keys the events spread over.
pub(super) const KEYS: u64 = 1000;
/// Requests in flight while publishing.
pub(super) const IN_FLIGHT: usize = 64;
/// Events per second while measuring latency.
pub(super) const LATENCY_RATE: u64 = 2000;
/// Payload bytes per event.
pub(super) const PAYLOAD_BYTES: usize = 256;
/// Connections the latency publisher spreads its events over (so one slow reply does not hold
/// the rate back).
pub(super) const LATENCY_CONNECTIONS: usize = 16;
/// Publish streams (`events:stream` requests) the streaming publish spreads its events over.
pub(super) const STREAMS: usize = 4;
/// Events a streaming producer writes at once (one chunk of lines, each acked on its own).
pub(super) const STREAM_CHUNK_EVENTS: u64 = 64;
/// Ack requests a streaming consumer has in flight at once.
pub(super) const ACKS_IN_FLIGHT: usize = 4;
/// `max_per_key` of the subscription behind `peers.consume.ordered.runs`.
pub(super) const RUN_PER_KEY: usize = 100;
/// How long a child server may take to answer.
pub(super) const START_PATIENCE: Duration = Duration::from_secs(30);

/// A free local port to start a child server on.
pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The payload every event carries.
pub(super) fn payload() -> String {
    "x".repeat(PAYLOAD_BYTES)
}

/// Microseconds since `base` (the publish time a consumer compares with).
pub(super) fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Splits `events` over IN_FLIGHT tasks and returns the events per second they reached.
pub(super) async fn spread<F, Fut>(events: u64, per_request: u64, task: F) -> anyhow::Result<f64>
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
pub(super) fn spawn_quiet(
    mut command: tokio::process::Command,
    what: &str,
) -> anyhow::Result<Child> {
    command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    command.spawn().with_context(|| format!("starting {what}"))
}

/// Polls `answers` until it holds, for at most START_PATIENCE.
pub(super) async fn ready<F, Fut>(what: &str, answers: F) -> anyhow::Result<()>
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

/// Starts `total` publishes at LATENCY_RATE per second, each on a task of its own (a slow reply
/// does not hold the next one back), and waits for them all.
pub(super) async fn at_rate<F, Fut>(total: u64, publish: F) -> anyhow::Result<()>
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
