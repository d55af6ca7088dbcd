//! The management API: topics and subscriptions created, read, changed and deleted while the
//! server runs; subscriptions paused, resumed and rewound. The bodies are JSON objects with the
//! keys of `inorder.toml`'s `[[topics]]` and `[[subscriptions]]` entries (the name is the
//! path's). Decisions live in [`crate::manage`]; this module reads requests and writes answers.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use inorder::Rewind;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, body, json_body, name};
use crate::{manage::Put, problem::Problem};

fn put_answer(put: Put, definition: Value) -> Response {
    let status = match put {
        Put::Created => StatusCode::CREATED,
        Put::Kept => StatusCode::OK,
    };
    (status, Json(definition)).into_response()
}

fn object(raw: Result<bytes::Bytes, BytesRejection>) -> Result<Value, Problem> {
    let raw = body(raw)?;
    if raw.is_empty() {
        return Ok(json!({}));
    }
    json_body(&raw)
}

/// `PUT /v1/topics/{topic}`.
pub async fn put_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    name("topic", &topic)?;
    let body = object(raw)?;
    let put = state.manager.put_topic(&topic, &body).await?;
    let definition = state.manager.definition("topic", &topic).await?.unwrap_or(body);
    Ok(put_answer(put, definition))
}

/// `GET /v1/topics/{topic}`: its extent and retention, where it is defined, and its definition
/// when made through this API.
pub async fn get_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Response, Problem> {
    name("topic", &topic)?;
    let info = state.engine.topic_info(&topic).await?;
    Ok(Json(json!({
        "name": info.name, "first_position": info.first_position,
        "last_position": info.last_position, "bytes": info.bytes,
        "subscriptions": info.subscriptions,
        "declared": state.manager.declared("topic", &topic),
        "definition": state.manager.definition("topic", &topic).await?,
    }))
    .into_response())
}

/// `DELETE /v1/topics/{topic}[?force=true]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/topics/{topic}`.
pub async fn delete_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    name("topic", &topic)?;
    let Query(query) = query.map_err(|e| Problem::invalid_request(e.body_text()))?;
    state.manager.delete_topic(&topic, query.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v1/subscriptions/{name}`.
pub async fn put_subscription(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let body = object(raw)?;
    let put = state.manager.put_subscription(&subscription, &body).await?;
    let definition = state.manager.definition("subscription", &subscription).await?.unwrap_or(body);
    Ok(put_answer(put, definition))
}

/// `GET /v1/subscriptions/{name}`: its state and progress (as in the list), where it is defined,
/// and its definition when made through this API.
pub async fn get_subscription(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let listed = super::admin::subscriptions_json(&state).await?;
    let mut found =
        listed.into_iter().find(|s| s["name"] == subscription.as_str()).ok_or_else(|| {
            inorder::Error::UnknownSubscription { subscription: subscription.clone() }
        })?;
    found["definition"] = json!(state.manager.definition("subscription", &subscription).await?);
    Ok(Json(found).into_response())
}

/// `PATCH /v1/subscriptions/{name}`.
pub async fn patch_subscription(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let patch = object(raw)?;
    let definition = state.manager.patch_subscription(&subscription, &patch).await?;
    Ok(Json(definition).into_response())
}

/// `DELETE /v1/subscriptions/{name}`.
pub async fn delete_subscription(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    state.manager.delete_subscription(&subscription).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `:rewind`: a position (and its topic, for a subscription of several topics) or
/// an RFC 3339 time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewindRequest {
    position: Option<u64>,
    topic: Option<String>,
    time: Option<String>,
}

/// `POST /v1/subscriptions/{name}:pause`, `:resume` and `:rewind`.
pub async fn act(
    State(state): State<Arc<AppState>>,
    Path(target): Path<String>,
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let Some((subscription, action)) = target.split_once(':') else {
        return Err(Problem::not_found("no such route (POST needs :pause, :resume or :rewind)"));
    };
    name("subscription", subscription)?;
    match action {
        "pause" => state.engine.pause_subscription(subscription).await?,
        "resume" => state.engine.resume_subscription(subscription).await?,
        "rewind" => {
            let raw = body(raw)?;
            let request: RewindRequest = json_body(&raw)?;
            let to = match (request.position, request.time) {
                (Some(position), None) => Rewind::Position { topic: request.topic, position },
                (None, Some(time)) if request.topic.is_none() => {
                    let at: jiff::Timestamp = time.parse().map_err(|e| {
                        Problem::invalid_request(format!(
                            "time: {time:?} is not an RFC 3339 time: {e}"
                        ))
                    })?;
                    Rewind::Time(at.as_microsecond())
                }
                _ => {
                    return Err(Problem::invalid_request(
                        "give either position (with topic for a subscription of several topics) \
                         or time",
                    ));
                }
            };
            let rewound = state.manager.rewind(subscription, to).await?;
            let topics: Vec<Value> = rewound
                .into_iter()
                .map(|(topic, after)| json!({ "topic": topic, "resumes_at": after + 1 }))
                .collect();
            return Ok(Json(json!({ "rewound": topics })).into_response());
        }
        other => {
            return Err(Problem::not_found(format!("no action :{other} (pause, resume, rewind)")));
        }
    }
    let paused = state.engine.is_paused(subscription)?;
    Ok(Json(json!({ "name": subscription, "paused": paused })).into_response())
}
