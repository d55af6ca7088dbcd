//! Inspecting a log directory offline: every segment scanned whole through the recovery decision
//! table, and past each finding on to the end, so the report says what is damaged, what the next
//! open would cut, and what a repair would move aside.

use std::path::{Path, PathBuf};

use crate::{
    error::{CorruptReason, Error, Result},
    format::{
        record::{BATCH_FORMAT_VERSION, RecordHeader},
        segment::segment_file_name,
    },
    limits::{RECORD_HEADER_BYTES_USIZE, SEGMENT_HEADER_BYTES},
    open::segment_bases,
    recovery::{TornReason, Truncation},
    scan::{Stop, Window, sound_record_after, walk_segment},
    vfs::{OpenMode, Vfs},
};

/// What an offline inspection found in a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The log directory.
    pub dir: PathBuf,
    /// Every segment file, in position order.
    pub segments: Vec<SegmentInspection>,
    /// The first damage in position order: the open refuses (in the last segment, or with
    /// `verify_on_open`) or a reader fails there. `None` when the log is sound.
    pub damage: Option<Damage>,
    /// The torn tail the next open cuts, when nothing is damaged before it.
    pub torn_tail: Option<Truncation>,
    /// Leftover `*.tmp` files the next open removes.
    pub temp_files: usize,
    /// Quarantine files earlier repairs left in the directory (never read by the log).
    pub quarantine_files: Vec<PathBuf>,
}

/// One segment file as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInspection {
    /// The segment file.
    pub path: PathBuf,
    /// Its base position (from its name).
    pub base: u64,
    /// Its format version, if its header is sound.
    pub format_version: Option<u32>,
    /// Sound records from its start up to its end or its finding.
    pub records: u64,
    /// The position after them.
    pub end: u64,
    /// Bytes from the file's start to the end of its last sound, complete batch: its length when
    /// nothing is wrong, where a cut leaves it otherwise.
    pub sound_bytes: u64,
    /// The file's length.
    pub bytes: u64,
    /// What is wrong in it, if anything.
    pub finding: Option<Finding>,
}

/// Something wrong inside one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Byte offset of the bad record (0 for a bad header; the first record of a batch left
    /// incomplete).
    pub offset: u64,
    /// The position expected there.
    pub position: u64,
    /// What is wrong.
    pub problem: Problem,
    /// For damage: the sound records found after the bad bytes in this segment. For a torn
    /// tail: the sound records of the interrupted batch that the cut removes with it.
    pub sound_records_after: u64,
}

/// The kind of a [`Finding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A torn tail of the last segment: the next open cuts it.
    TornTail(TornReason),
    /// Damage the open (or a reader) refuses.
    Corrupt(CorruptReason),
}

/// The first damage of a log, in position order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file holding it.
    pub segment: PathBuf,
    /// Byte offset within it.
    pub offset: u64,
    /// The position expected there.
    pub position: u64,
    /// What is wrong.
    pub reason: CorruptReason,
}

impl Inspection {
    /// Whether anything is damaged (a torn tail is not damage: the next open cuts it).
    #[must_use]
    pub fn is_damaged(&self) -> bool {
        self.damage.is_some()
    }

    /// The first position in the log (of its first segment); 1 for an empty directory.
    #[must_use]
    pub fn first_position(&self) -> u64 {
        self.segments.first().map_or(1, |segment| segment.base)
    }

    /// The last position of a sound log (after the torn tail is cut); 0 if it holds none.
    #[must_use]
    pub fn last_position(&self) -> u64 {
        let end = self.segments.last().map_or(1, |segment| segment.end);
        end - 1
    }
}

/// Scans every segment of `dir` (whose lock the caller holds).
pub(crate) fn inspect(vfs: &dyn Vfs, dir: &Path) -> Result<Inspection> {
    let names = vfs.read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    let bases = segment_bases(&names);
    let mut segments = Vec::with_capacity(bases.len());
    for (i, base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        segments.push(inspect_segment(vfs, &dir.join(segment_file_name(*base)), *base, last)?);
    }
    let (damage, torn_tail) = first_damage(&segments);
    let mut quarantine_files: Vec<PathBuf> =
        names.iter().filter(|n| n.ends_with(".quarantine")).map(|n| dir.join(n)).collect();
    quarantine_files.sort();
    Ok(Inspection {
        dir: dir.to_path_buf(),
        segments,
        damage,
        torn_tail,
        temp_files: names.iter().filter(|n| n.ends_with(".tmp")).count(),
        quarantine_files,
    })
}

/// The first damage in position order — a refused finding, or a segment that does not continue
/// its predecessor — and, if there is none, the torn tail of the last segment.
fn first_damage(segments: &[SegmentInspection]) -> (Option<Damage>, Option<Truncation>) {
    for (i, segment) in segments.iter().enumerate() {
        if let Some(Finding { offset, position, problem: Problem::Corrupt(reason), .. }) =
            segment.finding
        {
            let segment = segment.path.clone();
            return (Some(Damage { segment, offset, position, reason }), None);
        }
        if let Some(next) = segments.get(i + 1)
            && segment.end != next.base
        {
            let damage = Damage {
                segment: segment.path.clone(),
                offset: segment.bytes,
                position: segment.end,
                reason: CorruptReason::SegmentGap,
            };
            return (Some(damage), None);
        }
    }
    let torn_tail = segments.last().and_then(|segment| match segment.finding {
        Some(Finding { problem: Problem::TornTail(reason), sound_records_after, .. }) => {
            Some(Truncation {
                segment: segment.path.clone(),
                offset: segment.sound_bytes,
                bytes_removed: segment.bytes - segment.sound_bytes,
                position: segment.end,
                records_removed: sound_records_after,
                reason,
            })
        }
        _ => None,
    });
    (None, torn_tail)
}

fn inspect_segment(vfs: &dyn Vfs, path: &Path, base: u64, last: bool) -> Result<SegmentInspection> {
    let walk = match walk_segment(vfs, base, path, last, None) {
        Ok(walk) => walk,
        Err(Error::Corrupt { offset, reason, .. }) => {
            // A bad header: nothing of the segment can be trusted; count what looks sound.
            let (sound, _) =
                count_sound_records(vfs, path, SEGMENT_HEADER_BYTES, base, BATCH_FORMAT_VERSION)?;
            let problem = Problem::Corrupt(reason);
            let finding = Finding { offset, position: base, problem, sound_records_after: sound };
            return Ok(SegmentInspection {
                path: path.to_path_buf(),
                base,
                format_version: None,
                records: 0,
                end: base,
                sound_bytes: 0,
                bytes: file_len(vfs, path)?,
                finding: Some(finding),
            });
        }
        Err(other) => return Err(other),
    };
    let finding = match walk.stop {
        Stop::End => None,
        Stop::Cut(cut) => Some(Finding {
            offset: cut.offset,
            position: cut.position,
            problem: Problem::TornTail(cut.reason),
            sound_records_after: cut.records,
        }),
        Stop::Fail(failure) => {
            let from = failure.offset + 1;
            let (sound, _) = count_sound_records(vfs, path, from, failure.position, walk.version)?;
            Some(Finding {
                offset: failure.offset,
                position: failure.position,
                problem: Problem::Corrupt(failure.reason),
                sound_records_after: sound,
            })
        }
    };
    Ok(SegmentInspection {
        path: path.to_path_buf(),
        base,
        format_version: Some(walk.version),
        records: walk.end - base,
        end: walk.end,
        sound_bytes: walk.valid_bytes,
        bytes: walk.file_len,
        finding,
    })
}

fn file_len(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    let file = vfs.open(path, OpenMode::Read).map_err(|e| Error::io("open segment", path, e))?;
    file.size().map_err(|e| Error::io("stat segment", path, e))
}

/// The sound records in a segment from byte `from` on, found at any offset with positions from
/// `expected` on (skipping bad bytes): how many, and the last one's position.
pub(crate) fn count_sound_records(
    vfs: &dyn Vfs,
    path: &Path,
    from: u64,
    expected: u64,
    version: u32,
) -> Result<(u64, Option<u64>)> {
    let file = vfs.open(path, OpenMode::Read).map_err(|e| Error::io("open segment", path, e))?;
    let len = file.size().map_err(|e| Error::io("stat segment", path, e))?;
    let mut window = Window::new(file.as_ref(), path, len);
    let (mut at, mut expected, mut count, mut last) = (from, expected, 0, None);
    while let Some((offset, position)) = sound_record_after(&mut window, at, expected, version)? {
        let header = window.bytes(offset, RECORD_HEADER_BYTES_USIZE)?;
        let record_bytes = RecordHeader::parse(header).map_or(1, |h| h.record_bytes());
        count += 1;
        last = Some(position);
        at = offset + record_bytes;
        expected = position + 1;
    }
    Ok((count, last))
}
