//! `GET /v1/status/{topic}/{position}`: has this been processed yet?
//!
//! The engine's three answers ([`EventStatus`]), and one fact the server adds, become:
//!
//! | what became of the event | answer |
//! |---|---|
//! | every subscription asked about handled it | 200 `{"topic", "position", "processed": true}` |
//! | not yet: not reached, being handled or retried, or waiting behind a parked event of its key (`on_failure = "block"`) | 425 `not-processed-yet` with `Retry-After` |
//! | not yet, and the stream of a subscription asked about that has not reached it is failed | 503 `storage-unavailable` naming the stream: it will not get there until repaired |
//! | a subscription parked it, or an operator discarded it | 409 `event-parked`, saying which subscription, why, and the id to retry it by |
//!
//! A long-poll (`?wait=2s`) sleeps on the engine's watermarks and ends as soon as the answer is
//! no longer "not yet" — processed or parked — or when the server stops.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use inorder::{Engine, EventStatus, ParkedEvent, StreamHealth};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, admin::parked_id, name, stopped, wait};
use crate::{limits::RETRY_AFTER_SECONDS, problem::Problem};

/// Query of the status route.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    wait: Option<String>,
    subscription: Option<String>,
}

/// The status of `position` of `topic` in every subscription of the topic (or in
/// `?subscription=`); `?wait=2s` holds the request while it is pending — woken by the engine's
/// watermark, not by polling.
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path((topic, position)): Path<(String, String)>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let topic = name("topic", &topic)?;
    let position: u64 = position.parse().map_err(|_| {
        Problem::invalid_request(format!("position must be a number, got {position:?}"))
    })?;
    let Query(query) = query.map_err(|e| Problem::invalid_request(e.body_text()))?;
    if let Some(subscription) = &query.subscription {
        name("subscription", subscription)?;
    }
    let subscription = query.subscription.as_deref();
    let wait = wait(query.wait.as_deref())?;
    let engine = &state.engine;
    let status = if wait.is_zero() {
        engine.event_status(topic.as_str(), position, subscription).await?
    } else {
        tokio::select! {
            status = engine.wait_event_status(topic.as_str(), position, subscription, wait) => status?,
            () = stopped(state.stopping.clone()) => EventStatus::Pending,
        }
    };
    match status {
        EventStatus::Processed => {
            Ok(Json(json!({ "topic": topic.as_str(), "position": position, "processed": true }))
                .into_response())
        }
        EventStatus::Parked(parked) => Err(parked_problem(&parked)),
        EventStatus::Pending => {
            if let Some(failed) =
                failed_short_of(engine, topic.as_str(), position, subscription).await?
            {
                return Err(failed.into());
            }
            Err(Problem::not_processed_yet(
                format!("{topic}/{position} is not processed yet"),
                RETRY_AFTER_SECONDS,
            ))
        }
    }
}

/// 409 `event-parked`, with the members a client acts on.
fn parked_problem(parked: &ParkedEvent) -> Problem {
    let id = parked_id(parked);
    let reason = parked.reason.as_str();
    let why = parked.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default();
    let discarded = parked.discarded_at_micros.is_some();
    let outcome = match discarded {
        true => "an operator discarded it",
        false => "an operator can retry it",
    };
    let detail = format!(
        "{}/{} was parked by subscription {} ({reason}{why}); {outcome} as parked event {id}",
        parked.topic, parked.position, parked.subscription
    );
    Problem::event_parked(detail)
        .with_member("subscription", parked.subscription.as_str())
        .with_member("reason", reason)
        .with_member("parked_id", id)
        .with_member("error", parked.error.clone())
        .with_member("attempts", parked.attempts)
        .with_member("discarded", discarded)
}

/// A failed stream of `topic` (of `subscription`, if named) whose watermark is below `position`:
/// the event cannot be processed until an operator repairs the stream and restarts the server.
async fn failed_short_of(
    engine: &Engine,
    topic: &str,
    position: u64,
    subscription: Option<&str>,
) -> Result<Option<inorder::Error>, Problem> {
    if engine.failed_streams().is_empty() {
        return Ok(None); // the common case, without asking the storage anything
    }
    for info in engine.subscriptions().await? {
        if subscription.is_some_and(|only| only != info.name) {
            continue;
        }
        for stream in &info.streams {
            if let StreamHealth::Failed { error } = &stream.status.health
                && stream.topic == topic
                && stream.status.watermark < position
            {
                return Ok(Some(inorder::Error::StreamFailed {
                    stream: format!("{}/{}", info.name, stream.topic),
                    error: error.to_string(),
                }));
            }
        }
    }
    Ok(None)
}
