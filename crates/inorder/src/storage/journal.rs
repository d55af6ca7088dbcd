//! The state journal's records: one state commit as one or more **parts**, applied all or
//! nothing.
//!
//! A commit of any size must be durable in one step, but a journal record is bounded
//! ([`JOURNAL_PART_BYTES_MAX`]). So a commit's entries are encoded into parts appended together
//! (one log append: contiguous positions, one fsync), each part saying its index and the count:
//!
//! ```text
//! part:  [PART_MARKER u8][index varint][count varint][entry]*
//! entry: [space u8][key len varint][key][0 | 1 [value len varint][value]]
//! ```
//!
//! Replay ([`Assembler`]) applies a commit only when all its parts were read, in order. A commit
//! whose last parts are missing (power lost mid-append; never acknowledged) is dropped, whether
//! it ends the journal or later commits were appended after a restart. Records written before
//! parts existed start with a keyspace byte (below [`PART_MARKER`]) and are whole commits.

use bytes::Bytes;

use super::{keys::Space, state_store::Entries};
use crate::{
    limits::JOURNAL_PART_BYTES_MAX,
    wire::{Input, put_varint},
};

/// First byte of a part (keyspace bytes, which began records before parts existed, are < 5).
const PART_MARKER: u8 = 0xC1;

/// Encodes `entries` as the parts of one commit.
pub(crate) fn encode_commit(entries: &Entries) -> Vec<Bytes> {
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
    for ((space, key), value) in entries {
        let mut entry = Vec::with_capacity(key.len() + value.as_ref().map_or(0, Vec::len) + 12);
        entry.push(space.code());
        put_varint(&mut entry, key.len() as u64);
        entry.extend_from_slice(key);
        match value {
            Some(value) => {
                entry.push(1);
                put_varint(&mut entry, value.len() as u64);
                entry.extend_from_slice(value);
            }
            None => entry.push(0),
        }
        let body = bodies.last_mut().expect("one body at least");
        if !body.is_empty()
            && body.len() + entry.len() > JOURNAL_PART_BYTES_MAX - PART_HEADER_BYTES_MAX
        {
            bodies.push(entry);
        } else {
            body.extend_from_slice(&entry);
        }
    }
    let count = bodies.len() as u64;
    bodies
        .into_iter()
        .enumerate()
        .map(|(index, body)| {
            let mut part = Vec::with_capacity(body.len() + PART_HEADER_BYTES_MAX);
            part.push(PART_MARKER);
            put_varint(&mut part, index as u64);
            put_varint(&mut part, count);
            part.extend_from_slice(&body);
            Bytes::from(part)
        })
        .collect()
}

/// Room for a part's header: the marker and two varints.
const PART_HEADER_BYTES_MAX: usize = 1 + 2 * 10;

/// Reassembles commits from journal records read in order.
#[derive(Default)]
pub(crate) struct Assembler {
    /// The commit being read: its part count, the next part index, its entries.
    partial: Option<(u64, u64, Entries)>,
    /// Incomplete commits dropped.
    pub dropped: u64,
}

impl Assembler {
    /// Takes the next record; returns a whole commit's entries when its last part arrived.
    pub(crate) fn push(&mut self, record: &Bytes) -> Result<Option<Entries>, &'static str> {
        let mut input = Input::new(record);
        if record.first() != Some(&PART_MARKER) {
            let mut entries = Entries::new();
            decode_entries(&mut input, &mut entries)?;
            self.drop_partial();
            return Ok(Some(entries));
        }
        input.byte()?;
        let index = input.varint()?;
        let count = input.varint()?;
        if count == 0 || index >= count {
            return Err("part index out of its count");
        }
        if index == 0 {
            self.drop_partial();
            self.partial = Some((count, 0, Entries::new()));
        }
        match self.partial.as_mut() {
            Some((expected, next, entries)) if *expected == count && *next == index => {
                decode_entries(&mut input, entries)?;
                *next += 1;
            }
            // A part whose commit's first parts are missing: the rest of a dropped commit.
            _ => {
                self.drop_partial();
                return Ok(None);
            }
        }
        if self.partial.as_ref().is_some_and(|(count, next, _)| next == count) {
            return Ok(self.partial.take().map(|(_, _, entries)| entries));
        }
        Ok(None)
    }

    /// The journal ended: a commit still missing parts was never acknowledged.
    pub(crate) fn finish(&mut self) {
        self.drop_partial();
    }

    fn drop_partial(&mut self) {
        if self.partial.take().is_some() {
            self.dropped += 1;
        }
    }
}

fn decode_entries(input: &mut Input<'_>, into: &mut Entries) -> Result<(), &'static str> {
    while !input.is_done() {
        let space = Space::from_code(input.byte()?).ok_or("unknown keyspace")?;
        let key = input.bytes()?.to_vec();
        let value = match input.byte()? {
            0 => None,
            1 => Some(input.bytes()?.to_vec()),
            _ => return Err("bad presence byte"),
        };
        into.insert((space, key), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize, value_bytes: usize) -> Entries {
        (0..count)
            .map(|i| {
                ((Space::Keys, format!("key-{i:06}").into_bytes()), Some(vec![7; value_bytes]))
            })
            .collect()
    }

    fn replay(records: &[Bytes]) -> (Vec<Entries>, u64) {
        let mut assembler = Assembler::default();
        let commits = records.iter().filter_map(|r| assembler.push(r).unwrap()).collect();
        assembler.finish();
        (commits, assembler.dropped)
    }

    #[test]
    fn a_commit_larger_than_a_record_is_split_and_reassembled() {
        let big = entries(3_000, 1_000);
        let parts = encode_commit(&big);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= JOURNAL_PART_BYTES_MAX));
        assert_eq!(replay(&parts), (vec![big], 0));
    }

    #[test]
    fn a_commit_missing_its_last_part_is_dropped_even_with_commits_after_it() {
        let big = encode_commit(&entries(3_000, 1_000));
        let small = entries(2, 10);
        let mut records = big[..big.len() - 1].to_vec();
        records.extend(encode_commit(&small));
        assert_eq!(replay(&records), (vec![small], 1));
        assert_eq!(replay(&big[..1]), (vec![], 1), "a torn commit at the end");
    }

    #[test]
    fn records_from_before_parts_are_whole_commits() {
        let small = entries(3, 5);
        let part = encode_commit(&small).remove(0);
        let old = part.slice(3..); // marker, index 0 and count 1 are one byte each
        assert_eq!(replay(&[old]), (vec![small], 0));
    }
}
