//! The file storage's framing of a log record with its commit position (see `codec` for the
//! record inside):
//!
//! ```text
//! u8       0x02 (a framed record)
//! u64      commit position, little-endian
//! …        the record: an event or a lost record
//! ```
//!
//! A record whose first byte is not `0x02` was written before commit positions (commit 0). Its
//! own module so that the storage and the codec both use it without importing each other.

use bytes::Bytes;

/// First byte of a record the file storage framed with its commit position:
/// `u8 0x02, u64 commit (little-endian), then the record` (an event or a lost record).
const COMMITTED: u8 = 0x02;
const COMMITTED_HEADER_BYTES: usize = 9;

/// Frames a record with its commit position (the file storage's log records; see
/// [`split_commit`]).
#[must_use]
pub fn frame_commit(commit: u64, record: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(COMMITTED_HEADER_BYTES + record.len());
    out.push(COMMITTED);
    out.extend_from_slice(&commit.to_le_bytes());
    out.extend_from_slice(record);
    Bytes::from(out)
}

/// The commit position and the record of a framed log record; a record written before commit
/// positions existed (or one too short to be framed, which then fails to decode) has commit 0.
#[must_use]
pub fn split_commit(stored: Bytes) -> (u64, Bytes) {
    match stored.get(..COMMITTED_HEADER_BYTES) {
        Some([COMMITTED, commit @ ..]) => {
            let commit = u64::from_le_bytes(commit.try_into().unwrap_or([0; 8]));
            (commit, stored.slice(COMMITTED_HEADER_BYTES..))
        }
        _ => (0, stored),
    }
}
