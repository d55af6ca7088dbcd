//! The storage's tables: their DDL, created on connect, and the schema version.
//!
//! ```sql
//! inorder_schema    (singleton boolean PRIMARY KEY CHECK (singleton), version integer NOT NULL)
//! inorder_topics    (name text COLLATE "C" PRIMARY KEY,
//!                    first_position bigint NOT NULL DEFAULT 1,  -- first position still stored
//!                    last_position  bigint NOT NULL DEFAULT 0,  -- the position counter
//!                    created_at timestamptz NOT NULL DEFAULT now(),
//!                    payload_bytes bigint NOT NULL DEFAULT 0)   -- of its stored events (v3)
//! inorder_events    (topic text COLLATE "C", position bigint, payload bytea NOT NULL,
//!                    commit_position bigint NOT NULL DEFAULT 0, -- node-wide order (v2)
//!                    appended_at timestamptz NOT NULL DEFAULT now(), -- retention by age (v3)
//!                    PRIMARY KEY (topic, position))             -- the engine's codec bytes
//!                    INDEX inorder_events_commit (commit_position)
//! inorder_commit_clock (singleton boolean PRIMARY KEY CHECK (singleton),
//!                    last_commit bigint NOT NULL)               -- the commit counter (v2)
//! inorder_streams   (subscription text COLLATE "C", topic text COLLATE "C",
//!                    part integer NOT NULL DEFAULT -1,          -- partition, -1: none (v4)
//!                    state bytea NOT NULL,                      -- StreamState::encode
//!                    PRIMARY KEY (subscription, topic, part))
//! inorder_keys      (subscription text COLLATE "C", topic text COLLATE "C", key bytea,
//!                    state bytea NOT NULL,                      -- KeyState::encode
//!                    PRIMARY KEY (subscription, topic, key))
//! inorder_parked    (subscription text COLLATE "C", topic text COLLATE "C", position bigint,
//!                    event bytea NOT NULL,                      -- ParkedEvent::encode
//!                    PRIMARY KEY (subscription, topic, position))
//! inorder_event_ids (topic text COLLATE "C", id bytea, position bigint NOT NULL,
//!                    PRIMARY KEY (topic, id))
//!                    INDEX inorder_event_ids_position (topic, position)  -- pruned by retention
//! inorder_ids_indexed (topic text COLLATE "C" PRIMARY KEY, position bigint NOT NULL)
//! inorder_definitions (kind text COLLATE "C", name text COLLATE "C", value bytea NOT NULL,
//!                    PRIMARY KEY (kind, name))        -- made through the management API
//! inorder_leases    (subscription text COLLATE "C", part integer, -- cluster mode (v4)
//!                    owner text, epoch bigint NOT NULL DEFAULT 0,  -- the fencing token
//!                    expires_at timestamptz NOT NULL DEFAULT '-infinity',
//!                    PRIMARY KEY (subscription, part))
//! inorder_nodes     (node text PRIMARY KEY, subscriptions text[] NOT NULL, -- heartbeats (v4):
//!                    expires_at timestamptz NOT NULL)      -- what each live node runs
//! SEQUENCE inorder_progress                   -- numbers the notifications of partition progress
//! ```
//!
//! - **One events table keyed by `(topic, position)`**, not a table per topic: topics are
//!   created at run time (auto-creation), and a table per topic would mean DDL from names
//!   (identifiers pasted into statements), a catalog that grows with topics, and statements that
//!   cannot be prepared once. The primary key's B-tree is exactly the access path of a reader
//!   (`topic = $1 AND position >= $2 ORDER BY position`), and every statement binds the topic.
//! - **Positions come from `inorder_topics.last_position`**, incremented by the appending
//!   statement itself (`UPDATE … RETURNING`). The row lock serialises appenders of one topic
//!   until commit, so positions are gap-free, unique, and committed in order; a rolled-back
//!   append rolls its increment back too. There is deliberately no foreign key from events to
//!   topics: it would add a row lock per insert and protects nothing the counter does not.
//! - **Commit positions come from the one row of `inorder_commit_clock`**, incremented by the
//!   first statement of every appending transaction, before it touches any topic's row (topics
//!   then in name order: no lock-order deadlock). The row lock is
//!   held until commit, so commit positions are committed in order across all topics and nodes:
//!   a reader that sees commit `N + 1` sees `N` (unless `N` rolled back and never exists). The
//!   price is that appends of *different* topics serialise too, on that row: one group commit at
//!   a time for the whole database — which is why a process groups the appends of all its topics
//!   into one transaction (see `append`). A rolled-back or topic-less append leaves a gap; readers never
//!   rely on commits being contiguous.
//! - **Names are `text COLLATE "C"`**: validated ASCII, ordered bytewise like the file backend.
//!   **Keys and event ids are `bytea`**: they are arbitrary strings, and `text` refuses NUL.
//! - `inorder_ids_indexed` is apart from `inorder_topics` so the id indexer never waits on the
//!   row lock of appenders. Its mark only goes up (`GREATEST`): several nodes may write it, and
//!   "every id up to N is indexed" stays true once true.
//!
//! - **Retention deletes a prefix of a topic** in batches, in one statement per batch: the
//!   events, their ids, and `first_position` raised (never lowered: `GREATEST`) with
//!   `payload_bytes` lowered by what went. Appends add their payload bytes in the statement that
//!   advances `last_position`, so the byte count is exact without reading the events.
//!
//! - **Leases are rows, times are the database's** (`now()`): nodes' clocks never meet. A lease
//!   row's `epoch` goes up by one with every takeover and every state commit of a partition
//!   checks it under `FOR SHARE` (see `cluster.rs`), so a takeover waits for a commit in flight
//!   and a commit after a takeover is refused.
//!
//! Creating the schema takes a transaction-level advisory lock: concurrent `CREATE TABLE IF NOT
//! EXISTS` of two nodes starting at once can otherwise fail on the catalog's unique indexes.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The version of the tables above. Versions 1 (before commit positions), 2 (before retention)
/// and 3 (before cluster mode) are migrated in place ([`MIGRATE_1_TO_2`], [`MIGRATE_2_TO_3`],
/// [`MIGRATE_3_TO_4`]); any other version is refused, never changed.
pub(crate) const SCHEMA_VERSION: i32 = 4;

/// Adds commit positions to a version-1 database: events stored before get commit 0 (adding a
/// column with a constant default rewrites nothing).
const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE inorder_events ADD COLUMN IF NOT EXISTS commit_position bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS inorder_events_commit ON inorder_events (commit_position);
UPDATE inorder_schema SET version = 2;
"#;

/// Adds what retention needs to a version-2 database: the payload bytes of each topic (counted
/// once here), the time each event was appended (events stored before count as appended now:
/// retention by age keeps them a whole `max_age`; a stable default rewrites nothing), and the
/// id index by position.
const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE inorder_topics ADD COLUMN IF NOT EXISTS payload_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE inorder_events ADD COLUMN IF NOT EXISTS appended_at timestamptz NOT NULL DEFAULT now();
UPDATE inorder_topics AS t SET payload_bytes = coalesce(
    (SELECT sum(octet_length(e.payload)) FROM inorder_events AS e WHERE e.topic = t.name), 0);
UPDATE inorder_schema SET version = 3;
"#;

/// Adds cluster mode to a version-3 database: stream progress per partition (every stored stream
/// is unpartitioned: `-1`), leases, heartbeats.
const MIGRATE_3_TO_4: &str = r#"
ALTER TABLE inorder_streams ADD COLUMN IF NOT EXISTS part integer NOT NULL DEFAULT -1;
ALTER TABLE inorder_streams DROP CONSTRAINT IF EXISTS inorder_streams_pkey;
ALTER TABLE inorder_streams ADD PRIMARY KEY (subscription, topic, part);
UPDATE inorder_schema SET version = 4;
"#;

/// Indexes created after any migration (`IF NOT EXISTS`: also on a fresh database).
const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS inorder_events_commit ON inorder_events (commit_position);
CREATE INDEX IF NOT EXISTS inorder_event_ids_position ON inorder_event_ids (topic, position);
"#;

/// The advisory lock key that serialises schema creation (`"inorder"` in ASCII).
const SCHEMA_LOCK_KEY: i64 = 0x0069_6e6f_7264_6572;

/// The notification channel of appends; the payload is `"<last position> <topic>"` (and, for
/// commits of partition progress, `"<number> #progress"`).
pub(crate) const CHANNEL: &str = "inorder_appended";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS inorder_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL);
CREATE TABLE IF NOT EXISTS inorder_topics (
    name text COLLATE "C" PRIMARY KEY,
    first_position bigint NOT NULL DEFAULT 1,
    last_position bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload_bytes bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS inorder_events (
    topic text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    payload bytea NOT NULL,
    commit_position bigint NOT NULL DEFAULT 0,
    appended_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, position));
CREATE TABLE IF NOT EXISTS inorder_commit_clock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_commit bigint NOT NULL);
INSERT INTO inorder_commit_clock (last_commit) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS inorder_streams (
    subscription text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    part integer NOT NULL DEFAULT -1,
    state bytea NOT NULL,
    PRIMARY KEY (subscription, topic, part));
CREATE TABLE IF NOT EXISTS inorder_keys (
    subscription text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (subscription, topic, key));
CREATE TABLE IF NOT EXISTS inorder_parked (
    subscription text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (subscription, topic, position));
CREATE TABLE IF NOT EXISTS inorder_event_ids (
    topic text COLLATE "C" NOT NULL,
    id bytea NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (topic, id));
CREATE TABLE IF NOT EXISTS inorder_ids_indexed (
    topic text COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS inorder_definitions (
    kind text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS inorder_leases (
    subscription text COLLATE "C" NOT NULL,
    part integer NOT NULL,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (subscription, part));
CREATE TABLE IF NOT EXISTS inorder_nodes (
    node text PRIMARY KEY,
    subscriptions text[] NOT NULL DEFAULT '{}',
    expires_at timestamptz NOT NULL);
CREATE SEQUENCE IF NOT EXISTS inorder_progress;
"#;

/// Creates the tables if they do not exist and checks the schema version.
pub(crate) async fn create(client: &mut Client) -> Result<()> {
    let transaction = client.transaction().await.map_err(Error::query("begin schema"))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .map_err(Error::query("lock schema"))?;
    transaction.batch_execute(DDL).await.map_err(Error::query("create tables"))?;
    transaction
        .execute(
            "INSERT INTO inorder_schema (version) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(Error::query("write schema version"))?;
    let mut version = read_version(&transaction).await?;
    if version == 1 {
        transaction.batch_execute(MIGRATE_1_TO_2).await.map_err(Error::query("migrate to 2"))?;
        version = read_version(&transaction).await?;
    }
    if version == 2 {
        transaction.batch_execute(MIGRATE_2_TO_3).await.map_err(Error::query("migrate to 3"))?;
        version = read_version(&transaction).await?;
    }
    if version == 3 {
        transaction.batch_execute(MIGRATE_3_TO_4).await.map_err(Error::query("migrate to 4"))?;
        version = read_version(&transaction).await?;
    }
    if version != SCHEMA_VERSION {
        return Err(Error::InvalidConfig(format!(
            "the database holds inorder schema version {version}; this build uses \
             {SCHEMA_VERSION}"
        )));
    }
    transaction.batch_execute(INDEXES).await.map_err(Error::query("create indexes"))?;
    transaction.commit().await.map_err(Error::query("commit schema"))
}

async fn read_version(transaction: &tokio_postgres::Transaction<'_>) -> Result<i32> {
    Ok(transaction
        .query_one("SELECT version FROM inorder_schema", &[])
        .await
        .map_err(Error::query("read schema version"))?
        .get(0))
}
