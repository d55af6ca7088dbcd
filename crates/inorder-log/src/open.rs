//! Opening a log directory: what is on disk becomes the in-memory segment map.
//!
//! Leftover temporary files (a crash mid-rename) are removed; the last segment is scanned record
//! by record ([`crate::scan`]) and a torn tail the decision table cuts ([`crate::recovery`]) is
//! truncated and fsynced before anything is appended; sealed segments are only checked for their
//! header unless `verify_on_open` asks for a full scan. A new log gets its first, empty segment.
//! Any other entry of the directory (such as the `cursors/` directory of older versions) is left
//! alone.

use std::{path::Path, sync::Arc};

use crate::{
    error::{CorruptReason, Error, Result},
    format::segment::{
        create_segment_file, parse_segment_file_name, read_segment_header, segment_file_name,
    },
    options::LogOptions,
    recovery::{RecoveryReport, Truncation},
    scan::scan_segment,
    segments::{Segment, SegmentMap},
    vfs::{self, OpenMode, Vfs},
};

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
        } else if let Some(base) = parse_segment_file_name(name) {
            bases.push(base);
        }
    }
    if temp_files_removed > 0 {
        vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e))?;
    }
    bases.sort_unstable();
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
    let path = dir.join(segment_file_name(base));
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
        read_segment_header(file.as_ref(), &path, base)?;
        (file.size().map_err(|e| Error::io("stat segment", &path, e))?, None)
    };
    Ok(Segment::new(dir, base, next_base, committed_bytes, true, index))
}

fn open_last(vfs: &dyn Vfs, dir: &Path, base: u64) -> Result<(Segment, Option<Truncation>)> {
    let path = dir.join(segment_file_name(base));
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
