//! Scanning a segment file record by record through the recovery decision table.
//!
//! Used for the last segment when a log opens, for every segment by `verify` and
//! `verify_on_open`, and to rebuild a missing or bad sparse index. The scan only reads and
//! decides: it stops at the first record the table cuts (reporting where) and fails at the first
//! it refuses (naming file and offset); cutting the file is the caller's business
//! ([`crate::open`]).

use std::path::Path;

use crate::{
    error::{Error, Result},
    format::{index::SparseIndex, record::RecordHeader, segment::read_segment_header},
    limits::{
        INDEX_INTERVAL_BYTES, READ_CHUNK_BYTES, RECORD_HEADER_BYTES_USIZE as HEADER,
        SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    recovery::{Decision, Facts, TornReason, decide},
    vfs::{OpenMode, Vfs, VfsFile},
};

/// The result of scanning one segment.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// One past the last kept record's position.
    pub end: u64,
    /// Bytes of the file up to the end of the last kept record.
    pub valid_bytes: u64,
    /// Length of the file as found.
    pub file_len: u64,
    /// The rebuilt sparse index.
    pub index: SparseIndex,
    /// Where and why the tail must be cut (last segment only).
    pub cut: Option<(u64, TornReason)>,
}

/// Scans a segment record by record, applying the decision table.
pub(crate) fn scan_segment(
    vfs: &dyn Vfs,
    base: u64,
    path: &Path,
    last_segment: bool,
) -> Result<ScanOutcome> {
    let file = vfs.open(path, OpenMode::Read).map_err(|e| Error::io("open segment", path, e))?;
    read_segment_header(file.as_ref(), path, base)?;
    let file_len = file.size().map_err(|e| Error::io("stat segment", path, e))?;
    let mut window = Window::new(file.as_ref(), path, file_len);
    let mut index = SparseIndex::new(base);
    let mut entries = Vec::new();
    let (mut offset, mut expected) = (SEGMENT_HEADER_BYTES, base);
    let mut last_indexed: Option<u64> = None;
    while offset < file_len {
        let (facts, record_bytes) = observe(&mut window, offset, expected, last_segment)?;
        match decide(facts) {
            Decision::Keep => {
                if last_indexed.is_none_or(|at| offset - at >= INDEX_INTERVAL_BYTES) {
                    entries.push((expected, offset));
                    last_indexed = Some(offset);
                }
                offset += record_bytes;
                expected += 1;
            }
            Decision::Cut(reason) => {
                index.extend(&entries);
                return Ok(ScanOutcome {
                    end: expected,
                    valid_bytes: offset,
                    file_len,
                    index,
                    cut: Some((offset, reason)),
                });
            }
            Decision::Fail(reason) => {
                return Err(Error::Corrupt { file: path.to_path_buf(), offset, reason });
            }
        }
    }
    index.extend(&entries);
    Ok(ScanOutcome { end: expected, valid_bytes: offset, file_len, index, cut: None })
}

/// Observes the facts about the record at `offset`; also returns its size when it has one.
fn observe(
    window: &mut Window<'_>,
    offset: u64,
    expected: u64,
    last_segment: bool,
) -> Result<(Facts, u64)> {
    let mut facts = Facts {
        last_segment,
        header_complete: false,
        length_fits: false,
        checksum_ok: false,
        position_expected: false,
    };
    let remaining = window.file_len - offset;
    let head = window.bytes(offset, HEADER)?;
    let Some(header) = RecordHeader::parse(head) else {
        return Ok((facts, 0));
    };
    facts.header_complete = true;
    let record_bytes = header.record_bytes();
    facts.length_fits = header.length_in_bounds() && record_bytes <= remaining;
    if !facts.length_fits {
        return Ok((facts, record_bytes));
    }
    let record = window.bytes(offset, usize_from(record_bytes))?;
    facts.checksum_ok = header.checksum_matches(record);
    facts.position_expected = facts.checksum_ok && header.position == expected;
    Ok((facts, record_bytes))
}

/// A read-ahead window over a file, so scanning costs one read call per chunk, not per record.
struct Window<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn VfsFile, path: &'a Path, file_len: u64) -> Self {
        Self { file, path, file_len, buf: Vec::new(), start: 0 }
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the file).
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        let end = offset + u64_from(len);
        let held = self.start + u64_from(self.buf.len());
        if offset < self.start || end > held {
            let want =
                usize_from(self.file_len.saturating_sub(offset)).min(len.max(READ_CHUNK_BYTES));
            self.buf.resize(want, 0);
            let got = self
                .file
                .read_full_at(&mut self.buf, offset)
                .map_err(|e| Error::io("read segment", self.path, e))?;
            self.buf.truncate(got);
            self.start = offset;
        }
        let from = usize_from(offset - self.start);
        let to = (from + len).min(self.buf.len());
        Ok(&self.buf[from..to])
    }
}
