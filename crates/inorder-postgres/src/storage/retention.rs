//! Retention on PostgreSQL: which prefix of a topic goes, and deleting it in batches.
//!
//! The limits are exact per event. `max_events` and `below` are positions; `max_age` finds the
//! first event appended within the age (walking the primary key from the first position: the
//! cost is the rows that go); `max_bytes` uses the topic's `payload_bytes` (kept by appends)
//! and walks the oldest events' sizes until the excess is covered. Then batches of at most
//! [`PURGE_BATCH_EVENTS_MAX`] go, each one statement and one transaction (see `schema`), so a
//! large purge never holds the topic's row lock long. Another node purging at once deletes the
//! same rows at most once: the loser's `DELETE` finds them gone and subtracts nothing.

use inorder::{Footprint, Name, PurgeRequest, limits::PURGE_BATCH_EVENTS_MAX};

use super::{PgStorage, to_i64, to_u64};

/// One batch: delete events and ids in `[$2, $3)`, raise the first position, lower the bytes.
const PURGE_BATCH: &str = "\
    WITH gone AS (DELETE FROM inorder_events WHERE topic = $1 AND position >= $2 \
                  AND position < $3 RETURNING octet_length(payload) AS bytes), \
    ids AS (DELETE FROM inorder_event_ids WHERE topic = $1 AND position >= $2 AND position < $3) \
    UPDATE inorder_topics SET first_position = greatest(first_position, $3), \
           payload_bytes = payload_bytes - (SELECT coalesce(sum(bytes), 0) FROM gone) \
    WHERE name = $1 RETURNING first_position, last_position, payload_bytes";

/// The first event at or after `$2` appended less than `$3` seconds ago.
const FIRST_YOUNG: &str = "\
    SELECT position FROM inorder_events WHERE topic = $1 AND position >= $2 \
    AND appended_at >= now() - make_interval(secs => $3) ORDER BY position LIMIT 1";

/// The sizes of up to `$3` events from `$2` on.
const SIZES: &str = "\
    SELECT position, octet_length(payload)::bigint FROM inorder_events \
    WHERE topic = $1 AND position >= $2 ORDER BY position LIMIT $3";

const FOOTPRINT: &str =
    "SELECT first_position, last_position, payload_bytes FROM inorder_topics WHERE name = $1";

impl PgStorage {
    /// The topic's positions and payload bytes.
    pub(super) async fn topic_footprint(&self, topic: &Name) -> inorder::Result<Footprint> {
        let rows = self.query("read topic footprint", FOOTPRINT, &[&topic.as_str()]).await?;
        let row = rows
            .first()
            .ok_or_else(|| inorder::Error::UnknownTopic { topic: topic.to_string() })?;
        Ok(Footprint {
            first: to_u64(row.get(0))?,
            last: to_u64(row.get(1))?,
            bytes: to_u64(row.get(2))?,
        })
    }

    /// Deletes the prefix `request` lets go; returns the footprint after.
    pub(super) async fn purge_topic(
        &self,
        topic: &Name,
        request: &PurgeRequest,
    ) -> inorder::Result<Footprint> {
        let mut footprint = self.topic_footprint(topic).await?;
        let end = footprint.last + 1;
        let mut target = request.below.min(end);
        if let Some(max) = request.max_events {
            target = target.max(end.saturating_sub(max));
        }
        if let Some(age) = request.max_age {
            let rows = self
                .query(
                    "find events within max_age",
                    FIRST_YOUNG,
                    &[&topic.as_str(), &to_i64(footprint.first)?, &age.as_secs_f64()],
                )
                .await?;
            let young = rows.first().map_or(Ok(end), |row| to_u64(row.get(0)))?;
            target = target.max(young);
        }
        if let Some(max) = request.max_bytes
            && footprint.bytes > max
        {
            target =
                target.max(self.bytes_cut(topic, footprint.first, footprint.bytes - max).await?);
        }
        let target = target.min(end);
        while footprint.first < target {
            let upto = target.min(footprint.first.saturating_add(PURGE_BATCH_EVENTS_MAX));
            let rows = self
                .query(
                    "purge events",
                    PURGE_BATCH,
                    &[&topic.as_str(), &to_i64(footprint.first)?, &to_i64(upto)?],
                )
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| inorder::Error::UnknownTopic { topic: topic.to_string() })?;
            footprint = Footprint {
                first: to_u64(row.get(0))?,
                last: to_u64(row.get(1))?,
                bytes: to_u64(row.get(2))?,
            };
        }
        Ok(footprint)
    }

    /// The position below which the oldest events from `first` on hold at least `excess` bytes.
    async fn bytes_cut(&self, topic: &Name, first: u64, excess: u64) -> inorder::Result<u64> {
        let (mut from, mut covered) = (first, 0u64);
        let limit = i64::try_from(PURGE_BATCH_EVENTS_MAX).unwrap_or(i64::MAX);
        loop {
            let rows = self
                .query("read event sizes", SIZES, &[&topic.as_str(), &to_i64(from)?, &limit])
                .await?;
            if rows.is_empty() {
                return Ok(from);
            }
            for row in &rows {
                let position = to_u64(row.get(0))?;
                covered = covered.saturating_add(to_u64(row.get(1))?);
                from = position + 1;
                if covered >= excess {
                    return Ok(from);
                }
            }
        }
    }
}
