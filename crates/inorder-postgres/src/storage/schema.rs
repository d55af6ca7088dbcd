//! The storage's tables: their DDL, created on connect, and the schema version.
//!
//! ```sql
//! inorder_schema    (singleton boolean PRIMARY KEY CHECK (singleton), version integer NOT NULL)
//! inorder_topics    (name text COLLATE "C" PRIMARY KEY,
//!                    first_position bigint NOT NULL DEFAULT 1,  -- first position still stored
//!                    last_position  bigint NOT NULL DEFAULT 0,  -- the position counter
//!                    created_at timestamptz NOT NULL DEFAULT now())
//! inorder_events    (topic text COLLATE "C", position bigint, payload bytea NOT NULL,
//!                    PRIMARY KEY (topic, position))             -- the engine's codec bytes
//! inorder_streams   (subscription text COLLATE "C", topic text COLLATE "C",
//!                    state bytea NOT NULL,                      -- StreamState::encode
//!                    PRIMARY KEY (subscription, topic))
//! inorder_keys      (subscription text COLLATE "C", topic text COLLATE "C", key bytea,
//!                    state bytea NOT NULL,                      -- KeyState::encode
//!                    PRIMARY KEY (subscription, topic, key))
//! inorder_parked    (subscription text COLLATE "C", topic text COLLATE "C", position bigint,
//!                    event bytea NOT NULL,                      -- ParkedEvent::encode
//!                    PRIMARY KEY (subscription, topic, position))
//! inorder_event_ids (topic text COLLATE "C", id bytea, position bigint NOT NULL,
//!                    PRIMARY KEY (topic, id))
//! inorder_ids_indexed (topic text COLLATE "C" PRIMARY KEY, position bigint NOT NULL)
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
//! - **Names are `text COLLATE "C"`**: validated ASCII, ordered bytewise like the file backend.
//!   **Keys and event ids are `bytea`**: they are arbitrary strings, and `text` refuses NUL.
//! - `inorder_ids_indexed` is apart from `inorder_topics` so the id indexer never waits on the
//!   row lock of appenders. Its mark only goes up (`GREATEST`): several nodes may write it, and
//!   "every id up to N is indexed" stays true once true.
//!
//! Creating the schema takes a transaction-level advisory lock: concurrent `CREATE TABLE IF NOT
//! EXISTS` of two nodes starting at once can otherwise fail on the catalog's unique indexes.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The version of the tables above. A database with another version is refused, never changed.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The advisory lock key that serialises schema creation (`"inorder"` in ASCII).
const SCHEMA_LOCK_KEY: i64 = 0x0069_6e6f_7264_6572;

/// The notification channel of appends; the payload is `"<last position> <topic>"`.
pub(crate) const CHANNEL: &str = "inorder_appended";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS inorder_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL);
CREATE TABLE IF NOT EXISTS inorder_topics (
    name text COLLATE "C" PRIMARY KEY,
    first_position bigint NOT NULL DEFAULT 1,
    last_position bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS inorder_events (
    topic text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (topic, position));
CREATE TABLE IF NOT EXISTS inorder_streams (
    subscription text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (subscription, topic));
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
    let version: i32 = transaction
        .query_one("SELECT version FROM inorder_schema", &[])
        .await
        .map_err(Error::query("read schema version"))?
        .get(0);
    if version != SCHEMA_VERSION {
        return Err(Error::InvalidConfig(format!(
            "the database holds inorder schema version {version}; this build uses \
             {SCHEMA_VERSION}"
        )));
    }
    transaction.commit().await.map_err(Error::query("commit schema"))
}
