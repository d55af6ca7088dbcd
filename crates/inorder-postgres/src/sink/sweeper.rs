//! The TTL sweeper: deletes rows whose event time is older than the TTL.
//!
//! Times are `timestamptz` (64-bit microseconds) computed on our side from `SystemTime`: no
//! 32-bit seconds anywhere (the original stored an int4 and overflowed in 2038). Deletes go in
//! statements of at most [`SWEEP_ROWS_PER_STATEMENT`] rows so no transaction holds locks long.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::{connect::connect, ident::TableName, limits::SWEEP_ROWS_PER_STATEMENT};

/// Sweeps every `every` until aborted; reconnects after PostgreSQL went away.
pub(super) async fn run(
    url: String,
    client: Client,
    table: TableName,
    ttl: Duration,
    every: Duration,
) {
    let mut client = Some(client);
    let sql = format!(
        "DELETE FROM {table} WHERE ctid IN \
         (SELECT ctid FROM {table} WHERE time < $1 LIMIT {SWEEP_ROWS_PER_STATEMENT})"
    );
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(&url)
                .await
                .inspect_err(
                    |e| tracing::warn!(table = %table, error = %e, "ttl sweeper cannot connect"),
                )
                .ok();
        }
        let Some(client) = &client else { continue };
        let cutoff = SystemTime::now().checked_sub(ttl).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut deleted = 0u64;
        loop {
            match client.execute(&sql, &[&cutoff]).await {
                Ok(rows) => {
                    deleted += rows;
                    if rows < SWEEP_ROWS_PER_STATEMENT.unsigned_abs() {
                        break;
                    }
                }
                Err(e) => {
                    // Rows only live longer meanwhile; the next tick reconnects if needed.
                    tracing::warn!(table = %table, error = %e, "ttl sweep failed");
                    break;
                }
            }
        }
        if deleted > 0 {
            metrics::counter!("inorder_pg_sink_expired_rows_total", "table" => table.to_string())
                .increment(deleted);
            tracing::debug!(table = %table, deleted, "ttl sweep");
        }
    }
}
