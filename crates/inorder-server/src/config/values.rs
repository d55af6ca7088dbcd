//! How the values of `inorder.toml` are read: the closed choices as enums, durations (humantime:
//! `30s`, `10m`, `7d`) and counts within their limits, sizes with units.
//!
//! Every check here runs while the file is deserialized, so a bad value is refused with the
//! file's line and the key's path (see [`super::source`]). The engine has no serde: the enums
//! here mirror its own and convert into them.

use std::{fmt, time::Duration};

use inorder::{
    FailurePolicy, FsyncPolicy, Ordering, StartFrom,
    limits::{
        LEASE_TTL_MAX, LEASE_TTL_MIN, PARTITIONS_MAX, RETENTION_AGE_MAX, RETENTION_BYTES_MAX,
        RETENTION_EVENTS_MAX, RETENTION_INTERVAL_MAX, RETENTION_INTERVAL_MIN, RETRY_DELAY_MAX,
        SEQUENCE_TIMEOUT_MAX, TOPICS_MAX,
    },
};
use inorder_postgres::limits::{
    SINK_BATCH_ROWS_MAX, SINK_BATCH_TIMEOUT_MAX, SINK_WORKERS_MAX, STORAGE_POOL_SIZE_MAX,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, Error as _, Visitor},
};

use crate::limits::{LEASE_TIMEOUT_MAX, PUBLISH_IN_FLIGHT_MAX, SINK_TTL_MAX, WEBHOOK_TIMEOUT_MAX};

/// `fsync`: when an append is durable (see [`FsyncPolicy`]).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncFile {
    /// Every append is fsynced on its own.
    Always,
    /// Concurrent appends share one fsync (the default).
    #[default]
    Group,
    /// Left to the operating system: survives `kill -9`, not a power loss.
    Never,
}

impl From<FsyncFile> for FsyncPolicy {
    fn from(fsync: FsyncFile) -> Self {
        match fsync {
            FsyncFile::Always => Self::Always,
            FsyncFile::Group => Self::Group,
            FsyncFile::Never => Self::Never,
        }
    }
}

/// `ordering` of a subscription (see [`Ordering`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingFile {
    /// Per key, in log order.
    Fifo,
    /// Per key, the topic's `actions` in their order.
    Actions,
    /// Per key, by the producer's `sequence`.
    Sequence,
    /// No per-key constraint.
    None,
}

impl From<OrderingFile> for Ordering {
    fn from(ordering: OrderingFile) -> Self {
        match ordering {
            OrderingFile::Fifo => Self::Fifo,
            OrderingFile::Actions => Self::Actions,
            OrderingFile::Sequence => Self::Sequence,
            OrderingFile::None => Self::None,
        }
    }
}

/// `on_failure` of a subscription (see [`FailurePolicy`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailureFile {
    /// The key's later events wait for an operator.
    Block,
    /// The key moves on.
    Skip,
}

impl From<OnFailureFile> for FailurePolicy {
    fn from(policy: OnFailureFile) -> Self {
        match policy {
            OnFailureFile::Block => Self::Block,
            OnFailureFile::Skip => Self::Skip,
        }
    }
}

/// `start` of a subscription (see [`StartFrom`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFile {
    /// From the first event in the log.
    Earliest,
    /// From the next event appended.
    Latest,
}

impl From<StartFile> for StartFrom {
    fn from(start: StartFile) -> Self {
        match start {
            StartFile::Earliest => Self::Earliest,
            StartFile::Latest => Self::Latest,
        }
    }
}

/// `delivery` of a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFile {
    /// HTTP consumers pull, ack and nack (the default).
    #[default]
    Pull,
    /// Batch-written into a PostgreSQL table: needs `[subscriptions.postgres]`.
    Postgres,
    /// POSTed to a URL as CloudEvents: needs `[subscriptions.webhook]`.
    Webhook,
}

impl DeliveryFile {
    /// Its name in the file.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Postgres => "postgres",
            Self::Webhook => "webhook",
        }
    }
}

/// `lease_timeout`: positive, at most [`LEASE_TIMEOUT_MAX`].
pub(super) fn lease_timeout<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::from_millis(1), LEASE_TIMEOUT_MAX).map(Some)
}

/// A webhook's `timeout`: positive, at most [`WEBHOOK_TIMEOUT_MAX`].
pub(super) fn webhook_timeout<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::from_millis(1), WEBHOOK_TIMEOUT_MAX).map(Some)
}

/// A subscription's `retry_initial` and `retry_max_delay`: at most the engine's
/// [`RETRY_DELAY_MAX`] (zero retries at once).
pub(super) fn retry_delay<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::ZERO, RETRY_DELAY_MAX).map(Some)
}

/// A topic's `sequence_timeout`: positive, at most the engine's [`SEQUENCE_TIMEOUT_MAX`].
pub(super) fn sequence_timeout<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::from_millis(1), SEQUENCE_TIMEOUT_MAX).map(Some)
}

/// A topic's retention `max_age`: positive, at most the engine's [`RETENTION_AGE_MAX`].
pub(super) fn retention_age<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::from_secs(1), RETENTION_AGE_MAX).map(Some)
}

/// `retention_interval`: within the engine's [`RETENTION_INTERVAL_MIN`]..=
/// [`RETENTION_INTERVAL_MAX`].
pub(super) fn retention_interval<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, RETENTION_INTERVAL_MIN, RETENTION_INTERVAL_MAX).map(Some)
}

/// A topic's retention `max_events`: within `1..=`[`RETENTION_EVENTS_MAX`].
pub(super) fn retention_events<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let max = usize::try_from(RETENTION_EVENTS_MAX).unwrap_or(usize::MAX);
    count_within(deserializer, 1, max).map(|n| Some(n as u64))
}

/// A topic's retention `max_bytes`: a size (`10GiB`) within `1..=`[`RETENTION_BYTES_MAX`].
pub(super) fn retention_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let bytes = body_limit(deserializer)?.unwrap_or(0) as u64;
    if !(1..=RETENTION_BYTES_MAX).contains(&bytes) {
        return Err(D::Error::custom(format!("must be within 1..={RETENTION_BYTES_MAX} bytes")));
    }
    Ok(Some(bytes))
}

/// `segment_bytes`: a size within the log's segment limits (the log also needs room for one
/// record of the largest size, and says so at start).
pub(super) fn segment_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    use inorder_log::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
    let bytes = body_limit(deserializer)?.unwrap_or(0) as u64;
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes) {
        return Err(D::Error::custom(format!(
            "must be within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} bytes"
        )));
    }
    Ok(Some(bytes))
}

/// A sink's `batch_timeout`: at most the sink's [`SINK_BATCH_TIMEOUT_MAX`] (zero writes every
/// call at once).
pub(super) fn batch_timeout<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::ZERO, SINK_BATCH_TIMEOUT_MAX).map(Some)
}

/// A sink's `ttl`: at least a second, at most [`SINK_TTL_MAX`].
pub(super) fn ttl<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, Duration::from_secs(1), SINK_TTL_MAX).map(Some)
}

/// `max_topics`: within `1..=`[`TOPICS_MAX`].
pub(super) fn max_topics<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    count_within(deserializer, 1, TOPICS_MAX).map(Some)
}

/// `publish_in_flight`: within `1..=`[`PUBLISH_IN_FLIGHT_MAX`].
pub(super) fn publish_in_flight<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    count_within(deserializer, 1, PUBLISH_IN_FLIGHT_MAX).map(Some)
}

/// `[storage.postgres]`'s `pool_size`: within `1..=`[`STORAGE_POOL_SIZE_MAX`].
pub(super) fn pool_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    count_within(deserializer, 1, STORAGE_POOL_SIZE_MAX).map(Some)
}

/// A sink's `batch_size`: within `1..=`[`SINK_BATCH_ROWS_MAX`].
pub(super) fn batch_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    count_within(deserializer, 1, SINK_BATCH_ROWS_MAX).map(Some)
}

/// A sink's `workers`: within `1..=`[`SINK_WORKERS_MAX`].
pub(super) fn workers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    count_within(deserializer, 1, SINK_WORKERS_MAX).map(Some)
}

/// `body_limit`: a number of bytes, or a size with a unit (`1MiB`, `512KiB`, `2MB`).
pub(super) fn body_limit<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    struct Size;
    impl Visitor<'_> for Size {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like \"1MiB\" or a number of bytes")
        }
        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<usize, E> {
            usize::try_from(bytes).map_err(|_| E::custom(format!("{bytes} is not a size")))
        }
        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<usize, E> {
            usize::try_from(bytes).map_err(|_| E::custom(format!("{bytes} is too large")))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<usize, E> {
            byte_size(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Size).map(Some)
}

/// Parses `1MiB`, `512KiB`, `2MB`, `1000`.
///
/// # Errors
/// The text is not a size, or the size does not fit a `usize`.
pub fn byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize =
        number.parse().map_err(|_| format!("{text:?} is not a size like \"1MiB\""))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB, KB, MB)"
            ));
        }
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

/// A humantime duration within `min..=max`; the error names the bound it broke.
fn duration_within<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: Duration,
    max: Duration,
) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(deserializer)?;
    if duration > max {
        return Err(D::Error::custom(format!(
            "must be at most {}",
            humantime::format_duration(max)
        )));
    }
    if duration < min {
        return Err(D::Error::custom(format!(
            "must be at least {}",
            humantime::format_duration(min)
        )));
    }
    Ok(duration)
}

/// `[cluster] lease_ttl`: within the engine's [`LEASE_TTL_MIN`]..=[`LEASE_TTL_MAX`].
pub(super) fn lease_ttl<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration_within(deserializer, LEASE_TTL_MIN, LEASE_TTL_MAX).map(Some)
}

/// `[cluster] partitions`: within `1..=`[`PARTITIONS_MAX`].
pub(super) fn partitions<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    let count = count_within(deserializer, 1, usize::from(PARTITIONS_MAX))?;
    Ok(Some(u16::try_from(count).unwrap_or(PARTITIONS_MAX)))
}

/// A count within `min..=max`.
fn count_within<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: usize,
    max: usize,
) -> Result<usize, D::Error> {
    let count = usize::deserialize(deserializer)?;
    if !(min..=max).contains(&count) {
        return Err(D::Error::custom(format!("must be within {min}..={max}, got {count}")));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(byte_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(byte_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(byte_size("1000").unwrap(), 1000);
        assert!(byte_size("1XB").is_err());
        assert!(byte_size("99999999999999999999GiB").is_err());
    }
}
