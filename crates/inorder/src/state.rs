//! The engine's durable state, apart from the events themselves: per stream, per key, parked
//! events. Every type here is written by checkpoints and read back on restart, so each has an
//! explicit, versioned encoding.

use std::{fmt, ops::RangeInclusive};

use bytes::Bytes;
use inorder_log::Name;

use crate::wire::{Input, put_opt_str, put_str, put_varint, unzigzag, zigzag};

const VERSION: u8 = 1;
/// Version 2 added the time of each done range.
const STREAM_STATE_VERSION: u8 = 2;
/// Version 2 added `discarded_at_micros`.
const PARKED_VERSION: u8 = 2;

/// A stream: one subscription consuming one topic — in [cluster mode](crate::cluster), one
/// partition of the subscription's keys on that topic. Ordering, progress and the watermark are
/// per stream.
///
/// Key states and parked events belong to the subscription and topic whatever the partition: a
/// key is in exactly one partition, so storages key them by `(subscription, topic)` only. Only
/// the progress ([`StreamState`]) is per partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The subscription.
    pub subscription: Name,
    /// The topic.
    pub topic: Name,
    /// The partition of the subscription's keys (`None`: every key, one node).
    pub partition: Option<u16>,
}

impl StreamId {
    /// The stream of every key of `subscription` on `topic`.
    #[must_use]
    pub fn new(subscription: Name, topic: Name) -> Self {
        Self { subscription, topic, partition: None }
    }

    /// The stream of one partition of the subscription's keys.
    #[must_use]
    pub fn partitioned(subscription: Name, topic: Name, partition: u16) -> Self {
        Self { subscription, topic, partition: Some(partition) }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.subscription, self.topic)?;
        match self.partition {
            Some(partition) => write!(f, "#{partition}"),
            None => Ok(()),
        }
    }
}

/// Durable progress of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Every event at or below this position is resolved: handled, or parked.
    pub watermark: u64,
    /// Positions above the watermark that are resolved too: inclusive ranges, ascending, each
    /// with the latest event time handled in it (`i64::MIN` if none was handled).
    pub done_above: Vec<(RangeInclusive<u64>, i64)>,
    /// The latest event time handled at or below the watermark (microseconds): the topic's
    /// time mark.
    pub max_time_micros: i64,
}

impl StreamState {
    /// Whether `position` is resolved.
    #[must_use]
    pub fn is_done(&self, position: u64) -> bool {
        position <= self.watermark || self.done_above.iter().any(|(r, _)| r.contains(&position))
    }

    /// The storage encoding (versioned), for storage backends.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STREAM_STATE_VERSION];
        put_varint(&mut out, self.watermark);
        put_varint(&mut out, zigzag(self.max_time_micros));
        put_varint(&mut out, self.done_above.len() as u64);
        for (range, time) in &self.done_above {
            put_varint(&mut out, *range.start());
            put_varint(&mut out, *range.end() - *range.start());
            put_varint(&mut out, zigzag(*time));
        }
        out
    }

    /// Decodes [`Self::encode`]'s bytes (and version 1, whose ranges carry no time).
    ///
    /// # Errors
    /// What is malformed.
    pub fn decode(bytes: &Bytes) -> Result<Self, &'static str> {
        let mut input = Input::new(bytes);
        let version = input.byte()?;
        if version != 1 && version != STREAM_STATE_VERSION {
            return Err("unknown stream state version");
        }
        let watermark = input.varint()?;
        let max_time_micros = unzigzag(input.varint()?);
        let count = input.varint()?;
        let mut done_above = Vec::new();
        for _ in 0..count {
            let start = input.varint()?;
            let end = start.checked_add(input.varint()?).ok_or("range overflows")?;
            let time = if version == 1 { i64::MIN } else { unzigzag(input.varint()?) };
            done_above.push((start..=end, time));
        }
        Ok(Self { watermark, done_above, max_time_micros })
    }
}

/// Where a key is in its ordering contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// No ordering state (fifo, none).
    #[default]
    None,
    /// `actions` ordering: the index of the next action of the current sequence, and how many
    /// sequences completed before. `next == actions.len()` means complete (no repeat).
    Actions {
        /// Index of the next expected action.
        next: u32,
        /// Sequences completed so far.
        completed: u64,
    },
    /// `sequence` ordering: the next producer sequence number expected.
    Sequence {
        /// The next expected number.
        next: u64,
    },
}

/// Durable state of one key on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    /// Position of the last event of the key that was handled or parked.
    pub last_position: u64,
    /// Latest event time handled for the key (microseconds; a monotonic maximum).
    pub last_time_micros: i64,
    /// The ordering contract's progress.
    pub progress: Progress,
    /// Under `on_failure = block`: the parked event the key waits for.
    pub blocked_by: Option<u64>,
}

impl KeyState {
    /// Combines `self` (stored) with `newer` for keys handled in parallel (`none` ordering):
    /// positions and times keep their maximum.
    #[must_use]
    pub fn merge(&self, newer: &Self) -> Self {
        Self {
            last_position: self.last_position.max(newer.last_position),
            last_time_micros: self.last_time_micros.max(newer.last_time_micros),
            progress: newer.progress,
            blocked_by: newer.blocked_by,
        }
    }

    /// The storage encoding (versioned), for storage backends.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        put_varint(&mut out, self.last_position);
        put_varint(&mut out, zigzag(self.last_time_micros));
        match self.progress {
            Progress::None => out.push(0),
            Progress::Actions { next, completed } => {
                out.push(1);
                put_varint(&mut out, u64::from(next));
                put_varint(&mut out, completed);
            }
            Progress::Sequence { next } => {
                out.push(2);
                put_varint(&mut out, next);
            }
        }
        match self.blocked_by {
            Some(position) => {
                out.push(1);
                put_varint(&mut out, position);
            }
            None => out.push(0),
        }
        out
    }

    /// Decodes [`Self::encode`]'s bytes.
    ///
    /// # Errors
    /// What is malformed.
    pub fn decode(bytes: &Bytes) -> Result<Self, &'static str> {
        let mut input = Input::new(bytes);
        if input.byte()? != VERSION {
            return Err("unknown key state version");
        }
        let last_position = input.varint()?;
        let last_time_micros = unzigzag(input.varint()?);
        let progress = match input.byte()? {
            0 => Progress::None,
            1 => Progress::Actions {
                next: u32::try_from(input.varint()?).map_err(|_| "action index too large")?,
                completed: input.varint()?,
            },
            2 => Progress::Sequence { next: input.varint()? },
            _ => return Err("unknown progress kind"),
        };
        let blocked_by = match input.byte()? {
            0 => None,
            1 => Some(input.varint()?),
            _ => return Err("bad presence byte"),
        };
        Ok(Self { last_position, last_time_micros, progress, blocked_by })
    }
}

/// Why an event was parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkReason {
    /// The handler failed on every attempt (or failed permanently).
    Failed,
    /// The action was already handled, or is already waiting, for this key's sequence.
    Duplicate,
    /// The key's sequence is complete and the topic does not repeat.
    SequenceComplete,
    /// The key waited longer than the topic's `sequence_timeout` for a missing event.
    Timeout,
    /// The key's reorder buffer was full.
    BufferFull,
    /// An earlier event of the key is parked and the subscription blocks on failure.
    Blocked,
}

impl ParkReason {
    /// The reason as written in APIs (`failed`, `duplicate`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Duplicate => "duplicate",
            Self::SequenceComplete => "sequence_complete",
            Self::Timeout => "timeout",
            Self::BufferFull => "buffer_full",
            Self::Blocked => "blocked",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Failed => 0,
            Self::Duplicate => 1,
            Self::SequenceComplete => 2,
            Self::Timeout => 3,
            Self::BufferFull => 4,
            Self::Blocked => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            Self::Failed,
            Self::Duplicate,
            Self::SequenceComplete,
            Self::Timeout,
            Self::BufferFull,
            Self::Blocked,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parked (dead-lettered) event: the event itself stays in the log at `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The subscription that parked it.
    pub subscription: Name,
    /// The topic.
    pub topic: Name,
    /// The event's position.
    pub position: u64,
    /// The event's id.
    pub event_id: String,
    /// The event's key.
    pub key: String,
    /// The event's action.
    pub action: String,
    /// Why it was parked.
    pub reason: ParkReason,
    /// The last handler error, for `failed`.
    pub error: Option<String>,
    /// Handler calls made.
    pub attempts: u32,
    /// When it was parked (microseconds since the Unix epoch).
    pub parked_at_micros: i64,
    /// When an operator discarded it (it will never be handled); `None` while it is parked.
    /// A discarded event keeps its record, so "was it processed?" still has the right answer.
    pub discarded_at_micros: Option<i64>,
}

impl ParkedEvent {
    /// The stream the event belongs to.
    #[must_use]
    pub fn stream(&self) -> StreamId {
        StreamId::new(self.subscription.clone(), self.topic.clone())
    }

    /// The storage encoding (versioned), for storage backends.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PARKED_VERSION];
        put_str(&mut out, &self.event_id);
        put_str(&mut out, &self.key);
        put_str(&mut out, &self.action);
        out.push(self.reason.code());
        put_opt_str(&mut out, self.error.as_deref());
        put_varint(&mut out, u64::from(self.attempts));
        put_varint(&mut out, zigzag(self.parked_at_micros));
        match self.discarded_at_micros {
            Some(micros) => {
                out.push(1);
                put_varint(&mut out, zigzag(micros));
            }
            None => out.push(0),
        }
        out
    }

    /// Decodes [`Self::encode`]'s bytes.
    ///
    /// # Errors
    /// What is malformed.
    pub fn decode(stream: &StreamId, position: u64, bytes: &Bytes) -> Result<Self, &'static str> {
        let mut input = Input::new(bytes);
        let version = input.byte()?;
        if version != 1 && version != PARKED_VERSION {
            return Err("unknown parked event version");
        }
        Ok(Self {
            subscription: stream.subscription.clone(),
            topic: stream.topic.clone(),
            position,
            event_id: input.string()?,
            key: input.string()?,
            action: input.string()?,
            reason: ParkReason::from_code(input.byte()?).ok_or("unknown park reason")?,
            error: input.opt_string()?,
            attempts: u32::try_from(input.varint()?).map_err(|_| "attempts out of range")?,
            parked_at_micros: unzigzag(input.varint()?),
            discarded_at_micros: match version {
                1 => None,
                _ => match input.byte()? {
                    0 => None,
                    1 => Some(unzigzag(input.varint()?)),
                    _ => return Err("bad presence byte"),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamId {
        StreamId::new(Name::new("subscription", "s").unwrap(), Name::new("topic", "t").unwrap())
    }

    #[test]
    fn state_round_trips() {
        let state = StreamState {
            watermark: 41,
            done_above: vec![(43..=45, 9), (50..=50, i64::MIN)],
            max_time_micros: -7,
        };
        assert_eq!(StreamState::decode(&Bytes::from(state.encode())).unwrap(), state);
        assert!(state.is_done(41) && state.is_done(44) && state.is_done(50));
        assert!(!state.is_done(42) && !state.is_done(46));

        for progress in [
            Progress::None,
            Progress::Actions { next: 2, completed: 9 },
            Progress::Sequence { next: u64::MAX },
        ] {
            let key =
                KeyState { last_position: 3, last_time_micros: 99, progress, blocked_by: Some(7) };
            assert_eq!(KeyState::decode(&Bytes::from(key.encode())).unwrap(), key);
        }

        let parked = ParkedEvent {
            subscription: stream().subscription,
            topic: stream().topic,
            position: 12,
            event_id: "e".into(),
            key: "k".into(),
            action: "a".into(),
            reason: ParkReason::Timeout,
            error: Some("boom".into()),
            attempts: 3,
            parked_at_micros: 5,
            discarded_at_micros: Some(6),
        };
        assert_eq!(
            ParkedEvent::decode(&stream(), 12, &Bytes::from(parked.encode())).unwrap(),
            parked
        );
    }

    #[test]
    fn merging_keeps_the_maximum_position_and_time() {
        let stored = KeyState { last_position: 10, last_time_micros: 500, ..KeyState::default() };
        let older = KeyState { last_position: 8, last_time_micros: 900, ..KeyState::default() };
        let merged = stored.merge(&older);
        assert_eq!((merged.last_position, merged.last_time_micros), (10, 900));
    }

    #[test]
    fn every_park_reason_survives_its_code() {
        for reason in [
            ParkReason::Failed,
            ParkReason::Duplicate,
            ParkReason::SequenceComplete,
            ParkReason::Timeout,
            ParkReason::BufferFull,
            ParkReason::Blocked,
        ] {
            assert_eq!(ParkReason::from_code(reason.code()), Some(reason));
        }
    }
}
