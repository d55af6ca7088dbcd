//! `inorder-postgres`: PostgreSQL for inorder.
//!
//! - [`sink`]: a subscription's events batch-written into a table with binary `COPY`,
//!   acknowledged only after the transaction commits (`delivery = "postgres"`).
//! - [`PgStorage`]: the engine's [`Storage`](inorder::storage::Storage) on PostgreSQL tables, so
//!   several inorder nodes can share one database (`storage = "postgres"`).
//!
//! Connections are plain `tokio-postgres`; URLs are never logged with their password.

#![warn(missing_docs)]

mod connect;
mod error;
mod ident;
pub mod limits;
pub mod sink;
pub mod storage;

pub use crate::{
    connect::redact_url,
    error::{Error, Result},
    ident::TableName,
    sink::{PostgresSink, SinkConfig},
    storage::{PgStorage, PgStorageOptions},
};
