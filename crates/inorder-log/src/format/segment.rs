//! Segment files on disk: their names, their header, and how one comes into existence.
//!
//! A segment file is named by the position of its first record (`00000000000000000001.seg`)
//! and starts with a 32-byte header naming that position again (see FORMAT.md); its sparse index
//! is the `.idx` file of the same name. A new segment file appears atomically (temporary file,
//! fsync, rename, directory fsync), so a crash leaves either no segment or a complete header.
//! Everything here is stateless; what the process knows about a segment is in
//! [`crate::segments`].

use std::path::{Path, PathBuf};

use crate::{
    error::{CorruptReason, Error, Result},
    limits::SEGMENT_HEADER_BYTES_USIZE as HEADER,
    vfs::{self, OpenMode, Vfs, VfsFile},
};

/// Magic bytes at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"INORDSEG";
/// Version of the segment and record format written by this code: 2, records with a batch
/// flag ([`crate::format::record`]).
pub(crate) const FORMAT_VERSION: u32 = 2;

/// The oldest format version read: 1, records without a batch flag (each a batch of its own).
pub(crate) const FORMAT_VERSION_OLDEST: u32 = 1;

/// File name of the segment whose first position is `base`.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// File name of the sparse index of the segment whose first position is `base`.
pub(crate) fn index_file_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// The base position named by a segment file name, if `name` is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a segment whose first position is `base`.
pub(crate) fn encode_segment_header(base: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment header read from disk against the base its file name promises; returns the
/// segment's format version. A version this code does not know is a bad header: it is never read
/// as something else.
pub(crate) fn check_segment_header(bytes: &[u8], base: u64) -> Result<u32, CorruptReason> {
    let header = bytes.get(..HEADER).ok_or(CorruptReason::BadHeader)?;
    let word = |at: usize| -> Result<u32, CorruptReason> {
        Ok(u32::from_le_bytes(header[at..at + 4].try_into().map_err(|_| CorruptReason::BadHeader)?))
    };
    let (version, crc) = (word(8)?, word(24)?);
    if header[..8] != SEGMENT_MAGIC
        || !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version)
        || crc32c::crc32c(&header[..24]) != crc
    {
        return Err(CorruptReason::BadHeader);
    }
    if header[16..24] != base.to_le_bytes() {
        return Err(CorruptReason::BaseMismatch);
    }
    Ok(version)
}

/// Reads and checks the header of the segment file at `path`; returns its format version.
pub(crate) fn read_segment_header(file: &dyn VfsFile, path: &Path, base: u64) -> Result<u32> {
    let mut header = [0u8; HEADER];
    let got = file.read_full_at(&mut header, 0).map_err(|e| Error::io("read header", path, e))?;
    check_segment_header(&header[..got], base).map_err(|reason| Error::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        reason,
    })
}

/// Creates the segment file for `base` atomically: header written to a temporary file,
/// fsynced, renamed into place, directory fsynced. A crash leaves either no segment or a
/// complete one (and maybe a `.tmp` file that open removes).
pub(crate) fn create_segment_file(vfs: &dyn Vfs, dir: &Path, base: u64) -> Result<PathBuf> {
    let path = dir.join(segment_file_name(base));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(base)));
    vfs::remove_if_present(vfs, &tmp)
        .map_err(|e| Error::io("remove stale temp segment", &tmp, e))?;
    let file =
        vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| Error::io("create segment", &tmp, e))?;
    file.write_all_at(&encode_segment_header(base), 0)
        .map_err(|e| Error::io("write segment header", &tmp, e))?;
    file.sync_data().map_err(|e| Error::io("fsync new segment", &tmp, e))?;
    drop(file);
    vfs.rename(&tmp, &path).map_err(|e| Error::io("rename new segment", &path, e))?;
    vfs.sync_dir(dir).map_err(|e| Error::io("fsync log directory", dir, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_position_and_parse_back() {
        let names: Vec<_> = [1u64, 9, 10, 12_345_678_901].map(segment_file_name).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, base) in names.iter().zip([1u64, 9, 10, 12_345_678_901]) {
            assert_eq!(parse_segment_file_name(name), Some(base));
        }
        for bad in ["1.seg", "0000000000000000000a.seg", "00000000000000000001.idx", "x"] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_header_checks_magic_checksum_and_base() {
        let header = encode_segment_header(77);
        assert_eq!(check_segment_header(&header, 77), Ok(FORMAT_VERSION));
        assert_eq!(check_segment_header(&header, 78), Err(CorruptReason::BaseMismatch));
        assert_eq!(check_segment_header(&header[..31], 77), Err(CorruptReason::BadHeader));
        for byte in 0..28 {
            let mut bad = header;
            bad[byte] ^= 0x10;
            assert!(check_segment_header(&bad, 77).is_err(), "flip in byte {byte}");
        }
    }

    #[test]
    fn format_1_headers_are_read_and_unknown_versions_refused() {
        for (version, accepted) in [(0, false), (1, true), (2, true), (3, false)] {
            let mut header = encode_segment_header(5);
            header[8..12].copy_from_slice(&u32::to_le_bytes(version));
            let crc = crc32c::crc32c(&header[..24]);
            header[24..28].copy_from_slice(&crc.to_le_bytes());
            let checked = check_segment_header(&header, 5);
            assert_eq!(checked.is_ok(), accepted, "version {version}: {checked:?}");
        }
    }
}
