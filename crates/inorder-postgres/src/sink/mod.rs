//! The batch sink: a subscription's events written into a PostgreSQL table.
//!
//! The sink is the subscription's [`Handler`]. Each handler call hands its event to a writer
//! and waits; a writer gathers calls into a batch (see [`batcher`]), writes it with binary `COPY`
//! straight into the table, commits, and only then lets the calls return. A batch holding a row
//! that is already there (a redelivery) fails that `COPY` with a key violation; it is then
//! written again through a per-connection staging table and
//! `INSERT … ON CONFLICT (topic, id) DO NOTHING`. The engine advances the subscription
//! when a call returns, so:
//!
//! | what happens                        | outcome                                              |
//! |-------------------------------------|------------------------------------------------------|
//! | commit succeeds                     | calls return `Ok`; the engine checkpoints them        |
//! | inorder killed before the commit    | nothing committed; the events are delivered again     |
//! | killed after commit, before checkpoint | delivered again; `ON CONFLICT` skips the rows      |
//! | PostgreSQL unreachable, or the table dropped / not writable | the writer reconnects with backoff, calls keep waiting; lag grows, the log keeps accepting |
//! | a row PostgreSQL refuses (SQL state class 22 or 23) | the batch is retried row by row; the refused row's call fails permanently (parked), the others commit |
//!
//! Per-key order comes from the engine: with `fifo` ordering a key never has two calls in flight,
//! so a key's next event is only handed over after the previous one committed, whichever writer
//! (`workers = N`) takes it.
//!
//! The table and its indexes are created if missing; the schema is in `schema.rs` and README.

mod batcher;
mod schema;
mod sweeper;
mod writer;

use std::{sync::Arc, time::Duration};

use inorder::{Event, Handler, HandlerContext, HandlerError, Reply};
use tokio::sync::oneshot;

pub use self::schema::COLUMNS;
use crate::{
    connect::{connect, redact_url},
    error::{Error, Result},
    ident::TableName,
    limits::{
        SINK_BATCH_ROWS_DEFAULT, SINK_BATCH_ROWS_MAX, SINK_BATCH_TIMEOUT_DEFAULT,
        SINK_BATCH_TIMEOUT_MAX, SINK_WORKERS_MAX, SWEEP_INTERVAL_MAX, SWEEP_INTERVAL_MIN,
    },
};

/// How a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// `postgres://user[:password]@host:port/database`.
    pub url: String,
    /// The target table, created if missing.
    pub table: TableName,
    /// Most rows per `COPY`.
    pub batch_size: usize,
    /// Most time a partial batch waits for more rows.
    pub batch_timeout: Duration,
    /// Rows whose event time is older than this are deleted by a periodic sweeper.
    pub ttl: Option<Duration>,
    /// How often the sweeper runs (default: a tenth of the TTL, within 1 s..5 min).
    pub sweep_interval: Option<Duration>,
    /// Parallel writers, each with its own connection.
    pub workers: usize,
}

impl SinkConfig {
    /// A sink into `table` at `url` with default batching and one writer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad table name.
    pub fn new(url: impl Into<String>, table: &str) -> Result<Self> {
        Ok(Self {
            url: url.into(),
            table: TableName::parse(table)?,
            batch_size: SINK_BATCH_ROWS_DEFAULT,
            batch_timeout: SINK_BATCH_TIMEOUT_DEFAULT,
            ttl: None,
            sweep_interval: None,
            workers: 1,
        })
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if !(1..=SINK_BATCH_ROWS_MAX).contains(&self.batch_size) {
            return bad(format!("batch_size must be within 1..={SINK_BATCH_ROWS_MAX}"));
        }
        if self.batch_timeout > SINK_BATCH_TIMEOUT_MAX {
            return bad(format!("batch_timeout must be at most {SINK_BATCH_TIMEOUT_MAX:?}"));
        }
        if !(1..=SINK_WORKERS_MAX).contains(&self.workers) {
            return bad(format!("workers must be within 1..={SINK_WORKERS_MAX}"));
        }
        if self.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return bad("ttl must be positive".into());
        }
        Ok(())
    }

    /// Handler calls the engine should keep in flight so that batches can fill:
    /// `batch_size × workers`.
    #[must_use]
    pub fn keys_in_flight(&self) -> usize {
        self.batch_size.saturating_mul(self.workers)
    }

    fn sweep_interval(&self) -> Option<Duration> {
        let ttl = self.ttl?;
        Some(
            self.sweep_interval
                .unwrap_or_else(|| (ttl / 10).clamp(SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX)),
        )
    }
}

/// One handler call waiting for its row to commit.
struct Job {
    event: Event,
    reply: oneshot::Sender<Result<(), HandlerError>>,
}

/// The sink: register it as a subscription's handler.
pub struct PostgresSink {
    jobs: flume::Sender<Job>,
    table: String,
    /// Aborts the sweeper when the sink is dropped; writers end when `jobs` closes.
    _sweeper: Option<AbortOnDrop>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink").field("table", &self.table).finish_non_exhaustive()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresSink {
    /// Connects, creates the table and its indexes if missing, and starts the writers (and the
    /// TTL sweeper). Fails at once if PostgreSQL cannot be reached: a sink that cannot start is
    /// a configuration problem, not an outage.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::Connect`], [`Error::Query`] (for example when the
    /// table exists with another shape).
    pub async fn start(config: SinkConfig) -> Result<Self> {
        config.validate()?;
        let config = Arc::new(config);
        let admin = connect(&config.url).await?;
        schema::create(&admin, &config.table).await?;
        let (jobs, queue) = flume::bounded(config.keys_in_flight());
        for index in 0..config.workers {
            let writer = writer::Writer::connect(Arc::clone(&config), index).await?;
            tokio::spawn(writer.run(queue.clone()));
        }
        let sweeper = config.sweep_interval().zip(config.ttl).map(|(every, ttl)| {
            let sweep = sweeper::run(config.url.clone(), admin, config.table.clone(), ttl, every);
            AbortOnDrop(tokio::spawn(sweep))
        });
        tracing::info!(
            url = %redact_url(&config.url),
            table = %config.table,
            batch_size = config.batch_size,
            workers = config.workers,
            "postgres sink started"
        );
        Ok(Self { jobs, table: config.table.to_string(), _sweeper: sweeper })
    }
}

#[async_trait::async_trait]
impl Handler for PostgresSink {
    async fn handle(
        &self,
        event: &Event,
        _context: &HandlerContext,
    ) -> Result<Reply, HandlerError> {
        let (reply, committed) = oneshot::channel();
        let stopped = || HandlerError::retry("the postgres sink stopped");
        self.jobs.send_async(Job { event: event.clone(), reply }).await.map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())??;
        Ok(Reply::Null)
    }
}
