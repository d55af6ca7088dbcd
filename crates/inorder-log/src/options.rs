//! How a log is opened: its fsync policy and sizes.

use std::{fmt, str::FromStr, time::Duration};

use crate::{
    error::Error,
    limits::{
        IDLE_AFTER_DEFAULT, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_LIMIT,
        RECORD_PAYLOAD_BYTES_MAX_DEFAULT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
        SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES,
    },
};

/// When an append is made durable, relative to when it returns.
///
/// The durability argument for each policy is in FORMAT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum FsyncPolicy {
    /// Each append call is written and `fdatasync`ed on its own before it returns.
    Always,
    /// Group commit (the default): the writer takes every append queued while the previous
    /// fsync ran, writes them with one `write` and one `fdatasync`, and returns to each caller
    /// only after that fsync. Same durability as `Always`; the fsync cost is shared.
    #[default]
    Group,
    /// Appends return once written to the page cache: they survive `kill -9` but not a power
    /// loss. For tests and caches. Segments are still fsynced when sealed.
    Never,
}

impl FsyncPolicy {
    /// The policy's name as written in configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Group => "group",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "always" => Ok(Self::Always),
            "group" => Ok(Self::Group),
            "never" => Ok(Self::Never),
            other => Err(Error::options(format!(
                "fsync must be one of always, group, never (got {other:?})"
            ))),
        }
    }
}

/// Options for [`Log::open`](crate::Log::open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// When appends become durable.
    pub fsync: FsyncPolicy,
    /// Size at which the writer seals the active segment and starts a new one. Between
    /// [`SEGMENT_BYTES_MIN`] and [`SEGMENT_BYTES_MAX`]; a whole record of the largest allowed
    /// payload must fit in one segment. A batch never spans segments: the writer rolls before a
    /// batch that does not fit, and a batch larger than this gets a segment of its own, that
    /// much larger.
    pub segment_bytes: u64,
    /// Largest accepted payload of one record, at most [`RECORD_PAYLOAD_BYTES_LIMIT`].
    pub record_payload_bytes_max: u32,
    /// After this long without appends the writer closes its file and frees its buffer, and
    /// cached read handles and sealed indexes are dropped (reopened on demand).
    pub idle_after: Duration,
    /// Scan every sealed segment on open (slow for big logs; the default checks sealed
    /// segments when they are read, and scans only the last segment on open).
    pub verify_on_open: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::default(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            record_payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX_DEFAULT,
            idle_after: IDLE_AFTER_DEFAULT,
            verify_on_open: false,
        }
    }
}

impl LogOptions {
    /// Default options with another fsync policy.
    #[must_use]
    pub fn with_fsync(fsync: FsyncPolicy) -> Self {
        Self { fsync, ..Self::default() }
    }

    /// Checks the bounds and relations of the options.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] naming the violated bound.
    pub fn validate(&self) -> Result<(), Error> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(Error::options(format!(
                "segment_bytes must be within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} (got {})",
                self.segment_bytes
            )));
        }
        if self.record_payload_bytes_max > RECORD_PAYLOAD_BYTES_LIMIT {
            return Err(Error::options(format!(
                "record_payload_bytes_max must be at most {RECORD_PAYLOAD_BYTES_LIMIT} (got {})",
                self.record_payload_bytes_max
            )));
        }
        let largest_record =
            SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + u64::from(self.record_payload_bytes_max);
        if largest_record > self.segment_bytes {
            return Err(Error::options(format!(
                "segment_bytes ({}) must hold a header and one record of \
                 record_payload_bytes_max ({}): at least {largest_record}",
                self.segment_bytes, self.record_payload_bytes_max
            )));
        }
        if self.idle_after.is_zero() {
            return Err(Error::options("idle_after must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(LogOptions::default().validate().ok(), Some(()));
    }

    #[test]
    fn a_segment_must_hold_the_largest_record() {
        let options = LogOptions {
            segment_bytes: SEGMENT_BYTES_MIN,
            record_payload_bytes_max: 8192,
            ..LogOptions::default()
        };
        assert!(matches!(options.validate(), Err(Error::InvalidOptions { .. })));
    }

    #[test]
    fn fsync_policy_parses_its_own_names_only() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Group, FsyncPolicy::Never] {
            assert_eq!(policy.as_str().parse::<FsyncPolicy>().ok(), Some(policy));
        }
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
