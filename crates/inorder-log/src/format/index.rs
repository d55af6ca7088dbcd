//! The sparse index: where to start reading a segment to find position N without a scan — its
//! entries, its file format, and reading and writing its file.
//!
//! The writer notes `(position, byte offset)` of the first record of a segment and then of a
//! record at least every [`INDEX_INTERVAL_BYTES`]. A reader seeks to the last entry at or before
//! the position it wants and reads forward at most one interval.
//!
//! The index is a *cache*, never the truth: it is written (not fsynced) when a segment is sealed,
//! checked whole by a checksum when loaded, rebuilt by scanning the segment when missing or bad,
//! and a reader that finds a record other than the one an entry promised falls back to reading
//! the segment from its start. Losing an index file costs one scan, never data.
//!
//! [`INDEX_INTERVAL_BYTES`]: crate::limits::INDEX_INTERVAL_BYTES

use std::{io, path::Path};

use crate::{
    error::{Error, Result},
    limits::{
        INDEX_ENTRY_BYTES as ENTRY_BYTES, INDEX_FILE_BYTES_MAX, INDEX_HEADER_BYTES,
        SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    vfs::{self, OpenMode, Vfs},
};

const INDEX_MAGIC: [u8; 8] = *b"INORDIDX";

/// Version of the index file format; unchanged by format 2 of segments, so the indexes of
/// format 1 segments stay valid.
const INDEX_FORMAT_VERSION: u32 = 1;

/// Index entries of one segment, ascending by position and by offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    base: u64,
    entries: Vec<(u64, u64)>,
}

impl SparseIndex {
    pub(crate) fn new(base: u64) -> Self {
        Self { base, entries: Vec::new() }
    }

    /// Appends entries; they must continue the existing ones in ascending order.
    pub(crate) fn extend(&mut self, entries: &[(u64, u64)]) {
        for &(position, offset) in entries {
            if let Some(&(last_position, last_offset)) = self.entries.last() {
                assert!(position > last_position && offset > last_offset, "index must ascend");
            }
            self.entries.push((position, offset));
        }
    }

    /// The last entry at or before `position`; the segment's first record if none.
    pub(crate) fn seek(&self, position: u64) -> (u64, u64) {
        let after = self.entries.partition_point(|&(p, _)| p <= position);
        match after.checked_sub(1) {
            Some(i) => self.entries[i],
            None => (self.base, SEGMENT_HEADER_BYTES),
        }
    }

    /// The bytes of the index file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(INDEX_HEADER_BYTES + self.entries.len() * ENTRY_BYTES);
        bytes.extend_from_slice(&INDEX_MAGIC);
        bytes.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]); // checksum, filled below
        bytes.extend_from_slice(&self.base.to_le_bytes());
        bytes.extend_from_slice(&u64_from(self.entries.len()).to_le_bytes());
        for (position, offset) in &self.entries {
            bytes.extend_from_slice(&position.to_le_bytes());
            bytes.extend_from_slice(&offset.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses an index file; `None` if it is not a whole, valid index of segment `base`.
    pub(crate) fn decode(bytes: &[u8], base: u64) -> Option<Self> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let crc = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
        if bytes.get(..8)? != INDEX_MAGIC
            || bytes.get(8..12)? != INDEX_FORMAT_VERSION.to_le_bytes()
            || crc32c::crc32c(bytes.get(16..)?) != crc
            || word(16)? != base
        {
            return None;
        }
        let count = usize_from(word(24)?);
        if bytes.len() != INDEX_HEADER_BYTES + count.checked_mul(ENTRY_BYTES)? {
            return None;
        }
        let mut index = Self::new(base);
        let mut previous = (base.checked_sub(1)?, SEGMENT_HEADER_BYTES - 1);
        for i in 0..count {
            let at = INDEX_HEADER_BYTES + i * ENTRY_BYTES;
            let entry = (word(at)?, word(at + 8)?);
            if entry.0 <= previous.0 || entry.1 <= previous.1 {
                return None;
            }
            index.entries.push(entry);
            previous = entry;
        }
        Some(index)
    }
}

/// Reads the index file at `path` of the segment whose first position is `base`: `Ok(None)` if
/// the file is not a whole, valid index of that segment.
pub(crate) fn read_index_file(
    vfs: &dyn Vfs,
    path: &Path,
    base: u64,
) -> io::Result<Option<SparseIndex>> {
    let file = vfs.open(path, OpenMode::Read)?;
    let len = file.size()?;
    if len > INDEX_FILE_BYTES_MAX {
        return Ok(None); // more entries than any segment can need: not an index of ours
    }
    let mut bytes = vec![0; usize_from(len)];
    let got = file.read_full_at(&mut bytes, 0)?;
    Ok(SparseIndex::decode(&bytes[..got], base))
}

/// Writes the index file at `path`: temporary file, then rename. Not fsynced (a cache).
pub(crate) fn write_index_file(vfs: &dyn Vfs, path: &Path, index: &SparseIndex) -> Result<()> {
    let tmp = path.with_extension("idx.tmp");
    vfs::remove_if_present(vfs, &tmp).map_err(|e| Error::io("remove stale index", &tmp, e))?;
    let file =
        vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| Error::io("create index", &tmp, e))?;
    file.write_all_at(&index.encode(), 0).map_err(|e| Error::io("write index", &tmp, e))?;
    drop(file);
    vfs.rename(&tmp, path).map_err(|e| Error::io("rename index", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SparseIndex {
        let mut index = SparseIndex::new(100);
        index.extend(&[(100, 32), (140, 4200), (181, 8400)]);
        index
    }

    #[test]
    fn seek_finds_the_last_entry_at_or_before_the_position() {
        let index = index();
        assert_eq!(index.seek(100), (100, 32));
        assert_eq!(index.seek(139), (100, 32));
        assert_eq!(index.seek(140), (140, 4200));
        assert_eq!(index.seek(10_000), (181, 8400));
        assert_eq!(SparseIndex::new(7).seek(9), (7, SEGMENT_HEADER_BYTES));
    }

    #[test]
    fn an_index_file_round_trips_and_rejects_any_damage() {
        let bytes = index().encode();
        assert_eq!(SparseIndex::decode(&bytes, 100), Some(index()));
        assert_eq!(SparseIndex::decode(&bytes, 101), None);
        assert_eq!(SparseIndex::decode(&bytes[..bytes.len() - 1], 100), None);
        for byte in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[byte] ^= 1;
            assert_eq!(SparseIndex::decode(&bad, 100), None, "flip in byte {byte}");
        }
    }

    #[test]
    fn decoding_refuses_a_count_that_would_overflow() {
        let mut bytes = SparseIndex::new(1).encode();
        bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SparseIndex::decode(&bytes, 1), None);
    }
}
