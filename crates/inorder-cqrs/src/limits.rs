//! Every bound and default of the CQRS layer, named, with units and qualifiers last, in one place;
//! their relations to each other and to the engine's limits are checked at compile time below.
//!
//! The names that make up the daily event's format (its action, key, id prefix and source) are
//! not limits: they stay with the event in [`crate::scheduler`].

use std::time::Duration;

// Aggregate streams and snapshots.

/// Longest aggregate id (bytes): `{id}@{version}` must fit an event id.
pub const AGGREGATE_ID_BYTES_MAX: usize = 200;
/// Characters of a refused aggregate id quoted in [`Error::InvalidId`](crate::Error::InvalidId).
pub const INVALID_ID_QUOTED_CHARS_MAX: usize = 64;
/// Stream versions looked up per round trip when reading a stream.
pub const STREAM_LOOKUP_VERSIONS: u64 = 64;
/// Snapshot slots looked up per round trip when finding the latest snapshot.
pub const SNAPSHOT_LOOKUP_SLOTS: u64 = 64;

// The command bus.

/// Most events one command may produce (one append batch of the engine).
pub const COMMAND_EVENTS_MAX: usize = inorder::limits::PUBLISH_BATCH_EVENTS_MAX;
/// Retries of a command after losing a race to a concurrent writer, by default.
pub const COMMAND_RETRIES_DEFAULT: u32 = 5;
/// Most retries a bus may be configured with.
pub const COMMAND_RETRIES_MAX: u32 = 100;
/// After a lost race with nothing to catch up yet (the winner's append is still in flight), the
/// first wait before deciding again; it doubles with each attempt up to
/// [`CONFLICT_BACKOFF_MAX`], and a random half of it is taken off (jitter).
pub const CONFLICT_BACKOFF_INITIAL: Duration = Duration::from_millis(2);
/// The longest wait after a lost race (before jitter).
pub const CONFLICT_BACKOFF_MAX: Duration = Duration::from_millis(64);
/// A snapshot every this many events of a stream, by default.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100;
/// `strong` dispatch waits at most this long for the projectors, by default.
pub const STRONG_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

// The registry of live aggregates.

/// Live aggregates a bus keeps in memory at most, by default.
pub const LIVE_AGGREGATES_DEFAULT: usize = 10_000;
/// A live aggregate unused for this long is evicted, by default.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// Over capacity, a further `capacity / EVICT_SLACK_DIVISOR` idle aggregates are evicted with
/// the excess, so the least-recently-used sort runs once per batch of new aggregates, not on
/// every command at capacity.
pub const EVICT_SLACK_DIVISOR: usize = 10;
/// The idle sweeper runs this many times per idle timeout…
pub const SWEEPS_PER_IDLE_TIMEOUT: u32 = 2;
/// …but never more often than this.
pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(10);

// Readers: cross-stream aggregates, projectors, process managers, the scheduler.

/// Events read per batch by cross-stream aggregates, process managers and the scheduler.
pub const READ_BATCH_EVENTS: usize = 512;
/// How often [`follow_rebuild`](crate::projector::follow_rebuild) looks at a projection's
/// progress.
pub const REBUILD_POLL_INTERVAL: Duration = Duration::from_millis(100);

// Process managers.

/// Attempts of one [`ProcessManager::handle`](crate::ProcessManager::handle) call before the
/// manager stops.
pub const PROCESS_HANDLE_ATTEMPTS_MAX: u32 = 5;
/// Delay before the second attempt of a failed `handle` (doubled for each next one) unless the
/// error names its own.
pub const PROCESS_HANDLE_RETRY_DELAY_INITIAL: Duration = Duration::from_millis(50);

// The daily cycler.

/// The topic the daily events go to unless configured.
pub const CYCLER_TOPIC_DEFAULT: &str = "system";
/// The local hour a date is due at unless configured (midnight).
pub const CYCLER_HOUR_DEFAULT: i8 = 0;
/// The largest configurable hour.
pub const CYCLER_HOUR_MAX: i8 = 23;
/// How often the spawned loop checks for due dates unless configured.
pub const CYCLER_CHECK_EVERY_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// The most dates one run publishes; a longer backlog continues in the next run (the spawned
/// loop starts it at once). A year of downtime fits one run.
pub const CYCLER_CATCH_UP_DATES_MAX: usize = 366;
/// Longest a cycler waits for another cycler's publish of a date to land before it goes on to
/// the next date (so dates reach the log in order, whoever publishes them).
pub const CYCLER_OTHER_PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// The longest decimal `u64` (a version or a slot number in an event id), in bytes.
const U64_DECIMAL_BYTES_MAX: usize = 20;
/// The longest decimal `u32` (a snapshot schema in an event id), in bytes.
const U32_DECIMAL_BYTES_MAX: usize = 10;

// Ids built from an aggregate id fit the engine's event ids: `{id}@{version}` and
// `{id}@snapshot-{slot}.v{schema}`; and an aggregate id fits an event key.
const _: () = assert!(
    AGGREGATE_ID_BYTES_MAX + "@".len() + U64_DECIMAL_BYTES_MAX
        <= inorder::limits::EVENT_ID_BYTES_MAX
);
const _: () = assert!(
    AGGREGATE_ID_BYTES_MAX
        + "@snapshot-".len()
        + U64_DECIMAL_BYTES_MAX
        + ".v".len()
        + U32_DECIMAL_BYTES_MAX
        <= inorder::limits::EVENT_ID_BYTES_MAX
);
const _: () = assert!(AGGREGATE_ID_BYTES_MAX <= inorder::limits::EVENT_KEY_BYTES_MAX);
const _: () = assert!(INVALID_ID_QUOTED_CHARS_MAX > 0);
// One lookup round trip stays within what `Engine::positions_of` accepts.
const _: () = assert!(STREAM_LOOKUP_VERSIONS > 0 && SNAPSHOT_LOOKUP_SLOTS > 0);
const _: () = assert!(STREAM_LOOKUP_VERSIONS <= inorder::limits::LOOKUP_IDS_MAX as u64);
const _: () = assert!(SNAPSHOT_LOOKUP_SLOTS <= inorder::limits::LOOKUP_IDS_MAX as u64);
const _: () = assert!(COMMAND_RETRIES_DEFAULT <= COMMAND_RETRIES_MAX);
const _: () = assert!(CONFLICT_BACKOFF_INITIAL.as_nanos() > 0);
const _: () = assert!(CONFLICT_BACKOFF_INITIAL.as_nanos() <= CONFLICT_BACKOFF_MAX.as_nanos());
const _: () = assert!(LIVE_AGGREGATES_DEFAULT > 0 && EVICT_SLACK_DIVISOR > 0);
const _: () = assert!(SWEEPS_PER_IDLE_TIMEOUT > 0 && SWEEP_INTERVAL_MIN.as_nanos() > 0);
const _: () = assert!(READ_BATCH_EVENTS > 0);
const _: () = assert!(READ_BATCH_EVENTS <= inorder::limits::STREAM_READ_RECORDS_MAX);
// The retry delay doubles `PROCESS_HANDLE_ATTEMPTS_MAX - 2` times: the factor fits a `u32`.
const _: () = assert!(PROCESS_HANDLE_ATTEMPTS_MAX >= 1 && PROCESS_HANDLE_ATTEMPTS_MAX <= 32);
const _: () = assert!(CYCLER_HOUR_DEFAULT >= 0 && CYCLER_HOUR_DEFAULT <= CYCLER_HOUR_MAX);
const _: () = assert!(CYCLER_CATCH_UP_DATES_MAX >= 366);

/// How soon a process manager looks again when it read an event above the storage's visible
/// commit (durable in its topic, an earlier commit of another topic not yet): that moment lasts
/// about one fsync, and no watch announces its end.
pub const PROCESS_HELD_BACK_RECHECK: Duration = Duration::from_millis(1);
