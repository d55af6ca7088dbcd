//! Record framing: the bytes of one record, and the checks that decide whether bytes are one.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c (Castagnoli) of bytes 4 .. 16 + payload_len, little-endian
//!      4     4  payload_len, little-endian u32
//!      8     8  position, little-endian u64
//!     16     n  payload (n = payload_len)
//! ```
//!
//! The checksum covers the length and the position, so a torn or shifted header cannot pass as
//! a record, and a record copied to the wrong place fails the position check. Records are
//! checked when written (the writer asserts the frame it built decodes to itself in debug
//! builds) and every time they are read.

use crate::limits::{
    RECORD_CHECKSUM_BYTES as CHECKSUM_BYTES, RECORD_HEADER_BYTES,
    RECORD_HEADER_BYTES_USIZE as HEADER, RECORD_PAYLOAD_BYTES_LIMIT, u64_from, usize_from,
};

/// The fixed-size part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored checksum.
    pub crc: u32,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
    /// Position of the record in its topic.
    pub position: u64,
}

impl RecordHeader {
    /// Parses the first [`RECORD_HEADER_BYTES`] of `bytes`; `None` if there are fewer.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        let [c0, c1, c2, c3, l0, l1, l2, l3, p @ ..] = *header;
        Some(Self {
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            payload_len: u32::from_le_bytes([l0, l1, l2, l3]),
            position: u64::from_le_bytes(p),
        })
    }

    /// Whether the length field is within the format's limit.
    #[must_use]
    pub fn length_in_bounds(&self) -> bool {
        self.payload_len <= RECORD_PAYLOAD_BYTES_LIMIT
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

/// Appends the frame of one record to `buf`.
///
/// # Panics
/// If `payload` is longer than [`RECORD_PAYLOAD_BYTES_LIMIT`]: callers validate sizes first,
/// so a longer payload here is a bug.
pub fn encode_record(buf: &mut Vec<u8>, position: u64, payload: &[u8]) {
    let payload_len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= RECORD_PAYLOAD_BYTES_LIMIT)
        .expect("payload size is validated before encoding");
    buf.reserve(HEADER + payload.len());
    let start = buf.len();
    buf.extend_from_slice(&[0; CHECKSUM_BYTES]);
    buf.extend_from_slice(&payload_len.to_le_bytes());
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
    Ok(DecodedRecord { position: header.position, payload: &record[HEADER..], record_bytes })
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
