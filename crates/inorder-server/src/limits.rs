//! Every limit and default of the server, named, with its unit last, in one place.
//!
//! Every duration that comes from outside — an HTTP body or query, a key of `inorder.toml` — has
//! a maximum here or in the crate that owns it; above it HTTP answers 400 `invalid-request` and
//! the configuration is refused with `inorder.toml:LINE: key: …`, both naming the maximum. The
//! maxima owned elsewhere are used as they are: [`inorder::limits::SEQUENCE_TIMEOUT_MAX`] (a
//! topic's `sequence_timeout`), [`inorder::limits::RETRY_DELAY_MAX`] (behind [`NACK_DELAY_MAX`])
//! and [`inorder_postgres::limits::SINK_BATCH_TIMEOUT_MAX`] (a sink's `batch_timeout`).
//!
//! Nothing is computed from a duration before it is checked against its maximum, and deadlines
//! are computed with checked arithmetic all the same.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use inorder::limits::{PARKED_LIST_MAX, RETRY_DELAY_MAX, WAIT_MAX};

// HTTP

/// Longest wait a request may ask for: `wait` of the status, read and pull routes. More is
/// refused with 400; the wait also ends early when the server stops.
pub const HTTP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest delay of a nack: a nack becomes the handler's retry-after, so it is the engine's
/// longest retry delay. More is refused with 400.
pub const NACK_DELAY_MAX: Duration = RETRY_DELAY_MAX;
/// Events one pull leases when its body names no `max`.
pub const PULL_EVENTS_DEFAULT: usize = 10;
/// Most events one pull may lease.
pub const PULL_EVENTS_MAX: usize = 1000;
/// Most consecutive events of one key a pull subscription may lease at once (`max_per_key`;
/// 1 by default: one event per key until it is acked).
pub const PULL_PER_KEY_MAX: usize = PULL_EVENTS_MAX;
/// Events of a publish stream (`events:stream`) appended at once: what arrived while the
/// previous append was made durable, up to the engine's batch limit.
pub const STREAM_BATCH_EVENTS_MAX: usize = inorder::limits::PUBLISH_BATCH_EVENTS_MAX;
/// Acknowledgement chunks (one per append) a publish stream may have ready before the client
/// reads them; past it the stream stops reading events.
pub const STREAM_ACK_CHUNKS_MAX: usize = 4;
/// Chunks of leased messages (one per lease round) a consume stream may have ready before the
/// client reads them; past it the stream leases no more.
pub const CONSUME_CHUNKS_MAX: usize = 2;
/// Events one read of a topic returns when its query names no `limit`.
pub const READ_EVENTS_DEFAULT: usize = 100;
/// Most events one read of a topic returns.
pub const READ_EVENTS_MAX: usize = 1000;
/// Parked events one listing returns when its query names no `limit` (the most is the engine's
/// [`PARKED_LIST_MAX`]).
pub const PARKED_LIST_DEFAULT: usize = 100;
/// `Retry-After` of a `425 Too Early` and of a `503 overloaded`, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

// Structured CloudEvents

/// Members of a structured event with a meaning of their own (`specversion`, `id`, `data`, …,
/// `partitionkey`, `sequence`), with room to spare.
pub const EVENT_CORE_MEMBERS_MAX: usize = 16;
/// Most members of one structured event: the core attributes and the most extensions.
pub const EVENT_MEMBERS_MAX: usize = EVENT_CORE_MEMBERS_MAX + inorder::limits::EVENT_EXTENSIONS_MAX;
/// Events of a batch allocated for before they are read (the array's length is not known
/// until its end; the most is the engine's `PUBLISH_BATCH_EVENTS_MAX`).
pub const BATCH_EVENTS_PREALLOCATED: usize = 128;
/// `source` of an event published without one.
pub const EVENT_SOURCE_DEFAULT: &str = "/inorder";

// Configuration (`inorder.toml`)

/// Address the server listens on by default.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070));
/// Data directory by default.
pub const DATA_DIR_DEFAULT: &str = "./inorder-data";
/// Largest request body by default (`body_limit`), in bytes; larger bodies get 413.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 1 << 20;
/// Publish requests handled at once by default (`publish_in_flight`); more get 503.
pub const PUBLISH_IN_FLIGHT_DEFAULT: usize = 1024;
/// Most configurable `publish_in_flight` (each holds a request body).
pub const PUBLISH_IN_FLIGHT_MAX: usize = 64 * 1024;
/// Lease of a pulled event by default (`lease_timeout`): un-acked longer, it is redelivered.
pub const LEASE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest configurable `lease_timeout`. A consumer that needs an event longer should ack it
/// and keep track of its work itself.
pub const LEASE_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Attempts of a pulled event before it is parked, by default (`max_attempts`).
pub const PULL_MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// Longest configurable `ttl` of a Postgres sink: a century (of humantime's 365.25-day years).
/// The sweeper computes its cut-off with checked arithmetic; the maximum is there so that a typo
/// is refused, not obeyed.
pub const SINK_TTL_MAX: Duration = Duration::from_secs(100 * 31_557_600);

// Webhooks (`delivery = "webhook"`)

/// How long one webhook request may take by default (`timeout`: connecting, sending the event,
/// and the receiver's answer); longer, it is abandoned and retried like a failure.
pub const WEBHOOK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Longest configurable webhook `timeout`. A receiver that needs longer should answer 202 and
/// work on the event after answering.
pub const WEBHOOK_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);
/// Most bytes of a webhook `url`.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;
/// Most `headers` of a webhook.
pub const WEBHOOK_HEADERS_MAX: usize = 32;
/// Most bytes of a configured header's name.
pub const WEBHOOK_HEADER_NAME_BYTES_MAX: usize = 128;
/// Most bytes of a configured header's value (room for a long bearer token).
pub const WEBHOOK_HEADER_VALUE_BYTES_MAX: usize = 8 * 1024;
/// Longest delay a receiver's `Retry-After` (on 429 or 503) is obeyed for; a longer one is cut
/// to this. Each such answer still counts as an attempt towards `max_attempts`.
pub const WEBHOOK_RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);
/// Most bytes of a failed answer's body kept for the error message (and the parked event).
pub const WEBHOOK_ERROR_BODY_BYTES_MAX: usize = 512;
/// Most bytes of an answer's body read (and dropped) so that its connection can be used again;
/// a longer body closes the connection instead.
pub const WEBHOOK_DRAIN_BODY_BYTES_MAX: usize = 64 * 1024;
/// Most idle connections a webhook keeps open (fewer when the subscription has fewer keys in
/// flight: one request per key in flight at most).
pub const WEBHOOK_IDLE_CONNECTIONS_MAX: usize = 64;
/// How long an idle webhook connection stays open.
pub const WEBHOOK_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

// CLI

/// Server the CLI talks to by default: the one [`LISTEN_DEFAULT`] starts.
pub const SERVER_URL_DEFAULT: &str = "http://127.0.0.1:7070";
/// Events `inorder publish` sends per request when reading stdin.
pub const PUBLISH_STDIN_BATCH_EVENTS: usize = 100;
/// Events `inorder tail` asks for per request.
pub const TAIL_READ_EVENTS: usize = 500;
/// How long one request of `inorder tail --follow` waits for new events.
pub const TAIL_FOLLOW_WAIT: Duration = Duration::from_secs(10);
/// Users of `inorder demo` by default.
pub const DEMO_USERS_DEFAULT: usize = 3;
/// Most users of `inorder demo`.
pub const DEMO_USERS_MAX: usize = 64;
/// How long the demo's handler works on one event (so that keys visibly interleave).
pub const DEMO_HANDLER_DELAY: Duration = Duration::from_millis(15);
/// How long the demo waits for every event to be processed.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest delay tokio-util's `DelayQueue` accepts (its timer wheel: six levels of 64 slots
/// of 1 ms); a longer one panics. Lease deadlines live in one.
pub const DELAY_QUEUE_DELAY_MAX: Duration = Duration::from_millis((1 << 36) - 1);
/// A pull queue's `DelayQueue` is replaced when it is empty and older than this: its timer wheel
/// measures deadlines from its creation and, idle, does not advance, so after
/// [`DELAY_QUEUE_DELAY_MAX`] of idleness its next insertion would panic.
pub const DELAY_QUEUE_RENEW_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

const _: () = assert!(HTTP_WAIT_MAX.as_secs() <= WAIT_MAX.as_secs(), "the engine would cut it");
const _: () = assert!(TAIL_FOLLOW_WAIT.as_secs() <= HTTP_WAIT_MAX.as_secs());
const _: () = assert!(PULL_EVENTS_DEFAULT <= PULL_EVENTS_MAX);
const _: () =
    assert!(PULL_PER_KEY_MAX <= inorder::limits::RUN_EVENTS_MAX, "the engine would cut it");
const _: () =
    assert!(READ_EVENTS_DEFAULT <= READ_EVENTS_MAX && TAIL_READ_EVENTS <= READ_EVENTS_MAX);
const _: () = assert!(PARKED_LIST_DEFAULT <= PARKED_LIST_MAX);
const _: () = assert!(DEMO_USERS_DEFAULT <= DEMO_USERS_MAX);
const _: () = assert!(PUBLISH_IN_FLIGHT_DEFAULT <= PUBLISH_IN_FLIGHT_MAX);
const _: () = assert!(PUBLISH_IN_FLIGHT_MAX <= tokio::sync::Semaphore::MAX_PERMITS);
const _: () = assert!(LEASE_TIMEOUT_DEFAULT.as_secs() <= LEASE_TIMEOUT_MAX.as_secs());
const _: () = assert!(WEBHOOK_TIMEOUT_DEFAULT.as_secs() <= WEBHOOK_TIMEOUT_MAX.as_secs());
const _: () = assert!(
    WEBHOOK_RETRY_AFTER_MAX.as_secs() <= RETRY_DELAY_MAX.as_secs(),
    "the engine would cut it"
);
const _: () = assert!(WEBHOOK_ERROR_BODY_BYTES_MAX <= WEBHOOK_DRAIN_BODY_BYTES_MAX);
const _: () = assert!(WEBHOOK_ERROR_BODY_BYTES_MAX <= inorder::limits::PARKED_ERROR_BYTES_MAX);
const _: () = assert!(
    LEASE_TIMEOUT_MAX.as_secs() + DELAY_QUEUE_RENEW_AGE.as_secs() < DELAY_QUEUE_DELAY_MAX.as_secs(),
    "a lease inserted into the oldest DelayQueue still fits its wheel"
);

/// How often a node of a cluster brings its topics and subscriptions to the stored definitions
/// (those created, changed, paused or deleted through another node): one storage query per kind.
pub const DEFINITIONS_SYNC_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_talks_to_the_default_listen_address() {
        assert_eq!(SERVER_URL_DEFAULT, format!("http://{LISTEN_DEFAULT}"));
    }
}
