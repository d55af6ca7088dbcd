//! [`PgStorage`]: the engine's [`Storage`] on PostgreSQL tables, so several inorder nodes can
//! share one database.
//!
//! | module | owns |
//! |---|---|
//! | `schema` | the tables (documented there), created on connect, and the schema version |
//! | `commit` | a batch of [`StateOp`]s resolved and written in one transaction |
//! | `notify` | the per-topic watches and the `LISTEN` task that feeds them |
//! | `reader` | the [`TopicReader`]: bounded range reads by `(topic, position)`; `read_all` by commit position |
//! | `manage` | definitions made at run time; deleting a subscription's progress, resetting a stream, deleting a topic |
//! | `cluster` | cluster mode: heartbeats, partition leases (fencing tokens), partition progress for mirrors |
//! | `retention` | purging a prefix of a topic in batches (events, ids, first position, bytes) |
//!
//! **Appends** are grouped: concurrent appends of this process, to any topics, share one
//! transaction (see `append`, group commit). It first advances the one-row commit clock (a row
//! lock held until commit, which orders commit positions across topics and nodes), then per
//! topic increments the topic's counter (`UPDATE inorder_topics … RETURNING`, row-locking the
//! topic), inserts the events at the positions and commit positions just reserved (`UNNEST` of
//! the payloads), and queues a `NOTIFY` that PostgreSQL delivers on commit. Concurrent appenders,
//! in this process or another, serialise on the clock's row: positions are unique, gap-free and
//! committed in order, and so are commit positions. An append returns after its commit, durable
//! under the server's `synchronous_commit` (on by default). A failed append changes nothing.

//! **State commits** run in one transaction; with `durable = false` (the id index, which is
//! rebuilt from the log) it sets `synchronous_commit = off` for that transaction only. A commit
//! that loses a deadlock or serialization conflict is retried whole: every op is idempotent.
//!
//! Every statement binds its values; names never reach SQL text. Errors become
//! [`inorder::Error::State`] (they never carry the URL's password), except a missing topic
//! ([`inorder::Error::UnknownTopic`]) and use after [`Storage::close`]
//! ([`inorder::Error::Stopped`]).

mod append;
mod cluster;
mod commit;
mod manage;
mod notify;
mod reader;
mod retention;
mod schema;

use std::{
    ops::RangeInclusive,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use inorder::{
    KeyState, Name, ParkedEvent, StorageError, StreamId, StreamState,
    storage::{StateOp, Storage, StoredRecord, TopicReader},
};
use tokio::sync::{Mutex, watch};
use tokio_postgres::NoTls;

use self::{
    append::Appenders,
    commit::{Failure, Resolved},
    notify::Listener,
    notify::Watches,
    reader::PgTopicReader,
};
use crate::{
    connect::redact_url,
    error::{Error, Result},
    limits::{
        STORAGE_APPEND_RECORDS_MAX, STORAGE_COMMIT_ATTEMPTS_MAX,
        STORAGE_IDLE_IN_TRANSACTION_TIMEOUT, STORAGE_POOL_SIZE_DEFAULT, STORAGE_POOL_SIZE_MAX,
    },
};

/// Settings of a [`PgStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgStorageOptions {
    /// Connections in the pool shared by appends, commits and reads (1 to
    /// [`STORAGE_POOL_SIZE_MAX`]); callers wait for a free one. The `LISTEN` connection is
    /// one more.
    pub pool_size: usize,
}

impl Default for PgStorageOptions {
    fn default() -> Self {
        Self { pool_size: STORAGE_POOL_SIZE_DEFAULT }
    }
}

/// The engine's storage on PostgreSQL. Build with [`PgStorage::connect`], hand to
/// `Engine::builder(config).storage(Arc::new(storage))`.
pub struct PgStorage {
    pool: Pool,
    /// The URL without its password, for `Debug`.
    url: String,
    watches: Arc<Watches>,
    appenders: Appenders,
    /// `None` once closed.
    listener: Mutex<Option<Listener>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage").field("url", &self.url).finish_non_exhaustive()
    }
}

impl PgStorage {
    /// Connects to `url`, creates the tables if needed (checking the schema version), and
    /// starts listening for appends of other nodes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a malformed URL, a bad pool size or a database of another
    /// schema version; [`Error::Connect`] or [`Error::Query`] if the server cannot be used.
    pub async fn connect(url: &str, options: PgStorageOptions) -> Result<Self> {
        if !(1..=STORAGE_POOL_SIZE_MAX).contains(&options.pool_size) {
            return Err(Error::InvalidConfig(format!(
                "storage pool size {}: must be 1 to {STORAGE_POOL_SIZE_MAX}",
                options.pool_size
            )));
        }
        let redacted = redact_url(url);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| Error::InvalidConfig(format!("url {redacted}: {e}")))?;
        // A stalled process must not keep its row locks (see the limit).
        let session = format!(
            "{} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            STORAGE_IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        config.options(session.trim_start());
        let mut client = crate::connect::connect(url).await?;
        schema::create(&mut client).await?;
        drop(client);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::InvalidConfig(format!("storage pool: {e}")))?;
        let watches = Arc::new(Watches::default());
        let listener = Listener::start(config, pool.clone(), Arc::clone(&watches)).await?;
        tracing::info!(url = %redacted, pool_size = options.pool_size, "postgres storage open");
        Ok(Self {
            appenders: Appenders::new(pool.clone(), Arc::clone(&watches)),
            pool,
            url: redacted,
            watches,
            listener: Mutex::new(Some(listener)),
            closed: AtomicBool::new(false),
        })
    }

    /// A pooled connection; [`inorder::Error::Stopped`] once closed.
    async fn client(&self) -> inorder::Result<deadpool_postgres::Object> {
        if self.closed.load(Ordering::Acquire) {
            return Err(inorder::Error::Stopped);
        }
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one cached statement and returns its rows.
    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> inorder::Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error(what))?;
        client.query(&statement, params).await.map_err(db_error(what))
    }

    /// The topic's `(first, last)` positions, if the topic exists.
    async fn topic_positions(&self, topic: &Name) -> inorder::Result<Option<(u64, u64)>> {
        let rows = self
            .query(
                "read topic positions",
                "SELECT first_position, last_position FROM inorder_topics WHERE name = $1",
                &[&topic.as_str()],
            )
            .await?;
        rows.first().map(|row| Ok((to_u64(row.get(0))?, to_u64(row.get(1))?))).transpose()
    }

    async fn existing_positions(&self, topic: &Name) -> inorder::Result<(u64, u64)> {
        self.topic_positions(topic)
            .await?
            .ok_or_else(|| inorder::Error::UnknownTopic { topic: topic.to_string() })
    }

    /// One commit attempt.
    async fn commit_once(&self, resolved: &Resolved, durable: bool) -> Result<(), Failure> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(commit::db("begin commit"))?;
        if !durable {
            transaction
                .batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(commit::db("relax commit"))?;
        }
        resolved.apply(&transaction).await?;
        transaction.commit().await.map_err(commit::db("commit state"))
    }
}

#[async_trait::async_trait]
impl Storage for PgStorage {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn topics(&self) -> inorder::Result<Vec<Name>> {
        let rows = self.query("list topics", "SELECT name FROM inorder_topics", &[]).await?;
        let mut topics: Vec<Name> =
            rows.iter().filter_map(|row| Name::new("topic", row.get::<_, &str>(0)).ok()).collect();
        topics.sort();
        Ok(topics)
    }

    async fn create_topic(&self, topic: &Name) -> inorder::Result<()> {
        self.query(
            "create topic",
            "INSERT INTO inorder_topics (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&topic.as_str()],
        )
        .await
        .map(drop)
    }

    async fn append(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
    ) -> inorder::Result<RangeInclusive<u64>> {
        if payloads.is_empty() || payloads.len() > STORAGE_APPEND_RECORDS_MAX {
            return Err(StorageError::refused(format!(
                "an append takes 1 to {STORAGE_APPEND_RECORDS_MAX} events, not {}",
                payloads.len()
            ))
            .into());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(inorder::Error::Stopped);
        }
        self.appenders.append(topic, payloads).await
    }

    fn decides_ids(&self) -> bool {
        true
    }

    async fn append_new(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
        ids: Vec<String>,
    ) -> inorder::Result<RangeInclusive<u64>> {
        if payloads.is_empty()
            || payloads.len() > STORAGE_APPEND_RECORDS_MAX
            || ids.len() != payloads.len()
        {
            return Err(StorageError::refused(format!(
                "a conditional append takes 1 to {STORAGE_APPEND_RECORDS_MAX} events with an id each"
            ))
            .into());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(inorder::Error::Stopped);
        }
        append::append_new(&self.pool, &self.watches, topic, payloads, ids).await
    }

    async fn reader(&self, topic: &Name, from: u64) -> inorder::Result<Box<dyn TopicReader>> {
        self.existing_positions(topic).await?;
        Ok(Box::new(PgTopicReader {
            pool: self.pool.clone(),
            topic: topic.clone(),
            next: from.max(1),
        }))
    }

    async fn positions(&self, topic: &Name) -> inorder::Result<(u64, u64)> {
        self.existing_positions(topic).await
    }

    async fn watch(&self, topic: &Name) -> inorder::Result<watch::Receiver<u64>> {
        // Registered before the read: an append after the read notifies this watch.
        let receiver = self.watches.subscribe(topic);
        match self.topic_positions(topic).await {
            Ok(Some((_, last))) => {
                self.watches.advance(topic.as_str(), last);
                Ok(receiver)
            }
            Ok(None) => {
                drop(receiver);
                self.watches.forget_unwatched(topic);
                Err(inorder::Error::UnknownTopic { topic: topic.to_string() })
            }
            Err(error) => Err(error),
        }
    }

    async fn read_all(&self, from: u64, max: usize) -> inorder::Result<Vec<(Name, StoredRecord)>> {
        let limit = max.min(crate::limits::STORAGE_READ_RECORDS_MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows =
            self.query("read all topics", reader::READ_ALL, &[&to_i64(from)?, &limit]).await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let topic = Name::new("topic", row.get::<_, &str>(0))
                .map_err(|e| StorageError::corrupt(format!("a stored topic name: {e}")))?;
            let payload: Vec<u8> = row.get(2);
            let record = StoredRecord {
                position: to_u64(row.get(1))?,
                commit: to_u64(row.get(3))?,
                payload: payload.into(),
            };
            records.push((topic, record));
        }
        Ok(records)
    }

    async fn watch_commit(&self) -> inorder::Result<watch::Receiver<u64>> {
        // Registered before the read: an append after the read notifies this watch.
        let receiver = self.watches.subscribe_key(notify::COMMIT_WATCH);
        let visible = self.visible_commit().await?;
        self.watches.advance(notify::COMMIT_WATCH, visible);
        Ok(receiver)
    }

    /// One statement, so one snapshot: every commit up to the clock's value committed before it,
    /// with its topic's `last_position`.
    async fn commit_marks(&self, topics: &[Name]) -> inorder::Result<(u64, Vec<u64>)> {
        let names: Vec<&str> = topics.iter().map(Name::as_str).collect();
        let rows = self
            .query(
                "read the commit marks",
                "SELECT (SELECT last_commit FROM inorder_commit_clock), t.name, \
                 coalesce(p.last_position, 0) \
                 FROM unnest($1::text[]) AS t(name) LEFT JOIN inorder_topics p ON p.name = t.name",
                &[&names],
            )
            .await?;
        let mut visible = None;
        let mut lasts = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            visible = Some(row.get::<_, Option<i64>>(0).map_or(Ok(0), to_u64)?);
            lasts.insert(row.get::<_, String>(1), to_u64(row.get(2))?);
        }
        let visible = match visible {
            Some(visible) => visible,
            None => self.visible_commit().await?,
        };
        Ok((visible, names.iter().map(|name| lasts.get(*name).copied().unwrap_or(0)).collect()))
    }

    /// The clock's committed value: the transaction that took it committed its events, and every
    /// lower commit was committed (or rolled back) before it could (the clock's row lock).
    async fn visible_commit(&self) -> inorder::Result<u64> {
        let rows = self
            .query("read the commit clock", "SELECT last_commit FROM inorder_commit_clock", &[])
            .await?;
        rows.first().map_or(Ok(0), |row| to_u64(row.get(0)))
    }

    async fn commit(&self, ops: Vec<StateOp>, durable: bool) -> inorder::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let resolved = Resolved::new(ops);
        let mut attempt = 1;
        loop {
            match self.commit_once(&resolved, durable).await {
                Ok(()) => return Ok(()),
                Err(Failure::Conflict(error)) if attempt < STORAGE_COMMIT_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "state commit conflicted; retrying");
                    attempt += 1;
                }
                Err(Failure::Conflict(error) | Failure::Other(error)) => return Err(error),
            }
        }
    }

    async fn stream_state(&self, stream: &StreamId) -> inorder::Result<Option<StreamState>> {
        let rows = self
            .query(
                "read stream state",
                "SELECT state FROM inorder_streams \
                 WHERE subscription = $1 AND topic = $2 AND part = $3",
                &[&stream.subscription.as_str(), &stream.topic.as_str(), &commit::part(stream)],
            )
            .await?;
        rows.first()
            .map(|row| {
                StreamState::decode(&Bytes::from(row.get::<_, Vec<u8>>(0)))
                    .map_err(|e| commit::corrupt("stream state", e))
            })
            .transpose()
    }

    async fn key_state(&self, stream: &StreamId, key: &str) -> inorder::Result<Option<KeyState>> {
        let rows = self
            .query(
                "read key state",
                "SELECT state FROM inorder_keys \
                 WHERE subscription = $1 AND topic = $2 AND key = $3",
                &[&stream.subscription.as_str(), &stream.topic.as_str(), &key.as_bytes()],
            )
            .await?;
        rows.first()
            .map(|row| {
                KeyState::decode(&Bytes::from(row.get::<_, Vec<u8>>(0)))
                    .map_err(|e| commit::corrupt("key state", e))
            })
            .transpose()
    }

    async fn parked(
        &self,
        subscription: &Name,
        after: Option<(Name, u64)>,
        max: usize,
    ) -> inorder::Result<Vec<ParkedEvent>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = match &after {
            None => {
                self.query(
                    "list parked events",
                    "SELECT topic, position, event FROM inorder_parked WHERE subscription = $1 \
                     ORDER BY topic, position LIMIT $2",
                    &[&subscription.as_str(), &limit],
                )
                .await?
            }
            Some((topic, position)) => {
                self.query(
                    "list parked events",
                    "SELECT topic, position, event FROM inorder_parked WHERE subscription = $1 \
                     AND (topic, position) > ($2, $3) ORDER BY topic, position LIMIT $4",
                    &[&subscription.as_str(), &topic.as_str(), &to_i64(*position)?, &limit],
                )
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                let topic = Name::new("topic", row.get::<_, &str>(0))
                    .map_err(|e| commit::corrupt("parked event topic", &e.to_string()))?;
                let stream = StreamId::new(subscription.clone(), topic);
                ParkedEvent::decode(
                    &stream,
                    to_u64(row.get(1))?,
                    &Bytes::from(row.get::<_, Vec<u8>>(2)),
                )
                .map_err(|e| commit::corrupt("parked event", e))
            })
            .collect()
    }

    async fn parked_event(
        &self,
        stream: &StreamId,
        position: u64,
    ) -> inorder::Result<Option<ParkedEvent>> {
        let rows = self
            .query(
                "read parked event",
                "SELECT event FROM inorder_parked \
                 WHERE subscription = $1 AND topic = $2 AND position = $3",
                &[&stream.subscription.as_str(), &stream.topic.as_str(), &to_i64(position)?],
            )
            .await?;
        rows.first()
            .map(|row| {
                ParkedEvent::decode(stream, position, &Bytes::from(row.get::<_, Vec<u8>>(0)))
                    .map_err(|e| commit::corrupt("parked event", e))
            })
            .transpose()
    }

    async fn event_positions(
        &self,
        topic: &Name,
        ids: Vec<String>,
    ) -> inorder::Result<Vec<Option<u64>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = ids.iter().map(String::as_bytes).collect();
        let rows = self
            .query(
                "look up event ids",
                "SELECT id, position FROM inorder_event_ids \
                 WHERE topic = $1 AND id = ANY($2::bytea[])",
                &[&topic.as_str(), &keys],
            )
            .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(row.get::<_, Vec<u8>>(0), to_u64(row.get(1))?);
        }
        Ok(keys.iter().map(|id| found.get(*id).copied()).collect())
    }

    async fn ids_indexed_to(&self, topic: &Name) -> inorder::Result<u64> {
        let rows = self
            .query(
                "read the ids-indexed mark",
                "SELECT position FROM inorder_ids_indexed WHERE topic = $1",
                &[&topic.as_str()],
            )
            .await?;
        rows.first().map_or(Ok(0), |row| to_u64(row.get(0)))
    }

    async fn put_definition(
        &self,
        kind: &str,
        name: &str,
        value: Option<Bytes>,
    ) -> inorder::Result<()> {
        self.put_definition_row(kind, name, value).await
    }

    async fn definitions(&self, kind: &str) -> inorder::Result<Vec<(String, Bytes)>> {
        self.definition_rows(kind).await
    }

    async fn forget_subscription(&self, subscription: &Name) -> inorder::Result<()> {
        self.forget_subscription_rows(subscription).await
    }

    async fn reset_stream(&self, stream: &StreamId, watermark: u64) -> inorder::Result<()> {
        self.reset_stream_rows(stream, watermark).await
    }

    async fn delete_topic(&self, topic: &Name) -> inorder::Result<()> {
        self.delete_topic_rows(topic).await?;
        self.watches.forget(topic);
        Ok(())
    }

    async fn footprint(&self, topic: &Name) -> inorder::Result<inorder::Footprint> {
        self.topic_footprint(topic).await
    }

    async fn purge(
        &self,
        topic: &Name,
        request: &inorder::PurgeRequest,
    ) -> inorder::Result<inorder::Footprint> {
        self.purge_topic(topic, request).await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.appenders.close();
        if let Some(listener) = self.listener.lock().await.take() {
            listener.stop().await;
        }
        self.pool.close();
        self.watches.clear();
        tracing::info!(url = %self.url, "postgres storage closed");
    }

    fn coordination(&self) -> Option<&dyn inorder::storage::Coordination> {
        Some(self)
    }
}

/// Maps a driver error to the engine's, typed (the driver's errors never hold the URL).
pub(crate) fn db_error(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> inorder::Error {
    move |source| inorder::Error::from(Error::Query { what, source })
}

/// Maps a pool error: a closed pool means the storage was closed; waiting too long for a
/// connection is worth another try.
pub(crate) fn pool_error(error: PoolError) -> inorder::Error {
    match error {
        PoolError::Closed => inorder::Error::Stopped,
        PoolError::Backend(source) => db_error("connect")(source),
        PoolError::Timeout(_) => {
            StorageError::transient(format!("postgres connection pool: {error}")).into()
        }
        other => StorageError::unavailable(format!("postgres connection pool: {other}")).into(),
    }
}

/// A position for a `bigint` column.
pub(crate) fn to_i64(position: u64) -> inorder::Result<i64> {
    i64::try_from(position).map_err(|_| {
        StorageError::refused(format!("postgres storage: position {position} is out of range"))
            .into()
    })
}

/// A position read from a `bigint` column (a negative one is damage).
pub(crate) fn to_u64(position: i64) -> inorder::Result<u64> {
    u64::try_from(position)
        .map_err(|_| commit::corrupt("position", &format!("{position} is negative")))
}
