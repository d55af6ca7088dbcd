//! The sink table: its DDL, and one event as a row of binary `COPY`.
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS <table> (
//!     id             text        NOT NULL,  -- CloudEvents id (unique per topic)
//!     topic          text        NOT NULL,
//!     key            text        NOT NULL,  -- partitionkey / subject
//!     action         text        NOT NULL,  -- CloudEvents type
//!     position       bigint      NOT NULL,  -- position in the topic's log
//!     time           timestamptz NOT NULL,  -- event time (µs)
//!     source         text        NOT NULL,
//!     subject        text,
//!     correlation_id text,
//!     causation_id   text,
//!     content_type   text,
//!     data           jsonb,                 -- the payload when it is JSON
//!     data_bytes     bytea,                 -- the payload otherwise
//!     archived_at    timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (topic, id)
//! );
//! -- indexes: (time), (topic, position), (correlation_id) WHERE correlation_id IS NOT NULL
//! ```
//!
//! `(topic, id)` is the key because the engine deduplicates ids per topic; it is also what makes
//! redelivery idempotent (`ON CONFLICT DO NOTHING`). A payload goes to `data` when its content
//! type is absent or JSON and it parses as JSON that `jsonb` accepts (no `\u0000`), else to
//! `data_bytes`: a payload never makes a batch fail.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use inorder::Event;
use tokio_postgres::{
    Client,
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::{
    error::{Error, Result},
    ident::TableName,
};

/// The columns `COPY` fills, in order (`archived_at` takes its default).
pub const COLUMNS: &str = "id, topic, key, action, position, time, source, subject, \
                           correlation_id, causation_id, content_type, data, data_bytes";

/// The types of [`COLUMNS`], for the binary `COPY` writer.
pub(crate) const TYPES: [Type; 13] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::BYTEA,
];

/// Creates the table and its indexes if they do not exist.
pub(crate) async fn create(client: &Client, table: &TableName) -> Result<()> {
    let name = table.table();
    let schema =
        table.schema().map(|s| format!("CREATE SCHEMA IF NOT EXISTS \"{s}\";")).unwrap_or_default();
    let ddl = format!(
        "{schema}
         CREATE TABLE IF NOT EXISTS {table} (
             id text NOT NULL, topic text NOT NULL, key text NOT NULL, action text NOT NULL,
             position bigint NOT NULL, time timestamptz NOT NULL, source text NOT NULL,
             subject text, correlation_id text, causation_id text, content_type text,
             data jsonb, data_bytes bytea,
             archived_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (topic, id));
         CREATE INDEX IF NOT EXISTS \"{name}_time_idx\" ON {table} (time);
         CREATE INDEX IF NOT EXISTS \"{name}_topic_position_idx\" ON {table} (topic, position);
         CREATE INDEX IF NOT EXISTS \"{name}_correlation_idx\" ON {table} (correlation_id)
             WHERE correlation_id IS NOT NULL;"
    );
    client.batch_execute(&ddl).await.map_err(Error::query("creating the sink table"))?;
    // A table that existed with another shape fails here, at start, not at the first batch.
    client
        .prepare(&format!("SELECT {COLUMNS} FROM {table} LIMIT 0"))
        .await
        .map_err(Error::query("checking the sink table's columns"))?;
    Ok(())
}

/// Per connection: a staging table `COPY` fills and each commit empties.
pub(crate) fn staging_ddl(table: &TableName) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS inorder_staging \
         (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
}

/// Moves the staged rows into the table; rows already there (a redelivery) are skipped.
pub(crate) fn merge_sql(table: &TableName) -> String {
    format!(
        "INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM inorder_staging \
         ON CONFLICT (topic, id) DO NOTHING"
    )
}

/// `COPY` into the staging table.
pub(crate) const COPY_SQL: &str = "COPY inorder_staging (id, topic, key, action, position, \
     time, source, subject, correlation_id, causation_id, content_type, data, data_bytes) \
     FROM STDIN (FORMAT binary)";

/// An event's values in [`COLUMNS`] order.
pub(crate) struct Row<'a> {
    event: &'a Event,
    topic: &'a str,
    position: i64,
    time: SystemTime,
    data: Option<RawJson<'a>>,
    data_bytes: Option<&'a [u8]>,
}

impl<'a> Row<'a> {
    pub(crate) fn new(event: &'a Event) -> Self {
        let offset = Duration::from_micros(event.time_micros.unsigned_abs());
        let time = if event.time_micros >= 0 {
            UNIX_EPOCH.checked_add(offset)
        } else {
            UNIX_EPOCH.checked_sub(offset)
        }
        .unwrap_or(UNIX_EPOCH);
        let (data, data_bytes) = if event.data.is_empty() {
            (None, None)
        } else if is_jsonb(event) {
            (Some(RawJson(&event.data)), None)
        } else {
            (None, Some(&event.data[..]))
        };
        Self {
            event,
            topic: event.topic.as_str(),
            position: i64::try_from(event.position).unwrap_or(i64::MAX),
            time,
            data,
            data_bytes,
        }
    }

    /// The values, borrowed for one `write` of the `COPY` writer.
    pub(crate) fn values(&self) -> [&(dyn ToSql + Sync); 13] {
        let event = self.event;
        [
            &event.id,
            &self.topic,
            &event.key,
            &event.action,
            &self.position,
            &self.time,
            &event.source,
            &event.subject,
            &event.correlation_id,
            &event.causation_id,
            &event.data_content_type,
            &self.data,
            &self.data_bytes,
        ]
    }
}

/// Whether the payload can go into the `jsonb` column.
fn is_jsonb(event: &Event) -> bool {
    let json_type = event
        .data_content_type
        .as_deref()
        .is_none_or(|t| t.split(';').next().is_some_and(|m| m.trim().ends_with("json")));
    json_type
        && !event.data.windows(6).any(|w| w == b"\\u0000")
        && serde_json::from_slice::<&serde_json::value::RawValue>(&event.data).is_ok()
}

/// JSON text already validated, sent in `jsonb`'s binary format (version 1, then the text).
#[derive(Debug)]
struct RawJson<'a>(&'a [u8]);

impl ToSql for RawJson<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}
