//! The HTTP API (see README "HTTP API"): CloudEvents in, events and status out, pull consumers,
//! administration, health (`/healthz` liveness, `/readyz` readiness) and metrics.
//!
//! Every error is `application/problem+json` ([`crate::problem`]). Names in paths are validated
//! before anything touches the disk. Bodies are capped (`body_limit`, 413 above it); publishes
//! in flight are capped (`publish_in_flight`, 503 with `Retry-After` above it). Every duration a
//! request names has a maximum ([`crate::limits`]): a long-poll's `wait` at most
//! [`HTTP_WAIT_MAX`], a nack's `delay` at most
//! [`NACK_DELAY_MAX`](crate::limits::NACK_DELAY_MAX); above it the answer is 400
//! `invalid-request` naming the field and the maximum. Long-polls end early when the server
//! stops.

mod admin;
mod events;
mod health;
mod manage;
mod metrics;
mod pull;
mod status;
mod stream;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use inorder::{Engine, Name};
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};

use crate::{
    cloudevent::media_type_essence, deliveries::Deliveries, limits::HTTP_WAIT_MAX, manage::Manager,
    problem::Problem,
};

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// Every subscription's delivery: pull queues, kinds.
    pub deliveries: Arc<Deliveries>,
    /// Topics and subscriptions made at run time.
    pub manager: Arc<Manager>,
    /// Permits for publishes in flight.
    pub publish_permits: Arc<Semaphore>,
    /// Accepted bearer tokens (empty: no auth).
    pub tokens: Vec<String>,
    /// The Prometheus recorder's handle.
    pub metrics: Option<PrometheusHandle>,
    /// Becomes `true` when the server stops: long-polls return.
    pub stopping: watch::Receiver<bool>,
}

/// The router with every route and middleware.
pub fn router(state: Arc<AppState>, body_limit_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/v1/topics", get(admin::topics))
        .route(
            "/v1/topics/{topic}",
            put(manage::put_topic).get(manage::get_topic).delete(manage::delete_topic),
        )
        .route("/v1/topics/{topic}/events", post(events::publish).get(events::read))
        .route("/v1/topics/{topic}/events:batch", post(events::publish_batch))
        .route(
            "/v1/topics/{topic}/events:stream",
            post(move |state, path, headers, body| {
                stream::publish(state, path, headers, body, body_limit_bytes)
            }),
        )
        .route("/v1/events", get(events::read_all))
        .route("/v1/status/{topic}/{position}", get(status::status))
        .route("/v1/subscriptions", get(admin::subscriptions))
        .route(
            "/v1/subscriptions/{name}",
            put(manage::put_subscription)
                .get(manage::get_subscription)
                .patch(manage::patch_subscription)
                .delete(manage::delete_subscription)
                .post(manage::act),
        )
        .route("/v1/subscriptions/{name}/pull", post(pull::pull))
        .route("/v1/subscriptions/{name}/consume", post(pull::consume))
        .route("/v1/subscriptions/{name}/ack", post(pull::ack))
        .route("/v1/subscriptions/{name}/nack", post(pull::nack))
        .route("/v1/subscriptions/{name}/parked", get(admin::parked))
        .route("/v1/subscriptions/{name}/parked/{id}/retry", post(admin::retry_parked))
        .route("/v1/subscriptions/{name}/parked/{id}", delete(admin::discard_parked))
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), authorize))
        .layer(middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .with_state(state)
}

/// The routes that need no token even when tokens are configured: liveness and readiness probes
/// (a kubelet or load balancer carries none), which tell nothing but whether streams failed.
const OPEN_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// Requires a bearer token on every route but [`OPEN_ROUTES`] when tokens are configured.
/// Tokens are compared in constant time.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if state.tokens.is_empty() || OPEN_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let accepted = state.tokens.iter().fold(subtle::Choice::from(0), |any, token| {
        any | token.as_bytes().ct_eq(presented.as_bytes())
    });
    if bool::from(accepted) {
        next.run(request).await
    } else {
        Problem::unauthorized().into_response()
    }
}

/// Counts requests and their latency per route and status.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::counter!("inorder_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    ::metrics::histogram!("inorder_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `value` as a JSON response, serialized into a buffer of `capacity` bytes to start with: a
/// page of events is hundreds of KiB, which growing from axum's 128 bytes copies twice over.
pub(crate) fn json_response<T: serde::Serialize>(value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => Problem::internal(format!("encoding the answer: {error}")).into_response(),
    }
}

/// A JSON body that may be empty (then `T::default()`).
pub(crate) fn optional_json_body<T: serde::de::DeserializeOwned + Default>(
    raw: Result<bytes::Bytes, BytesRejection>,
) -> Result<T, Problem> {
    let raw = body(raw)?;
    if raw.is_empty() { Ok(T::default()) } else { json_body(&raw) }
}

/// The media type of streamed lines (publish acks, consume streams).
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// A `200` NDJSON answer streaming the chunks a task sends into `chunks` until it drops it.
pub(crate) fn ndjson_response(chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Response {
    let body = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), chunks))
    });
    ([(header::CONTENT_TYPE, NDJSON)], axum::body::Body::from_stream(body)).into_response()
}

/// Counts an open stream in gauge `name` (labels `labels`) for as long as it lives.
pub(crate) struct OpenStream {
    gauge: ::metrics::Gauge,
}

impl OpenStream {
    pub(crate) fn count(name: &'static str, labels: &[(&'static str, String)]) -> Self {
        let gauge = ::metrics::gauge!(name, labels);
        gauge.increment(1);
        Self { gauge }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.decrement(1);
    }
}

/// The bytes of `events` rendered, roughly: their data and ~512 bytes of attributes each.
pub(crate) fn rendered_size<'e>(events: impl Iterator<Item = &'e inorder::Event>) -> usize {
    events.map(|event| event.data.len() + 512).sum()
}

/// A validated name from a path segment.
pub(crate) fn name(kind: &'static str, raw: &str) -> Result<Name, Problem> {
    Name::new(kind, raw).map_err(|e| Problem::from(inorder::Error::InvalidName(e)))
}

/// The request body, or the problem it is (413 when over the limit).
pub(crate) fn body(body: Result<bytes::Bytes, BytesRejection>) -> Result<bytes::Bytes, Problem> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::too_large(rejection.body_text()),
        _ => Problem::invalid_request(rejection.body_text()),
    })
}

/// A JSON request body.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::invalid_request(format!("malformed JSON body: {e}")))
}

/// A duration parameter of a query or body (`2s`, `500ms`) named `field`: absent is zero; above
/// `max` it is refused, naming the field and the maximum.
pub(crate) fn duration(field: &str, raw: Option<&str>, max: Duration) -> Result<Duration, Problem> {
    let Some(text) = raw else { return Ok(Duration::ZERO) };
    let duration = humantime::parse_duration(text).map_err(|e| {
        Problem::invalid_request(format!("{field}: {text:?} is not a duration like \"2s\": {e}"))
    })?;
    if duration > max {
        return Err(Problem::invalid_request(format!(
            "{field}: {text:?} is above the maximum of {}",
            humantime::format_duration(max)
        )));
    }
    Ok(duration)
}

/// The `wait` of a long-poll, at most [`HTTP_WAIT_MAX`].
pub(crate) fn wait(raw: Option<&str>) -> Result<Duration, Problem> {
    duration("wait", raw, HTTP_WAIT_MAX)
}

/// The essence of the Content-Type, in lower case (`application/json` of
/// `Application/JSON; charset=utf-8`).
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(media_type_essence(value).to_ascii_lowercase())
}

/// Resolves when the server stops.
pub(crate) async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_refused_above_its_maximum_naming_both() {
        let max = Duration::from_secs(30);
        assert_eq!(duration("wait", None, max).unwrap(), Duration::ZERO);
        assert_eq!(duration("wait", Some("30s"), max).unwrap(), max, "the maximum itself is fine");
        for (text, expected) in [
            ("31s", r#"wait: "31s" is above the maximum of 30s"#),
            ("10000000000000000000s", "above the maximum of 30s"),
            ("soon", r#"wait: "soon" is not a duration"#),
        ] {
            let problem = duration("wait", Some(text), max).unwrap_err();
            assert!(problem.detail().contains(expected), "{text}: {problem:?}");
        }
    }
}
