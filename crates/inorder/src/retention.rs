//! Retention: which of a topic's oldest events may be deleted, and when.
//!
//! A topic's [`Retention`] combines the policies users know from JetStream and Kafka. Limits
//! (`max_age`, `max_bytes`, `max_events`) delete the oldest events once the topic exceeds any of
//! them, whether or not subscriptions handled them; `until_consumed` deletes what every
//! subscription of the topic has resolved (Stagger's ack/purge). An event goes as soon as *one*
//! of the policies lets it go.
//!
//! The engine decides *what every subscription consumed* (the retainer task); the storage
//! decides the rest, in its own terms and granularity, from a [`PurgeRequest`]: the file log
//! deletes whole sealed segments ([`segments_to_purge`]), PostgreSQL deletes rows in batches.
//! Either way only a prefix of the topic goes — positions stay contiguous from the first
//! retained one — and the event-id index is pruned with the events (deduplication and status by
//! id are promised within the retention window).

use std::time::{Duration, SystemTime};

use inorder_log::SegmentInfo;

use crate::{
    error::{Error, Result},
    limits::{RETENTION_AGE_MAX, RETENTION_BYTES_MAX, RETENTION_EVENTS_MAX},
};

/// How long a topic keeps its events. The default keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete events appended longer ago than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest events while the topic takes more bytes than this.
    pub max_bytes: Option<u64>,
    /// Delete the oldest events while the topic holds more events than this.
    pub max_events: Option<u64>,
    /// Delete what every subscription of the topic has resolved (handled, or parked and
    /// discarded; an event still parked is kept for its retry). A topic no subscription
    /// consumes keeps its events.
    pub until_consumed: bool,
}

impl Retention {
    /// Keeps everything (the default).
    #[must_use]
    pub fn forever() -> Self {
        Self::default()
    }

    /// Deletes events appended longer ago than `age`.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Keeps at most `bytes` of the topic.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Keeps at most `events` events.
    #[must_use]
    pub fn max_events(mut self, events: u64) -> Self {
        self.max_events = Some(events);
        self
    }

    /// Deletes what every subscription resolved.
    #[must_use]
    pub fn until_consumed(mut self) -> Self {
        self.until_consumed = true;
        self
    }

    /// Whether any policy deletes anything.
    #[must_use]
    pub fn deletes(&self) -> bool {
        self.max_age.is_some()
            || self.max_bytes.is_some()
            || self.max_events.is_some()
            || self.until_consumed
    }

    /// Checks the limits; names the topic.
    pub(crate) fn validate(&self, topic: &str) -> Result<()> {
        let bad = |what: String| Err(Error::config(format!("topic {topic}: retention {what}")));
        if self.max_age.is_some_and(|age| age.is_zero() || age > RETENTION_AGE_MAX) {
            return bad(format!(
                "max_age must be positive and at most {}s",
                RETENTION_AGE_MAX.as_secs()
            ));
        }
        if self.max_bytes.is_some_and(|bytes| bytes == 0 || bytes > RETENTION_BYTES_MAX) {
            return bad(format!("max_bytes must be within 1..={RETENTION_BYTES_MAX}"));
        }
        if self.max_events.is_some_and(|events| events == 0 || events > RETENTION_EVENTS_MAX) {
            return bad(format!("max_events must be within 1..={RETENTION_EVENTS_MAX}"));
        }
        Ok(())
    }

    /// What to ask the storage, given that every subscription resolved everything below
    /// `consumed_below` (`None`: not known, or no subscription consumes the topic).
    pub(crate) fn request(&self, consumed_below: Option<u64>) -> PurgeRequest {
        PurgeRequest {
            below: if self.until_consumed { consumed_below.unwrap_or(0) } else { 0 },
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_events: self.max_events,
        }
    }
}

/// What a storage is asked to delete from the front of a topic: everything below `below`, and
/// the oldest events while any limit is exceeded — at the storage's granularity, never a
/// position that is not yet durable, and only ever a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeRequest {
    /// Every event below this position may go (0 or 1: none on this account).
    pub below: u64,
    /// Events appended longer ago than this go.
    pub max_age: Option<Duration>,
    /// The oldest events go while the topic takes more bytes than this.
    pub max_bytes: Option<u64>,
    /// The oldest events go while the topic holds more events than this.
    pub max_events: Option<u64>,
}

/// What a topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// The first position still stored (the next one to be appended if none is).
    pub first: u64,
    /// The last durable position (0 if none was ever appended).
    pub last: u64,
    /// The bytes its events take: segment files on the file log, payload bytes on PostgreSQL.
    pub bytes: u64,
}

impl Footprint {
    /// Events stored.
    #[must_use]
    pub fn events(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }
}

/// The file log's rule: the position below which whole segments may be purged (`segments`
/// oldest first, the last one the active segment; `modified` gives a segment's last write).
///
/// Sealed segments go oldest first while one of these holds: it lies wholly below
/// `request.below`; it is older than `max_age`; the topic takes more than `max_bytes` or holds
/// more than `max_events` with it. So after a purge the topic fits every limit unless its active
/// segment alone exceeds it (it is at most one segment over), and between `max_bytes` less one
/// segment and `max_bytes` is kept. The active segment goes only by age (when even its newest
/// record is older than `max_age`: the log seals it first and goes on in a new one); never on
/// account of `below`, which would roll a new segment at every sweep of a consumed topic.
pub fn segments_to_purge(
    segments: &[SegmentInfo],
    modified: impl Fn(u64) -> Option<SystemTime>,
    now: SystemTime,
    request: &PurgeRequest,
) -> u64 {
    let Some(first) = segments.first() else { return 0 };
    let last_end = segments.last().map_or(first.base, |s| s.end);
    let mut bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut events = last_end.saturating_sub(first.base);
    let too_old = |base: u64| match (request.max_age, modified(base)) {
        (Some(age), Some(written)) => {
            now.duration_since(written).is_ok_and(|elapsed| elapsed > age)
        }
        _ => false,
    };
    let mut before = 0;
    for segment in segments {
        let over = request.max_bytes.is_some_and(|max| bytes > max)
            || request.max_events.is_some_and(|max| events > max);
        let goes = if segment.sealed {
            segment.end <= request.below || over || too_old(segment.base)
        } else {
            segment.end > segment.base && too_old(segment.base)
        };
        if !goes {
            break;
        }
        before = segment.end;
        bytes -= segment.bytes;
        events -= segment.end - segment.base;
    }
    before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(base: u64, end: u64, bytes: u64, sealed: bool) -> SegmentInfo {
        SegmentInfo { base, end, bytes, sealed }
    }

    /// Three sealed segments of 10 events and 100 bytes, and an active one of 5 events.
    fn log() -> Vec<SegmentInfo> {
        vec![
            segment(1, 11, 100, true),
            segment(11, 21, 100, true),
            segment(21, 31, 100, true),
            segment(31, 36, 50, false),
        ]
    }

    fn purge(request: PurgeRequest) -> u64 {
        segments_to_purge(&log(), |_| None, SystemTime::now(), &request)
    }

    #[test]
    fn nothing_goes_without_a_policy() {
        assert_eq!(purge(PurgeRequest::default()), 0);
    }

    #[test]
    fn consumed_segments_go_whole_and_the_active_one_stays() {
        assert_eq!(purge(PurgeRequest { below: 15, ..Default::default() }), 11);
        assert_eq!(purge(PurgeRequest { below: 31, ..Default::default() }), 31);
        assert_eq!(purge(PurgeRequest { below: 36, ..Default::default() }), 31);
    }

    #[test]
    fn byte_and_event_limits_leave_the_topic_within_them() {
        // 350 bytes: down to at most 200 takes two segments (150 left).
        assert_eq!(purge(PurgeRequest { max_bytes: Some(200), ..Default::default() }), 21);
        assert_eq!(purge(PurgeRequest { max_bytes: Some(350), ..Default::default() }), 0);
        // 35 events: at most 15 leaves 15.
        assert_eq!(purge(PurgeRequest { max_events: Some(15), ..Default::default() }), 21);
        // A limit below the active segment empties every sealed one and no more.
        assert_eq!(purge(PurgeRequest { max_bytes: Some(1), ..Default::default() }), 31);
    }

    #[test]
    fn age_goes_by_each_segments_last_write_and_may_take_the_active_one() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let written = |base: u64| Some(if base < 21 { now - 3 * hour } else { now });
        let request = PurgeRequest { max_age: Some(hour), ..Default::default() };
        assert_eq!(segments_to_purge(&log(), written, now, &request), 21);
        let all_old = |_| Some(now - 3 * hour);
        assert_eq!(segments_to_purge(&log(), all_old, now, &request), 36);
        // An unknown time keeps the segment.
        assert_eq!(segments_to_purge(&log(), |_| None, now, &request), 0);
    }

    #[test]
    fn limits_are_checked() {
        let zero = Retention::forever().max_bytes(0);
        assert!(zero.validate("t").unwrap_err().to_string().contains("max_bytes"));
        let old = Retention::forever().max_age(RETENTION_AGE_MAX + Duration::from_secs(1));
        assert!(old.validate("t").unwrap_err().to_string().contains("max_age"));
        assert!(Retention::forever().max_events(5).until_consumed().validate("t").is_ok());
    }
}
