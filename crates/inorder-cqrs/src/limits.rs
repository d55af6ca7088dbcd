//! Every bound of the CQRS layer, named.

use std::time::Duration;

/// Longest aggregate id (bytes): `{id}@{version}` must fit an event id.
pub const AGGREGATE_ID_BYTES_MAX: usize = 200;
/// Stream versions looked up per round trip when reading a stream.
pub const STREAM_LOOKUP_VERSIONS: u64 = 64;
/// Snapshot slots looked up per round trip when finding the latest snapshot.
pub const SNAPSHOT_LOOKUP_SLOTS: u64 = 64;
/// Most events one command may produce (one append batch of the engine).
pub const COMMAND_EVENTS_MAX: usize = inorder::limits::PUBLISH_BATCH_EVENTS_MAX;
/// Retries of a command after losing a race to a concurrent writer, by default.
pub const COMMAND_RETRIES_DEFAULT: u32 = 5;
/// Most retries a bus may be configured with.
pub const COMMAND_RETRIES_MAX: u32 = 100;
/// A snapshot every this many events of a stream, by default.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100;
/// Live aggregates a bus keeps in memory at most, by default.
pub const LIVE_AGGREGATES_DEFAULT: usize = 10_000;
/// A live aggregate unused for this long is evicted, by default.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// `strong` dispatch waits at most this long for the projectors, by default.
pub const STRONG_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Events read per batch by views, process managers and the scheduler.
pub const READ_BATCH_EVENTS: usize = 512;
