//! `GET /v1/status/{topic}/{position}`: has this been processed yet?

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, name, stopped, wait};
use crate::{limits::RETRY_AFTER_SECONDS, problem::Problem};

/// Query of the status route.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    wait: Option<String>,
    subscription: Option<String>,
}

/// 200 when every subscription of the topic (or `?subscription=`) processed the position, else
/// 425 Too Early with `Retry-After`. `?wait=2s` holds the request until it is processed or the
/// wait ends — woken by the engine's watermark, not by polling.
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
    let processed = if wait.is_zero() {
        match subscription {
            Some(subscription) => {
                state.engine.processed_by(subscription, topic.as_str(), position).await?
            }
            None => state.engine.processed(topic.as_str(), position).await?,
        }
    } else {
        let engine = &state.engine;
        tokio::select! {
            processed = engine.wait_processed(topic.as_str(), position, subscription, wait) => processed?,
            () = stopped(state.stopping.clone()) => false,
        }
    };
    if processed {
        Ok(Json(json!({ "topic": topic.as_str(), "position": position, "processed": true }))
            .into_response())
    } else {
        Err(Problem::not_processed_yet(
            format!("{topic}/{position} is not processed yet"),
            RETRY_AFTER_SECONDS,
        ))
    }
}
