//! Record framing: the bytes of one record, and the checks that decide whether bytes are one.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c (Castagnoli) of bytes 4 .. 16 + payload_len, little-endian
//!      4     4  length word, little-endian u32:
//!                 bits 0..=24   payload_len (at most RECORD_PAYLOAD_BYTES_LIMIT = 2^24)
//!                 bits 25..=30  zero
//!                 bit 31        batch continues (format 2): the next record belongs to the
//!                               same append; clear on the last record of every append
//!      8     8  position, little-endian u64
//!     16     n  payload (n = payload_len)
//! ```
//!
//! The checksum covers the length word and the position, so a torn or shifted header cannot
//! pass as a record, a record copied to the wrong place fails the position check, and the batch
//! flag cannot flip unnoticed. A batch (one `append` call) is complete when a record with the flag
//! clear ends it: the flag is the batch's commit marker. Format 1 wrote no flag: every one of its
//! records is a batch of its own, and a set bit 31 there is a bad length. Records are checked
//! when written (the writer asserts the frame it built decodes to itself in debug builds) and
//! every time they are read.

use crate::limits::{
    RECORD_CHECKSUM_BYTES as CHECKSUM_BYTES, RECORD_HEADER_BYTES,
    RECORD_HEADER_BYTES_USIZE as HEADER, RECORD_PAYLOAD_BYTES_LIMIT, u64_from, usize_from,
};

/// Bit 31 of the length word: the record's batch continues in the next record.
pub const BATCH_CONTINUES: u32 = 1 << 31;

const _: () = assert!(RECORD_PAYLOAD_BYTES_LIMIT < BATCH_CONTINUES, "the flag is not a length bit");

/// The first format version whose records carry the batch flag.
pub const BATCH_FORMAT_VERSION: u32 = 2;

const _: () = assert!(BATCH_FORMAT_VERSION <= super::segment::FORMAT_VERSION);

/// The fixed-size part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored checksum.
    pub crc: u32,
    /// Length of the payload that follows the header (the length word without its flag; reserved
    /// bits set make it exceed the limit).
    pub payload_len: u32,
    /// Position of the record in its topic.
    pub position: u64,
    /// Whether the next record belongs to the same batch (bit 31 of the length word).
    pub batch_continues: bool,
}

impl RecordHeader {
    /// Parses the first [`RECORD_HEADER_BYTES`] of `bytes`; `None` if there are fewer.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        let [c0, c1, c2, c3, l0, l1, l2, l3, p @ ..] = *header;
        let word = u32::from_le_bytes([l0, l1, l2, l3]);
        Some(Self {
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            payload_len: word & !BATCH_CONTINUES,
            position: u64::from_le_bytes(p),
            batch_continues: word & BATCH_CONTINUES != 0,
        })
    }

    /// Whether the length field is within the format's limit.
    #[must_use]
    pub fn length_in_bounds(&self) -> bool {
        self.payload_len <= RECORD_PAYLOAD_BYTES_LIMIT
    }

    /// Whether the length word is valid in a segment of format `version`: within the limit, and
    /// without the batch flag before format 2.
    #[must_use]
    pub fn length_word_valid(&self, version: u32) -> bool {
        self.length_in_bounds() && (version >= BATCH_FORMAT_VERSION || !self.batch_continues)
    }

    /// Total bytes of the record: header plus payload.
    #[must_use]
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + u64::from(self.payload_len)
    }

    /// Whether the stored checksum matches `record`, the whole frame (header and payload)
    /// this header was parsed from.
    #[must_use]
    pub fn checksum_matches(&self, record: &[u8]) -> bool {
        u64_from(record.len()) == self.record_bytes()
            && crc32c::crc32c(&record[CHECKSUM_BYTES..]) == self.crc
    }
}

/// Appends the frame of one record that is a batch of its own (or ends its batch) to `buf`.
///
/// # Panics
/// If `payload` is longer than [`RECORD_PAYLOAD_BYTES_LIMIT`]: callers validate sizes first,
/// so a longer payload here is a bug.
pub fn encode_record(buf: &mut Vec<u8>, position: u64, payload: &[u8]) {
    encode_batch_record(buf, position, payload, false);
}

/// Appends the frame of one record of a batch to `buf`; `batch_continues` is set on every record
/// of a batch but its last.
///
/// # Panics
/// As [`encode_record`].
pub fn encode_batch_record(
    buf: &mut Vec<u8>,
    position: u64,
    payload: &[u8],
    batch_continues: bool,
) {
    let payload_len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= RECORD_PAYLOAD_BYTES_LIMIT)
        .expect("payload size is validated before encoding");
    let word = if batch_continues { payload_len | BATCH_CONTINUES } else { payload_len };
    buf.reserve(HEADER + payload.len());
    let start = buf.len();
    buf.extend_from_slice(&[0; CHECKSUM_BYTES]);
    buf.extend_from_slice(&word.to_le_bytes());
    buf.extend_from_slice(&position.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + CHECKSUM_BYTES..]);
    buf[start..start + CHECKSUM_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    IncompleteHeader,
    /// The length field is over the limit.
    BadLength,
    /// Fewer bytes than the header announces.
    IncompletePayload,
    /// The checksum does not match.
    ChecksumMismatch,
}

/// A record decoded from a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// The record's position.
    pub position: u64,
    /// The record's payload.
    pub payload: &'a [u8],
    /// Bytes the record occupies (header and payload).
    pub record_bytes: usize,
    /// Whether the next record belongs to the same batch.
    pub batch_continues: bool,
}

/// Decodes the record at the start of `bytes`, checking length and checksum (not the position,
/// which only the caller knows to expect).
///
/// # Errors
/// The first check that failed, as a [`DecodeError`].
pub fn decode_record(bytes: &[u8]) -> Result<DecodedRecord<'_>, DecodeError> {
    let header = RecordHeader::parse(bytes).ok_or(DecodeError::IncompleteHeader)?;
    if !header.length_in_bounds() {
        return Err(DecodeError::BadLength);
    }
    let record_bytes = usize_from(header.record_bytes());
    let record = bytes.get(..record_bytes).ok_or(DecodeError::IncompletePayload)?;
    if !header.checksum_matches(record) {
        return Err(DecodeError::ChecksumMismatch);
    }
    Ok(DecodedRecord {
        position: header.position,
        payload: &record[HEADER..],
        record_bytes,
        batch_continues: header.batch_continues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(position: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_record(&mut buf, position, payload);
        buf
    }

    #[test]
    fn a_record_round_trips() {
        let buf = frame(42, b"hello");
        assert_eq!(buf.len(), HEADER + 5);
        let record = decode_record(&buf).unwrap();
        assert_eq!((record.position, record.payload, record.record_bytes), (42, &b"hello"[..], 21));
        assert!(!record.batch_continues, "a record of its own ends its batch");
    }

    #[test]
    fn the_batch_flag_round_trips_and_is_covered_by_the_checksum() {
        let mut buf = Vec::new();
        encode_batch_record(&mut buf, 5, b"first", true);
        encode_batch_record(&mut buf, 6, b"last", false);
        let first = decode_record(&buf).unwrap();
        assert!(first.batch_continues);
        let last = decode_record(&buf[first.record_bytes..]).unwrap();
        assert_eq!((last.position, last.payload, last.batch_continues), (6, &b"last"[..], false));
        buf[7] ^= 0x80; // the flag of the first record
        assert_eq!(decode_record(&buf), Err(DecodeError::ChecksumMismatch));
    }

    #[test]
    fn the_batch_flag_is_a_bad_length_in_format_1() {
        let mut buf = Vec::new();
        encode_batch_record(&mut buf, 1, b"x", true);
        let header = RecordHeader::parse(&buf).unwrap();
        assert!(header.length_word_valid(BATCH_FORMAT_VERSION));
        assert!(!header.length_word_valid(1));
        let mut reserved = frame(1, b"x");
        reserved[7] |= 0x02; // bit 25
        assert_eq!(decode_record(&reserved), Err(DecodeError::BadLength));
    }

    #[test]
    fn an_empty_payload_is_a_record() {
        let buf = frame(1, b"");
        assert_eq!(decode_record(&buf).unwrap().payload, b"");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = frame(7, b"payload bytes");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_record(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_cut_record_is_incomplete() {
        let buf = frame(3, b"abcdef");
        assert_eq!(decode_record(&buf[..10]), Err(DecodeError::IncompleteHeader));
        assert_eq!(decode_record(&buf[..HEADER + 2]), Err(DecodeError::IncompletePayload));
    }

    #[test]
    fn zeroes_are_not_a_record() {
        assert_eq!(decode_record(&[0u8; 64]), Err(DecodeError::ChecksumMismatch));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_payload() {
        let mut buf = frame(3, b"abc");
        buf[4..8].copy_from_slice(&(RECORD_PAYLOAD_BYTES_LIMIT + 1).to_le_bytes());
        assert_eq!(decode_record(&buf), Err(DecodeError::BadLength));
    }
}
