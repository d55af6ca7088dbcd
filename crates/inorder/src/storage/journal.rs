//! The state journal's records: one state commit as one or more **parts**, applied all or
//! nothing.
//!
//! A commit of any size must be durable in one step, but a journal record is bounded
//! ([`JOURNAL_PART_BYTES_MAX`]) and so is one log append. So a commit's entries are encoded into
//! parts, appended in order (in as few appends as the log takes), each part naming its commit
//! and saying its index and the count:
//!
//! ```text
//! part:  [PART_MARKER u8][commit varint][index varint][count varint][entry]*
//! entry: [space u8][key len varint][key][0 | 1 [value len varint][value]]
//! ```
//!
//! Commits are numbered from the journal's last position when it was opened, one number per
//! commit; every commit appends at least one record, so a number is never reused, across
//! restarts included. Parts of concurrent commits may interleave in the journal; replay
//! ([`Assembler`]) applies a commit when all its parts were read, in order. A commit whose last
//! parts are missing (power lost or an append failed; never acknowledged) is dropped, wherever
//! it is in the journal. Records written before parts existed start with a keyspace byte (below
//! [`PART_MARKER`]) and are whole commits.

use bytes::Bytes;

use super::{keys::Space, state_store::Entries};
use crate::{
    limits::JOURNAL_PART_BYTES_MAX,
    wire::{Input, put_varint},
};

/// First byte of a part (keyspace bytes, which began records before parts existed, are < 5).
const PART_MARKER: u8 = 0xC1;

/// Encodes `entries` as the parts of commit number `commit`.
pub(crate) fn encode_commit(commit: u64, entries: &Entries) -> Vec<Bytes> {
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
            put_varint(&mut part, commit);
            put_varint(&mut part, index as u64);
            put_varint(&mut part, count);
            part.extend_from_slice(&body);
            Bytes::from(part)
        })
        .collect()
}

/// Room for a part's header: the marker and three varints.
const PART_HEADER_BYTES_MAX: usize = 1 + 3 * 10;

/// A commit being read back: its part count, the next part index, its entries.
struct Partial {
    count: u64,
    next: u64,
    entries: Entries,
}

/// Reassembles commits from journal records read in order.
#[derive(Default)]
pub(crate) struct Assembler {
    partials: std::collections::HashMap<u64, Partial>,
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
            return Ok(Some(entries));
        }
        input.byte()?;
        let commit = input.varint()?;
        let index = input.varint()?;
        let count = input.varint()?;
        if count == 0 || index >= count {
            return Err("part index out of its count");
        }
        if index == 0 {
            let fresh = Partial { count, next: 0, entries: Entries::new() };
            if self.partials.insert(commit, fresh).is_some() {
                self.dropped += 1; // a commit number cannot restart: the earlier one was cut
            }
        }
        let Some(partial) = self.partials.get_mut(&commit) else {
            return Ok(None); // the rest of a commit whose first part is gone
        };
        if partial.count != count || partial.next != index {
            self.partials.remove(&commit);
            self.dropped += 1;
            return Ok(None);
        }
        decode_entries(&mut input, &mut partial.entries)?;
        partial.next += 1;
        if partial.next == partial.count {
            return Ok(self.partials.remove(&commit).map(|partial| partial.entries));
        }
        Ok(None)
    }

    /// The journal ended: commits still missing parts were never acknowledged.
    pub(crate) fn finish(&mut self) {
        self.dropped += self.partials.len() as u64;
        self.partials.clear();
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
        let parts = encode_commit(7, &big);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= JOURNAL_PART_BYTES_MAX));
        assert_eq!(replay(&parts), (vec![big], 0));
    }

    #[test]
    fn a_commit_missing_its_last_part_is_dropped_even_with_commits_after_it() {
        let big = encode_commit(1, &entries(3_000, 1_000));
        let small = entries(2, 10);
        let mut records = big[..big.len() - 1].to_vec();
        records.extend(encode_commit(2, &small));
        assert_eq!(replay(&records), (vec![small], 1));
        assert_eq!(replay(&big[..1]), (vec![], 1), "a torn commit at the end");
    }

    #[test]
    fn parts_of_concurrent_commits_may_interleave() {
        let (first, second) = (entries(3_000, 1_000), entries(2_000, 900));
        let (a, b) = (encode_commit(1, &first), encode_commit(2, &second));
        let mut records = Vec::new();
        for i in 0..a.len().max(b.len()) {
            records.extend(a.get(i).cloned());
            records.extend(b.get(i).cloned());
        }
        let (commits, dropped) = replay(&records);
        assert_eq!(dropped, 0);
        assert_eq!(commits.len(), 2);
        assert!(commits.contains(&first) && commits.contains(&second));
    }

    #[test]
    fn records_from_before_parts_are_whole_commits() {
        let small = entries(3, 5);
        let part = encode_commit(9, &small).remove(0);
        let old = part.slice(4..); // marker, commit 9, index 0 and count 1 are one byte each
        assert_eq!(replay(&[old]), (vec![small], 0));
    }
}
