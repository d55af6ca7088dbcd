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

mod inorder;
mod redis;
mod workload;

use std::time::Duration;

use self::{inorder::Inorder, redis::RedisPeer, workload::IN_FLIGHT};
use super::report::report;

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

fn percentile(samples: &[u64], p: usize) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index] as f64
}
