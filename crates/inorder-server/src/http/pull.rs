//! Pull consumers: `pull`, `ack`, `nack` (see [`crate::pull`]).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::BytesRejection},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    AppState, OpenStream, body, duration, json_body, json_response, name, ndjson_response,
    optional_json_body, rendered_size, stopped, wait,
};
use crate::{
    cloudevent,
    limits::{
        CONSUME_CHUNKS_MAX, HTTP_WAIT_MAX, NACK_DELAY_MAX, PULL_EVENTS_DEFAULT, PULL_EVENTS_MAX,
    },
    problem::Problem,
    pull::{Leased, PullQueue, Window},
};

/// Body of `pull`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    max: Option<usize>,
    wait: Option<String>,
}

/// Answer of `pull`, serialized straight from the leased events.
#[derive(Serialize)]
struct Messages<'a> {
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    lease: &'a str,
    attempt: u32,
    event: cloudevent::Structured<'a>,
}

impl<'a> Message<'a> {
    fn of(leased: &'a Leased) -> Self {
        let event = cloudevent::Structured { event: &leased.event, topic: false };
        Self { lease: &leased.lease, attempt: leased.attempt, event }
    }
}

/// A count of events a request names (`max`, `window`): its default when absent, else within
/// `1..=PULL_EVENTS_MAX`.
fn events_count(name: &str, value: Option<usize>) -> Result<usize, Problem> {
    let count = value.unwrap_or(PULL_EVENTS_DEFAULT);
    if (1..=PULL_EVENTS_MAX).contains(&count) {
        Ok(count)
    } else {
        Err(Problem::invalid_request(format!("{name} must be within 1..={PULL_EVENTS_MAX}")))
    }
}

/// Body of `ack` and `nack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    leases: Vec<String>,
    delay: Option<String>,
}

fn queue(state: &AppState, subscription: &str) -> Result<Arc<PullQueue>, Problem> {
    name("subscription", subscription)?;
    if let Some(queue) = state.deliveries.pull(subscription) {
        return Ok(queue);
    }
    let exists = state.deliveries.kind(subscription).is_some();
    Err(match exists {
        true => Problem::invalid_request(format!(
            "subscription {subscription} is not a pull subscription"
        )),
        false => Problem::from(inorder::Error::UnknownSubscription {
            subscription: subscription.to_owned(),
        }),
    })
}

/// `POST /v1/subscriptions/{name}/pull` `{"max": 10, "wait": "1s"}`.
pub async fn pull(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let queue = queue(&state, &subscription)?;
    let request: PullRequest = optional_json_body(raw)?;
    let max = events_count("max", request.max)?;
    let wait = wait(request.wait.as_deref())?;
    let leased = tokio::select! {
        leased = queue.pull(max, wait) => leased,
        () = stopped(state.stopping.clone()) => Vec::new(),
    };
    let messages: Vec<_> = leased.iter().map(Message::of).collect();
    let capacity = rendered_size(leased.iter().map(|l| &l.event));
    Ok(json_response(&Messages { messages }, capacity))
}

/// Body of `consume`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeRequest {
    window: Option<usize>,
}

/// `POST /v1/subscriptions/{name}/consume` `{"window": 100}`: a consume stream. The answer is
/// NDJSON, one leased message per line (as `pull` answers them), for as long as the request
/// lasts; the stream leases more whenever it holds fewer than `window` leases (≤ 1000), so a
/// consumer acks (on another connection) and never asks again.
pub async fn consume(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let queue = queue(&state, &subscription)?;
    let request: ConsumeRequest = optional_json_body(raw)?;
    let window = events_count("window", request.window)?;
    let (lines, out) = mpsc::channel::<bytes::Bytes>(CONSUME_CHUNKS_MAX);
    let open = OpenStream::count("inorder_consume_streams_open", &[("subscription", subscription)]);
    tokio::spawn(lease_into(queue, window, lines, state.stopping.clone(), open));
    Ok(ndjson_response(out))
}

/// A consume stream's task: leases while the window has room and writes the messages, until
/// the client goes or the server stops. Its leases outlive it (acked, or they expire).
async fn lease_into(
    queue: Arc<PullQueue>,
    limit: usize,
    lines: mpsc::Sender<bytes::Bytes>,
    stopping: tokio::sync::watch::Receiver<bool>,
    _open: OpenStream,
) {
    let window = Arc::new(Window::default());
    loop {
        let room = limit.saturating_sub(window.held());
        let leased = tokio::select! {
            leased = queue.pull_into(room.max(1), HTTP_WAIT_MAX, Some(&window)), if room > 0 => leased,
            () = window.freed(), if room == 0 => continue,
            () = lines.closed() => return,
            () = stopped(stopping.clone()) => return,
        };
        if leased.is_empty() {
            continue;
        }
        let mut chunk = Vec::with_capacity(rendered_size(leased.iter().map(|l| &l.event)));
        for l in &leased {
            if serde_json::to_writer(&mut chunk, &Message::of(l)).is_err() {
                tracing::error!(lease = l.lease, "a leased message could not be encoded");
                return;
            }
            chunk.push(b'\n');
        }
        if lines.send(bytes::Bytes::from(chunk)).await.is_err() {
            return; // the client went: its leases are acked on another connection, or expire
        }
    }
}

fn settle_request(raw: Result<bytes::Bytes, BytesRejection>) -> Result<SettleRequest, Problem> {
    let request: SettleRequest = json_body(&body(raw)?)?;
    if request.leases.is_empty() {
        return Err(Problem::invalid_request("leases must not be empty"));
    }
    Ok(request)
}

/// `POST /v1/subscriptions/{name}/ack` `{"leases": [...]}`.
pub async fn ack(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let queue = queue(&state, &subscription)?;
    let request = settle_request(raw)?;
    let settled = queue.ack(&request.leases);
    Ok(Json(json!({ "acked": settled.settled, "unknown": settled.unknown })).into_response())
}

/// `POST /v1/subscriptions/{name}/nack` `{"leases": [...], "delay": "1s"}`.
pub async fn nack(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let queue = queue(&state, &subscription)?;
    let request = settle_request(raw)?;
    let delay = duration("delay", request.delay.as_deref(), NACK_DELAY_MAX)?;
    let settled = queue.nack(&request.leases, delay);
    Ok(Json(json!({ "nacked": settled.settled, "unknown": settled.unknown })).into_response())
}
