//! The real `inorder` binary as a child process, and helpers to talk to it.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

/// A server process on a temporary directory, restartable with the same configuration.
pub struct ServerProcess {
    child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
}

impl ServerProcess {
    /// Starts `inorder serve` with `config` (TOML, without `listen` and `data_dir`, which the
    /// harness sets: a free port and the temporary directory).
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::start_in(dir, &data, config)
    }

    /// As [`ServerProcess::start`], with the data directory at `data` (a mount, say).
    pub fn start_with_data(config: &str, data: &std::path::Path) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), data, config)
    }

    fn start_in(dir: tempfile::TempDir, data: &std::path::Path, config: &str) -> Self {
        let path = dir.path().join("inorder.toml");
        let full = format!("listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{config}", data.display());
        std::fs::write(&path, full).unwrap();
        let mut server = Self { child: None, base: String::new(), dir, config: path };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inorder"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("the server did not announce its address: {line:?}"));
        self.base = address.to_owned();
        self.child = Some(child);
    }

    /// Stops the server with SIGKILL (a crash) and starts it again on the same data.
    pub fn kill_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not send SIGTERM");
        child.wait().unwrap()
    }

    /// Sends `kill -<signal>` (`STOP`, `CONT`, …) to the running server.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().unwrap();
        let sent =
            Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not send SIG{signal}");
    }

    /// Starts the server again after a stop.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client with a sane timeout.
pub fn client() -> reqwest::Client {
    // reqwest's TLS needs a process-wide provider (the binary installs the same one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// POSTs a structured CloudEvent; returns status and JSON body.
pub async fn post_event(server: &ServerProcess, topic: &str, event: &Value) -> (u16, Value) {
    let response = client()
        .post(server.url(&format!("/v1/topics/{topic}/events")))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    decode(response).await
}

pub async fn get(server: &ServerProcess, path: &str) -> (u16, Value) {
    decode(client().get(server.url(path)).send().await.unwrap()).await
}

pub async fn post_json(server: &ServerProcess, path: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    decode(response).await
}

pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A minimal structured CloudEvent.
pub fn event(action: &str, key: &str) -> Value {
    serde_json::json!({"specversion": "1.0", "type": action, "source": "/tests", "partitionkey": key})
}

/// Pulls from a subscription; returns the messages.
pub async fn pull(
    server: &ServerProcess,
    subscription: &str,
    max: usize,
    wait: &str,
) -> Vec<Value> {
    let (status, body) = post_json(
        server,
        &format!("/v1/subscriptions/{subscription}/pull"),
        &serde_json::json!({"max": max, "wait": wait}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

/// Acks leases.
pub async fn ack(server: &ServerProcess, subscription: &str, leases: &[&str]) -> Value {
    let (status, body) = post_json(
        server,
        &format!("/v1/subscriptions/{subscription}/ack"),
        &serde_json::json!({"leases": leases}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The lease id and the event's `type` of a pulled message.
pub fn lease_and_type(message: &Value) -> (&str, &str) {
    (message["lease"].as_str().unwrap(), message["event"]["type"].as_str().unwrap())
}

/// Every event of `topic`, in log order, read page by page.
pub async fn read_all(server: &ServerProcess, topic: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (status, body) =
            get(server, &format!("/v1/topics/{topic}/events?from={from}&limit=1000")).await;
        assert_eq!(status, 200, "{body}");
        let page = body["events"].as_array().unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page.iter().cloned());
        from = body["next"].as_u64().unwrap();
    }
}

/// Runs `inorder serve` on a file holding `config` and expects it to refuse to start; returns
/// the exit code and what it printed on stderr.
pub fn serve_refuses(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inorder.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_inorder"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path()) // the default ./inorder-data, if it gets that far
        .output()
        .unwrap();
    assert!(!output.status.success(), "inorder serve started with:\n{config}");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Runs the `inorder` CLI against `server` with `args`, feeding it `stdin`.
pub fn inorder(server: &ServerProcess, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inorder"))
        .arg("--server")
        .arg(&server.base)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// What a command printed on stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asks `check` every 50 ms until it returns `Some`, for at most `within`; panics naming `what`
/// (with the last thing seen) if it never does.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The short `type` of a problem body (`event-parked` of `https://inorder.dev/problems/event-parked`).
pub fn problem_type(body: &Value) -> &str {
    let kind = body["type"].as_str().unwrap_or_else(|| panic!("not a problem: {body}"));
    kind.strip_prefix("https://inorder.dev/problems/").unwrap_or(kind)
}

/// The server's `/metrics` text.
pub async fn metrics(server: &ServerProcess) -> String {
    client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The JSON lines of a streamed (NDJSON) answer, as they arrive; the receiver ends with it.
pub fn ndjson_lines(response: reqwest::Response) -> tokio::sync::mpsc::Receiver<Value> {
    use futures_util::StreamExt;
    let (found, lines) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            pending.extend_from_slice(&chunk);
            while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                if found.send(serde_json::from_slice(&line).unwrap()).await.is_err() {
                    return;
                }
            }
        }
    });
    lines
}

/// Stops `server` with SIGTERM within 20 s (or fails the test) and checks it exited with 0.
pub async fn terminate_within_20s(mut server: ServerProcess) {
    let stopped = tokio::task::spawn_blocking(move || server.terminate());
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), stopped)
        .await
        .expect("SIGTERM stops the server within 20 s")
        .unwrap();
    assert!(status.success(), "a graceful stop exits with 0: {status:?}");
}
