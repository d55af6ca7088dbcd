//! Every limit of the engine, named, with its unit last, in one place.

use std::time::Duration;

/// Longest event id, in bytes.
pub const EVENT_ID_BYTES_MAX: usize = 256;
/// Longest event key, in bytes.
pub const EVENT_KEY_BYTES_MAX: usize = 1024;
/// Longest action (event type), in bytes.
pub const EVENT_ACTION_BYTES_MAX: usize = 256;
/// Longest other text attribute (source, subject, ids, extension strings), in bytes.
pub const EVENT_TEXT_BYTES_MAX: usize = 2048;
/// Most extension attributes on one event.
pub const EVENT_EXTENSIONS_MAX: usize = 64;
/// Longest extension attribute name (CloudEvents recommends 20).
pub const EXTENSION_NAME_BYTES_MAX: usize = 64;
/// Most early events one key may hold under `sequence` ordering (waiting for a gap).
pub const SEQUENCE_BUFFER_EVENTS_MAX: usize = 1024;
/// Largest event payload (`data`), in bytes: what the log accepts in one record, less room for
/// the event's attributes.
pub const EVENT_DATA_BYTES_MAX: usize =
    inorder_log::limits::RECORD_PAYLOAD_BYTES_MAX_DEFAULT as usize - 64 * 1024;
/// Most events in one `publish_batch`.
pub const PUBLISH_BATCH_EVENTS_MAX: usize = 1000;
/// Most event ids looked up by one [`Engine::positions_of`](crate::Engine::positions_of) call.
pub const LOOKUP_IDS_MAX: usize = 1000;
/// Most actions a topic may declare (the per-key reorder buffer holds at most one event per
/// action, so this also bounds it).
pub const TOPIC_ACTIONS_MAX: usize = 64;

/// Events a stream (one subscription on one topic) may have read but not finished — in key
/// queues, handlers and checkpoints — not counting events waiting in reorder buffers. The stream
/// stops reading at this limit.
pub const STREAM_PENDING_EVENTS_MAX: usize = 16 * 1024;
/// Events a stream may hold in reorder buffers (waiting for a missing action or sequence
/// number). Beyond it an early event is parked as `buffer_full` instead of waiting, so a stream
/// never stops reading while waiting for an event further on.
pub const STREAM_REORDER_EVENTS_MAX: usize = 64 * 1024;
/// Records a stream reads from the log at once.
pub const STREAM_READ_RECORDS_MAX: usize = 1024;
/// Decoded batches a stream's reader task may have ready ahead of the stream.
pub const STREAM_READ_BATCHES_MAX: usize = 2;
/// Durable key states a stream keeps for keys whose worker left (so a key that comes back soon
/// is not read from storage again). Cleared when full.
pub const RECENT_KEY_STATES_MAX: usize = 64 * 1024;
/// Live workers at or below which every change of a stream's processbook re-checks its
/// reorder-buffer count against the sum over workers (debug builds; above it the check would
/// cost more than the stream's work).
pub const PROCESSBOOK_CHECKED_WORKERS_MAX: usize = 256;
/// Operator commands waiting for a stream task.
pub const STREAM_INBOX_DEPTH: usize = 64;

/// Most consecutive events of one key in one handler call ([`Handler::max_run`](crate::Handler::max_run)
/// is capped at it): a run's events are all in flight together, so after a crash at most this
/// many of a key are handed to the handler again.
pub const RUN_EVENTS_MAX: usize = 1024;

/// Default limit of keys whose handler runs at once, per subscription.
pub const KEYS_IN_FLIGHT_DEFAULT: usize = 256;
/// Largest configurable keys-in-flight limit.
pub const KEYS_IN_FLIGHT_MAX: usize = 65_536;

/// Appends whose event ids wait for the indexer; publishers wait beyond it.
pub const INDEX_QUEUE_JOBS_MAX: usize = 1024;
/// Event ids written to the index at once.
pub const INDEX_WRITE_IDS_MAX: usize = 16 * 1024;
/// How far the durable "ids indexed up to" mark may lag the indexed prefix (positions).
pub const INDEXED_MARK_POSITIONS: u64 = 1024;
/// Longest pause between attempts to write ids the index refused (doubling from
/// [`STREAM_RESTART_DELAY_INITIAL`]); publishers wait behind the index queue meanwhile.
pub const INDEX_RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// Commit requests waiting for the checkpointer.
pub const CHECKPOINT_QUEUE_DEPTH: usize = 4096;
/// State operations written by one checkpoint (one fsync).
pub const CHECKPOINT_OPS_MAX: usize = 64 * 1024;

/// Default retry policy: first delay.
pub const RETRY_INITIAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default retry policy: delay multiplier.
pub const RETRY_FACTOR_DEFAULT: f64 = 2.0;
/// Default retry policy: longest delay.
pub const RETRY_MAX_DELAY_DEFAULT: Duration = Duration::from_secs(30);
/// Default retry policy: attempts before parking (the first call included).
pub const RETRY_MAX_ATTEMPTS_DEFAULT: u32 = 5;

/// Longest time `publish_and_wait` and `wait_processed` may be asked to wait.
pub const WAIT_MAX: Duration = Duration::from_secs(300);

/// Longest delay before a retry: a retry policy's `initial` and `max_delay`, a handler's
/// [`HandlerError::retry_after`](crate::HandlerError::retry_after) (longer ones are cut to it),
/// a pull consumer's nack delay.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest configurable `sequence_timeout` of a topic.
pub const SEQUENCE_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Default most topics an engine holds; auto-creation beyond it is refused
/// ([`Error::TopicLimit`](crate::Error::TopicLimit)).
pub const TOPICS_DEFAULT_MAX: usize = 1024;
/// Largest configurable `max_topics`.
pub const TOPICS_MAX: usize = 1 << 20;

/// Parked events returned by one listing.
pub const PARKED_LIST_MAX: usize = 1000;
/// Longest handler error message kept with a parked event, in bytes (longer ones are cut at a
/// character boundary): a handler's message must not make a checkpoint unwritable.
pub const PARKED_ERROR_BYTES_MAX: usize = 4096;

/// First pause before the turn keeper asks the storage again after an error (doubling up to
/// [`TURN_KEEPER_RETRY_MAX`]).
pub const TURN_KEEPER_RETRY_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between the turn keeper's attempts while the storage keeps failing.
pub const TURN_KEEPER_RETRY_MAX: Duration = Duration::from_secs(10);

/// First pause before a failed stream is started again (doubling up to
/// [`STREAM_RESTART_DELAY_MAX`]).
pub const STREAM_RESTART_DELAY_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between restarts of a stream whose storage keeps failing transiently.
pub const STREAM_RESTART_DELAY_MAX: Duration = Duration::from_secs(10);
/// Panics in a row (without a checkpoint in between) after which a stream is failed instead of
/// restarted: a bug that panics on the same event would otherwise loop forever.
pub const STREAM_PANICS_MAX: u32 = 3;
/// How soon a key's expired sequence timeout is looked at again while the key is busy.
pub const STREAM_TIMEOUT_RECHECK: Duration = Duration::from_millis(10);
/// Longest delay a stream's timer accepts (the timer wheel's horizon is about two years).
pub const TIMER_DELAY_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Bytes of the state store's block cache (file backend).
pub const STATE_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes of one state keyspace's memtable before it is flushed to disk (file backend).
pub const STATE_MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of the memtable of the id index by position (file backend): written in key order and
/// read only by retention's pruning, it gains nothing from a large one — and a second 16 MiB one
/// beside the id index's doubled what the index holds in memory.
pub const ID_POSITIONS_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// State overlay entries that start a fold into the tree (file backend).
pub const OVERLAY_ENTRIES_FOLD: usize = 64 * 1024;
/// State overlay entries beyond which a commit waits for the running fold.
pub const OVERLAY_ENTRIES_HARD_MAX: usize = 4 * OVERLAY_ENTRIES_FOLD;
/// Entries written to the tree per batch while folding.
pub const FOLD_BATCH_ENTRIES: usize = 8 * 1024;
/// Segment size of the state journal, in bytes (small, so folded parts are purged soon).
pub const JOURNAL_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Largest journal record, in bytes: a state commit of any size is written as contiguous parts
/// of at most this size, applied only when every part is read back.
pub const JOURNAL_PART_BYTES_MAX: usize = 1024 * 1024;
/// Journal parts written by one log append (a larger commit takes several appends).
pub const JOURNAL_PARTS_PER_APPEND: usize = 16;

const _: () = assert!(STREAM_READ_RECORDS_MAX <= STREAM_PENDING_EVENTS_MAX);
const _: () = assert!(KEYS_IN_FLIGHT_DEFAULT <= KEYS_IN_FLIGHT_MAX);
const _: () = assert!(TOPICS_DEFAULT_MAX <= TOPICS_MAX);
const _: () = assert!(
    JOURNAL_PART_BYTES_MAX < inorder_log::limits::RECORD_PAYLOAD_BYTES_MAX_DEFAULT as usize,
    "a journal part must fit one log record"
);
const _: () = assert!(
    EVENT_KEY_BYTES_MAX * 3 + PARKED_ERROR_BYTES_MAX + EVENT_ID_BYTES_MAX + EVENT_ACTION_BYTES_MAX
        < JOURNAL_PART_BYTES_MAX,
    "one state entry always fits a journal part"
);
const _: () = assert!(
    JOURNAL_PARTS_PER_APPEND * JOURNAL_PART_BYTES_MAX <= inorder_log::limits::APPEND_BYTES_MAX,
    "one append of journal parts fits the log's append limit"
);
const _: () = assert!(RETRY_DELAY_MAX.as_secs() <= TIMER_DELAY_MAX.as_secs());
const _: () = assert!(SEQUENCE_TIMEOUT_MAX.as_secs() <= TIMER_DELAY_MAX.as_secs());
const _: () = assert!(RETRY_MAX_DELAY_DEFAULT.as_secs() <= RETRY_DELAY_MAX.as_secs());
const _: () = assert!(TOPIC_ACTIONS_MAX <= 64, "actions progress is a 64-bit mask");

/// Commit positions the file storage reserves durably at a time (one journal write per block):
/// after a crash the clock goes on above the block, so no commit number is ever issued twice,
/// at the price of a gap of at most this many.
pub const COMMIT_RESERVE_BLOCK: u64 = 1 << 20;
/// Most events one `read_all` returns.
pub const READ_ALL_EVENTS_MAX: usize = 1000;

/// Longest configurable `max_age` of a topic's retention.
pub const RETENTION_AGE_MAX: Duration = Duration::from_secs(3_155_760_000); // 100 Julian years
/// Largest configurable `max_bytes` of a topic's retention (1 PiB).
pub const RETENTION_BYTES_MAX: u64 = 1 << 50;
/// Largest configurable `max_events` of a topic's retention.
pub const RETENTION_EVENTS_MAX: u64 = 1 << 53;
/// How often the retention task looks at every topic with a retention policy, by default.
pub const RETENTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Retention rounds between two that also refresh the gauges of topics without a policy (one
/// storage call each: a round trip per topic on PostgreSQL).
pub const RETENTION_METRICS_EVERY: u64 = 10;
/// Shortest configurable retention interval (tests sweep fast; a sweep asks the storage).
pub const RETENTION_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Longest configurable retention interval.
pub const RETENTION_INTERVAL_MAX: Duration = Duration::from_secs(60 * 60);
/// Parked entries of one stream the retention task reads to find its first event still parked
/// (`until_consumed`); past them it holds retention at the last one read (keeps more, never
/// less).
pub const RETENTION_PARKED_SCAN_MAX: usize = 1000;
/// Events removed by one purge statement on storages that delete rows (PostgreSQL); a purge
/// runs as many as it needs.
pub const PURGE_BATCH_EVENTS_MAX: u64 = 10_000;
/// Times `read_all` on the file storage starts a topic over after a purge deleted the segment it
/// was reading (each follows a purge that ran meanwhile; purges stop at the active segment).
pub const READ_ALL_PURGE_RETRIES: usize = 16;

/// Partitions a subscription's keys are split into in cluster mode, by default: enough to spread
/// over a handful of nodes, few enough that every node reading every partition stays cheap.
pub const PARTITIONS_DEFAULT: u16 = 16;
/// Most partitions of a subscription (each is a stream reading the whole topic on its node).
pub const PARTITIONS_MAX: u16 = 256;
/// How long a partition lease lasts without renewal, by default: the failover time after a node
/// dies without releasing its partitions.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest configurable lease: a renewal round trip must fit in a third of it many times over.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
/// Longest configurable lease.
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(10 * 60);
/// Renewals per lease lifetime: a node renews every `lease_ttl / LEASE_RENEWALS_PER_TTL`, so two
/// renewals may fail in a row before the lease runs out.
pub const LEASE_RENEWALS_PER_TTL: u32 = 3;
/// Longest node id.
pub const NODE_ID_MAX_BYTES: usize = 128;
/// Shortest time between two refreshes of the progress of partitions held by other nodes (each
/// is one storage query, woken by their commits).
pub const MIRROR_REFRESH_MIN: Duration = Duration::from_millis(20);
/// Longest time between two such refreshes, whether or not a commit was announced (a lost
/// notification costs at most this much staleness).
pub const MIRROR_REFRESH_MAX: Duration = Duration::from_secs(1);
