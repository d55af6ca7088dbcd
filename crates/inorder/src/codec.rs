//! The bytes of an event inside a log record (format version 1).
//!
//! The topic and the position are not stored: the record's log and position are them.
//!
//! ```text
//! u8       version = 1
//! str      id, key, action, source            (str = varint length + UTF-8 bytes)
//! varint   time_micros (zigzag)
//! u8       flags: 1 datacontenttype, 2 subject, 4 dataschema, 8 correlationid,
//!                 16 causationid, 32 sequence
//! str…     the flagged optional strings, in flag order; varint sequence if flagged
//! varint   extension count; each: str name, u8 kind (0 string, 1 integer, 2 boolean), value
//! bytes    data (varint length + bytes)
//! ```
//!
//! The file storage frames each record with its commit position ([`frame_commit`]); the
//! Postgres storage keeps it in a column:
//!
//! ```text
//! u8       0x02 (a framed record)
//! u64      commit position, little-endian
//! …        the record: an event (version byte 1, above) or a lost record (0xFE, reason)
//! ```
//!
//! A record whose first byte is not `0x02` was written before commit positions (commit 0).
//!
//! Varints are LEB128. Every length is checked against the remaining input before use, so a
//! damaged record yields an error, never a panic or a huge allocation.

use std::collections::BTreeMap;

use bytes::Bytes;
use inorder_log::Name;

pub use crate::frame::{frame_commit, split_commit};
use crate::{
    error::Error,
    event::{Event, ExtensionValue},
    storage::StoredRecord,
    wire::{Input, put_str, put_varint, unzigzag, zigzag},
};

const VERSION: u8 = 1;
/// First byte of a *lost* record: a position the engine filled after the log lost the events
/// a subscription had already handled there (a power loss under `fsync = never`), so that no
/// position is handed out twice. It holds the reason as text and no event.
const LOST: u8 = 0xFE;

const HAS_CONTENT_TYPE: u8 = 1;
const HAS_SUBJECT: u8 = 2;
const HAS_SCHEMA: u8 = 4;
const HAS_CORRELATION: u8 = 8;
const HAS_CAUSATION: u8 = 16;
const HAS_SEQUENCE: u8 = 32;

/// A lost record: fills a position whose event the log lost (see [`is_lost`]).
#[must_use]
pub fn lost(reason: &str) -> Bytes {
    let mut out = vec![LOST];
    put_str(&mut out, reason);
    Bytes::from(out)
}

/// Whether a stored record fills a lost position (it holds no event: readers skip it, streams
/// count it resolved without a handler call).
#[must_use]
pub fn is_lost(payload: &[u8]) -> bool {
    payload.first() == Some(&LOST)
}

/// Decodes a stored record of `topic`; a record that does not decode is corruption, named by
/// its topic and position ([`Error::Decode`]).
///
/// # Errors
/// [`Error::Decode`].
pub fn decode_record(topic: &Name, record: &StoredRecord) -> Result<Event, Error> {
    let mut event = decode(topic, record.position, &record.payload).map_err(|reason| {
        Error::Decode { topic: topic.to_string(), position: record.position, reason }
    })?;
    event.commit = record.commit;
    Ok(event)
}

/// Encodes an event (without topic and position).
#[must_use]
pub fn encode(event: &Event) -> Bytes {
    let mut out = Vec::with_capacity(64 + event.data.len() + event.id.len() + event.key.len());
    out.push(VERSION);
    for text in [&event.id, &event.key, &event.action, &event.source] {
        put_str(&mut out, text);
    }
    put_varint(&mut out, zigzag(event.time_micros));
    let optional = [
        (HAS_CONTENT_TYPE, &event.data_content_type),
        (HAS_SUBJECT, &event.subject),
        (HAS_SCHEMA, &event.data_schema),
        (HAS_CORRELATION, &event.correlation_id),
        (HAS_CAUSATION, &event.causation_id),
    ];
    let mut flags = optional.iter().filter(|(_, v)| v.is_some()).fold(0, |f, (bit, _)| f | bit);
    if event.sequence.is_some() {
        flags |= HAS_SEQUENCE;
    }
    out.push(flags);
    for (_, value) in optional {
        if let Some(text) = value {
            put_str(&mut out, text);
        }
    }
    if let Some(sequence) = event.sequence {
        put_varint(&mut out, sequence);
    }
    put_varint(&mut out, event.extensions.len() as u64);
    for (name, value) in &event.extensions {
        put_str(&mut out, name);
        match value {
            ExtensionValue::String(text) => {
                out.push(0);
                put_str(&mut out, text);
            }
            ExtensionValue::Integer(n) => {
                out.push(1);
                put_varint(&mut out, zigzag(*n));
            }
            ExtensionValue::Boolean(b) => {
                out.push(2);
                out.push(u8::from(*b));
            }
        }
    }
    put_varint(&mut out, event.data.len() as u64);
    out.extend_from_slice(&event.data);
    Bytes::from(out)
}

/// Decodes an event stored at `position` of `topic`. `data` shares `bytes`' memory.
///
/// # Errors
/// A static description of the first malformation found.
pub fn decode(topic: &Name, position: u64, bytes: &Bytes) -> Result<Event, &'static str> {
    let mut input = Input::new(bytes);
    if input.byte()? != VERSION {
        return Err("unknown event format version");
    }
    let id = input.string()?;
    let key = input.string()?;
    let action = input.string()?;
    let source = input.string()?;
    let time_micros = unzigzag(input.varint()?);
    let flags = input.byte()?;
    let mut optional = |bit| {
        if flags & bit != 0 { input.string().map(Some) } else { Ok(None) }
    };
    let data_content_type = optional(HAS_CONTENT_TYPE)?;
    let subject = optional(HAS_SUBJECT)?;
    let data_schema = optional(HAS_SCHEMA)?;
    let correlation_id = optional(HAS_CORRELATION)?;
    let causation_id = optional(HAS_CAUSATION)?;
    let sequence = if flags & HAS_SEQUENCE != 0 { Some(input.varint()?) } else { None };
    let count = input.varint()?;
    let mut extensions = BTreeMap::new();
    for _ in 0..count {
        let name = input.string()?;
        let value = match input.byte()? {
            0 => ExtensionValue::String(input.string()?),
            1 => ExtensionValue::Integer(unzigzag(input.varint()?)),
            2 => ExtensionValue::Boolean(input.byte()? != 0),
            _ => return Err("unknown extension kind"),
        };
        extensions.insert(name, value);
    }
    let data = input.bytes()?;
    if !input.is_done() {
        return Err("trailing bytes after the event");
    }
    Ok(Event {
        id,
        topic: topic.clone(),
        key,
        action,
        data,
        data_content_type,
        time_micros,
        source,
        subject,
        data_schema,
        correlation_id,
        causation_id,
        sequence,
        extensions,
        position,
        commit: 0,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_stored_before_commit_positions_have_commit_0() {
        let event = Event::builder("t", "k", "a").build().unwrap();
        let (commit, record) = split_commit(encode(&event));
        assert_eq!((commit, record), (0, encode(&event)));
        let lost = lost("power loss");
        assert_eq!(split_commit(frame_commit(7, &lost)), (7, lost.clone()));
        assert_eq!(split_commit(lost.clone()), (0, lost));
    }

    fn topic() -> Name {
        Name::new("topic", "t").unwrap()
    }

    fn text() -> impl Strategy<Value = String> {
        ".{0,20}"
    }

    prop_compose! {
        fn event()(
            id in ".{1,20}", key in text(), action in ".{1,20}", source in text(),
            time_micros in any::<i64>(), sequence in any::<Option<u64>>(),
            subject in any::<Option<String>>(), correlation_id in any::<Option<String>>(),
            data in prop::collection::vec(any::<u8>(), 0..100),
            extensions in prop::collection::btree_map("[a-z0-9]{1,8}", prop_oneof![
                text().prop_map(ExtensionValue::String),
                any::<i64>().prop_map(ExtensionValue::Integer),
                any::<bool>().prop_map(ExtensionValue::Boolean),
            ], 0..4),
        ) -> Event {
            Event {
                id, topic: topic(), key, action, data: Bytes::from(data),
                data_content_type: Some("application/octet-stream".into()), time_micros, source,
                subject, data_schema: None, correlation_id, causation_id: None, sequence,
                extensions, position: 9, commit: 0,
            }
        }
    }

    proptest! {
        #[test]
        fn every_event_round_trips(event in event()) {
            prop_assert_eq!(decode(&topic(), 9, &encode(&event)).unwrap(), event);
        }

        #[test]
        fn a_framed_record_round_trips_with_its_commit(event in event(), commit in any::<u64>()) {
            let stored = frame_commit(commit, &encode(&event));
            let (found, record) = split_commit(stored);
            let record = StoredRecord { position: 9, commit: found, payload: record };
            let decoded = decode_record(&topic(), &record).unwrap();
            prop_assert_eq!(decoded.commit, commit);
            prop_assert_eq!(Event { commit: 0, ..decoded }, event);
        }

        #[test]
        fn damaged_bytes_never_panic(event in event(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
            let bytes = encode(&event).to_vec();
            let cut = cut % (bytes.len() + 1);
            let _ = decode(&topic(), 1, &Bytes::from(bytes[..cut].to_vec()));
            let mut flipped = bytes;
            let at = flip.0 % flipped.len();
            flipped[at] ^= flip.1;
            let _ = decode(&topic(), 1, &Bytes::from(flipped));
        }
    }

    #[test]
    fn zigzag_round_trips_the_extremes() {
        use crate::wire::{unzigzag, zigzag};
        for n in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
    }
}
