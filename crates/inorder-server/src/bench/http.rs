//! `inorder bench http`: the server against a bare axum baseline, in one process.
//!
//! Both run in this process on loopback; the same client (64 keep-alive connections) drives
//! them in alternating slices. The client is **capped at one thread**: it runs on a
//! current-thread runtime of its own OS thread, so on a 2-core machine it never takes more than
//! one core from the servers it measures, and ours and the baseline face the same client:
//!
//! - `http.publish.single`: 1 KiB structured events, fsync=group; baseline `bare_axum`, a route
//!   that parses the same CloudEvent and answers 201 without the log;
//! - `http.publish.batch100`: batches of 100 such events; baseline: the same route parsing the
//!   batch;
//! - `http.status`: `GET /v1/status/{topic}/{position}`; baseline: a bare GET answering 200.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    http::StatusCode,
    routing::{get, post},
};
use serde_json::json;

use super::{client::on_client_thread, report::report};
use crate::{cloudevent, config::ServerConfig, serve};

const CONNECTIONS: usize = 64;

/// What every benchmark event carries besides its id and key: ~1 KiB in all.
const EVENT_TAIL: &str = concat!(
    r#""source":"/bench","type":"bench.event","datacontenttype":"application/json","#,
    r#""data":{"payload":""#,
);

/// A structured CloudEvent of about 1 KiB, unique per `run` and `i`, written straight into
/// `out` (the client shares the machine's cores with the server: it must stay cheap).
fn event_body(out: &mut String, run: &str, i: u64) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        r#"{{"specversion":"1.0","id":"{run}-{i}","partitionkey":"k{}",{EVENT_TAIL}{}"}}}}"#,
        i % 1000,
        PAYLOAD.as_str(),
    );
}

static PAYLOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "x".repeat(900));

/// What one request sends.
#[derive(Clone, Copy)]
enum Load {
    Single,
    Batch,
    Status,
}

/// Drives `url` with CONNECTIONS tasks for `slice`; returns events (or requests) per second.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    load: Load,
    slice: Duration,
) -> anyhow::Result<f64> {
    let url = reqwest::Url::parse(url)?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..CONNECTIONS {
        let (client, url, run, stop, done) =
            (client.clone(), url.clone(), run.clone(), Arc::clone(&stop), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut i = task as u64 * 1_000_000_000;
            while !stop.load(Ordering::Relaxed) {
                let (request, events) = match load {
                    Load::Single => {
                        let mut body = String::with_capacity(1100);
                        event_body(&mut body, &run, i);
                        let request = client
                            .post(url.clone())
                            .header("content-type", "application/cloudevents+json");
                        (request.body(body), 1)
                    }
                    Load::Batch => {
                        let mut body = String::with_capacity(100 * 1100);
                        body.push('[');
                        for j in 0..100 {
                            if j > 0 {
                                body.push(',');
                            }
                            event_body(&mut body, &run, i + j);
                        }
                        body.push(']');
                        let request = client
                            .post(url.clone())
                            .header("content-type", "application/cloudevents-batch+json");
                        (request.body(body), 100)
                    }
                    Load::Status => (client.get(url.clone()), 1),
                };
                i += 100;
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
                response.bytes().await?;
                done.fetch_add(events, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(slice).await;
    let counted = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(counted as f64 / elapsed.as_secs_f64())
}

/// A bare axum server: parses like the real one, keeps nothing.
async fn bare() -> anyhow::Result<std::net::SocketAddr> {
    let app = Router::new()
        .route(
            "/bare/events",
            post(|body: axum::body::Bytes| async move {
                match cloudevent::parse_structured(&body, "bench") {
                    Ok(_) => (StatusCode::CREATED, axum::Json(json!({"position": 0}))),
                    Err(_) => (StatusCode::BAD_REQUEST, axum::Json(json!({}))),
                }
            }),
        )
        .route(
            "/bare/batch",
            post(|body: axum::body::Bytes| async move {
                match cloudevent::parse_batch(&body, "bench") {
                    Ok(events) => (
                        StatusCode::CREATED,
                        axum::Json(json!({"positions": vec![0; events.len()]})),
                    ),
                    Err(_) => (StatusCode::BAD_REQUEST, axum::Json(json!({}))),
                }
            }),
        )
        .route("/bare/status", get(|| async { axum::Json(json!({"processed": true})) }))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Runs the HTTP benchmarks and prints BENCH lines.
pub async fn http(quick: bool) -> anyhow::Result<()> {
    let (rounds, slice) =
        if quick { (2, Duration::from_millis(1500)) } else { (5, Duration::from_secs(3)) };
    let root = std::env::var_os("INORDER_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(root)?;
    let mut config = ServerConfig::embedded_default()?;
    config.engine.data_dir = dir.path().to_path_buf();
    config.listen = "127.0.0.1:0".parse()?;
    config.publish_in_flight = 4096;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve::start(config, async move {
        let _ = stopped.await;
    })
    .await?;
    let bare = bare().await?;
    println!(
        "# bench http: server http://{} bare http://{bare} connections={CONNECTIONS}",
        server.addr
    );
    let totals = on_client_thread(drive_all(server.addr, bare, rounds, slice)).await?;
    let mean = |i: usize, j: usize| totals[i][j] / f64::from(rounds);
    report("http.publish.single", "events/s", mean(0, 0), "bare_axum", mean(0, 1));
    report("http.publish.batch100", "events/s", mean(1, 0), "bare_axum", mean(1, 1));
    report("http.status", "requests/s", mean(2, 0), "bare_axum", mean(2, 1));
    let _ = stop.send(());
    server.task.await??;
    Ok(())
}

/// Every slice of every round, alternating ours and the baseline: events (or requests) per
/// second, `[figure][ours, baseline]`, summed over the rounds.
async fn drive_all(
    server: std::net::SocketAddr,
    bare: std::net::SocketAddr,
    rounds: u32,
    slice: Duration,
) -> anyhow::Result<[[f64; 2]; 3]> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build()?;
    let ours_single = format!("http://{server}/v1/topics/bench/events");
    let ours_batch = format!("http://{server}/v1/topics/bench/events:batch");
    let mut totals = [[0.0f64; 2]; 3];
    for _ in 0..rounds {
        totals[0][0] += drive(&client, &ours_single, Load::Single, slice).await?;
        totals[0][1] +=
            drive(&client, &format!("http://{bare}/bare/events"), Load::Single, slice).await?;
        totals[1][0] += drive(&client, &ours_batch, Load::Batch, slice).await?;
        totals[1][1] +=
            drive(&client, &format!("http://{bare}/bare/batch"), Load::Batch, slice).await?;
        let status = format!("http://{server}/v1/status/bench/1");
        totals[2][0] += drive(&client, &status, Load::Status, slice).await?;
        totals[2][1] +=
            drive(&client, &format!("http://{bare}/bare/status"), Load::Status, slice).await?;
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_events_are_valid_cloudevents_of_about_one_kib() {
        let mut body = String::new();
        event_body(&mut body, "run", 7);
        let event = cloudevent::parse_structured(body.as_bytes(), "bench");
        let event = event.map_err(|e| e.0).expect("a valid CloudEvent");
        assert_eq!((event.id.as_str(), event.key.as_str()), ("run-7", "k7"));
        assert!((1000..1100).contains(&body.len()), "{} bytes", body.len());
    }
}
