//! Full verification: read every record of every segment and check it (the slow, thorough
//! counterpart of open-time recovery, which scans only the last segment).

use crate::{
    error::{CorruptReason, Error, Result},
    scan::scan_segment,
    shared::Shared,
};

/// Scans all segments; returns the number of records checked.
pub(crate) fn verify(shared: &Shared) -> Result<u64> {
    let segments: Vec<_> = shared.read_segments().values().cloned().collect();
    let mut records = 0;
    for segment in &segments {
        let active = !segment.is_sealed();
        let scan = scan_segment(shared.vfs.as_ref(), segment.base, &segment.path, active)?;
        // Records past the committed extent may be in flight; everything before must be sound.
        if scan.end < segment.end() || scan.valid_bytes < segment.committed_bytes() {
            return Err(Error::Corrupt {
                file: segment.path.clone(),
                offset: scan.valid_bytes,
                reason: if active {
                    CorruptReason::ChecksumMismatch
                } else {
                    CorruptReason::SegmentGap
                },
            });
        }
        if !active && scan.end != segment.end() {
            return Err(Error::Corrupt {
                file: segment.path.clone(),
                offset: scan.valid_bytes,
                reason: CorruptReason::SegmentGap,
            });
        }
        records += segment.end() - segment.base;
    }
    Ok(records)
}
