//! Pull consumers: `pull`, `ack`, `nack` (see [`crate::pull`]).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::BytesRejection},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AppState, body, duration, json_body, json_response, name, rendered_size, stopped, wait,
};
use crate::{
    cloudevent,
    limits::{NACK_DELAY_MAX, PULL_EVENTS_DEFAULT, PULL_EVENTS_MAX},
    problem::Problem,
    pull::PullQueue,
};

/// Body of `pull`.
#[derive(Debug, Deserialize)]
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
    let raw = body(raw)?;
    let request: PullRequest =
        if raw.is_empty() { PullRequest { max: None, wait: None } } else { json_body(&raw)? };
    let max = request.max.unwrap_or(PULL_EVENTS_DEFAULT);
    if max == 0 || max > PULL_EVENTS_MAX {
        return Err(Problem::invalid_request(format!("max must be within 1..={PULL_EVENTS_MAX}")));
    }
    let wait = wait(request.wait.as_deref())?;
    let leased = tokio::select! {
        leased = queue.pull(max, wait) => leased,
        () = stopped(state.stopping.clone()) => Vec::new(),
    };
    let messages: Vec<_> = leased
        .iter()
        .map(|l| Message {
            lease: &l.lease,
            attempt: l.attempt,
            event: cloudevent::Structured { event: &l.event, topic: false },
        })
        .collect();
    let capacity = rendered_size(leased.iter().map(|l| &l.event));
    Ok(json_response(&Messages { messages }, capacity))
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
