//! Readers: records from any position, straight from the segment files.
//!
//! A [`Reader`] finds the segment holding its next position, seeks with the sparse index, and
//! reads forward in chunks of [`READ_CHUNK_BYTES`]. Payloads are zero-copy slices of the chunk
//! ([`Bytes`]). Every record is checked again on read — checksum and position — and a failure
//! is [`Error::Corrupt`] naming the file and offset, never a skip.
//!
//! A reader never reads past the log's committed position, so it only ever sees records that
//! are durable under the fsync policy, and never a record the writer is still writing.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::{
    error::{CorruptReason, Error, Result},
    limits::{
        READ_BYTES_MAX_DEFAULT, READ_CHUNK_BYTES, READ_RECORDS_MAX_DEFAULT, SEGMENT_HEADER_BYTES,
        u64_from, usize_from,
    },
    log::Shared,
    record::{HEADER, RecordHeader},
    segment::Segment,
    vfs::VfsFile,
};

/// One record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's position in its topic.
    pub position: u64,
    /// The record's bytes.
    pub payload: Bytes,
}

/// How much one read returns at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most records.
    pub records_max: usize,
    /// Most payload bytes; a single record larger than this is still returned alone.
    pub bytes_max: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            records_max: READ_RECORDS_MAX_DEFAULT,
            bytes_max: READ_BYTES_MAX_DEFAULT,
        }
    }
}

impl ReadLimits {
    /// At most `records_max` records (default byte limit).
    #[must_use]
    pub fn records(records_max: usize) -> Self {
        Self {
            records_max,
            ..Self::default()
        }
    }
}

/// A reader that keeps its place in the log between reads.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    next: u64,
    at: Option<Place>,
}

/// Where in which segment the reader is, with its read-ahead chunk.
#[derive(Debug)]
struct Place {
    segment: Arc<Segment>,
    file: Arc<dyn VfsFile>,
    offset: u64,
    /// The position the record at `offset` must have.
    expect: u64,
    /// True until the first record after an index seek checked out.
    via_index: bool,
    chunk: Bytes,
    chunk_start: u64,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Self {
        Self {
            shared,
            next: from.max(1),
            at: None,
        }
    }

    /// The position the next read starts at.
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// Moves the reader to `position`.
    pub fn seek(&mut self, position: u64) {
        self.next = position.max(1);
        self.at = None;
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Drops the read-ahead chunk and the file handle (they are reacquired on the next read).
    pub fn release(&mut self) {
        self.at = None;
    }

    /// Reads the next records, up to `limits`; empty when the reader is at the end.
    ///
    /// # Errors
    /// [`Error::Purged`] if the next position was purged; [`Error::Corrupt`]; [`Error::Io`].
    /// After an error the reader stays at the failed position.
    pub fn read(&mut self, limits: ReadLimits) -> Result<Vec<Record>> {
        let committed = self.shared.committed();
        let mut records = Vec::new();
        let mut bytes = 0usize;
        while self.next <= committed
            && records.len() < limits.records_max
            && (records.is_empty() || bytes < limits.bytes_max)
        {
            let needs_segment = match &self.at {
                None => true,
                Some(at) => at.segment.is_sealed() && self.next >= at.segment.end(),
            };
            if needs_segment {
                self.at = Some(self.locate()?);
            }
            let at = self.at.as_mut().expect("located above");
            let limit = at.segment.committed_bytes();
            if at.offset >= limit {
                if at.segment.is_sealed() {
                    // The segment ends before the position its successor starts at.
                    return Err(at.corrupt(CorruptReason::SegmentGap));
                }
                break;
            }
            let (position, payload, record_bytes) = at.record(limit)?;
            if position != at.expect {
                if at.via_index {
                    // A stale or damaged index entry: read the segment from its start instead.
                    at.via_index = false;
                    at.offset = SEGMENT_HEADER_BYTES;
                    at.expect = at.segment.base;
                    continue;
                }
                return Err(at.corrupt(CorruptReason::PositionOutOfSequence));
            }
            at.via_index = false;
            at.offset += record_bytes;
            at.expect += 1;
            if position < self.next {
                continue; // walking forward from the index entry
            }
            bytes += payload.len();
            records.push(Record { position, payload });
            self.next += 1;
        }
        Ok(records)
    }

    fn locate(&self) -> Result<Place> {
        let segment = {
            let segments = self.shared.read_segments();
            let first_available = segments.keys().next().copied().unwrap_or(1);
            if self.next < first_available {
                return Err(Error::Purged {
                    requested: self.next,
                    first_available,
                });
            }
            let (_, segment) = segments
                .range(..=self.next)
                .next_back()
                .expect("first <= next");
            Arc::clone(segment)
        };
        let vfs = self.shared.vfs.as_ref();
        let file = segment.reader_file(vfs)?;
        let (expect, offset) = segment.seek(vfs, self.next)?;
        Ok(Place {
            segment,
            file,
            offset,
            expect,
            via_index: offset != SEGMENT_HEADER_BYTES,
            chunk: Bytes::new(),
            chunk_start: 0,
        })
    }
}

impl Place {
    fn corrupt(&self, reason: CorruptReason) -> Error {
        Error::Corrupt {
            file: self.segment.path.clone(),
            offset: self.offset,
            reason,
        }
    }

    /// The record at `offset`: its position, payload and size, with length and checksum checked.
    fn record(&mut self, limit: u64) -> Result<(u64, Bytes, u64)> {
        let head = self.bytes(self.offset, HEADER, limit)?;
        let header =
            RecordHeader::parse(&head).ok_or_else(|| self.corrupt(CorruptReason::Truncated))?;
        let record_bytes = header.record_bytes();
        if !header.length_in_bounds() || self.offset + record_bytes > limit {
            return Err(self.corrupt(CorruptReason::BadLength));
        }
        let record = self.bytes(self.offset, usize_from(record_bytes), limit)?;
        let payload = record.slice(HEADER..);
        if !header.checksum_matches(&payload) {
            return Err(self.corrupt(CorruptReason::ChecksumMismatch));
        }
        Ok((header.position, payload, record_bytes))
    }

    /// `len` bytes at `offset` (within `limit`), from the chunk or a fresh read.
    fn bytes(&mut self, offset: u64, len: usize, limit: u64) -> Result<Bytes> {
        let chunk_end = self.chunk_start + u64_from(self.chunk.len());
        if offset < self.chunk_start || offset + u64_from(len) > chunk_end {
            let want = usize_from(limit - offset).min(len.max(READ_CHUNK_BYTES));
            let mut buf = BytesMut::zeroed(want);
            let got = self
                .file
                .read_full_at(&mut buf, offset)
                .map_err(|e| Error::io("read segment", &self.segment.path, e))?;
            if got < len {
                return Err(self.corrupt(CorruptReason::Truncated));
            }
            buf.truncate(got);
            self.chunk = buf.freeze();
            self.chunk_start = offset;
        }
        let from = usize_from(offset - self.chunk_start);
        Ok(self.chunk.slice(from..from + len))
    }
}
