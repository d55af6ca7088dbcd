//! Full verification of an open log: read every record of every segment and check it (the slow,
//! thorough counterpart of open-time recovery, which scans only the last segment).

use crate::{
    error::{CorruptReason, Error, Result},
    scan::{Stop, walk_segment},
    shared::Shared,
};

/// Scans all segments; returns the number of records checked. The active segment is scanned up
/// to its committed extent only: bytes past it may be a write in flight.
pub(crate) fn verify(shared: &Shared) -> Result<u64> {
    let segments: Vec<_> = shared.read_segments().values().cloned().collect();
    let mut records = 0;
    for segment in &segments {
        let sealed = segment.is_sealed();
        let extent = (!sealed).then(|| segment.committed_bytes());
        let walk = walk_segment(shared.vfs.as_ref(), segment.base, &segment.path, false, extent)?;
        if let Stop::Fail(failure) = walk.stop {
            return Err(failure.error(&segment.path));
        }
        // Everything committed must be sound, and a sealed segment must end where its successor
        // begins.
        let short = walk.end < segment.end() || walk.valid_bytes < segment.committed_bytes();
        if short || (sealed && walk.end != segment.end()) {
            return Err(Error::Corrupt {
                file: segment.path.clone(),
                offset: walk.valid_bytes,
                reason: CorruptReason::SegmentGap,
            });
        }
        records += segment.end() - segment.base;
    }
    Ok(records)
}
