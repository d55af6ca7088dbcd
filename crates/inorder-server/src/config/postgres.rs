//! The PostgreSQL parts of `inorder.toml`: `[storage]` / `[storage.postgres]` (the storage
//! backend) and `[subscriptions.postgres]` (the batch sink of `delivery = "postgres"`).

use anyhow::bail;
use inorder_postgres::{PgStorageOptions, SinkConfig};
use serde::Deserialize;

use super::duration;

/// `storage = "file"`, or the `[storage]` table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StorageFile {
    /// `storage = "file"`.
    Kind(String),
    /// `[storage]` with `backend` and `[storage.postgres]`.
    Table(StorageTable),
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageTable {
    /// `file` or `postgres` (implied by a `[storage.postgres]` table).
    pub backend: Option<String>,
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
    pub(super) fn from_file(file: Option<StorageFile>) -> anyhow::Result<Self> {
        let (backend, postgres) = match file {
            None => (None, None),
            Some(StorageFile::Kind(kind)) => (Some(kind), None),
            Some(StorageFile::Table(table)) => (table.backend, table.postgres),
        };
        match (backend.as_deref(), postgres) {
            (None | Some("file"), None) => Ok(Self::File),
            (None | Some("postgres"), Some(pg)) => Ok(Self::Postgres {
                url: pg.url,
                pool_size: pg.pool_size.unwrap_or(PgStorageOptions::default().pool_size),
            }),
            (Some("postgres"), None) => {
                bail!("storage: the postgres backend needs [storage.postgres] with a url")
            }
            (Some("file"), Some(_)) => bail!("storage.postgres: only for backend = \"postgres\""),
            (Some(other), _) => bail!("storage: unknown backend {other:?} (file, postgres)"),
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
    pub batch_size: Option<usize>,
    /// Most a partial batch waits (default `50ms`).
    pub batch_timeout: Option<String>,
    /// Rows older than this (by event time) are deleted (`7d`).
    pub ttl: Option<String>,
    /// Parallel writers (default 1).
    pub workers: Option<usize>,
}

/// `[subscriptions.postgres]` checked into a sink configuration.
pub(super) fn sink_config(file: &PostgresSinkFile, at: &str) -> anyhow::Result<SinkConfig> {
    let mut sink =
        SinkConfig::new(&file.url, &file.table).map_err(|e| anyhow::anyhow!("{at}.table: {e}"))?;
    if let Some(size) = file.batch_size {
        sink.batch_size = size;
    }
    if let Some(text) = &file.batch_timeout {
        sink.batch_timeout = duration(&format!("{at}.batch_timeout"), text)?;
    }
    if let Some(text) = &file.ttl {
        sink.ttl = Some(duration(&format!("{at}.ttl"), text)?);
    }
    if let Some(workers) = file.workers {
        sink.workers = workers;
    }
    sink.validate().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    Ok(sink)
}
