//! Scanning a segment file record by record through the recovery decision table.
//!
//! Used for the last segment when a log opens, for every segment by `verify`, `verify_on_open`
//! and the offline inspection, and to rebuild a missing or bad sparse index. The scan only reads
//! and decides: it stops at the first record the table cuts or refuses, or at the end, and says
//! where and why ([`Walk`]); cutting the file is the caller's business ([`crate::open`]), and so
//! is turning a refusal into an error ([`scan_segment`]).
//!
//! It keeps track of the open batch — the records since the last one whose batch ended — so that
//! a cut starts where the interrupted batch started. After bad bytes it looks ahead for a sound
//! record (one whose checksum matches and whose position is at or after the expected one, at any
//! byte offset): that is the fact that tells corruption from a torn tail.

use std::path::Path;

use crate::{
    error::{CorruptReason, Error, Result},
    format::{index::SparseIndex, record::RecordHeader, segment::read_segment_header},
    limits::{
        INDEX_INTERVAL_BYTES, READ_CHUNK_BYTES, RECORD_HEADER_BYTES,
        RECORD_HEADER_BYTES_USIZE as HEADER, SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    recovery::{Decision, Facts, TornReason, decide},
    vfs::{OpenMode, Vfs, VfsFile},
};

/// The result of scanning one segment up to where it stopped.
#[derive(Debug)]
pub(crate) struct Walk {
    /// The segment's format version (from its header).
    pub version: u32,
    /// One past the last position kept: the position the log continues with after a cut.
    pub end: u64,
    /// Bytes of the file up to the end of the last record kept (the new length after a cut).
    pub valid_bytes: u64,
    /// Length of the file as found (or the extent the scan was limited to).
    pub file_len: u64,
    /// The sparse index of the records kept.
    pub index: SparseIndex,
    /// Why the scan stopped.
    pub stop: Stop,
}

/// Where and why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// At the end of the segment, after a complete batch.
    End,
    /// At a torn tail of the last segment.
    Cut(Cut),
    /// At damage the table refuses.
    Fail(Failure),
}

/// A torn tail: the bytes from `offset` on go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Where the cut starts: the first record of the interrupted batch, or the first bad byte.
    pub offset: u64,
    /// The position of the first record cut (what the next append gets).
    pub position: u64,
    /// Sound records of the interrupted batch that go with it.
    pub records: u64,
    pub reason: TornReason,
}

/// Damage the table refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Where the damage is: the bad record, or the first record of a batch left incomplete.
    pub offset: u64,
    /// The position expected there.
    pub position: u64,
    pub reason: CorruptReason,
    /// Where the batch holding the damage starts, and its first position: a repair cuts there,
    /// because a batch is all or nothing.
    pub batch_offset: u64,
    pub batch_position: u64,
}

impl Failure {
    pub(crate) fn error(&self, path: &Path) -> Error {
        Error::Corrupt { file: path.to_path_buf(), offset: self.offset, reason: self.reason }
    }
}

/// What opening a log and rebuilding an index need: the kept extent, and the torn tail to cut.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub version: u32,
    /// One past the last kept record's position.
    pub end: u64,
    /// Bytes of the file up to the end of the last kept record.
    pub valid_bytes: u64,
    /// Length of the file as found.
    pub file_len: u64,
    /// The rebuilt sparse index.
    pub index: SparseIndex,
    /// The torn tail to cut (last segment only).
    pub cut: Option<Cut>,
}

/// Scans a segment through the decision table; a refusal is [`Error::Corrupt`] naming the file
/// and the offset. With `unsynced` (the last segment of a log under `FsyncPolicy::Never`, none
/// of whose bytes were promised to survive a power loss), damage in the last segment is cut
/// from the start of its batch instead ([`TornReason::UnsyncedDamage`]).
pub(crate) fn scan_segment(
    vfs: &dyn Vfs,
    base: u64,
    path: &Path,
    last_segment: bool,
    unsynced: bool,
) -> Result<ScanOutcome> {
    let walk = walk_segment(vfs, base, path, last_segment, None)?;
    let cut = match walk.stop {
        Stop::End => None,
        Stop::Cut(cut) => Some(cut),
        Stop::Fail(failure) if last_segment && unsynced => Some(Cut {
            offset: failure.batch_offset,
            position: failure.batch_position,
            records: 0,
            reason: TornReason::UnsyncedDamage(failure.reason),
        }),
        Stop::Fail(failure) => return Err(failure.error(path)),
    };
    let Walk { version, end, valid_bytes, file_len, index, .. } = walk;
    Ok(ScanOutcome { version, end, valid_bytes, file_len, index, cut })
}

/// Scans a segment record by record (only its first `extent` bytes, if given), applying the
/// decision table, until it ends or the table cuts or refuses. Errors are I/O errors and a bad
/// segment header.
pub(crate) fn walk_segment(
    vfs: &dyn Vfs,
    base: u64,
    path: &Path,
    last_segment: bool,
    extent: Option<u64>,
) -> Result<Walk> {
    let file = vfs.open(path, OpenMode::Read).map_err(|e| Error::io("open segment", path, e))?;
    let version = read_segment_header(file.as_ref(), path, base)?;
    let size = file.size().map_err(|e| Error::io("stat segment", path, e))?;
    let file_len = extent.map_or(size, |extent| extent.min(size));
    let mut window = Window::new(file.as_ref(), path, file_len);
    let mut entries = Vec::new();
    let (mut offset, mut expected) = (SEGMENT_HEADER_BYTES, base);
    let mut last_indexed: Option<u64> = None;
    // The open batch: offset and position of its first record, and its records so far.
    let mut batch: Option<(u64, u64, u64)> = None;
    let stop = loop {
        let seen = observe(&mut window, offset, expected, version)?;
        let facts = Facts { last_segment, batch_open: batch.is_some(), ..seen.facts };
        match decide(facts) {
            Decision::Keep => {
                if last_indexed.is_none_or(|at| offset - at >= INDEX_INTERVAL_BYTES) {
                    entries.push((expected, offset));
                    last_indexed = Some(offset);
                }
                batch = if seen.batch_continues {
                    let (at, first, records) = batch.unwrap_or((offset, expected, 0));
                    Some((at, first, records + 1))
                } else {
                    None
                };
                offset += seen.record_bytes;
                expected += 1;
            }
            Decision::End => break Stop::End,
            Decision::Cut(reason) => {
                let (at, position, records) = batch.unwrap_or((offset, expected, 0));
                break Stop::Cut(Cut { offset: at, position, records, reason });
            }
            Decision::Fail(reason) => {
                let (batch_offset, batch_position, _) = batch.unwrap_or((offset, expected, 0));
                let (offset, position) = if facts.at_end {
                    (batch_offset, batch_position) // the batch left incomplete
                } else {
                    (offset, expected)
                };
                break Stop::Fail(Failure {
                    offset,
                    position,
                    reason,
                    batch_offset,
                    batch_position,
                });
            }
        }
    };
    let (end, valid_bytes) = match stop {
        Stop::End => (expected, offset),
        Stop::Cut(cut) => (cut.position, cut.offset),
        Stop::Fail(failure) => (failure.batch_position, failure.batch_offset),
    };
    entries.retain(|&(_, at)| at < valid_bytes);
    let mut index = SparseIndex::new(base);
    index.extend(&entries);
    Ok(Walk { version, end, valid_bytes, file_len, index, stop })
}

/// What a scan sees at one offset.
struct Seen {
    /// Every fact but the segment's (last, batch open), which the caller knows.
    facts: Facts,
    record_bytes: u64,
    batch_continues: bool,
}

/// Observes the facts at `offset`: the end of the bytes, or a record; after bad bytes, whether a
/// sound record follows.
fn observe(window: &mut Window<'_>, offset: u64, expected: u64, version: u32) -> Result<Seen> {
    let mut seen = Seen {
        facts: Facts {
            last_segment: false,
            at_end: offset >= window.file_len,
            header_complete: false,
            length_fits: false,
            checksum_ok: false,
            position_expected: false,
            sound_record_follows: false,
            batch_open: false,
        },
        record_bytes: 0,
        batch_continues: false,
    };
    if seen.facts.at_end {
        return Ok(seen);
    }
    if let Some(header) = RecordHeader::parse(window.bytes(offset, HEADER)?) {
        seen.facts.header_complete = true;
        seen.record_bytes = header.record_bytes();
        seen.batch_continues = header.batch_continues;
        seen.facts.length_fits =
            header.length_word_valid(version) && seen.record_bytes <= window.file_len - offset;
        if seen.facts.length_fits {
            let record = window.bytes(offset, usize_from(seen.record_bytes))?;
            seen.facts.checksum_ok = header.checksum_matches(record);
            seen.facts.position_expected = seen.facts.checksum_ok && header.position == expected;
        }
    }
    if !seen.facts.record_sound() {
        seen.facts.sound_record_follows =
            sound_record_after(window, offset + 1, expected, version)?.is_some();
    }
    Ok(seen)
}

/// The first sound record starting at or after byte `from`, at any offset, whose position is at
/// or after `expected` (and no further than the bytes left could hold): its offset and position.
/// Records before `expected` cannot be later data, so they do not count.
pub(crate) fn sound_record_after(
    window: &mut Window<'_>,
    from: u64,
    expected: u64,
    version: u32,
) -> Result<Option<(u64, u64)>> {
    let file_len = window.file_len;
    let positions_max = (file_len.saturating_sub(from) / RECORD_HEADER_BYTES).max(1);
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= file_len {
        let Some(header) = RecordHeader::parse(window.bytes(at, HEADER)?) else {
            return Ok(None); // the file is shorter than it was a moment ago
        };
        let plausible = header.position >= expected
            && header.position - expected < positions_max
            && header.length_word_valid(version)
            && header.record_bytes() <= file_len - at;
        if plausible {
            let record = window.bytes(at, usize_from(header.record_bytes()))?;
            if header.checksum_matches(record) {
                return Ok(Some((at, header.position)));
            }
        }
        at += 1;
    }
    Ok(None)
}

/// A read-ahead window over a file, so scanning costs one read call per chunk, not per record.
pub(crate) struct Window<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    /// The bytes the scan looks at: the file's length, or less.
    pub(crate) file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    pub(crate) fn new(file: &'a dyn VfsFile, path: &'a Path, file_len: u64) -> Self {
        Self { file, path, file_len, buf: Vec::new(), start: 0 }
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the file).
    pub(crate) fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
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
