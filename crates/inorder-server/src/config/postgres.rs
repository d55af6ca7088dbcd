//! The PostgreSQL parts of `inorder.toml`: `[storage]` / `[storage.postgres]` (the storage
//! backend) and `[subscriptions.postgres]` (the batch sink of `delivery = "postgres"`).

use std::{fmt, time::Duration};

use inorder_postgres::{PgStorageOptions, SinkConfig};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor, value::MapAccessDeserializer},
};

use super::{source::Source, values};

/// `backend`: where topics and state live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendFile {
    /// The embedded file log under `data_dir` (the default).
    File,
    /// PostgreSQL tables: needs `[storage.postgres]`.
    Postgres,
}

/// `storage = "file"`, or the `[storage]` table.
#[derive(Debug)]
pub enum StorageFile {
    /// `storage = "file"` (or `"postgres"`, which then misses its `[storage.postgres]`).
    Kind(BackendFile),
    /// `[storage]` with `backend` and `[storage.postgres]`.
    Table(StorageTable),
}

impl<'de> Deserialize<'de> for StorageFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StorageVisitor;
        impl<'de> Visitor<'de> for StorageVisitor {
            type Value = StorageFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"file\", \"postgres\" or a [storage] table")
            }
            fn visit_str<E: de::Error>(self, kind: &str) -> Result<StorageFile, E> {
                BackendFile::deserialize(de::value::StrDeserializer::new(kind))
                    .map(StorageFile::Kind)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StorageFile, A::Error> {
                StorageTable::deserialize(MapAccessDeserializer::new(map)).map(StorageFile::Table)
            }
        }
        deserializer.deserialize_any(StorageVisitor)
    }
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageTable {
    /// `file` or `postgres` (implied by a `[storage.postgres]` table).
    pub backend: Option<BackendFile>,
    /// `[storage.postgres]`.
    pub postgres: Option<PgStorageFile>,
}

/// `[storage.postgres]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgStorageFile {
    /// `postgres://user[:password]@host:port/database`.
    pub url: String,
    /// Pooled connections (default 8).
    #[serde(default, deserialize_with = "values::pool_size")]
    pub pool_size: Option<usize>,
}

/// The storage backend `inorder serve` runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageChoice {
    /// The embedded file log under `data_dir`.
    File,
    /// PostgreSQL tables.
    Postgres {
        /// Database URL.
        url: String,
        /// Pooled connections.
        pool_size: usize,
    },
}

impl StorageChoice {
    pub(super) fn from_file(file: Option<StorageFile>, source: &Source) -> anyhow::Result<Self> {
        let (backend, postgres) = match file {
            None => (None, None),
            Some(StorageFile::Kind(kind)) => (Some(kind), None),
            Some(StorageFile::Table(table)) => (table.backend, table.postgres),
        };
        match (backend, postgres) {
            (None | Some(BackendFile::File), None) => Ok(Self::File),
            (None | Some(BackendFile::Postgres), Some(pg)) => Ok(Self::Postgres {
                url: pg.url,
                pool_size: pg.pool_size.unwrap_or(PgStorageOptions::default().pool_size),
            }),
            (Some(BackendFile::Postgres), None) => Err(source.key_error(
                &["storage"],
                "the postgres backend needs [storage.postgres] with a url",
            )),
            (Some(BackendFile::File), Some(_)) => {
                Err(source.key_error(&["storage", "postgres"], "only for backend = \"postgres\""))
            }
        }
    }
}

/// `[subscriptions.postgres]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkFile {
    /// `postgres://user[:password]@host:port/database`.
    pub url: String,
    /// Target table (`name` or `schema.name`), created if missing.
    pub table: String,
    /// Rows per `COPY` (default 500).
    #[serde(default, deserialize_with = "values::batch_size")]
    pub batch_size: Option<usize>,
    /// Most a partial batch waits (default `50ms`).
    #[serde(default, deserialize_with = "values::batch_timeout")]
    pub batch_timeout: Option<Duration>,
    /// Rows older than this (by event time) are deleted (`7d`).
    #[serde(default, deserialize_with = "values::ttl")]
    pub ttl: Option<Duration>,
    /// Parallel writers (default 1).
    #[serde(default, deserialize_with = "values::workers")]
    pub workers: Option<usize>,
}

/// Subscription `subscription`'s `[subscriptions.postgres]`, checked into a sink configuration.
pub(super) fn sink_config(
    file: &PostgresSinkFile,
    subscription: &str,
    source: &Source,
) -> anyhow::Result<SinkConfig> {
    let at = ["subscriptions", subscription, "postgres"];
    let mut sink = SinkConfig::new(&file.url, &file.table)
        .map_err(|e| source.key_error(&["subscriptions", subscription, "postgres", "table"], e))?;
    if let Some(size) = file.batch_size {
        sink.batch_size = size;
    }
    if let Some(timeout) = file.batch_timeout {
        sink.batch_timeout = timeout;
    }
    sink.ttl = file.ttl;
    if let Some(workers) = file.workers {
        sink.workers = workers;
    }
    sink.validate().map_err(|e| source.key_error(&at, e))?;
    Ok(sink)
}
