//! Cluster mode on PostgreSQL: node heartbeats, partition leases with fencing tokens, and the
//! progress of partitions for the nodes that mirror it (see `inorder::cluster`).
//!
//! Every time is the database's `now()`, so nodes' clocks never meet; a node derives its own
//! deadline from its local clock read *before* the renewal was sent, which is never later than
//! the database's expiry (see `inorder::cluster`). Taking a lease is one `UPDATE … FROM (SELECT …
//! FOR UPDATE SKIP LOCKED)`: two nodes never take one partition, and a node never waits for a
//! partition another is taking. The epoch goes up by one with every take; the commit checks it
//! (`commit.rs`, `check_fences`).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use inorder::{
    Name, StreamId, StreamState,
    storage::{Coordination, Lease},
};
use tokio::sync::watch;

use super::{PgStorage, commit, notify::PROGRESS_WATCH, to_u64};

/// A duration as seconds for `$n::float8 * interval '1 second'`.
fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

fn lease(subscription: &Name, part: i32, epoch: i64) -> inorder::Result<Lease> {
    let partition = u16::try_from(part)
        .map_err(|_| commit::corrupt("lease", &format!("partition {part} out of range")))?;
    Ok(Lease { subscription: subscription.clone(), partition, epoch: to_u64(epoch)? })
}

fn name(kind: &'static str, raw: &str) -> inorder::Result<Name> {
    Name::new(kind, raw).map_err(|e| commit::corrupt("lease", &e.to_string()))
}

#[async_trait::async_trait]
impl Coordination for PgStorage {
    async fn heartbeat(
        &self,
        node: &str,
        subscriptions: &[Name],
        ttl: Duration,
    ) -> inorder::Result<BTreeMap<String, usize>> {
        let running: Vec<&str> = subscriptions.iter().map(Name::as_str).collect();
        // The statement's own upsert is not visible to its SELECT: this node's row is added.
        let rows = self
            .query(
                "heartbeat",
                "WITH beat AS (INSERT INTO inorder_nodes (node, subscriptions, expires_at) \
                   VALUES ($1, $2, now() + $3::float8 * interval '1 second') \
                   ON CONFLICT (node) DO UPDATE SET subscriptions = EXCLUDED.subscriptions, \
                     expires_at = EXCLUDED.expires_at), \
                 gone AS (DELETE FROM inorder_nodes \
                   WHERE expires_at < now() - interval '1 hour' AND node <> $1) \
                 SELECT s, count(*) FROM ( \
                   SELECT unnest(subscriptions) AS s FROM inorder_nodes \
                     WHERE expires_at > now() AND node <> $1 \
                   UNION ALL SELECT unnest($2::text[])) AS running \
                 GROUP BY s",
                &[&node, &running, &seconds(ttl)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let count = usize::try_from(row.get::<_, i64>(1)).unwrap_or(usize::MAX);
                Ok((row.get::<_, String>(0), count))
            })
            .collect()
    }

    async fn leave(&self, node: &str) -> inorder::Result<()> {
        self.query("leave", "DELETE FROM inorder_nodes WHERE node = $1", &[&node]).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, subscription: &Name, partitions: u16) -> inorder::Result<()> {
        let wanted = i64::from(partitions);
        self.query(
            "create leases",
            "INSERT INTO inorder_leases (subscription, part) \
             SELECT $1, generate_series(0, $2::integer - 1) \
             WHERE NOT EXISTS (SELECT 1 FROM inorder_leases WHERE subscription = $1) \
             ON CONFLICT DO NOTHING",
            &[&subscription.as_str(), &i32::from(partitions)],
        )
        .await?;
        let rows = self
            .query(
                "count leases",
                "SELECT count(*) FROM inorder_leases WHERE subscription = $1",
                &[&subscription.as_str()],
            )
            .await?;
        let stored: i64 = rows.first().map_or(0, |row| row.get(0));
        if stored != wanted {
            return Err(inorder::Error::InvalidConfig {
                reason: format!(
                    "subscription {subscription} is split into {stored} partitions in this \
                     database; this node says {partitions}: every node must use the same \
                     cluster.partitions"
                ),
            });
        }
        Ok(())
    }

    async fn renew(&self, node: &str, ttl: Duration) -> inorder::Result<Vec<Lease>> {
        let rows = self
            .query(
                "renew leases",
                "UPDATE inorder_leases SET expires_at = now() + $2::float8 * interval '1 second' \
                 WHERE owner = $1 AND expires_at > now() RETURNING subscription, part, epoch",
                &[&node, &seconds(ttl)],
            )
            .await?;
        rows.iter()
            .map(|row| lease(&name("subscription", row.get(0))?, row.get(1), row.get(2)))
            .collect()
    }

    async fn acquire(
        &self,
        node: &str,
        subscription: &Name,
        max: usize,
        ttl: Duration,
    ) -> inorder::Result<Vec<Lease>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "take leases",
                "UPDATE inorder_leases AS l SET owner = $1, epoch = l.epoch + 1, \
                   expires_at = now() + $4::float8 * interval '1 second' \
                 FROM (SELECT subscription, part FROM inorder_leases \
                   WHERE subscription = $2 AND (owner IS NULL OR expires_at <= now()) \
                   ORDER BY part LIMIT $3 FOR UPDATE SKIP LOCKED) AS free \
                 WHERE l.subscription = free.subscription AND l.part = free.part \
                 RETURNING l.part, l.epoch",
                &[&node, &subscription.as_str(), &limit, &seconds(ttl)],
            )
            .await?;
        rows.iter().map(|row| lease(subscription, row.get(0), row.get(1))).collect()
    }

    async fn release(&self, node: &str, leases: &[Lease]) -> inorder::Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let subscriptions: Vec<&str> = leases.iter().map(|l| l.subscription.as_str()).collect();
        let parts: Vec<i32> = leases.iter().map(|l| i32::from(l.partition)).collect();
        let epochs: Vec<i64> =
            leases.iter().map(|l| i64::try_from(l.epoch).unwrap_or(i64::MAX)).collect();
        self.query(
            "release leases",
            "UPDATE inorder_leases AS l SET owner = NULL, expires_at = '-infinity' \
             FROM UNNEST($2::text[], $3::integer[], $4::bigint[]) AS r(subscription, part, epoch) \
             WHERE l.owner = $1 AND l.subscription = r.subscription AND l.part = r.part \
               AND l.epoch = r.epoch",
            &[&node, &subscriptions, &parts, &epochs],
        )
        .await?;
        Ok(())
    }

    async fn holders(&self, subscription: &Name) -> inorder::Result<Vec<(u16, String)>> {
        let rows = self
            .query(
                "read lease holders",
                "SELECT part, owner FROM inorder_leases \
                 WHERE subscription = $1 AND owner IS NOT NULL AND expires_at > now() \
                 ORDER BY part",
                &[&subscription.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let part: i32 = row.get(0);
                let partition = u16::try_from(part)
                    .map_err(|_| commit::corrupt("lease", "partition out of range"))?;
                Ok((partition, row.get::<_, String>(1)))
            })
            .collect()
    }

    async fn partition_states(
        &self,
        subscription: &Name,
    ) -> inorder::Result<Vec<(StreamId, StreamState)>> {
        let rows = self
            .query(
                "read partition progress",
                "SELECT topic, part, state FROM inorder_streams \
                 WHERE subscription = $1 AND part >= 0",
                &[&subscription.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let topic = name("topic", row.get(0))?;
                let part: i32 = row.get(1);
                let partition = u16::try_from(part)
                    .map_err(|_| commit::corrupt("stream", "partition out of range"))?;
                let state = StreamState::decode(&Bytes::from(row.get::<_, Vec<u8>>(2)))
                    .map_err(|e| commit::corrupt("stream state", e))?;
                Ok((StreamId::partitioned(subscription.clone(), topic, partition), state))
            })
            .collect()
    }

    async fn watch_progress(&self) -> inorder::Result<watch::Receiver<u64>> {
        Ok(self.watches.subscribe_key(PROGRESS_WATCH))
    }
}
