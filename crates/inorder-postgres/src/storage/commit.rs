//! Applying a batch of [`StateOp`]s in one transaction.
//!
//! The ops are first *resolved* in memory, in order, into one final change per row (as the file
//! backend does): a later op on the same row wins, a `merge` folds into an earlier op on the
//! same key. Each table then gets at most two set-based statements (`UNNEST` of arrays), so a
//! checkpoint of thousands of keys is a handful of round trips.
//!
//! A `merge` that reaches the stored row is a read-modify-write under a row lock: first
//! `INSERT … ON CONFLICT DO NOTHING` (the key was new: nothing to merge with; a concurrent
//! insert of the same key makes us wait for it and then conflict), then `SELECT … FOR UPDATE`
//! of the keys that existed, [`KeyState::merge`] in Rust, and the write. Keys are deleted only
//! while their stream is stopped (a subscription removed, a stream rewound, a topic deleted: see
//! `manage`), never under a commit, so a row found by the insert's conflict is there for the lock. Rows are visited in key order
//! so two committers lock in the same order.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use deadpool_postgres::Transaction;
use inorder::{
    KeyState, Name, StreamId,
    storage::{Fence, StateOp},
};

use tokio_postgres::error::SqlState;

use super::{db_error, schema::CHANNEL, to_i64};

type Result<T, E = Failure> = std::result::Result<T, E>;

/// Why a commit attempt failed: a lost conflict is worth another attempt, the rest is not.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A deadlock (40P01) or serialization failure (40001): retry the transaction.
    Conflict(inorder::Error),
    /// Anything else.
    Other(inorder::Error),
}

impl From<inorder::Error> for Failure {
    fn from(error: inorder::Error) -> Self {
        Self::Other(error)
    }
}

/// Maps a driver error, telling conflicts apart.
pub(crate) fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Failure {
    move |source| {
        let conflict = matches!(
            source.code(),
            Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
        );
        let error = db_error(what)(source);
        if conflict { Failure::Conflict(error) } else { Failure::Other(error) }
    }
}

/// A key's resolved change.
struct KeyChange {
    state: KeyState,
    /// Whether `state` must still be merged into the stored state.
    merge_with_stored: bool,
}

/// One final change per row.
#[derive(Default)]
pub(crate) struct Resolved {
    /// By subscription, topic and partition (`-1`: none).
    streams: BTreeMap<(Name, Name, i32), Vec<u8>>,
    /// The leases the commit holds only under (cluster mode).
    fences: BTreeSet<Fence>,
    keys: BTreeMap<(Name, Name, String), KeyChange>,
    /// `None` removes the parked event.
    parked: BTreeMap<(Name, Name, u64), Option<Vec<u8>>>,
    ids: BTreeMap<(Name, String), u64>,
    ids_indexed: BTreeMap<Name, u64>,
}

impl Resolved {
    /// Resolves `ops` in order.
    pub(crate) fn new(ops: Vec<StateOp>) -> Self {
        let mut resolved = Self::default();
        for op in ops {
            match op {
                StateOp::Stream { stream, state } => {
                    let part = part(&stream);
                    resolved
                        .streams
                        .insert((stream.subscription, stream.topic, part), state.encode());
                }
                StateOp::Fence(fence) => {
                    resolved.fences.insert(fence);
                }
                StateOp::Key { stream, key, state, merge } => {
                    let row = (stream.subscription, stream.topic, key);
                    let change = match resolved.keys.remove(&row) {
                        // merge(merge(stored, a), b) == merge(stored, merge(a, b)).
                        Some(earlier) if merge => KeyChange {
                            state: earlier.state.merge(&state),
                            merge_with_stored: earlier.merge_with_stored,
                        },
                        _ => KeyChange { state, merge_with_stored: merge },
                    };
                    resolved.keys.insert(row, change);
                }
                StateOp::Park(parked) => {
                    let row = (parked.subscription.clone(), parked.topic.clone(), parked.position);
                    resolved.parked.insert(row, Some(parked.encode()));
                }
                StateOp::Unpark { stream, position } => {
                    resolved.parked.insert((stream.subscription, stream.topic, position), None);
                }
                StateOp::EventId { topic, id, position } => {
                    resolved.ids.insert((topic, id), position);
                }
                StateOp::IdsIndexedTo { topic, position } => {
                    let mark = resolved.ids_indexed.entry(topic).or_default();
                    *mark = (*mark).max(position);
                }
            }
        }
        resolved
    }

    /// Writes every change inside `transaction` (which the caller commits).
    pub(crate) async fn apply(&self, transaction: &Transaction<'_>) -> Result<()> {
        self.check_fences(transaction).await?;
        self.write_streams(transaction).await?;
        self.write_keys(transaction).await?;
        self.write_parked(transaction).await?;
        self.write_ids(transaction).await
    }

    async fn write_streams(&self, transaction: &Transaction<'_>) -> Result<()> {
        if self.streams.is_empty() {
            return Ok(());
        }
        let (mut subscriptions, mut topics, mut parts, mut states) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((subscription, topic, part), state) in &self.streams {
            subscriptions.push(subscription.as_str());
            topics.push(topic.as_str());
            parts.push(*part);
            states.push(state.as_slice());
        }
        execute(
            transaction,
            "write stream states",
            "INSERT INTO inorder_streams (subscription, topic, part, state) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::integer[], $4::bytea[]) \
             ON CONFLICT (subscription, topic, part) DO UPDATE SET state = EXCLUDED.state",
            &[&subscriptions, &topics, &parts, &states],
        )
        .await?;
        if !self.fences.is_empty() {
            // Other nodes mirror partition progress: wake them (delivered on commit).
            execute(
                transaction,
                "announce partition progress",
                "SELECT pg_notify($1, nextval('inorder_progress')::text || ' #progress')",
                &[&CHANNEL],
            )
            .await?;
        }
        Ok(())
    }

    /// Refuses the commit unless every lease it holds under is still this node's, with the
    /// epoch it was taken with. The rows are share-locked until the commit ends, so a takeover
    /// (an update of the row) waits for this commit, and a commit after a takeover sees the new
    /// epoch.
    async fn check_fences(&self, transaction: &Transaction<'_>) -> Result<()> {
        if self.fences.is_empty() {
            return Ok(());
        }
        let (mut subscriptions, mut parts, mut nodes, mut epochs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for fence in &self.fences {
            subscriptions.push(fence.subscription.as_str());
            parts.push(i32::from(fence.partition));
            nodes.push(fence.node.as_str());
            epochs.push(i64::try_from(fence.epoch).unwrap_or(i64::MAX));
        }
        let statement = transaction
            .prepare_cached(
                "SELECT l.subscription, l.part FROM inorder_leases AS l \
                 JOIN UNNEST($1::text[], $2::integer[], $3::text[], $4::bigint[]) \
                   AS f(subscription, part, owner, epoch) \
                 ON l.subscription = f.subscription AND l.part = f.part \
                   AND l.owner = f.owner AND l.epoch = f.epoch \
                 FOR SHARE OF l",
            )
            .await
            .map_err(db("check leases"))?;
        let rows = transaction
            .query(&statement, &[&subscriptions, &parts, &nodes, &epochs])
            .await
            .map_err(db("check leases"))?;
        let held: HashSet<(&str, i32)> =
            rows.iter().map(|row| (row.get::<_, &str>(0), row.get::<_, i32>(1))).collect();
        match self
            .fences
            .iter()
            .find(|f| !held.contains(&(f.subscription.as_str(), i32::from(f.partition))))
        {
            None => Ok(()),
            Some(lost) => Err(Failure::Other(inorder::Error::Fenced {
                subscription: lost.subscription.to_string(),
                partition: lost.partition,
            })),
        }
    }

    async fn write_keys(&self, transaction: &Transaction<'_>) -> Result<()> {
        // Replacements and first-seen merges are written as they are; merges into stored rows
        // are collected and written with the same upsert.
        let mut final_states: Vec<(&Name, &Name, &str, Vec<u8>)> = Vec::new();
        let mut merges: Vec<(&Name, &Name, &str, &KeyState)> = Vec::new();
        for ((subscription, topic, key), change) in &self.keys {
            if change.merge_with_stored {
                merges.push((subscription, topic, key, &change.state));
            } else {
                final_states.push((subscription, topic, key, change.state.encode()));
            }
        }
        if !merges.is_empty() {
            let (subscriptions, topics, keys): (Vec<&str>, Vec<&str>, Vec<&[u8]>) =
                unzip3(merges.iter().map(|(s, t, k, _)| (s.as_str(), t.as_str(), k.as_bytes())));
            let states: Vec<Vec<u8>> = merges.iter().map(|(.., state)| state.encode()).collect();
            let inserted = transaction
                .query(
                    "INSERT INTO inorder_keys (subscription, topic, key, state) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[]) \
                     ON CONFLICT (subscription, topic, key) DO NOTHING \
                     RETURNING subscription, topic, key",
                    &[&subscriptions, &topics, &keys, &states],
                )
                .await
                .map_err(db("insert new key states"))?;
            let inserted: HashSet<(String, String, Vec<u8>)> =
                inserted.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
            let existing: Vec<_> = merges
                .into_iter()
                .filter(|(s, t, k, _)| {
                    !inserted.contains(&(s.to_string(), t.to_string(), k.as_bytes().to_vec()))
                })
                .collect();
            if !existing.is_empty() {
                let (subscriptions, topics, keys): (Vec<&str>, Vec<&str>, Vec<&[u8]>) = unzip3(
                    existing.iter().map(|(s, t, k, _)| (s.as_str(), t.as_str(), k.as_bytes())),
                );
                let rows = transaction
                    .query(
                        "SELECT subscription, topic, key, state FROM inorder_keys \
                         WHERE (subscription, topic, key) IN \
                             (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])) \
                         ORDER BY subscription, topic, key FOR UPDATE",
                        &[&subscriptions, &topics, &keys],
                    )
                    .await
                    .map_err(db("lock key states"))?;
                let mut stored: BTreeMap<(String, String, Vec<u8>), Vec<u8>> = rows
                    .into_iter()
                    .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
                    .collect();
                for (subscription, topic, key, state) in existing {
                    let row =
                        (subscription.to_string(), topic.to_string(), key.as_bytes().to_vec());
                    let merged = match stored.remove(&row) {
                        Some(raw) => KeyState::decode(&raw.into())
                            .map_err(|e| corrupt("key state", e))?
                            .merge(state),
                        None => state.clone(),
                    };
                    final_states.push((subscription, topic, key, merged.encode()));
                }
            }
        }
        if final_states.is_empty() {
            return Ok(());
        }
        let (subscriptions, topics, keys): (Vec<&str>, Vec<&str>, Vec<&[u8]>) =
            unzip3(final_states.iter().map(|(s, t, k, _)| (s.as_str(), t.as_str(), k.as_bytes())));
        let states: Vec<&[u8]> = final_states.iter().map(|(.., state)| state.as_slice()).collect();
        execute(
            transaction,
            "write key states",
            "INSERT INTO inorder_keys (subscription, topic, key, state) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[]) \
             ON CONFLICT (subscription, topic, key) DO UPDATE SET state = EXCLUDED.state",
            &[&subscriptions, &topics, &keys, &states],
        )
        .await
    }

    async fn write_parked(&self, transaction: &Transaction<'_>) -> Result<()> {
        let mut removed = (Vec::new(), Vec::new(), Vec::new());
        let mut written = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((subscription, topic, position), event) in &self.parked {
            let position = to_i64(*position)?;
            match event {
                Some(event) => {
                    written.0.push(subscription.as_str());
                    written.1.push(topic.as_str());
                    written.2.push(position);
                    written.3.push(event.as_slice());
                }
                None => {
                    removed.0.push(subscription.as_str());
                    removed.1.push(topic.as_str());
                    removed.2.push(position);
                }
            }
        }
        if !removed.0.is_empty() {
            execute(
                transaction,
                "remove parked events",
                "DELETE FROM inorder_parked WHERE (subscription, topic, position) IN \
                 (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]))",
                &[&removed.0, &removed.1, &removed.2],
            )
            .await?;
        }
        if !written.0.is_empty() {
            execute(
                transaction,
                "write parked events",
                "INSERT INTO inorder_parked (subscription, topic, position, event) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[]) \
                 ON CONFLICT (subscription, topic, position) DO UPDATE SET event = EXCLUDED.event",
                &[&written.0, &written.1, &written.2, &written.3],
            )
            .await?;
        }
        Ok(())
    }

    async fn write_ids(&self, transaction: &Transaction<'_>) -> Result<()> {
        if !self.ids.is_empty() {
            let mut topics = Vec::with_capacity(self.ids.len());
            let mut ids = Vec::with_capacity(self.ids.len());
            let mut positions = Vec::with_capacity(self.ids.len());
            for ((topic, id), position) in &self.ids {
                topics.push(topic.as_str());
                ids.push(id.as_bytes());
                positions.push(to_i64(*position)?);
            }
            execute(
                transaction,
                "index event ids",
                "INSERT INTO inorder_event_ids (topic, id, position) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::int8[]) \
                 ON CONFLICT (topic, id) DO UPDATE SET position = EXCLUDED.position",
                &[&topics, &ids, &positions],
            )
            .await?;
        }
        if !self.ids_indexed.is_empty() {
            let topics: Vec<&str> = self.ids_indexed.keys().map(Name::as_str).collect();
            let positions = self
                .ids_indexed
                .values()
                .map(|p| to_i64(*p))
                .collect::<inorder::Result<Vec<_>>>()?;
            execute(
                transaction,
                "write the ids-indexed mark",
                "INSERT INTO inorder_ids_indexed (topic, position) \
                 SELECT * FROM UNNEST($1::text[], $2::int8[]) \
                 ON CONFLICT (topic) DO UPDATE \
                 SET position = GREATEST(inorder_ids_indexed.position, EXCLUDED.position)",
                &[&topics, &positions],
            )
            .await?;
        }
        Ok(())
    }
}

/// Runs one prepared (and cached) statement.
async fn execute(
    transaction: &Transaction<'_>,
    what: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    let statement = transaction.prepare_cached(sql).await.map_err(db(what))?;
    transaction.execute(&statement, params).await.map_err(db(what))?;
    Ok(())
}

fn unzip3<A, B, C>(items: impl Iterator<Item = (A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in items {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
    }
    out
}

/// The `part` column of a stream: its partition, `-1` for none.
pub(crate) fn part(stream: &StreamId) -> i32 {
    stream.partition.map_or(-1, i32::from)
}

/// A stored value that does not decode.
pub(crate) fn corrupt(what: &str, reason: &str) -> inorder::Error {
    inorder::StorageError::corrupt(format!("{what} in the postgres storage: {reason}")).into()
}
