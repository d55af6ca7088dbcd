//! Errors as `application/problem+json` (RFC 9457), each with a stable `type` URI.
//!
//! A problem may carry extension members beside `type`, `title`, `status` and `detail`, for a
//! client to act on without parsing `detail`; the table names them.
//!
//! | type | status | when |
//! |---|---|---|
//! | `invalid-cloudevent` | 400 | malformed JSON, a bad attribute, a bad batch |
//! | `invalid-name` | 400 | a topic or subscription name that is not `[A-Za-z0-9._-]{1,200}` |
//! | `invalid-request` | 400 | a bad query parameter or request body, a duration above its maximum |
//! | `unauthorized` | 401 | a missing or wrong bearer token |
//! | `topic-limit` | 403 | a publish would create a topic beyond `max_topics` |
//! | `not-found` | 404 | no such route |
//! | `unknown-topic` | 404 | a topic that does not exist |
//! | `unknown-subscription` | 404 | a subscription that does not exist |
//! | `unknown-parked-event` | 404 | no parked event with that id |
//! | `event-parked` | 409 | the status of an event a subscription parked or an operator discarded; members `subscription`, `reason`, `parked_id` (`{topic}:{position}`, for the parked routes), `error` (the handler's last, or null), `attempts`, `discarded` |
//! | `payload-too-large` | 413 | a body over the limit, or event data over the event limit |
//! | `unsupported-media-type` | 415 | a body that is neither a CloudEvent nor a batch |
//! | `unknown-action` | 422 | an action the topic's `actions` list does not have |
//! | `not-processed-yet` | 425 | the status of a position not yet processed |
//! | `overloaded` | 503 | too many publishes at once, or the server stopping; retry after `Retry-After` |
//! | `storage-unavailable` | 503 | the storage failed (a transient failure has `Retry-After`), or the stream asked about has failed |
//! | `not-ready` | 503 | `GET /readyz` while a stream is failed; member `failed`: `[{"stream": "subscription/topic", "error": "…"}]` |
//! | `timeout` | 504 | an engine wait that ran out (not the status long-poll, which answers 425) |
//! | `internal` | 500 | corrupt or refusing storage, or a bug (see the server log) |

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value};

use crate::limits::RETRY_AFTER_SECONDS;

/// The base of every problem type URI.
pub const TYPE_BASE: &str = "https://inorder.dev/problems/";

/// An error answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    retry_after_seconds: Option<u64>,
    /// Extension members, written beside the standard ones.
    members: Map<String, Value>,
}

/// The members RFC 9457 defines; an extension member never takes one of these names.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after_seconds: None,
            members: Map::new(),
        }
    }

    /// The same problem with the extension member `name` (documented in the table above).
    ///
    /// # Panics
    /// If `name` is a standard member (`type`, `title`, …): a bug in the caller.
    #[must_use]
    pub fn with_member(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        assert!(!STANDARD_MEMBERS.contains(&name), "{name} is a standard problem member");
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// 400 `invalid-cloudevent`.
    pub fn invalid_event(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-cloudevent", "Invalid CloudEvent", detail)
    }

    /// 400 `invalid-request`.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail)
    }

    /// 404 `not-found` (an unknown route).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409 `declared`: the topic or subscription is declared in the configuration (named in
    /// the detail): change it there.
    pub fn declared(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "declared", "Declared in the configuration", detail)
    }

    /// 409 `in-use`: a topic that subscriptions consume is deleted only with `?force=true`.
    pub fn in_use(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "in-use", "In use", detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 413 `payload-too-large`.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large", detail)
    }

    /// 415 `unsupported-media-type`.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// 425 `not-processed-yet`, retry after `seconds`.
    pub fn not_processed_yet(detail: impl Into<String>, seconds: u64) -> Self {
        Self::new(StatusCode::TOO_EARLY, "not-processed-yet", "Not processed yet", detail)
            .retry_after(seconds)
    }

    /// 409 `event-parked`: the event will not be processed unless an operator retries it; the
    /// caller adds the members that say why.
    pub fn event_parked(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "event-parked", "Event parked", detail)
    }

    /// 503 `not-ready`: a stream is failed; the caller adds the `failed` member.
    pub fn not_ready(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready", detail)
    }

    /// 503 `overloaded`, retry after `seconds`.
    pub fn overloaded(detail: impl Into<String>, seconds: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded", detail)
            .retry_after(seconds)
    }

    /// 503 `storage-unavailable`: the storage failed; with `Retry-After` when it is transient.
    pub fn storage_unavailable(detail: impl Into<String>, retry_after: Option<u64>) -> Self {
        let problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-unavailable",
            "Storage unavailable",
            detail,
        );
        match retry_after {
            Some(seconds) => problem.retry_after(seconds),
            None => problem,
        }
    }

    /// 500 `internal`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// What went wrong, as the answer's `detail` says it.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }
}

impl Problem {
    /// The problem's JSON document (as its response's body).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut body = self.members.clone();
        body.insert("type".to_owned(), format!("{TYPE_BASE}{}", self.kind).into());
        body.insert("title".to_owned(), self.title.into());
        body.insert("status".to_owned(), self.status.as_u16().into());
        body.insert("detail".to_owned(), self.detail.clone().into());
        Value::Object(body)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.to_json();
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<inorder::Error> for Problem {
    fn from(error: inorder::Error) -> Self {
        use inorder::Error as E;
        let detail = error.to_string();
        match error {
            E::UnknownTopic { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown-topic", "Unknown topic", detail)
            }
            E::UnknownSubscription { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "unknown-subscription",
                "Unknown subscription",
                detail,
            ),
            E::UnknownParked { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "unknown-parked-event",
                "Unknown parked event",
                detail,
            ),
            E::Purged { first_available, .. } => {
                Self::new(StatusCode::GONE, "purged", "Purged by retention", detail)
                    .with_member("first_available", first_available)
            }
            E::Exists { .. } => Self::new(StatusCode::CONFLICT, "exists", "Already exists", detail),
            E::TopicLimit { .. } => {
                Self::new(StatusCode::FORBIDDEN, "topic-limit", "Topic limit reached", detail)
            }
            E::IdTaken { .. } => {
                Self::new(StatusCode::CONFLICT, "id-taken", "Event id taken", detail)
            }
            E::UnknownAction { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-action",
                "Unknown action",
                detail,
            ),
            E::InvalidEvent { too_large: true, .. } => Self::too_large(detail),
            E::InvalidEvent { .. } | E::InvalidBatch { .. } | E::AmbiguousWait { .. } => {
                Self::invalid_event(detail)
            }
            E::InvalidName(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-name", "Invalid name", detail)
            }
            E::Timeout { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Timed out", detail)
            }
            E::Storage(ref storage) => match storage.kind() {
                inorder::StorageErrorKind::Transient => {
                    Self::storage_unavailable(detail, Some(RETRY_AFTER_SECONDS))
                }
                inorder::StorageErrorKind::Unavailable => Self::storage_unavailable(detail, None),
                inorder::StorageErrorKind::Corrupt | inorder::StorageErrorKind::Refused => {
                    tracing::error!(%detail, "storage error");
                    Self::internal(detail)
                }
            },
            E::StreamFailed { .. } => Self::storage_unavailable(detail, None),
            E::Stopped | E::Fenced { .. } => Self::overloaded(detail, RETRY_AFTER_SECONDS),
            E::Decode { .. }
            | E::Gap { .. }
            | E::InvalidConfig { .. }
            | E::Replay { .. }
            | E::Internal { .. } => {
                tracing::error!(%detail, "internal error");
                Self::internal(detail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(problem: Problem) -> (StatusCode, Value) {
        let response = problem.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn extension_members_are_written_beside_the_standard_ones() {
        let problem = Problem::event_parked("t/1 was parked")
            .with_member("reason", "failed")
            .with_member("attempts", 3)
            .with_member("error", Value::Null);
        let (status, body) = body(problem).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            serde_json::json!({
                "type": "https://inorder.dev/problems/event-parked", "title": "Event parked",
                "status": 409, "detail": "t/1 was parked",
                "reason": "failed", "attempts": 3, "error": null,
            })
        );
    }

    #[test]
    fn a_member_never_replaces_a_standard_one() {
        let replaced =
            std::panic::catch_unwind(|| Problem::event_parked("x").with_member("status", 200));
        assert!(replaced.is_err(), "with_member(\"status\") must be refused");
    }
}
