//! The sparse index: where to start reading a segment to find position N without a scan.
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

use std::io::ErrorKind;

use crate::{
    error::{Error, Result},
    limits::{
        INDEX_ENTRY_BYTES as ENTRY_BYTES, INDEX_HEADER_BYTES, SEGMENT_HEADER_BYTES, u64_from,
        usize_from,
    },
    recovery,
    segment::{FORMAT_VERSION, Segment},
    vfs::{OpenMode, Vfs},
};

const INDEX_MAGIC: [u8; 8] = *b"INORDIDX";

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
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
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
            || bytes.get(8..12)? != FORMAT_VERSION.to_le_bytes()
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

    /// Loads the index file of a sealed segment, or rebuilds it by scanning the segment (and
    /// writes the rebuilt index back, best effort: it is only a cache).
    pub(crate) fn load_or_rebuild(vfs: &dyn Vfs, segment: &Segment) -> Result<Self> {
        if let Some(index) = read_index_file(vfs, segment) {
            return Ok(index);
        }
        let scan = recovery::scan_segment(vfs, segment.base, &segment.path, false)?;
        if let Err(error) = write_index_file(vfs, segment, &scan.index) {
            tracing::warn!(%error, segment = %segment.path.display(), "could not save rebuilt index");
        }
        Ok(scan.index)
    }
}

fn read_index_file(vfs: &dyn Vfs, segment: &Segment) -> Option<SparseIndex> {
    let file = match vfs.open(&segment.index_path, OpenMode::Read) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, index = %segment.index_path.display(), "unreadable index");
            return None;
        }
    };
    let len = usize_from(file.size().ok()?);
    let mut bytes = vec![0; len];
    let got = file.read_full_at(&mut bytes, 0).ok()?;
    let index = SparseIndex::decode(&bytes[..got], segment.base);
    if index.is_none() {
        tracing::warn!(index = %segment.index_path.display(), "invalid index file, rebuilding");
    }
    index
}

/// Writes the index of a (sealed) segment: temporary file, then rename. Not fsynced.
pub(crate) fn write_index_file(
    vfs: &dyn Vfs,
    segment: &Segment,
    index: &SparseIndex,
) -> Result<()> {
    let tmp = segment.index_path.with_extension("idx.tmp");
    let _ = vfs.remove_file(&tmp);
    let file =
        vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| Error::io("create index", &tmp, e))?;
    file.write_all_at(&index.encode(), 0).map_err(|e| Error::io("write index", &tmp, e))?;
    drop(file);
    vfs.rename(&tmp, &segment.index_path)
        .map_err(|e| Error::io("rename index", &segment.index_path, e))
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
