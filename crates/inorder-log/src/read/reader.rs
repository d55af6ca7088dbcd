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
    format::{checksum::crc32c_3, record::RecordHeader},
    limits::{
        READ_BYTES_MAX_DEFAULT, READ_CHUNK_BYTES, READ_FRAMES_PER_PASS_MAX,
        READ_RECORDS_MAX_DEFAULT, READ_SKIP_FRAMES_MAX, READ_SPARE_CHUNKS_MAX,
        RECORD_CHECKSUM_BYTES, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES_USIZE as HEADER,
        SEGMENT_HEADER_BYTES, u64_from, usize_from,
    },
    segments::Segment,
    shared::Shared,
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
        Self { records_max: READ_RECORDS_MAX_DEFAULT, bytes_max: READ_BYTES_MAX_DEFAULT }
    }
}

impl ReadLimits {
    /// At most `records_max` records (default byte limit).
    #[must_use]
    pub fn records(records_max: usize) -> Self {
        Self { records_max, ..Self::default() }
    }
}

/// A reader that keeps its place in the log between reads.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    next: u64,
    at: Option<Place>,
}

/// Records gathered by one read, with its limits.
struct Batch {
    records: Vec<Record>,
    bytes: usize,
    limits: ReadLimits,
    committed: u64,
}

impl Batch {
    /// Records the batch can still take.
    fn room(&self) -> usize {
        self.limits.records_max.saturating_sub(self.records.len())
    }

    fn is_full(&self) -> bool {
        self.records.len() >= self.limits.records_max
            || (!self.records.is_empty() && self.bytes >= self.limits.bytes_max)
    }
}

/// One record located in a chunk: `chunk[start..end]`, with its parsed header.
struct Frame {
    start: usize,
    end: usize,
    header: RecordHeader,
}

/// How many leading frames have matching checksums (verified three at a time).
fn verified_prefix(chunk: &[u8], frames: &[Frame]) -> usize {
    let covered = |f: &Frame| &chunk[f.start + RECORD_CHECKSUM_BYTES..f.end];
    for (group_index, group) in frames.chunks(3).enumerate() {
        let slices = match group {
            [a, b, c] => [covered(a), covered(b), covered(c)],
            [a, b] => [covered(a), covered(b), &[]],
            [a] => [covered(a), &[], &[]],
            _ => unreachable!("chunks(3) yields one to three frames"),
        };
        let crcs = crc32c_3(slices);
        if let Some(bad) = group.iter().zip(crcs).position(|(f, crc)| f.header.crc != crc) {
            return group_index * 3 + bad;
        }
    }
    frames.len()
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
    /// Earlier chunks, reused once no record refers to them.
    spare: Vec<Bytes>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Self {
        Self { shared, next: from.max(1), at: None }
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
        let wanted = usize_from(committed.saturating_sub(self.next) + 1);
        let mut batch = Batch {
            records: Vec::with_capacity(wanted.min(limits.records_max)),
            bytes: 0,
            limits,
            committed,
        };
        while self.next <= committed && !batch.is_full() {
            let needs_segment = match &self.at {
                None => true,
                Some(at) => at.segment.is_sealed() && self.next >= at.segment.end(),
            };
            if needs_segment {
                let spare = self.at.take().map(Place::into_spare).unwrap_or_default();
                self.at = Some(self.locate(spare)?);
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
            at.take(&mut self.next, limit, &mut batch)?;
        }
        Ok(batch.records)
    }

    fn locate(&self, spare: Vec<Bytes>) -> Result<Place> {
        let segment = {
            let segments = self.shared.read_segments();
            let first_available = segments.keys().next().copied().unwrap_or(1);
            if self.next < first_available {
                return Err(Error::Purged { requested: self.next, first_available });
            }
            let (_, segment) = segments.range(..=self.next).next_back().expect("first <= next");
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
            spare,
        })
    }
}

impl Place {
    /// The chunks worth keeping when the reader moves to another segment.
    fn into_spare(mut self) -> Vec<Bytes> {
        self.spare.push(self.chunk);
        self.spare.truncate(READ_SPARE_CHUNKS_MAX);
        self.spare
    }

    fn corrupt(&self, reason: CorruptReason) -> Error {
        Error::Corrupt { file: self.segment.path.clone(), offset: self.offset, reason }
    }

    /// Takes the whole records the chunk holds from `offset` on (reading a new chunk first if
    /// it does not hold the next one), checking length, checksum and position of each.
    ///
    /// Three passes over the chunk: frame the records (lengths), verify their checksums three at
    /// a time ([`crate::format::checksum`]), then check positions and hand them out in order. A bad record
    /// ends the pass before it: the good ones are returned, and the next call fails at the bad
    /// one, so the reader stops exactly at the failed position.
    fn take(&mut self, next: &mut u64, limit: u64, batch: &mut Batch) -> Result<()> {
        let head = self.fill(HEADER, limit)?;
        let first_bytes = RecordHeader::parse(&self.chunk[head..]).map_or(0, |h| h.record_bytes());
        if first_bytes > RECORD_HEADER_BYTES
            && self.offset + first_bytes <= limit
            && head + usize_from(first_bytes) > self.chunk.len()
        {
            self.fill(usize_from(first_bytes), limit)?;
        }
        let chunk = self.chunk.clone();
        let (frames, mut failure) = self.frame(&chunk, limit, batch.room());
        let valid = verified_prefix(&chunk, &frames);
        if valid < frames.len() {
            failure = Some(CorruptReason::ChecksumMismatch);
        }
        let mut taken = 0;
        for frame in &frames[..valid] {
            if *next > batch.committed || batch.is_full() {
                return Ok(());
            }
            if frame.header.position != self.expect {
                if self.via_index {
                    // A stale or damaged index entry: read the segment from its start instead.
                    self.via_index = false;
                    self.offset = SEGMENT_HEADER_BYTES;
                    self.expect = self.segment.base;
                    return Ok(());
                }
                return Err(self.corrupt(CorruptReason::PositionOutOfSequence));
            }
            self.via_index = false;
            self.offset += frame.header.record_bytes();
            self.expect += 1;
            taken += 1;
            if frame.header.position >= *next {
                batch.bytes += frame.end - frame.start - HEADER;
                batch.records.push(Record {
                    position: frame.header.position,
                    payload: chunk.slice(frame.start + HEADER..frame.end),
                });
                *next += 1;
            }
        }
        match failure {
            Some(reason) if taken == 0 => Err(self.corrupt(reason)),
            _ => Ok(()),
        }
    }

    /// The whole records the chunk holds from `offset` (at most `room` plus what an index walk
    /// may skip), and the reason framing stopped early, if a record is malformed.
    fn frame(&self, chunk: &Bytes, limit: u64, room: usize) -> (Vec<Frame>, Option<CorruptReason>) {
        let frames_max = room.saturating_add(READ_SKIP_FRAMES_MAX).min(READ_FRAMES_PER_PASS_MAX);
        let mut frames = Vec::with_capacity(frames_max.min(256));
        let mut start = usize_from(self.offset - self.chunk_start);
        let mut offset = self.offset;
        while frames.len() < frames_max && offset < limit {
            let Some(header) = RecordHeader::parse(&chunk[start..]) else {
                let cut_short = frames.is_empty() && start == 0;
                return (frames, cut_short.then_some(CorruptReason::Truncated));
            };
            let record_bytes = header.record_bytes();
            if !header.length_in_bounds() || offset + record_bytes > limit {
                return (frames, Some(CorruptReason::BadLength));
            }
            let end = start + usize_from(record_bytes);
            if end > chunk.len() {
                break; // the record continues in the next chunk
            }
            frames.push(Frame { start, end, header });
            start = end;
            offset += record_bytes;
        }
        (frames, None)
    }

    /// Makes the chunk hold `len` bytes at `offset` (within `limit`); returns where they start
    /// in the chunk. Reuses the chunk's memory when no record still refers to it.
    fn fill(&mut self, len: usize, limit: u64) -> Result<usize> {
        let chunk_end = self.chunk_start + u64_from(self.chunk.len());
        if self.offset >= self.chunk_start && self.offset + u64_from(len) <= chunk_end {
            return Ok(usize_from(self.offset - self.chunk_start));
        }
        let want = usize_from(limit - self.offset).min(len.max(READ_CHUNK_BYTES));
        let retired = std::mem::take(&mut self.chunk);
        if !retired.is_empty() {
            self.spare.push(retired);
        }
        // Reuse a chunk no record refers to any more (no allocation, no zeroing); keep at most
        // READ_SPARE_CHUNKS_MAX that records still hold.
        let reusable = self.spare.iter().position(Bytes::is_unique);
        let mut buf = match reusable.map(|i| self.spare.swap_remove(i).try_into_mut()) {
            Some(Ok(mut reused)) => {
                if reused.len() >= want {
                    reused.truncate(want);
                } else {
                    reused.resize(want, 0);
                }
                reused
            }
            Some(Err(_)) | None => BytesMut::zeroed(want),
        };
        if self.spare.len() > READ_SPARE_CHUNKS_MAX {
            self.spare.remove(0);
        }
        let got = self
            .file
            .read_full_at(&mut buf, self.offset)
            .map_err(|e| Error::io("read segment", &self.segment.path, e))?;
        if got < len {
            return Err(self.corrupt(CorruptReason::Truncated));
        }
        buf.truncate(got);
        self.chunk = buf.freeze();
        self.chunk_start = self.offset;
        Ok(0)
    }
}
