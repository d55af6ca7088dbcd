//! Reading a topic forward: one bounded, indexed range query per read.
//!
//! Positions are committed in order (see `schema`), so whatever a read returns is a gap-free run
//! from the reader's position; a gap would be a bug or a damaged table and fails the read. A
//! position below the topic's first (deleted by retention) is [`inorder::Error::Purged`].

use deadpool_postgres::Pool;
use inorder::{
    Name,
    storage::{StoredRecord, TopicReader},
};

use super::{db_error, pool_error, to_i64, to_u64};
use crate::limits::STORAGE_READ_RECORDS_MAX;

/// The topic's first stored position (in the same snapshot, so a read below it is told
/// "purged", not a gap) and up to `$3` events from `$2` on; one row with no event when there is
/// none.
const READ: &str = "\
    SELECT t.first_position, e.position, e.payload, e.commit_position FROM inorder_topics AS t \
    LEFT JOIN LATERAL (SELECT position, payload, commit_position FROM inorder_events \
        WHERE topic = $1 AND position >= $2 ORDER BY position LIMIT $3) AS e ON true \
    WHERE t.name = $1";

/// Every topic by commit position (`inorder_events_commit`); commit 0 (events stored before
/// commit positions) by topic and position.
pub(crate) const READ_ALL: &str = "\
    SELECT topic, position, payload, commit_position FROM inorder_events \
    WHERE commit_position >= $1 ORDER BY commit_position, topic, position LIMIT $2";

/// A reader of one topic of a [`PgStorage`](super::PgStorage).
pub(crate) struct PgTopicReader {
    pub(crate) pool: Pool,
    pub(crate) topic: Name,
    /// The position the next read starts at (at least 1).
    pub(crate) next: u64,
}

#[async_trait::async_trait]
impl TopicReader for PgTopicReader {
    async fn read(&mut self, max: usize) -> inorder::Result<Vec<StoredRecord>> {
        let limit = max.min(STORAGE_READ_RECORDS_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(READ).await.map_err(db_error("prepare read"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&self.topic.as_str(), &to_i64(self.next)?, &limit])
            .await
            .map_err(db_error("read events"))?;
        let first = match rows.first() {
            Some(row) => to_u64(row.get(0))?,
            None => return Err(inorder::Error::UnknownTopic { topic: self.topic.to_string() }),
        };
        if self.next < first {
            return Err(inorder::Error::Purged {
                topic: self.topic.to_string(),
                requested: self.next,
                first_available: first,
            });
        }
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(position) = row.get::<_, Option<i64>>(1) else { break };
            let position = to_u64(position)?;
            if position != self.next {
                return Err(inorder::Error::Gap {
                    topic: self.topic.to_string(),
                    expected: self.next,
                    found: position,
                });
            }
            let payload: Vec<u8> = row.get(2);
            let commit = to_u64(row.get(3))?;
            records.push(StoredRecord { position, commit, payload: payload.into() });
            self.next += 1;
        }
        Ok(records)
    }

    fn next_position(&self) -> u64 {
        self.next
    }
}
