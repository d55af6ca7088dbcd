//! `GET /healthz` (liveness) and `GET /readyz` (readiness).
//!
//! Liveness answers 200 while the process serves HTTP, whatever the streams do: restarting the
//! process does not repair a corrupt log. Readiness answers 503 `not-ready` while any stream is
//! failed (it handles nothing until an operator repairs it and restarts the server), naming each
//! failed stream and its error; a stream that is `retrying` (a transient storage failure, started
//! again with backoff) does not make the server unready. Neither needs a token: probes carry none.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::AppState;
use crate::problem::Problem;

/// `GET /healthz`: 200 `ok`.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 `{"ready": true}`, or 503 `not-ready` with member
/// `failed: [{"stream": "subscription/topic", "error": "…"}]`.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let mut failed = state.engine.failed_streams();
    if failed.is_empty() {
        return Ok(Json(json!({ "ready": true })).into_response());
    }
    failed.sort();
    let detail = failed
        .iter()
        .map(|(stream, error)| format!("stream {stream} has failed: {error}"))
        .collect::<Vec<_>>()
        .join("; ");
    let members: Vec<Value> = failed
        .iter()
        .map(|(stream, error)| json!({ "stream": stream.to_string(), "error": error }))
        .collect();
    Err(Problem::not_ready(detail).with_member("failed", members))
}
