//! Publishing CloudEvents and reading a topic.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::BytesRejection, rejection::QueryRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, body, content_type, json_response, name, rendered_size, stopped, wait};
use crate::{
    cloudevent,
    limits::{READ_EVENTS_DEFAULT, READ_EVENTS_MAX, RETRY_AFTER_SECONDS},
    problem::Problem,
};

const POSITION_HEADER: HeaderName = HeaderName::from_static("inorder-position");

/// `POST /v1/topics/{topic}/events`: one CloudEvent, structured or binary mode.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let topic = name("topic", &topic)?;
    let raw = body(raw)?;
    let event = if headers.contains_key("ce-specversion") {
        cloudevent::parse_binary(&headers, raw, topic.as_str())
    } else {
        match content_type(&headers).as_deref() {
            None | Some("application/cloudevents+json" | "application/json") => {
                cloudevent::parse_structured(&raw, topic.as_str())
            }
            Some("application/cloudevents-batch+json") => {
                return Err(Problem::unsupported_media_type(format!(
                    "send batches to /v1/topics/{topic}/events:batch"
                )));
            }
            Some(other) => {
                return Err(Problem::unsupported_media_type(format!(
                    "{other} is neither a structured CloudEvent (application/cloudevents+json) nor binary mode (ce-* headers)"
                )));
            }
        }
    }
    .map_err(|e| Problem::invalid_event(e.0))?;
    let _permit = Arc::clone(&state.publish_permits)
        .try_acquire_owned()
        .map_err(|_| Problem::overloaded("too many publishes in flight", RETRY_AFTER_SECONDS))?;
    let position = state.engine.publish(event).await?;
    let mut response = (StatusCode::CREATED, Json(json!({ "position": position }))).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("{topic}/{position}")) {
        response.headers_mut().insert(POSITION_HEADER, value);
    }
    Ok(response)
}

/// `POST /v1/topics/{topic}/events:batch`: a JSON array of CloudEvents, all or nothing.
pub async fn publish_batch(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let topic = name("topic", &topic)?;
    let raw = body(raw)?;
    match content_type(&headers).as_deref() {
        None | Some("application/cloudevents-batch+json" | "application/json") => {}
        Some(other) => {
            return Err(Problem::unsupported_media_type(format!(
                "a batch must be application/cloudevents-batch+json, got {other}"
            )));
        }
    }
    let events =
        cloudevent::parse_batch(&raw, topic.as_str()).map_err(|e| Problem::invalid_event(e.0))?;
    let _permit = Arc::clone(&state.publish_permits)
        .try_acquire_owned()
        .map_err(|_| Problem::overloaded("too many publishes in flight", RETRY_AFTER_SECONDS))?;
    let positions = state.engine.publish_batch(events).await?;
    Ok((StatusCode::CREATED, Json(json!({ "positions": positions }))).into_response())
}

/// Query of `GET /v1/topics/{topic}/events`.
#[derive(Debug, Deserialize)]
pub struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait: Option<String>,
}

/// `GET /v1/topics/{topic}/events?from=N&limit=M[&wait=5s]`: events as structured CloudEvents
/// with `position`; `wait` holds the request until an event at or after `from` exists.
pub async fn read(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let topic = name("topic", &topic)?;
    let Query(query) = query.map_err(|e| Problem::invalid_request(e.body_text()))?;
    let from = query.from.unwrap_or(1).max(1);
    let limit = query.limit.unwrap_or(READ_EVENTS_DEFAULT).clamp(1, READ_EVENTS_MAX);
    let wait = wait(query.wait.as_deref())?;
    let mut events = state.engine.read(topic.as_str(), from, limit).await?;
    if events.is_empty() && !wait.is_zero() {
        let mut last = state.engine.storage().watch(&topic).await?;
        tokio::select! {
            _ = tokio::time::timeout(wait, last.wait_for(|last| *last >= from)) => {}
            () = stopped(state.stopping.clone()) => {}
        }
        events = state.engine.read(topic.as_str(), from, limit).await?;
    }
    let next = events.last().map_or(from, |e| e.position + 1);
    let capacity = rendered_size(events.iter());
    let events: Vec<_> =
        events.iter().map(|event| cloudevent::Structured { event, topic: false }).collect();
    Ok(json_response(&Page { events, next }, capacity))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub struct ReadAllQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait: Option<String>,
}

/// `GET /v1/events?from=C&limit=M[&wait=5s]`: the events of every topic in commit order, from commit
/// position `C` (default 1; `0` also returns events stored before commit positions existed), as
/// structured CloudEvents with `topic`, `position` and `commit`; `next` is the commit to read
/// from next. A page never holds a commit while an earlier one may still appear. `wait` holds an
/// empty answer until a commit at or after `from` is visible.
pub async fn read_all(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ReadAllQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| Problem::invalid_request(e.body_text()))?;
    let from = query.from.unwrap_or(1);
    let limit = query.limit.unwrap_or(READ_EVENTS_DEFAULT).clamp(1, READ_EVENTS_MAX);
    let wait = wait(query.wait.as_deref())?;
    let (mut events, mut next) = state.engine.read_all(from, limit).await?;
    if events.is_empty() && next == from && !wait.is_zero() {
        // Subscribed after the read: the watch starts at the visible commit of now, so an
        // append since the read is seen at once, not missed.
        let mut watch = state.engine.storage().watch_commit().await?;
        tokio::select! {
            _ = tokio::time::timeout(wait, watch.wait_for(|visible| *visible >= from)) => {}
            () = stopped(state.stopping.clone()) => {}
        }
        (events, next) = state.engine.read_all(from, limit).await?;
    }
    let capacity = rendered_size(events.iter());
    let events: Vec<_> =
        events.iter().map(|event| cloudevent::Structured { event, topic: true }).collect();
    Ok(json_response(&Page { events, next }, capacity))
}

/// A page of a read across topics, serialized straight from the events.
#[derive(serde::Serialize)]
struct Page<'a> {
    events: Vec<cloudevent::Structured<'a>>,
    next: u64,
}
