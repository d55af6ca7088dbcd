//! The management API's state changes on PostgreSQL: definitions made at run time, and deleting
//! what a removed subscription, a rewound stream or a deleted topic leaves behind — each one
//! transaction.

use bytes::Bytes;
use inorder::{Name, StreamId, StreamState};

use super::{PgStorage, db_error, to_i64};

impl PgStorage {
    pub(super) async fn put_definition_row(
        &self,
        kind: &str,
        name: &str,
        value: Option<Bytes>,
    ) -> inorder::Result<()> {
        match value {
            Some(value) => {
                self.query(
                    "write a definition",
                    "INSERT INTO inorder_definitions (kind, name, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value",
                    &[&kind, &name, &value.as_ref()],
                )
                .await?;
            }
            None => {
                self.query(
                    "remove a definition",
                    "DELETE FROM inorder_definitions WHERE kind = $1 AND name = $2",
                    &[&kind, &name],
                )
                .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn definition_rows(
        &self,
        kind: &str,
    ) -> inorder::Result<Vec<(String, Bytes)>> {
        let rows = self
            .query(
                "read definitions",
                "SELECT name, value FROM inorder_definitions WHERE kind = $1 ORDER BY name",
                &[&kind],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0), Bytes::from(row.get::<_, Vec<u8>>(1))))
            .collect())
    }

    /// Runs `statements` (each with `params`) in one transaction.
    async fn in_one_transaction(
        &self,
        what: &'static str,
        statements: &[(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])],
    ) -> inorder::Result<()> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error(what))?;
        for (sql, params) in statements {
            transaction.execute(*sql, params).await.map_err(db_error(what))?;
        }
        transaction.commit().await.map_err(db_error(what))
    }

    pub(super) async fn forget_subscription_rows(
        &self,
        subscription: &Name,
    ) -> inorder::Result<()> {
        let name = subscription.as_str();
        self.in_one_transaction(
            "forget a subscription",
            &[
                ("DELETE FROM inorder_keys WHERE subscription = $1", &[&name]),
                ("DELETE FROM inorder_parked WHERE subscription = $1", &[&name]),
                ("DELETE FROM inorder_streams WHERE subscription = $1", &[&name]),
            ],
        )
        .await
    }

    pub(super) async fn reset_stream_rows(
        &self,
        stream: &StreamId,
        watermark: u64,
    ) -> inorder::Result<()> {
        let (subscription, topic) = (stream.subscription.as_str(), stream.topic.as_str());
        let part = super::commit::part(stream);
        let state = StreamState { watermark, ..StreamState::default() }.encode();
        let above = to_i64(watermark)?;
        self.in_one_transaction(
            "reset a stream",
            &[
                (
                    "DELETE FROM inorder_keys WHERE subscription = $1 AND topic = $2",
                    &[&subscription, &topic],
                ),
                (
                    "DELETE FROM inorder_parked WHERE subscription = $1 AND topic = $2 \
                     AND position > $3",
                    &[&subscription, &topic, &above],
                ),
                (
                    "INSERT INTO inorder_streams (subscription, topic, part, state) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (subscription, topic, part) DO UPDATE SET state = EXCLUDED.state",
                    &[&subscription, &topic, &part, &state],
                ),
            ],
        )
        .await
    }

    pub(super) async fn delete_topic_rows(&self, topic: &Name) -> inorder::Result<()> {
        let name = topic.as_str();
        self.in_one_transaction(
            "delete a topic",
            &[
                ("DELETE FROM inorder_topics WHERE name = $1", &[&name]),
                ("DELETE FROM inorder_events WHERE topic = $1", &[&name]),
                ("DELETE FROM inorder_event_ids WHERE topic = $1", &[&name]),
                ("DELETE FROM inorder_ids_indexed WHERE topic = $1", &[&name]),
                ("DELETE FROM inorder_keys WHERE topic = $1", &[&name]),
                ("DELETE FROM inorder_parked WHERE topic = $1", &[&name]),
                ("DELETE FROM inorder_streams WHERE topic = $1", &[&name]),
            ],
        )
        .await
    }
}
