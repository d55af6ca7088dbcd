//! The file backend's state layout: keyspaces and how keys are built.
//!
//! Keys are built from validated names (which never contain a NUL byte) separated by NUL, so
//! they sort by subscription, topic, then key or big-endian position: a subscription's parked
//! events are one ordered range.

use inorder_log::Name;

use crate::state::StreamId;

/// The keyspaces of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Space {
    Streams,
    Keys,
    Parked,
    Ids,
    Meta,
    /// The id index by position (`topic\0position` → id): what retention prunes in order.
    IdPositions,
}

impl Space {
    pub(crate) const ALL: [Self; 6] =
        [Self::Streams, Self::Keys, Self::Parked, Self::Ids, Self::Meta, Self::IdPositions];

    /// The keyspace's byte in journal records.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Streams => 0,
            Self::Keys => 1,
            Self::Parked => 2,
            Self::Ids => 3,
            Self::Meta => 4,
            Self::IdPositions => 5,
        }
    }

    /// The keyspace of a journal byte.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The keyspace's name in the tree.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::Keys => "keys",
            Self::Parked => "parked",
            Self::Ids => "ids",
            Self::Meta => "meta",
            Self::IdPositions => "id-positions",
        }
    }
}

/// Meta key: the last journal position folded into the tree.
pub(crate) const FOLDED_KEY: &[u8] = b"journal-folded";

/// A stream's progress: `subscription\0topic`, then `\0` and the partition (big-endian) for a
/// partitioned stream.
pub(crate) fn stream_key(stream: &StreamId) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    if let Some(partition) = stream.partition {
        key.push(0);
        key.extend_from_slice(&partition.to_be_bytes());
    }
    key
}

/// What key states and parked events are filed under: the subscription and topic (a key is in
/// one partition, so they need no partition).
pub(crate) fn stream_prefix(stream: &StreamId) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(stream.subscription.as_str().len() + stream.topic.as_str().len() + 4);
    key.extend_from_slice(stream.subscription.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(stream.topic.as_str().as_bytes());
    key
}

pub(crate) fn key_key(stream: &StreamId, key: &str) -> Vec<u8> {
    let mut bytes = stream_prefix(stream);
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

pub(crate) fn parked_key(stream: &StreamId, position: u64) -> Vec<u8> {
    let mut bytes = stream_prefix(stream);
    bytes.push(0);
    bytes.extend_from_slice(&position.to_be_bytes());
    bytes
}

/// Splits a parked key (after the `subscription\0` prefix) into topic and position.
pub(crate) fn split_parked_key(rest: &[u8]) -> Option<(Name, u64)> {
    let split = rest.iter().position(|b| *b == 0)?;
    let topic = Name::new("topic", std::str::from_utf8(&rest[..split]).ok()?).ok()?;
    let position = u64::from_be_bytes(rest.get(split + 1..)?.try_into().ok()?);
    Some((topic, position))
}

pub(crate) fn id_key(topic: &Name, id: &str) -> Vec<u8> {
    let mut bytes = topic.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

/// The prefix of a topic's keys in the id keyspaces.
pub(crate) fn topic_prefix(topic: &Name) -> Vec<u8> {
    let mut bytes = topic.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// The key of an id by its position (`topic\0` and the big-endian position: in position order).
pub(crate) fn id_position_key(topic: &Name, position: u64) -> Vec<u8> {
    let mut bytes = topic_prefix(topic);
    bytes.extend_from_slice(&position.to_be_bytes());
    bytes
}

/// Meta key: set once every id of the topic has its [`Space::IdPositions`] entry (ids indexed
/// before that keyspace existed get theirs at the first purge).
pub(crate) fn ids_by_position_key(topic: &Name) -> Vec<u8> {
    let mut bytes = b"ids-by-position\0".to_vec();
    bytes.extend_from_slice(topic.as_str().as_bytes());
    bytes
}

pub(crate) fn ids_indexed_key(topic: &Name) -> Vec<u8> {
    let mut bytes = b"ids-indexed\0".to_vec();
    bytes.extend_from_slice(topic.as_str().as_bytes());
    bytes
}

/// Meta key: the highest commit position reserved (see `commit_clock`).
pub(crate) const COMMITS_RESERVED_KEY: &[u8] = b"commits-reserved";

/// Meta key: the highest position whose event id the topic's index holds.
pub(crate) fn ids_max_key(topic: &Name) -> Vec<u8> {
    let mut bytes = b"ids-max\0".to_vec();
    bytes.extend_from_slice(topic.as_str().as_bytes());
    bytes
}
