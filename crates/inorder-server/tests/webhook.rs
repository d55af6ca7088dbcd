//! `delivery = "webhook"` through the real binary, against a real HTTP receiver in the test
//! process that records every request: per key, events arrive in publish order and never two
//! at once, whatever the receiver does — fail, answer slowly, ask to wait with `Retry-After`, be
//! down and come back, be slower than the timeout; nothing is lost; an event the receiver keeps
//! refusing is parked after `max_attempts`; https speaks TLS; bad configurations are refused
//! naming the key.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use common::{ServerProcess, client, eventually, get};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    /// `ce-id`.
    id: String,
    /// `ce-partitionkey`.
    key: String,
    /// `inorder-attempt`.
    attempt: u32,
    headers: HeaderMap,
    body: Bytes,
    /// What the receiver answered (decided when the request arrived).
    status: u16,
    /// The `Retry-After` it answered with.
    retry_after: Option<&'static str>,
    /// When it arrived.
    at: Instant,
}

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// 200 at once.
    Ok,
    /// 200 after this long.
    Slowly(Duration),
    /// This status with a short body.
    Fail(u16),
    /// This status with `Retry-After: seconds`.
    RetryAfter(u16, &'static str),
}

/// Decides the answer to the `n`-th request the receiver got (from 0), knowing its attempt.
type Behaviour = fn(n: usize, attempt: u32) -> Answer;

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    /// Requests being answered, per key.
    in_flight: HashMap<String, usize>,
    /// Keys seen with two requests at once.
    overlaps: Vec<String>,
    /// Requests being answered, of all keys.
    in_flight_total: usize,
    /// The most requests answered at once.
    in_flight_most: usize,
}

struct Shared {
    behaviour: Behaviour,
    log: Mutex<Log>,
}

/// A receiver on `127.0.0.1`, recording into a log that outlives it (so it can go down and come
/// back with what it saw).
struct Receiver {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> (Self, SocketAddr) {
        let shared = Arc::new(Shared { behaviour, log: Mutex::default() });
        Self::start_on("127.0.0.1:0".parse().unwrap(), shared).await
    }

    async fn start_on(addr: SocketAddr, shared: Arc<Shared>) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Self { shared, task }, addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.shared.log.lock().requests.clone()
    }

    fn overlaps(&self) -> Vec<String> {
        self.shared.log.lock().overlaps.clone()
    }

    fn in_flight_most(&self) -> usize {
        self.shared.log.lock().in_flight_most
    }

    /// The ids with a 2xx so far.
    fn delivered(&self) -> usize {
        let log = self.shared.log.lock();
        let mut ids: Vec<&str> =
            log.requests.iter().filter(|r| r.status == 200).map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Waits until `events` distinct events got a 2xx.
    async fn wait_for(&self, events: usize, within: Duration) {
        eventually("every event delivered", within, async || {
            let delivered = self.delivered();
            if delivered == events { Ok(()) } else { Err(format!("{delivered} of {events}")) }
        })
        .await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a key's request out of flight when its answer is done, or abandoned by the client.
struct InFlight {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut log = self.shared.log.lock();
        if let Some(count) = log.in_flight.get_mut(&self.key) {
            *count -= 1;
        }
        log.in_flight_total -= 1;
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let text =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, key) = (text("ce-id"), text("ce-partitionkey"));
    let attempt = text("inorder-attempt").parse().unwrap_or(0);
    let answer = {
        let mut log = shared.log.lock();
        let answer = (shared.behaviour)(log.requests.len(), attempt);
        let (status, retry_after) = match answer {
            Answer::Ok | Answer::Slowly(_) => (200, None),
            Answer::Fail(status) => (status, None),
            Answer::RetryAfter(status, seconds) => (status, Some(seconds)),
        };
        let at = Instant::now();
        let received =
            Received { id, key: key.clone(), attempt, headers, body, status, retry_after, at };
        log.requests.push(received);
        let in_flight = log.in_flight.entry(key.clone()).or_default();
        *in_flight += 1;
        if *in_flight > 1 {
            log.overlaps.push(key.clone());
        }
        log.in_flight_total += 1;
        log.in_flight_most = log.in_flight_most.max(log.in_flight_total);
        answer
    };
    let _in_flight = InFlight { shared: Arc::clone(&shared), key };
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Slowly(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        Answer::Fail(status) => (StatusCode::from_u16(status).unwrap(), "no luck").into_response(),
        Answer::RetryAfter(status, seconds) => {
            (StatusCode::from_u16(status).unwrap(), [("retry-after", seconds)], "wait")
                .into_response()
        }
    }
}

/// One topic `orders`, one webhook subscription `hook` to `url`, with `extra` keys of the
/// subscription (before its webhook table) and `webhook` keys of the table.
fn config(url: &str, extra: &str, webhook: &str) -> String {
    format!(
        r#"
[[topics]]
name = "orders"

[[subscriptions]]
name = "hook"
topics = ["orders"]
ordering = "fifo"
delivery = "webhook"
{extra}

[subscriptions.webhook]
url = "{url}"
{webhook}
"#
    )
}

/// Publishes `per_key` events for each of `keys` keys, in batches of 100, a key's events in
/// index order: event `i` of key `k` has id `k{k}-{i:03}`, data `{"i": i}`.
async fn publish(server: &ServerProcess, keys: usize, per_key: usize) {
    let events: Vec<Value> = (0..per_key)
        .flat_map(|i| (0..keys).map(move |k| (k, i)))
        .map(|(k, i)| {
            json!({"specversion": "1.0", "id": format!("k{k}-{i:03}"), "type": "order.placed",
                   "source": "/tests", "partitionkey": format!("k{k}"), "data": {"i": i}})
        })
        .collect();
    for batch in events.chunks(100) {
        let response = client()
            .post(server.url("/v1/topics/orders/events:batch"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_string(batch).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
}

/// Per key, what the receiver got, in arrival order.
fn by_key(requests: &[Received]) -> BTreeMap<String, Vec<&Received>> {
    let mut keys: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for request in requests {
        keys.entry(request.key.clone()).or_default().push(request);
    }
    keys
}

/// Checks the order at the receiver: per key, every request (retries included) carries the
/// key's events in publish order — an event is sent again until it got a 2xx, and the next one
/// only after that —, each event's attempts count 1, 2, … (a key's first event may arrive at a
/// later attempt when the receiver was `down` at first), and every event got a 2xx.
fn assert_in_order_and_complete(requests: &[Received], keys: usize, per_key: usize, down: bool) {
    let per_key_requests = by_key(requests);
    assert_eq!(per_key_requests.len(), keys, "every key reached the receiver");
    for (key, requests) in per_key_requests {
        let mut expected = 0;
        let mut attempt = requests[0].attempt;
        assert!(down || attempt == 1, "{key}: its first request is attempt {attempt}");
        for request in requests {
            assert_eq!(request.id, format!("{key}-{expected:03}"), "{key}: out of order");
            assert_eq!(request.attempt, attempt, "{}: attempts count up", request.id);
            if request.status == 200 {
                (expected, attempt) = (expected + 1, 1);
            } else {
                attempt += 1;
            }
        }
        assert_eq!(expected, per_key, "{key}: every event delivered");
    }
}

/// `inorder_webhook_requests_total` of subscription `hook` with this `outcome`, from `/metrics`
/// (0 before the first such request).
async fn requests_counted(server: &ServerProcess, outcome: &str) -> f64 {
    let text = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let labels = [format!("outcome=\"{outcome}\""), "subscription=\"hook\"".to_owned()];
    text.lines()
        .filter(|line| line.starts_with("inorder_webhook_requests_total{"))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Waits until [`requests_counted`] is `expected`.
async fn wait_counted(server: &ServerProcess, outcome: &str, expected: f64) {
    eventually(
        &format!("{expected} {outcome} requests counted"),
        Duration::from_secs(10),
        async || {
            let counted = requests_counted(server, outcome).await;
            if counted == expected { Ok(()) } else { Err(counted.to_string()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_slow_receiver_gets_every_event_once_per_key_in_order_with_its_headers() {
    // Every 7th request fails with 500, every 13th asks to wait 0 or 1 s (503), every 11th is
    // answered after 150 ms; the others at once.
    fn flaky(n: usize, _attempt: u32) -> Answer {
        match n {
            n if n % 7 == 3 => Answer::Fail(500),
            n if n % 13 == 8 => {
                Answer::RetryAfter(503, if n.is_multiple_of(2) { "0" } else { "1" })
            }
            n if n % 11 == 5 => Answer::Slowly(Duration::from_millis(150)),
            _ => Answer::Ok,
        }
    }
    let (receiver, addr) = Receiver::start(flaky).await;
    let server = ServerProcess::start(&config(
        &format!("http://{addr}/hook"),
        "max_keys_in_flight = 4\nmax_attempts = 20\nretry_initial = \"10ms\"\nretry_max_delay = \"50ms\"",
        "timeout = \"5s\"\n[subscriptions.webhook.headers]\n\
         authorization = \"Bearer s3cret\"\nX-Tenant = \"acme\"",
    ));
    let (_, subscriptions) = get(&server, "/v1/subscriptions").await;
    assert_eq!(subscriptions["subscriptions"][0]["delivery"], "webhook");

    publish(&server, 10, 50).await;
    receiver.wait_for(500, Duration::from_secs(90)).await;

    let requests = receiver.requests();
    assert_in_order_and_complete(&requests, 10, 50, false);
    assert_eq!(receiver.overlaps(), Vec::<String>::new(), "never two requests of a key at once");
    let most = receiver.in_flight_most();
    assert!((2..=4).contains(&most), "keys in parallel, at most max_keys_in_flight: {most}");
    assert!(requests.iter().any(|r| r.status == 500) && requests.iter().any(|r| r.status == 503));
    for request in &requests {
        let header = |name: &str| request.headers[name].to_str().unwrap();
        assert_eq!(header("authorization"), "Bearer s3cret");
        assert_eq!(header("x-tenant"), "acme");
        assert_eq!(
            (header("ce-specversion"), header("ce-type"), header("ce-source")),
            ("1.0", "order.placed", "/tests")
        );
        assert_eq!(header("content-type"), "application/json");
        let position = header("ce-position");
        assert_eq!(header("inorder-position"), format!("orders/{position}"));
        assert!(header("ce-commit").parse::<u64>().unwrap() > 0);
        let index: u64 = request.id.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&request.body).unwrap(), json!({"i": index}));
    }
    // A 503 with Retry-After: 1 held its event back for that second.
    let mut waited = 0;
    for (index, request) in requests.iter().enumerate() {
        if request.retry_after != Some("1") {
            continue;
        }
        let next = requests[index + 1..].iter().find(|r| r.id == request.id).unwrap();
        let gap = next.at - request.at;
        assert!(gap >= Duration::from_millis(990), "{}: sent again after {gap:?}", request.id);
        waited += 1;
    }
    assert!(waited > 0, "some 503 asked to wait a second");
    // The receiver records a request before answering it: the server counts the last answers
    // a moment later.
    wait_counted(&server, "success", 500.0).await;
    assert!(requests_counted(&server, "retry").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_everything_when_it_comes_back() {
    fn fine(n: usize, _attempt: u32) -> Answer {
        if n.is_multiple_of(5) { Answer::Slowly(Duration::from_millis(50)) } else { Answer::Ok }
    }
    // A port nobody listens on, for now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = ServerProcess::start(&config(
        &format!("http://{addr}/hook"),
        "max_attempts = 1000\nretry_initial = \"10ms\"\nretry_max_delay = \"200ms\"",
        "timeout = \"1s\"",
    ));
    publish(&server, 5, 20).await;
    eventually("requests fail while the receiver is down", Duration::from_secs(20), async || {
        let failed = requests_counted(&server, "error").await;
        if failed >= 10.0 { Ok(()) } else { Err(format!("{failed} failed requests")) }
    })
    .await;

    let shared = Arc::new(Shared { behaviour: fine, log: Mutex::default() });
    let (receiver, _) = Receiver::start_on(addr, shared).await;
    receiver.wait_for(100, Duration::from_secs(60)).await;
    let requests = receiver.requests();
    assert_in_order_and_complete(&requests, 5, 20, true);
    for (key, requests) in by_key(&requests) {
        assert!(requests[0].attempt > 1, "{key}: its first event was tried while down");
    }
    assert_eq!(receiver.overlaps(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_timeout_is_abandoned_and_sent_again() {
    // The first attempt of every event takes longer than the timeout.
    fn late(_n: usize, attempt: u32) -> Answer {
        if attempt == 1 { Answer::Slowly(Duration::from_secs(3)) } else { Answer::Ok }
    }
    let (receiver, addr) = Receiver::start(late).await;
    let server = ServerProcess::start(&config(
        &format!("http://{addr}/hook"),
        "max_attempts = 5\nretry_initial = \"10ms\"\nretry_max_delay = \"50ms\"",
        "timeout = \"500ms\"",
    ));
    publish(&server, 3, 4).await;
    // The receiver counts a slow first attempt as a 200 it was about to give; the server gave up
    // on it, so the event is delivered by its second attempt.
    eventually("every event answered on its second attempt", Duration::from_secs(30), async || {
        let second = receiver.requests().iter().filter(|r| r.attempt == 2).count();
        if second == 12 { Ok(()) } else { Err(format!("{second} of 12")) }
    })
    .await;
    for (key, requests) in by_key(&receiver.requests()) {
        let seen: Vec<(String, u32)> = requests.iter().map(|r| (r.id.clone(), r.attempt)).collect();
        let expected: Vec<(String, u32)> =
            (0..4).flat_map(|i| [1, 2].map(|attempt| (format!("{key}-{i:03}"), attempt))).collect();
        assert_eq!(seen, expected, "{key}: each event abandoned once, then delivered, in order");
    }
    assert_eq!(requests_counted(&server, "error").await, 12.0, "one timeout per event");
    wait_counted(&server, "success", 12.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_keeps_refusing_is_parked_after_max_attempts() {
    fn refusing(_n: usize, _attempt: u32) -> Answer {
        Answer::Fail(400)
    }
    let (receiver, addr) = Receiver::start(refusing).await;
    let server = ServerProcess::start(&config(
        &format!("http://{addr}/hook"),
        "max_attempts = 3\nretry_initial = \"10ms\"\nretry_max_delay = \"50ms\"",
        "",
    ));
    publish(&server, 1, 1).await;
    let parked = eventually("the event parked", Duration::from_secs(20), async || {
        let (_, body) = get(&server, "/v1/subscriptions/hook/parked").await;
        match body["parked"].as_array().and_then(|parked| parked.first()) {
            Some(parked) => Ok(parked.clone()),
            None => Err(body.to_string()),
        }
    })
    .await;
    assert_eq!(
        (&parked["event_id"], &parked["reason"], &parked["attempts"]),
        (&json!("k0-000"), &json!("failed"), &json!(3))
    );
    assert_eq!(parked["error"], "webhook answered 400 Bad Request: no luck");
    let attempts: Vec<(String, u32)> =
        receiver.requests().iter().map(|r| (r.id.clone(), r.attempt)).collect();
    let expected: Vec<(String, u32)> = (1..=3).map(|a| ("k0-000".to_owned(), a)).collect();
    assert_eq!(attempts, expected, "exactly max_attempts requests, then parked");
    let (status, body) = get(&server, "/v1/status/orders/1").await;
    assert_eq!((status, &body["reason"]), (409, &json!("failed")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_url_speaks_tls() {
    // A plain TCP listener: what arrives first is a TLS ClientHello (a handshake record).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ServerProcess::start(&config(&format!("https://{addr}/hook"), "", ""));
    publish(&server, 1, 1).await;
    let (mut connection, _) = listener.accept().await.unwrap();
    let mut record = [0_u8; 3];
    connection.read_exact(&mut record).await.unwrap();
    assert_eq!(record[..2], [0x16, 0x03], "a TLS handshake record, not {record:?}");
    drop(server);
}

#[test]
fn a_bad_webhook_configuration_is_refused_naming_the_key() {
    let cases = [
        (
            config("http://127.0.0.1:9/hook", "", "")
                .replace("url = \"http://127.0.0.1:9/hook\"\n", ""),
            "subscriptions.hook.webhook: missing field `url`",
        ),
        (
            config("http://127.0.0.1:9/hook", "", "")
                .replace("[subscriptions.webhook]\nurl = \"http://127.0.0.1:9/hook\"\n", ""),
            "subscriptions.hook.delivery: delivery = \"webhook\" needs a [subscriptions.webhook] table",
        ),
        (
            config("ftp://127.0.0.1/hook", "", ""),
            "subscriptions.hook.webhook.url: must be an http or https URL, got scheme \"ftp\"",
        ),
        (
            config("http://127.0.0.1:9/hook", "", "[subscriptions.webhook.headers]\nce-id = \"x\""),
            "subscriptions.hook.webhook.headers.ce-id: ce-id cannot be configured",
        ),
        (
            config(
                "http://127.0.0.1:9/hook",
                "",
                "[subscriptions.webhook.headers]\nConnection = \"close\"",
            ),
            "subscriptions.hook.webhook.headers.Connection: connection cannot be configured: a hop-by-hop header",
        ),
    ];
    for (config, expected) in cases {
        let (code, stderr) = common::serve_refuses(&config);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("inorder.toml:"), "the line: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
}
