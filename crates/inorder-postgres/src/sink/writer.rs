//! One writer: a connection, a staging table, and the batches it commits.

use std::{pin::pin, sync::Arc, time::Duration};

use inorder::{Event, HandlerError};
use tokio::time::Instant;
use tokio_postgres::{Client, Statement, binary_copy::BinaryCopyInWriter, error::SqlState};

use super::{
    Job, SinkConfig, batcher,
    schema::{COLUMNS, COPY_SQL, Row, TYPES, merge_sql, staging_ddl},
};
use crate::{
    connect::connect,
    error::{Error, Result},
    limits::{RETRY_DELAY_INITIAL, RETRY_DELAY_MAX},
};

/// An open connection with its staging table and prepared merge.
struct Conn {
    client: Client,
    merge: Statement,
    /// `COPY` straight into the target table.
    copy_direct: String,
}

impl Conn {
    async fn open(config: &SinkConfig) -> Result<Self> {
        let client = connect(&config.url).await?;
        client
            .batch_execute(&staging_ddl(&config.table))
            .await
            .map_err(Error::query("creating the staging table"))?;
        let merge = client
            .prepare(&merge_sql(&config.table))
            .await
            .map_err(Error::query("preparing the merge"))?;
        let copy_direct = format!("COPY {} ({COLUMNS}) FROM STDIN (FORMAT binary)", config.table);
        Ok(Self { client, merge, copy_direct })
    }

    /// Writes `events` in one transaction; returns the rows inserted (fewer than `events` when
    /// some were there already).
    ///
    /// First `COPY` straight into the table: the common case, and the fastest. If a row is
    /// already there (a redelivery after a crash), the key violation aborts that transaction
    /// and the batch goes through the staging table and `INSERT … ON CONFLICT DO NOTHING`.
    async fn write(&mut self, events: &[&Event]) -> Result<u64> {
        let tx = self.client.transaction().await.map_err(Error::query("BEGIN"))?;
        match copy(&tx, &self.copy_direct, events).await {
            Ok(inserted) => {
                tx.commit().await.map_err(Error::query("COMMIT"))?;
                return Ok(inserted);
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.rollback().await.map_err(Error::query("ROLLBACK"))?;
            }
            Err(e) => return Err(Error::Query { what: "COPY", source: e }),
        }
        let tx = self.client.transaction().await.map_err(Error::query("BEGIN"))?;
        copy(&tx, COPY_SQL, events).await.map_err(Error::query("COPY to staging"))?;
        let inserted = tx.execute(&self.merge, &[]).await.map_err(Error::query("merge"))?;
        tx.commit().await.map_err(Error::query("COMMIT"))?;
        Ok(inserted)
    }
}

/// `COPY … FROM STDIN (FORMAT binary)` of `events` with `sql`; returns the rows copied.
async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    events: &[&Event],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for event in events {
        let row = Row::new(event);
        writer.as_mut().write(&row.values()).await?;
    }
    writer.finish().await
}

/// Writes batches until the queue closes.
pub(super) struct Writer {
    config: Arc<SinkConfig>,
    index: usize,
    conn: Option<Conn>,
    delay: Duration,
}

impl Writer {
    /// Connects (so that a bad URL fails the sink's start).
    pub(super) async fn connect(config: Arc<SinkConfig>, index: usize) -> Result<Self> {
        let conn = Conn::open(&config).await?;
        metrics::gauge!("inorder_pg_sink_connected", "table" => config.table.to_string(), "writer" => index.to_string())
            .set(1.0);
        Ok(Self { config, index, conn: Some(conn), delay: RETRY_DELAY_INITIAL })
    }

    pub(super) async fn run(mut self, queue: flume::Receiver<Job>) {
        let (size, timeout) = (self.config.batch_size, self.config.batch_timeout);
        while let Some(batch) = batcher::next_batch(&queue, size, timeout).await {
            self.write_batch(batch).await;
        }
        tracing::debug!(table = %self.config.table, writer = self.index, "sink writer stopped");
    }

    /// Commits the batch, retrying through outages; answers every call.
    async fn write_batch(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
        let events: Vec<&Event> = batch.iter().map(|job| &job.event).collect();
        let outcome = loop {
            if batch.iter().all(|job| job.reply.is_closed()) {
                return; // every caller gave up (the engine stopped): nothing to acknowledge
            }
            match self.attempt(&events).await {
                Ok(inserted) => break Ok(inserted),
                Err(e) if e.is_refused_data() => break Err(e),
                Err(e) => self.back_off(&e).await,
            }
        };
        let table = self.config.table.to_string();
        match outcome {
            Ok(inserted) => {
                metrics::counter!("inorder_pg_sink_rows_total", "table" => table.clone())
                    .increment(inserted);
                metrics::histogram!("inorder_pg_sink_batch_rows", "table" => table.clone())
                    .record(u32::try_from(batch.len()).map_or(f64::MAX, f64::from));
                metrics::histogram!("inorder_pg_sink_commit_seconds", "table" => table)
                    .record(started.elapsed().as_secs_f64());
                for job in batch {
                    let _ = job.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(table = %table, rows = batch.len(), error = %e,
                    "postgres refused the batch; writing its rows one by one");
                for job in batch {
                    self.write_one(job).await;
                }
            }
        }
    }

    /// Commits one row; a row PostgreSQL refuses fails its call permanently (it is parked).
    async fn write_one(&mut self, job: Job) {
        let result = loop {
            if job.reply.is_closed() {
                return;
            }
            match self.attempt(&[&job.event]).await {
                Ok(_) => break Ok(()),
                Err(e) if !e.is_refused_data() => self.back_off(&e).await,
                Err(e) => {
                    metrics::counter!("inorder_pg_sink_refused_rows_total", "table" => self.config.table.to_string())
                        .increment(1);
                    break Err(HandlerError::permanent(format!("postgres refused the row: {e}")));
                }
            }
        };
        let _ = job.reply.send(result);
    }

    async fn attempt(&mut self, events: &[&Event]) -> Result<u64> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.config).await?);
            self.set_connected(true);
            tracing::info!(table = %self.config.table, writer = self.index, "sink reconnected");
        }
        let conn = self.conn.as_mut().ok_or(Error::Stopped)?;
        let result = conn.write(events).await;
        if result.is_ok() {
            self.delay = RETRY_DELAY_INITIAL;
        }
        result
    }

    /// After a failure that is not the rows' fault (an outage, a dropped table, a lost
    /// privilege): drop the connection and wait (exponential, jittered, capped). The calls keep
    /// waiting and the lag grows until it is fixed; parking every event would hide it.
    async fn back_off(&mut self, error: &Error) {
        if self.conn.take().is_some() {
            self.set_connected(false);
        }
        metrics::counter!("inorder_pg_sink_retries_total", "table" => self.config.table.to_string())
            .increment(1);
        tracing::warn!(table = %self.config.table, writer = self.index, error = %error,
            retry_in = ?self.delay, "postgres sink write failed; retrying");
        let jitter = self.delay.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(self.delay + jitter).await;
        self.delay = (self.delay * 2).min(RETRY_DELAY_MAX);
    }

    fn set_connected(&self, up: bool) {
        metrics::gauge!("inorder_pg_sink_connected", "table" => self.config.table.to_string(), "writer" => self.index.to_string())
            .set(if up { 1.0 } else { 0.0 });
    }
}
