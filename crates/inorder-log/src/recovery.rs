//! Recovery: what the log decides about the bytes a crash (or a bad disk) left behind.
//!
//! Every record met while scanning a segment is reduced to five observed facts, and one table
//! maps the facts to one decision. The table is the whole policy:
//!
//! | last segment | header complete | length fits | checksum ok | position expected | decision |
//! |---|---|---|---|---|---|
//! | any | yes | yes | yes | yes | **keep** |
//! | any | yes | yes | yes | no  | **fail**: position out of sequence |
//! | yes | no  | –   | –   | –   | **cut** torn tail |
//! | yes | yes | no  | –   | –   | **cut** torn tail |
//! | yes | yes | yes | no  | –   | **cut** torn tail |
//! | no  | no  | –   | –   | –   | **fail**: truncated |
//! | no  | yes | no  | –   | –   | **fail**: bad length |
//! | no  | yes | yes | no  | –   | **fail**: checksum mismatch |
//!
//! Why: only the last segment is ever written to, so only its end can hold a write the crash
//! interrupted (sealed segments were fsynced before the writer moved on). A record with a valid
//! checksum but the wrong position cannot come from a torn write, so it fails everywhere.
//! A cut truncates the file at the first bad record, fsyncs the truncation, and is reported
//! ([`RecoveryReport::truncation`]); a failure names file and offset and opens nothing.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    error::{CorruptReason, Error, Result},
    index::SparseIndex,
    limits::{
        INDEX_INTERVAL_BYTES, READ_CHUNK_BYTES, RECORD_HEADER_BYTES_USIZE as HEADER,
        SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    options::LogOptions,
    record::RecordHeader,
    segment::{self, Segment, SegmentMap},
    vfs::{OpenMode, Vfs, VfsFile},
};

/// What opening a log found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found (or created).
    pub segments: usize,
    /// The first position still in the log.
    pub first_position: u64,
    /// The position the next append will get.
    pub next_position: u64,
    /// The torn tail cut from the last segment, if any.
    pub truncation: Option<Truncation>,
    /// Leftover temporary files (from a crash mid-rename) that were removed.
    pub temp_files_removed: usize,
}

/// A torn tail cut from the last segment on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file that was truncated.
    pub segment: PathBuf,
    /// Byte offset of the first bad record; the file now ends here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// The position the bad record would have had.
    pub position: u64,
    /// What was wrong with the bad record.
    pub reason: TornReason,
}

/// Why the tail of the last segment was judged torn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// The file ends inside a record header.
    IncompleteHeader,
    /// The length field runs past the end of the file or the format's limit.
    LengthOutOfBounds,
    /// The record's checksum does not match.
    ChecksumMismatch,
}

/// The facts observed about one record. A fact whose precondition failed is `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub last_segment: bool,
    pub header_complete: bool,
    pub length_fits: bool,
    pub checksum_ok: bool,
    pub position_expected: bool,
}

/// The one outcome for a set of facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Keep,
    Cut(TornReason),
    Fail(CorruptReason),
}

/// A row of the table: `None` matches either value.
type Pattern = [Option<bool>; 5];

const Y: Option<bool> = Some(true);
const N: Option<bool> = Some(false);
const ANY: Option<bool> = None;

/// The decision table (see the module documentation).
const RULES: [(Pattern, Decision); 8] = [
    ([ANY, Y, Y, Y, Y], Decision::Keep),
    ([ANY, Y, Y, Y, N], Decision::Fail(CorruptReason::PositionOutOfSequence)),
    ([Y, N, ANY, ANY, ANY], Decision::Cut(TornReason::IncompleteHeader)),
    ([Y, Y, N, ANY, ANY], Decision::Cut(TornReason::LengthOutOfBounds)),
    ([Y, Y, Y, N, ANY], Decision::Cut(TornReason::ChecksumMismatch)),
    ([N, N, ANY, ANY, ANY], Decision::Fail(CorruptReason::Truncated)),
    ([N, Y, N, ANY, ANY], Decision::Fail(CorruptReason::BadLength)),
    ([N, Y, Y, N, ANY], Decision::Fail(CorruptReason::ChecksumMismatch)),
];

impl Facts {
    fn values(self) -> [bool; 5] {
        [
            self.last_segment,
            self.header_complete,
            self.length_fits,
            self.checksum_ok,
            self.position_expected,
        ]
    }

    fn matches(self, pattern: &Pattern) -> bool {
        self.values().iter().zip(pattern).all(|(value, want)| want.is_none_or(|w| w == *value))
    }
}

/// The decision for `facts`: the first (and, as a test proves, only) matching row.
pub(crate) fn decide(facts: Facts) -> Decision {
    RULES
        .iter()
        .find(|(pattern, _)| facts.matches(pattern))
        .map(|(_, decision)| *decision)
        .expect("the recovery table covers every combination of facts")
}

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
    segment::read_segment_header(file.as_ref(), path, base)?;
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

/// What recovery hands to the log.
pub(crate) struct Recovered {
    pub segments: SegmentMap,
    pub next_position: u64,
    pub report: RecoveryReport,
}

/// Opens the segments of a log directory, cutting a torn tail; creates the first segment of a
/// new log.
pub(crate) fn recover(vfs: &dyn Vfs, dir: &Path, options: &LogOptions) -> Result<Recovered> {
    let names = vfs.read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    let mut temp_files_removed = 0;
    let mut bases = Vec::new();
    for name in &names {
        if name.ends_with(".tmp") {
            let path = dir.join(name);
            vfs.remove_file(&path).map_err(|e| Error::io("remove temp file", &path, e))?;
            temp_files_removed += 1;
        } else if let Some(base) = segment::parse_segment_file_name(name) {
            bases.push(base);
        }
    }
    if temp_files_removed > 0 {
        vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e))?;
    }
    bases.sort_unstable();
    if bases.is_empty() {
        segment::create_segment_file(vfs, dir, 1)?;
        bases.push(1);
    }
    let mut segments = SegmentMap::new();
    let last_base = *bases.last().expect("at least one segment");
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let sealed = open_sealed(vfs, dir, base, next_base, options.verify_on_open)?;
        segments.insert(base, Arc::new(sealed));
    }
    let (active, truncation) = open_last(vfs, dir, last_base)?;
    let next_position = active.end();
    segments.insert(last_base, Arc::new(active));
    let first_position = bases[0];
    let report = RecoveryReport {
        segments: segments.len(),
        first_position,
        next_position,
        truncation,
        temp_files_removed,
    };
    Ok(Recovered { segments, next_position, report })
}

fn open_sealed(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    next_base: u64,
    verify: bool,
) -> Result<Segment> {
    let path = dir.join(segment::segment_file_name(base));
    let (committed_bytes, index) = if verify {
        let scan = scan_segment(vfs, base, &path, false)?;
        if scan.end != next_base {
            return Err(Error::Corrupt {
                file: path,
                offset: scan.valid_bytes,
                reason: CorruptReason::SegmentGap,
            });
        }
        (scan.file_len, Some(scan.index))
    } else {
        let file =
            vfs.open(&path, OpenMode::Read).map_err(|e| Error::io("open segment", &path, e))?;
        segment::read_segment_header(file.as_ref(), &path, base)?;
        (file.size().map_err(|e| Error::io("stat segment", &path, e))?, None)
    };
    Ok(Segment::new(dir, base, next_base, committed_bytes, true, index))
}

fn open_last(vfs: &dyn Vfs, dir: &Path, base: u64) -> Result<(Segment, Option<Truncation>)> {
    let path = dir.join(segment::segment_file_name(base));
    let scan = scan_segment(vfs, base, &path, true)?;
    let truncation = match scan.cut {
        None => None,
        Some((offset, reason)) => {
            let file = vfs
                .open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment for truncation", &path, e))?;
            file.set_len(offset).map_err(|e| Error::io("truncate torn tail", &path, e))?;
            file.sync_data().map_err(|e| Error::io("fsync truncation", &path, e))?;
            let truncation = Truncation {
                segment: path.clone(),
                offset,
                bytes_removed: scan.file_len - offset,
                position: scan.end,
                reason,
            };
            tracing::warn!(?truncation, "cut a torn tail from the last segment");
            Some(truncation)
        }
    };
    let segment = Segment::new(dir, base, scan.end, scan.valid_bytes, false, Some(scan.index));
    Ok((segment, truncation))
}

/// Removes a file, treating "already gone" as done.
pub(crate) fn remove_if_present(vfs: &dyn Vfs, path: &Path) -> Result<()> {
    match vfs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_facts() -> impl Iterator<Item = Facts> {
        (0..32u8).map(|bits| Facts {
            last_segment: bits & 1 != 0,
            header_complete: bits & 2 != 0,
            length_fits: bits & 4 != 0,
            checksum_ok: bits & 8 != 0,
            position_expected: bits & 16 != 0,
        })
    }

    #[test]
    fn every_combination_of_facts_matches_exactly_one_rule() {
        for facts in all_facts() {
            let matching = RULES.iter().filter(|(pattern, _)| facts.matches(pattern)).count();
            assert_eq!(matching, 1, "{facts:?} matches {matching} rules");
        }
    }

    #[test]
    fn only_the_last_segment_is_ever_cut() {
        for facts in all_facts() {
            match decide(facts) {
                Decision::Cut(_) => assert!(facts.last_segment, "{facts:?}"),
                Decision::Keep => assert!(facts.checksum_ok && facts.position_expected),
                Decision::Fail(_) => {}
            }
        }
    }

    #[test]
    fn a_sound_record_is_kept_in_any_segment() {
        for last_segment in [false, true] {
            let facts = Facts {
                last_segment,
                header_complete: true,
                length_fits: true,
                checksum_ok: true,
                position_expected: true,
            };
            assert_eq!(decide(facts), Decision::Keep);
        }
    }
}
