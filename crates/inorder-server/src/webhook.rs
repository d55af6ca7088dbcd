//! Push delivery (`delivery = "webhook"`): each event POSTed to a URL as a CloudEvent in HTTP
//! binary mode — `ce-*` headers, the event's data as the body.
//!
//! A webhook is an ordinary engine subscription whose [`Handler`] returns only when the receiver
//! has answered — the same trick as pull delivery and the Postgres sink — so ordering modes,
//! retries with backoff, parking, the watermark and lag come from the engine unchanged. In
//! particular a key's next event is sent only after the previous one got a 2xx (and its
//! completion was made durable): a receiver never has two requests of one key at once, and sees
//! a key's events in the subscription's order. The subscription's `max_keys_in_flight` bounds
//! the requests in flight, so the connection pool needs no bound of its own beyond its idle
//! connections.
//!
//! What an answer means ([`verdict`]):
//!
//! | the receiver … | the event |
//! |---|---|
//! | answers 2xx | is handled |
//! | answers 429 or 503 with `Retry-After` (seconds or an HTTP date) | is tried again after that delay, cut to [`WEBHOOK_RETRY_AFTER_MAX`]; the attempt counts |
//! | gives any other answer (3xx — redirects are not followed —, 4xx, 5xx, an unreadable `Retry-After`) | is tried again after the subscription's backoff |
//! | does not answer (cannot connect, TLS, `timeout`, connection cut) | is tried again after the backoff |
//! | fails `max_attempts` times | is parked with the last error: the status and the start of the body |
//!
//! Delivery is at least once: an answer lost on its way back (a timeout, a crash before the
//! checkpoint) sends the event again with the same `ce-id`. The `inorder-position` header
//! (`topic/position`, as a publish answers it) is unique per event, for receivers that
//! deduplicate; `inorder-attempt` counts from 1.
//!
//! https URLs are verified against the system's trusted roots (rustls with the platform
//! verifier); there is no switch to turn verification off.

#![warn(missing_docs)]

use std::{error::Error as _, fmt, time::Duration};

use anyhow::Context as _;
use inorder::{Event, Handler, HandlerContext, HandlerError, Reply};
use reqwest::{
    StatusCode, Url,
    header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::{
    cloudevent,
    limits::{
        WEBHOOK_DRAIN_BODY_BYTES_MAX, WEBHOOK_ERROR_BODY_BYTES_MAX, WEBHOOK_HEADER_NAME_BYTES_MAX,
        WEBHOOK_HEADER_VALUE_BYTES_MAX, WEBHOOK_IDLE_CONNECTION_TIMEOUT,
        WEBHOOK_IDLE_CONNECTIONS_MAX, WEBHOOK_RETRY_AFTER_MAX, WEBHOOK_TIMEOUT_MAX,
        WEBHOOK_URL_BYTES_MAX,
    },
};

/// Where and how a webhook subscription sends its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The receiver: http or https, without credentials (those go in `headers`).
    pub url: Url,
    /// Sent with every request (`authorization`, …). Their values are marked sensitive, so
    /// `Debug` never prints them.
    pub headers: HeaderMap,
    /// Most time one request may take: connecting, sending, and the receiver's answer.
    pub timeout: Duration,
}

/// Header names a webhook configuration may not set, with why. `ce-*` and `inorder-*` are
/// refused as prefixes.
const FORBIDDEN_HEADERS: [(&str, &str); 12] = [
    ("content-type", "it carries the event's datacontenttype"),
    ("content-length", "the HTTP client sets it"),
    ("host", "the HTTP client sets it from the url"),
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-connection", "a hop-by-hop header"),
    ("proxy-authenticate", "a hop-by-hop header"),
    ("proxy-authorization", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
];

/// The header saying which event a request carries: `topic/position`.
const POSITION_HEADER: &str = "inorder-position";
/// The header counting a request's attempt: 1, 2, …
const ATTEMPT_HEADER: &str = "inorder-attempt";

/// Checks a webhook `url`: at most [`WEBHOOK_URL_BYTES_MAX`] bytes, http or https, with a
/// host and without credentials (a password in a URL ends up in logs; send it in a header).
///
/// # Errors
/// What is wrong, without repeating the URL.
pub fn parse_url(text: &str) -> Result<Url, String> {
    if text.len() > WEBHOOK_URL_BYTES_MAX {
        return Err(format!("at most {WEBHOOK_URL_BYTES_MAX} bytes, got {}", text.len()));
    }
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, got scheme {:?}", url.scheme()));
    }
    if url.host().is_none() {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials: send them in headers (authorization)".to_owned());
    }
    Ok(url)
}

/// Checks one configured header: a valid name that the request does not set itself, a value
/// of visible ASCII (spaces and tabs allowed) within its length limit. The value comes back
/// marked sensitive.
///
/// # Errors
/// What is wrong, without repeating the value.
pub fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    if name.len() > WEBHOOK_HEADER_NAME_BYTES_MAX {
        return Err(format!("a header name has at most {WEBHOOK_HEADER_NAME_BYTES_MAX} bytes"));
    }
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    let lower = header.as_str();
    if let Some((_, why)) = FORBIDDEN_HEADERS.iter().find(|(forbidden, _)| *forbidden == lower) {
        return Err(format!("{lower} cannot be configured: {why}"));
    }
    if lower.starts_with("ce-") {
        return Err(format!("{lower} cannot be configured: ce-* headers carry the event"));
    }
    if lower.starts_with("inorder-") {
        return Err(format!("{lower} cannot be configured: inorder-* headers are the server's"));
    }
    if value.len() > WEBHOOK_HEADER_VALUE_BYTES_MAX {
        return Err(format!("a header value has at most {WEBHOOK_HEADER_VALUE_BYTES_MAX} bytes"));
    }
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| "a header value must be visible ASCII (spaces and tabs allowed)".to_owned())?;
    value.set_sensitive(true);
    Ok((header, value))
}

/// A webhook subscription's handler: one HTTP client (its connections reused), one request per
/// handler call.
pub struct WebhookHandler {
    subscription: String,
    config: WebhookConfig,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHandler")
            .field("subscription", &self.subscription)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebhookHandler {
    /// The handler of `subscription`, which has at most `keys_in_flight` calls at once.
    ///
    /// # Errors
    /// The HTTP client cannot be built (its TLS setup failed).
    ///
    /// # Panics
    /// If `config.timeout` is zero or above [`WEBHOOK_TIMEOUT_MAX`]: the configuration refuses
    /// those when it is read.
    pub fn new(
        subscription: &str,
        config: WebhookConfig,
        keys_in_flight: usize,
    ) -> anyhow::Result<Self> {
        assert!(
            !config.timeout.is_zero() && config.timeout <= WEBHOOK_TIMEOUT_MAX,
            "timeout {:?} passed the configuration's check",
            config.timeout
        );
        describe_metrics();
        // The process's TLS provider (ring); a second install (another subscription) is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect is an answer like any other non-2xx: retried, then parked, never
            // followed to a place nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(keys_in_flight.clamp(1, WEBHOOK_IDLE_CONNECTIONS_MAX))
            .pool_idle_timeout(WEBHOOK_IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("inorder/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook's HTTP client")?;
        Ok(Self { subscription: subscription.to_owned(), config, client })
    }

    /// Sends `event` once and says what became of it.
    async fn send(&self, event: &Event, attempt: u32) -> Sent {
        let headers = match cloudevent::binary_headers(event) {
            Ok(headers) => headers,
            Err(error) => return Sent::Unsendable(error.to_string()),
        };
        let position = format!("{}/{}", event.topic, event.position);
        let request = self
            .client
            .post(self.config.url.clone())
            .headers(self.config.headers.clone())
            .headers(headers)
            .header(POSITION_HEADER, position)
            .header(ATTEMPT_HEADER, attempt)
            .body(event.data.clone());
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Sent::NoAnswer(self.describe(error)),
        };
        let status = response.status();
        let verdict = verdict(status, response.headers().get(RETRY_AFTER), jiff::Timestamp::now());
        // Read what is small enough to keep the connection; keep the start of it for the error.
        let body = body_prefix(response).await;
        Sent::Answered { status, verdict, body }
    }

    /// A request error as a message: what failed, down to the operating system's words, without
    /// the URL (its query may hold a token).
    fn describe(&self, error: reqwest::Error) -> String {
        if error.is_timeout() {
            return format!(
                "webhook request timed out after {}",
                humantime::format_duration(self.config.timeout)
            );
        }
        let error = error.without_url();
        let mut message = format!("webhook request failed: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

#[async_trait::async_trait]
impl Handler for WebhookHandler {
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        let span = tracing::debug_span!(
            "webhook",
            subscription = %self.subscription,
            topic = %event.topic,
            position = event.position,
            attempt = context.attempt,
        );
        async {
            let started = Instant::now();
            let sent = self.send(event, context.attempt).await;
            let outcome = sent.outcome();
            metrics::counter!(
                "inorder_webhook_requests_total",
                "subscription" => self.subscription.clone(),
                "outcome" => outcome,
            )
            .increment(1);
            metrics::histogram!(
                "inorder_webhook_request_seconds",
                "subscription" => self.subscription.clone(),
            )
            .record(started.elapsed().as_secs_f64());
            tracing::debug!(outcome, "webhook request done");
            sent.into_result()
        }
        .instrument(span)
        .await
    }
}

/// What one request came to.
#[derive(Debug)]
enum Sent {
    /// The receiver answered.
    Answered { status: StatusCode, verdict: Verdict, body: Vec<u8> },
    /// No answer: connecting, TLS, the timeout or the connection failed.
    NoAnswer(String),
    /// The event cannot be put into headers (a bug: events are validated when published).
    Unsendable(String),
}

impl Sent {
    /// The `outcome` label of `inorder_webhook_requests_total`: `success` (2xx), `retry` (any
    /// other answer) or `error` (no answer, or nothing sent).
    fn outcome(&self) -> &'static str {
        match self {
            Self::Answered { verdict: Verdict::Delivered, .. } => "success",
            Self::Answered { .. } => "retry",
            Self::NoAnswer(_) | Self::Unsendable(_) => "error",
        }
    }

    fn into_result(self) -> Result<Reply, HandlerError> {
        match self {
            Self::Answered { status, verdict, body } => {
                let answered = answered(status, &body);
                match verdict {
                    Verdict::Delivered => Ok(serde_json::json!({ "status": status.as_u16() })),
                    Verdict::RetryAfter(delay) => Err(HandlerError::retry_after(answered, delay)),
                    Verdict::Retry => Err(HandlerError::retry(answered)),
                }
            }
            Self::NoAnswer(message) => Err(HandlerError::retry(message)),
            Self::Unsendable(message) => Err(HandlerError::permanent(format!(
                "the event cannot be sent as a binary-mode CloudEvent: {message}"
            ))),
        }
    }
}

/// `webhook answered 503 Service Unavailable: <the start of the body>`, on one line (the message
/// goes into logs and the parked event: the receiver's line breaks and control characters
/// become spaces).
fn answered(status: StatusCode, body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        format!("webhook answered {status}")
    } else {
        format!("webhook answered {status}: {text}")
    }
}

/// What an answer means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// 2xx: handled.
    Delivered,
    /// 429 or 503 with a readable `Retry-After`: again after this long (at most
    /// [`WEBHOOK_RETRY_AFTER_MAX`]).
    RetryAfter(Duration),
    /// Any other answer: again after the subscription's backoff.
    Retry,
}

/// The decision table of the module's documentation, for one answer received at `now`.
fn verdict(status: StatusCode, retry_after: Option<&HeaderValue>, now: jiff::Timestamp) -> Verdict {
    if status.is_success() {
        return Verdict::Delivered;
    }
    let asks_to_wait =
        matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
    match retry_after.filter(|_| asks_to_wait).and_then(|value| retry_delay(value, now)) {
        Some(delay) => Verdict::RetryAfter(delay),
        None => Verdict::Retry,
    }
}

/// A `Retry-After` value as a delay from `now`, cut to [`WEBHOOK_RETRY_AFTER_MAX`]: delay-seconds,
/// or an HTTP date (IMF-fixdate, `Wed, 21 Oct 2015 07:28:00 GMT`; a date past is no delay).
/// `None` for anything else, which falls back to the backoff.
fn retry_delay(value: &HeaderValue, now: jiff::Timestamp) -> Option<Duration> {
    static DATES: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    let text = value.to_str().ok()?.trim();
    let delay = if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        // More seconds than a u64 holds is longer than the maximum all the same.
        text.parse::<u64>().map_or(WEBHOOK_RETRY_AFTER_MAX, Duration::from_secs)
    } else {
        let date = DATES.parse_timestamp(text).ok()?;
        Duration::try_from(now.duration_until(date)).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(WEBHOOK_RETRY_AFTER_MAX))
}

/// Reads the body up to [`WEBHOOK_DRAIN_BODY_BYTES_MAX`] (so a short body's connection is kept
/// for the next request) and returns its first [`WEBHOOK_ERROR_BODY_BYTES_MAX`] bytes. A body
/// that fails or goes on longer is left: dropping it closes its connection.
async fn body_prefix(mut response: reqwest::Response) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut read = 0_usize;
    while read <= WEBHOOK_DRAIN_BODY_BYTES_MAX {
        let Ok(Some(chunk)) = response.chunk().await else { break };
        read = read.saturating_add(chunk.len());
        let room = WEBHOOK_ERROR_BODY_BYTES_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
    }
    kept
}

/// Describes the webhook metrics once per process.
fn describe_metrics() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(
            "inorder_webhook_requests_total",
            "Webhook requests by outcome: success (2xx), retry (another answer), error (no answer)"
        );
        metrics::describe_histogram!(
            "inorder_webhook_request_seconds",
            metrics::Unit::Seconds,
            "Time from sending a webhook request to its answer's end"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn verdict_of(status: u16, retry_after: Option<&str>) -> Verdict {
        let value = retry_after.map(|text| HeaderValue::from_str(text).unwrap());
        verdict(StatusCode::from_u16(status).unwrap(), value.as_ref(), now())
    }

    #[test]
    fn every_answer_has_one_verdict() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(verdict_of(status, None), Verdict::Delivered, "{status}");
            assert_eq!(verdict_of(status, Some("5")), Verdict::Delivered, "{status}");
        }
        for status in [429, 503] {
            let after = |text| verdict_of(status, Some(text));
            assert_eq!(after("0"), Verdict::RetryAfter(Duration::ZERO));
            assert_eq!(after(" 7 "), Verdict::RetryAfter(Duration::from_secs(7)));
            assert_eq!(
                after("Mon, 23 Nov 2026 10:00:30 GMT"),
                Verdict::RetryAfter(Duration::from_secs(30)),
                "an HTTP date"
            );
            assert_eq!(after("Sun, 22 Nov 2026 10:00:30 GMT"), Verdict::RetryAfter(Duration::ZERO));
            assert_eq!(verdict_of(status, None), Verdict::Retry, "no Retry-After: backoff");
            for garbage in ["", "soon", "-1", "1.5", "0x10", "Mon, 99 Nov 2026 10:00:30 GMT"] {
                assert_eq!(after(garbage), Verdict::Retry, "{garbage:?} falls back to backoff");
            }
        }
        for status in [300, 301, 400, 401, 404, 408, 410, 413, 422, 425, 500, 502, 504, 599] {
            assert_eq!(verdict_of(status, None), Verdict::Retry, "{status}");
            assert_eq!(verdict_of(status, Some("1")), Verdict::Retry, "{status}: only 429 and 503");
        }
    }

    #[test]
    fn a_retry_after_is_cut_to_its_maximum_without_overflow() {
        let max = Verdict::RetryAfter(WEBHOOK_RETRY_AFTER_MAX);
        assert_eq!(verdict_of(503, Some("86400")), max);
        assert_eq!(verdict_of(503, Some(&u64::MAX.to_string())), max);
        assert_eq!(verdict_of(429, Some("99999999999999999999999999999999")), max);
        assert_eq!(verdict_of(429, Some("Fri, 31 Dec 2100 23:59:59 GMT")), max);
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        assert_eq!(parse_url("https://hooks.example.com/in?x=1").unwrap().scheme(), "https");
        assert!(parse_url("http://127.0.0.1:9000/").is_ok());
        for (url, expected) in [
            ("ftp://example.com/", "must be an http or https URL, got scheme \"ftp\""),
            ("example.com/hook", "not a URL: relative URL without a base"),
            ("http://", "not a URL: empty host"),
            ("https://user:secret@example.com/", "must not hold credentials"),
        ] {
            let error = parse_url(url).unwrap_err();
            assert!(error.starts_with(expected), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let long = format!("https://example.com/{}", "a".repeat(WEBHOOK_URL_BYTES_MAX));
        assert!(parse_url(&long).unwrap_err().starts_with("at most 2048 bytes"));
    }

    #[test]
    fn headers_the_request_sets_itself_are_refused() {
        let (name, value) = parse_header("Authorization", "Bearer s3cret").unwrap();
        assert_eq!(name, "authorization");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"), "{value:?}");
        for name in ["content-type", "Content-Length", "host", "connection", "transfer-encoding"] {
            let error = parse_header(name, "x").unwrap_err();
            assert!(error.contains("cannot be configured"), "{name}: {error}");
        }
        for name in ["ce-id", "CE-Type", "ce-partitionkey", "inorder-position"] {
            let error = parse_header(name, "x").unwrap_err();
            assert!(error.contains("headers"), "{name}: {error}");
        }
        assert!(parse_header("bad name", "x").unwrap_err().contains("not a header name"));
        assert!(parse_header("x-ok", "line\nbreak").unwrap_err().contains("visible ASCII"));
        let long = "v".repeat(WEBHOOK_HEADER_VALUE_BYTES_MAX + 1);
        assert!(parse_header("x-ok", &long).unwrap_err().contains("at most"));
        let long = "n".repeat(WEBHOOK_HEADER_NAME_BYTES_MAX + 1);
        assert!(parse_header(&long, "x").unwrap_err().contains("at most"));
    }

    #[test]
    fn an_error_message_carries_the_status_and_the_start_of_the_body() {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(answered(status, b""), "webhook answered 503 Service Unavailable");
        assert_eq!(answered(status, b" busy\n"), "webhook answered 503 Service Unavailable: busy");
        assert_eq!(
            answered(StatusCode::BAD_REQUEST, b"{\"error\":\n\"no\"}\x1b[31m"),
            "webhook answered 400 Bad Request: {\"error\": \"no\"} [31m"
        );
    }
}
