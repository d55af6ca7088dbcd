//! Repairing a damaged log offline: cut it at the start of the damaged batch and move everything
//! from there on aside, into quarantine files next to the segments — never deleting a byte.
//!
//! Positions must stay contiguous (a gap is refused by every reader and by recovery), so the
//! sound records *after* the damage cannot stay in the log either: they go to quarantine with
//! the damaged batch, and the log continues at the damaged batch's first position. What moves:
//!
//! - the rest of the damaged segment, from the start of the damaged batch: copied into
//!   `<segment>.at-<offset>.quarantine` (byte 0 of it is byte `offset` of the segment), then the
//!   segment is truncated there;
//! - every later segment, whole: renamed to `<segment>.at-0.quarantine`;
//! - a damaged header of the first segment: the whole file is copied aside and the segment is
//!   rewritten as an empty one of the same base; a damaged header of a later segment: that
//!   segment and the later ones move, and the log is cut at the end of the one before;
//! - segments that do not continue each other: the later ones move.
//!
//! A name already taken gets a number (`.at-<offset>.2.quarantine`, …). Index files of the
//! segments touched are removed (they are caches). Every step is durable before the next, in an
//! order that leaves, after a crash at any point, either the damage (run the repair again; a
//! second copy of the tail is harmless) or the repaired log: the tail is copied (fsync, rename,
//! directory fsync) before anything is cut, later segments move last first (so the segments left
//! are always a contiguous run), and the cut comes last.
//!
//! **Retiring the quarantined positions** ([`RepairPlan::retire_with`]): a user of the log that
//! remembers positions (the engine's subscriptions) must not see a quarantined position handed
//! to a new record. With a filler payload the cut segment is rebuilt as its kept bytes followed
//! by one filler record (a batch of its own) for every position from the cut to the highest
//! quarantined one, so the log continues after them. The rebuilt segment is written to a
//! temporary file, fsynced and renamed over the old one *before* the later segments move: a
//! crash before the rename leaves the damage, one after it leaves segments that overlap the
//! filler, which the next inspection reports and the next repair moves aside — so the highest
//! quarantined position is never forgotten half-way.

use std::{
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::inspect::{Damage, Inspection, SegmentInspection, count_sound_records};
use crate::{
    error::{CorruptReason, Error, Result},
    format::{
        record::{BATCH_FORMAT_VERSION, encode_record},
        segment::{
            create_segment_file, encode_segment_header, index_file_name, parse_segment_file_name,
        },
    },
    limits::{
        QUARANTINE_NAMES_MAX, READ_CHUNK_BYTES, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_LIMIT,
        SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    vfs::{self, OpenMode, Vfs},
};

/// What a repair will do (see the module docs); made by
/// [`OfflineLog::plan_repair`](super::OfflineLog::plan_repair) only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairPlan {
    /// The log directory.
    pub dir: PathBuf,
    /// The damage repaired.
    pub damage: Damage,
    /// The segment the log is cut in; it becomes the last one.
    pub segment: PathBuf,
    /// Its new length: the start of the damaged batch.
    pub offset: u64,
    /// Whether its header is rewritten (its own was damaged: none of it is kept).
    pub rewrite_header: bool,
    /// The position the log continues with: the first one quarantined.
    pub next_position: u64,
    /// Bytes moved aside, in the order they move.
    pub moves: Vec<QuarantineMove>,
    /// Sound records among the bytes moved aside (they leave the log, kept in quarantine).
    pub records_quarantined: u64,
    /// The highest position among them.
    pub last_position_quarantined: Option<u64>,
    /// The payload of the filler records that retire the quarantined positions, if any (see
    /// [`RepairPlan::retire_with`]).
    pub filler: Option<Bytes>,
}

impl RepairPlan {
    /// Retires the quarantined positions instead of handing them to new records: the repair
    /// writes one record holding `payload` at every position from [`next_position`] to the
    /// highest position seen among the quarantined bytes (see the module docs), and the log
    /// continues after them.
    ///
    /// [`next_position`]: RepairPlan::next_position
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] when `payload` is larger than a record may be, or the filler
    /// records would not fit in one segment ([`SEGMENT_BYTES_MAX`]).
    pub fn retire_with(mut self, payload: Bytes) -> Result<Self> {
        let records = self.retired().map_or(0, |range| range.end() - range.start() + 1);
        let frame = u64_from(payload.len()) + RECORD_HEADER_BYTES;
        let fits = payload.len() <= usize_from(u64::from(RECORD_PAYLOAD_BYTES_LIMIT))
            && records
                .checked_mul(frame)
                .and_then(|bytes| bytes.checked_add(self.offset))
                .is_some_and(|end| end <= SEGMENT_BYTES_MAX);
        if !fits {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "{records} filler records of {} bytes do not fit in one segment",
                    payload.len()
                ),
            });
        }
        self.filler = Some(payload);
        Ok(self)
    }

    /// The positions a repair with a filler retires: `next_position..=` the highest quarantined.
    #[must_use]
    pub fn retired(&self) -> Option<RangeInclusive<u64>> {
        self.last_position_quarantined
            .filter(|last| *last >= self.next_position)
            .map(|last| self.next_position..=last)
    }
}

/// Bytes of one file moved into one quarantine file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineMove {
    /// The segment file they come from.
    pub from: PathBuf,
    /// Where in it they start.
    pub from_offset: u64,
    /// How many.
    pub bytes: u64,
    /// The quarantine file that keeps them.
    pub to: PathBuf,
    /// Whether the whole file is renamed (a later segment) rather than its tail copied.
    pub whole_file: bool,
}

/// The plan for the first damage of an inspection, if there is any.
pub(crate) fn plan(vfs: &dyn Vfs, inspection: &Inspection) -> Result<Option<RepairPlan>> {
    let Some(damage) = inspection.damage.clone() else {
        return Ok(None);
    };
    let segments = &inspection.segments;
    let at = segments
        .iter()
        .position(|segment| segment.path == damage.segment)
        .expect("the damage is in an inspected segment");
    let header_damaged =
        matches!(damage.reason, CorruptReason::BadHeader | CorruptReason::BaseMismatch);
    // The segment cut, its new length, the position the log continues with, the first segment
    // moved whole.
    let (cut, offset, next_position, whole_from) = if damage.reason == CorruptReason::SegmentGap {
        (at, segments[at].bytes, segments[at].end, at + 1)
    } else if header_damaged && at > 0 {
        (at - 1, segments[at - 1].bytes, segments[at - 1].end, at)
    } else if header_damaged {
        (at, 0, segments[at].base, at + 1)
    } else {
        (at, segments[at].sound_bytes, segments[at].end, at + 1)
    };
    let mut taken = inspection.quarantine_files.clone();
    let mut moves = Vec::new();
    let (mut records, mut last) = (0, None);
    let cut_segment = &segments[cut];
    if offset < cut_segment.bytes {
        let to = quarantine_name(&cut_segment.path, offset, &mut taken)?;
        let bytes = cut_segment.bytes - offset;
        moves.push(QuarantineMove {
            from: cut_segment.path.clone(),
            from_offset: offset,
            bytes,
            to,
            whole_file: false,
        });
        let from = offset.max(SEGMENT_HEADER_BYTES);
        let version = cut_segment.format_version.unwrap_or(BATCH_FORMAT_VERSION);
        let (count, highest) =
            count_sound_records(vfs, &cut_segment.path, from, next_position, version)?;
        (records, last) = (records + count, highest.or(last));
    }
    for segment in &segments[whole_from..] {
        let to = quarantine_name(&segment.path, 0, &mut taken)?;
        let (count, highest) = count_whole(vfs, segment)?;
        (records, last) = (records + count, highest.or(last));
        let from = segment.path.clone();
        moves.push(QuarantineMove {
            from,
            from_offset: 0,
            bytes: segment.bytes,
            to,
            whole_file: true,
        });
    }
    Ok(Some(RepairPlan {
        dir: inspection.dir.clone(),
        damage,
        segment: cut_segment.path.clone(),
        offset: offset.max(SEGMENT_HEADER_BYTES),
        rewrite_header: offset < SEGMENT_HEADER_BYTES,
        next_position,
        moves,
        records_quarantined: records,
        last_position_quarantined: last,
        filler: None,
    }))
}

/// The sound records of a whole segment, whatever its header says.
fn count_whole(vfs: &dyn Vfs, segment: &SegmentInspection) -> Result<(u64, Option<u64>)> {
    let version = segment.format_version.unwrap_or(BATCH_FORMAT_VERSION);
    count_sound_records(vfs, &segment.path, SEGMENT_HEADER_BYTES, segment.base, version)
}

/// The first free quarantine name for the bytes of `segment` from `offset` on.
fn quarantine_name(segment: &Path, offset: u64, taken: &mut Vec<PathBuf>) -> Result<PathBuf> {
    let name = segment.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for attempt in 1..=QUARANTINE_NAMES_MAX {
        let numbered = if attempt == 1 { String::new() } else { format!(".{attempt}") };
        let path = segment.with_file_name(format!("{name}.at-{offset}{numbered}.quarantine"));
        if !taken.contains(&path) {
            taken.push(path.clone());
            return Ok(path);
        }
    }
    Err(Error::io(
        "name a quarantine file",
        segment,
        std::io::Error::other(format!("{QUARANTINE_NAMES_MAX} quarantine files of it exist")),
    ))
}

/// Carries out a plan (see the module docs for the order and why).
pub(crate) fn execute(vfs: &dyn Vfs, plan: &RepairPlan) -> Result<()> {
    let dir = &plan.dir;
    let sync_dir = || vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e));
    for tail in plan.moves.iter().filter(|m| !m.whole_file) {
        copy_durably(vfs, &tail.from, tail.from_offset, tail.bytes, &tail.to, &[])?;
        sync_dir()?;
    }
    if let Some(filler) = &plan.filler {
        // The rebuilt segment replaces the old one before the later segments move (module docs).
        remove_index_of(vfs, &plan.segment)?;
        rebuild_with_filler(vfs, plan, filler)?;
        sync_dir()?;
    }
    for whole in plan.moves.iter().filter(|m| m.whole_file).rev() {
        remove_index_of(vfs, &whole.from)?;
        vfs.rename(&whole.from, &whole.to)
            .map_err(|e| Error::io("move segment to quarantine", &whole.from, e))?;
        sync_dir()?;
    }
    if plan.filler.is_none() {
        remove_index_of(vfs, &plan.segment)?;
        if plan.rewrite_header {
            create_segment_file(vfs, dir, plan.next_position)?;
        } else {
            let path = &plan.segment;
            let file = vfs
                .open(path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment to cut", path, e))?;
            file.set_len(plan.offset).map_err(|e| Error::io("cut segment", path, e))?;
            file.sync_data().map_err(|e| Error::io("fsync cut segment", path, e))?;
        }
        sync_dir()?;
    }
    tracing::warn!(?plan, "repaired a damaged log");
    Ok(())
}

/// Writes the cut segment anew — its kept bytes (or a fresh header), then a filler record at
/// every retired position — to a temporary file, and renames it over the old one. A filler record
/// is a batch of its own, whose bytes are the same in format 1 and 2, so a format-1 segment
/// stays one.
fn rebuild_with_filler(vfs: &dyn Vfs, plan: &RepairPlan, filler: &Bytes) -> Result<()> {
    let mut records = Vec::new();
    for position in plan.retired().into_iter().flatten() {
        encode_record(&mut records, position, filler);
    }
    let (kept, header) = if plan.rewrite_header {
        (0, encode_segment_header(plan.next_position).to_vec())
    } else {
        (plan.offset, Vec::new())
    };
    let mut tail = header;
    tail.extend_from_slice(&records);
    copy_durably(vfs, &plan.segment, 0, kept, &plan.segment, &tail)
}

/// Copies `bytes` bytes of `from` starting at `from_offset`, then `extra`, into a temporary
/// file, fsyncs it and renames it to `to`.
fn copy_durably(
    vfs: &dyn Vfs,
    from: &Path,
    from_offset: u64,
    bytes: u64,
    to: &Path,
    extra: &[u8],
) -> Result<()> {
    let tmp = to.with_extension(format!(
        "{}.tmp",
        to.extension().and_then(|ext| ext.to_str()).unwrap_or_default()
    ));
    vfs::remove_if_present(vfs, &tmp).map_err(|e| Error::io("remove stale temp file", &tmp, e))?;
    let source = vfs.open(from, OpenMode::Read).map_err(|e| Error::io("open segment", from, e))?;
    let target = vfs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create temporary file", &tmp, e))?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut done = 0;
    while done < bytes {
        let want = usize_from((bytes - done).min(u64_from(READ_CHUNK_BYTES)));
        let got = source
            .read_full_at(&mut buf[..want], from_offset + done)
            .map_err(|e| Error::io("read segment", from, e))?;
        if got == 0 {
            break; // the file is shorter than inspected: nothing more to keep
        }
        target
            .write_all_at(&buf[..got], done)
            .map_err(|e| Error::io("write temporary file", &tmp, e))?;
        done += u64_from(got);
    }
    if !extra.is_empty() {
        target.write_all_at(extra, done).map_err(|e| Error::io("write temporary file", &tmp, e))?;
    }
    target.sync_data().map_err(|e| Error::io("fsync temporary file", &tmp, e))?;
    drop(target);
    vfs.rename(&tmp, to).map_err(|e| Error::io("rename temporary file", to, e))
}

fn remove_index_of(vfs: &dyn Vfs, segment: &Path) -> Result<()> {
    let name = segment.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    let Some(base) = parse_segment_file_name(name) else {
        return Ok(());
    };
    let index = segment.with_file_name(index_file_name(base));
    vfs::remove_if_present(vfs, &index).map_err(|e| Error::io("remove index", &index, e))
}
