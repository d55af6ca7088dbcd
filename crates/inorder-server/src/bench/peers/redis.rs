//! The Redis side of the comparison: `redis-server` with `appendfsync always` as a child process,
//! driven over RESP with the same workload.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{process::Child, sync::Mutex};

use super::workload::{
    IN_FLIGHT, KEYS, LATENCY_CONNECTIONS, LATENCY_RATE, at_rate, free_port, micros_since, payload,
    ready, spawn_quiet, spread,
};
use crate::bench::resp::{Resp, Value, command};

/// `redis-server` as a child process.
pub(super) struct RedisPeer {
    child: Child,
    addr: SocketAddr,
}

impl RedisPeer {
    pub(super) async fn start(program: &Path, dir: &Path) -> anyhow::Result<Self> {
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
    pub(super) async fn publish(&mut self, events: u64, per_request: u64) -> anyhow::Result<f64> {
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
    pub(super) async fn consume(&mut self, events: u64) -> anyhow::Result<f64> {
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
    pub(super) async fn latency(&mut self, duration: Duration) -> anyhow::Result<Vec<u64>> {
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

    pub(super) async fn stop(mut self) {
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
