//! Every bound of the crate, named.

use std::time::Duration;

/// Rows per `COPY` by default.
pub const SINK_BATCH_ROWS_DEFAULT: usize = 500;
/// Most rows per `COPY` (a batch is held in memory and acknowledged as one transaction).
pub const SINK_BATCH_ROWS_MAX: usize = 10_000;
/// How long a partial batch waits for more rows by default.
pub const SINK_BATCH_TIMEOUT_DEFAULT: Duration = Duration::from_millis(50);
/// Most a partial batch may wait.
pub const SINK_BATCH_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// A partial batch is written once no row arrived for this long: the engine has nothing more in
/// flight for the sink, and waiting would only add latency (see `sink::batcher`).
pub const SINK_IDLE_FLUSH: Duration = Duration::from_millis(2);
/// Most parallel writers (each holds one connection).
pub const SINK_WORKERS_MAX: usize = 64;
/// First delay before retrying a failed write or connect.
pub const RETRY_DELAY_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between retries while PostgreSQL is unreachable.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// Rows the TTL sweeper deletes per statement (short transactions, no long locks).
pub const SWEEP_ROWS_PER_STATEMENT: i64 = 10_000;
/// Bounds of the sweeper's period (a tenth of the TTL, clamped).
pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// See [`SWEEP_INTERVAL_MIN`].
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(300);

/// Connections in a [`PgStorage`](crate::PgStorage)'s pool by default. Appends, state commits
/// and reads share them; the LISTEN connection of the watch is one more.
pub const STORAGE_POOL_SIZE_DEFAULT: usize = 8;
/// Most connections a [`PgStorage`](crate::PgStorage) pool may hold.
pub const STORAGE_POOL_SIZE_MAX: usize = 64;
/// Most records one storage read returns (one bounded result set per query).
pub const STORAGE_READ_RECORDS_MAX: usize = 1024;
/// Most records one storage append accepts (one statement, one transaction).
pub const STORAGE_APPEND_RECORDS_MAX: usize = 16 * 1024;
/// Notifications buffered between the LISTEN connection and the task that applies them to the
/// watches; when full, the connection waits (PostgreSQL queues the rest).
pub const STORAGE_NOTIFY_QUEUE_DEPTH: usize = 1024;
/// Attempts of a state commit that lost a deadlock or serialization conflict (the whole
/// transaction is retried; every op is idempotent).
pub const STORAGE_COMMIT_ATTEMPTS_MAX: u32 = 3;

/// How long PostgreSQL lets a storage connection sit idle inside a transaction before it ends the
/// session (`idle_in_transaction_session_timeout`). The storage's transactions send their
/// statements back to back, so only a stalled process — frozen (SIGSTOP), swapped out, cut off
/// mid-commit — reaches it; its row locks (a lease row share-locked by a fenced commit, a topic's
/// counter) would otherwise hold up every other node until the process woke.
pub const STORAGE_IDLE_IN_TRANSACTION_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(5);

const _: () = assert!(STORAGE_POOL_SIZE_DEFAULT <= STORAGE_POOL_SIZE_MAX);
const _: () = assert!(STORAGE_POOL_SIZE_DEFAULT >= 1);

/// Appends waiting for their topic's appender task (see `storage::append`); more wait to queue.
pub const STORAGE_APPEND_QUEUE_DEPTH: usize = 1024;

/// Longest PostgreSQL identifier (table or schema name), in bytes: `NAMEDATALEN - 1`; longer
/// ones would be cut silently by the server.
pub const IDENTIFIER_BYTES_MAX: usize = 63;
