//! Opening a log directory: what is on disk becomes the in-memory segment map.
//!
//! Leftover temporary files (a crash mid-rename) are removed; the last segment is scanned record
//! by record ([`crate::scan`]) and a torn tail the decision table cuts ([`crate::recovery`]) is
//! truncated and fsynced before anything is appended; damage the table refuses fails the open,
//! naming file and offset. Sealed segments are only checked for their header unless
//! `verify_on_open` asks for a full scan. A new log gets its first, empty segment. A log whose
//! last segment was written by format 1 gets a new format-2 segment to write to (the old one is
//! sealed, or replaced if it holds no record), so no segment mixes formats. Any other entry of the
//! directory (such as the `cursors/` directory of older versions, or quarantine files left by a
//! repair) is left alone.

use std::{path::Path, sync::Arc};

use crate::{
    error::{CorruptReason, Error, Result},
    format::segment::{
        FORMAT_VERSION, create_segment_file, parse_segment_file_name, read_segment_header,
        segment_file_name,
    },
    limits::SEGMENT_HEADER_BYTES,
    options::{FsyncPolicy, LogOptions},
    recovery::{RecoveryReport, Truncation},
    scan::{ScanOutcome, scan_segment},
    segments::{Segment, SegmentMap},
    vfs::{self, OpenMode, Vfs, VfsLock},
};

/// Takes the log directory's lock (`LOCK`, created if missing): one `Log` or offline tool at a
/// time, in any process.
pub(crate) fn lock_log_dir(vfs: &dyn Vfs, dir: &Path) -> Result<Box<dyn VfsLock>> {
    let lock_path = dir.join("LOCK");
    vfs.lock_exclusive(&lock_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked { dir: dir.to_path_buf() },
        _ => Error::io("lock log directory", &lock_path, e),
    })
}

/// What recovery hands to the log.
pub(crate) struct Recovered {
    pub segments: SegmentMap,
    pub next_position: u64,
    pub report: RecoveryReport,
}

/// The base positions of the segment files in `names`, sorted.
pub(crate) fn segment_bases(names: &[String]) -> Vec<u64> {
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_file_name(n)).collect();
    bases.sort_unstable();
    bases
}

/// Opens the segments of a log directory, cutting a torn tail; creates the first segment of a
/// new log.
pub(crate) fn recover(vfs: &dyn Vfs, dir: &Path, options: &LogOptions) -> Result<Recovered> {
    let names = vfs.read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    let mut temp_files_removed = 0;
    for name in names.iter().filter(|name| name.ends_with(".tmp")) {
        let path = dir.join(name);
        vfs.remove_file(&path).map_err(|e| Error::io("remove temp file", &path, e))?;
        temp_files_removed += 1;
    }
    if temp_files_removed > 0 {
        vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e))?;
    }
    let mut bases = segment_bases(&names);
    if bases.is_empty() {
        // A new log: make its directory's entry durable, also when an earlier open created the
        // directory and died before its parent's fsync (the first segment's creation below
        // fsyncs the directory itself).
        vfs::sync_parent(vfs, dir).map_err(|e| Error::io("fsync parent directory", dir, e))?;
        create_segment_file(vfs, dir, 1)?;
        bases.push(1);
    }
    let mut segments = SegmentMap::new();
    let last_base = *bases.last().expect("at least one segment");
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let sealed = open_sealed(vfs, dir, base, next_base, options.verify_on_open)?;
        segments.insert(base, Arc::new(sealed));
    }
    let unsynced = options.fsync == FsyncPolicy::Never;
    let (scan, truncation) = open_last(vfs, dir, last_base, unsynced)?;
    let next_position = scan.end;
    if scan.version < FORMAT_VERSION && scan.end > last_base {
        // Written by format 1: seal it (durable, with its index) and write on in a new segment.
        let sealed =
            Segment::new(dir, last_base, scan.end, scan.valid_bytes, true, Some(scan.index));
        sync_segment(vfs, &sealed.path)?;
        sealed.save_index(vfs)?;
        segments.insert(last_base, Arc::new(sealed));
        create_segment_file(vfs, dir, next_position)?;
        segments.insert(next_position, Arc::new(empty_segment(dir, next_position)));
    } else if scan.version < FORMAT_VERSION {
        // Format 1 without records: replaced atomically by a format-2 segment of the same base.
        create_segment_file(vfs, dir, last_base)?;
        segments.insert(last_base, Arc::new(empty_segment(dir, last_base)));
    } else {
        let active =
            Segment::new(dir, last_base, scan.end, scan.valid_bytes, false, Some(scan.index));
        segments.insert(last_base, Arc::new(active));
    }
    let report = RecoveryReport {
        segments: segments.len(),
        first_position: bases[0],
        next_position,
        truncation,
        temp_files_removed,
    };
    Ok(Recovered { segments, next_position, report })
}

fn empty_segment(dir: &Path, base: u64) -> Segment {
    Segment::new(dir, base, base, SEGMENT_HEADER_BYTES, false, None)
}

fn sync_segment(vfs: &dyn Vfs, path: &Path) -> Result<()> {
    let file = vfs
        .open(path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open segment for fsync", path, e))?;
    file.sync_data().map_err(|e| Error::io("fsync segment", path, e))
}

fn open_sealed(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    next_base: u64,
    verify: bool,
) -> Result<Segment> {
    let path = dir.join(segment_file_name(base));
    let (committed_bytes, index) = if verify {
        let scan = scan_segment(vfs, base, &path, false, false)?;
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
        read_segment_header(file.as_ref(), &path, base)?;
        (file.size().map_err(|e| Error::io("stat segment", &path, e))?, None)
    };
    Ok(Segment::new(dir, base, next_base, committed_bytes, true, index))
}

/// Scans the last segment and cuts its torn tail, if any (truncated and fsynced).
/// Under `fsync = never` damage in it is cut too (see [`crate::TornReason::UnsyncedDamage`]).
fn open_last(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    unsynced: bool,
) -> Result<(ScanOutcome, Option<Truncation>)> {
    let path = dir.join(segment_file_name(base));
    let scan = scan_segment(vfs, base, &path, true, unsynced)?;
    let Some(cut) = scan.cut else {
        return Ok((scan, None));
    };
    let file = vfs
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open segment for truncation", &path, e))?;
    file.set_len(cut.offset).map_err(|e| Error::io("truncate torn tail", &path, e))?;
    file.sync_data().map_err(|e| Error::io("fsync truncation", &path, e))?;
    let truncation = Truncation {
        segment: path,
        offset: cut.offset,
        bytes_removed: scan.file_len - cut.offset,
        position: cut.position,
        records_removed: cut.records,
        reason: cut.reason,
    };
    tracing::warn!(?truncation, "cut a torn tail from the last segment");
    Ok((scan, Some(truncation)))
}
