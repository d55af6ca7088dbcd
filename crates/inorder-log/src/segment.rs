//! Segments: the files a topic's log is cut into, and what the process knows about each.
//!
//! A segment file is named by the position of its first record (`00000000000000000001.seg`)
//! and starts with a 32-byte header naming that position again (see FORMAT.md). Only the last
//! segment is written to; the others are *sealed*: fsynced once when the writer moved on, and
//! never modified again until purge deletes them whole. An empty segment (header only) carries
//! the next position through a purge of everything.
//!
//! A [`Segment`] is shared by the writer and readers. The writer publishes the committed end of
//! the active segment through atomics *before* it publishes the log's committed position, so a
//! reader that saw a committed position always sees the bytes that back it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use parking_lot::{Mutex, RwLock};

use crate::{
    error::{CorruptReason, Error, Result},
    index::SparseIndex,
    limits::{SEGMENT_HEADER_BYTES, SEGMENT_HEADER_BYTES_USIZE as HEADER},
    vfs::{OpenMode, Vfs, VfsFile},
};

/// Magic bytes at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"INORDSEG";
/// Version of the segment and record format.
pub(crate) const FORMAT_VERSION: u32 = 1;

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

/// Checks a segment header read from disk against the base its file name promises.
pub(crate) fn check_segment_header(bytes: &[u8], base: u64) -> Result<(), CorruptReason> {
    let header = bytes.get(..HEADER).ok_or(CorruptReason::BadHeader)?;
    let crc = u32::from_le_bytes(header[24..28].try_into().map_err(|_| CorruptReason::BadHeader)?);
    if header[..8] != SEGMENT_MAGIC
        || header[8..12] != FORMAT_VERSION.to_le_bytes()
        || crc32c::crc32c(&header[..24]) != crc
    {
        return Err(CorruptReason::BadHeader);
    }
    if header[16..24] != base.to_le_bytes() {
        return Err(CorruptReason::BaseMismatch);
    }
    Ok(())
}

/// Reads and checks the header of the segment file at `path`.
pub(crate) fn read_segment_header(file: &dyn VfsFile, path: &Path, base: u64) -> Result<()> {
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
    match vfs.remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale temp segment", &tmp, e)),
    }
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

/// What the process knows about one segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Position of the first record.
    pub base: u64,
    /// The segment file.
    pub path: PathBuf,
    /// The sparse index file.
    pub index_path: PathBuf,
    /// One past the last committed position in this segment (`base` while empty).
    end: AtomicU64,
    /// Bytes of the file that hold committed records (header included).
    committed_bytes: AtomicU64,
    /// Set once the writer moved to the next segment; the file never changes after that.
    sealed: AtomicBool,
    /// The sparse index; `None` while not loaded (sealed segments load it on first read and
    /// drop it when the log goes idle).
    index: RwLock<Option<SparseIndex>>,
    /// A shared read handle, opened on first read and closed when the log goes idle.
    read_handle: Mutex<Option<Arc<dyn VfsFile>>>,
}

impl Segment {
    /// A segment whose committed extent is known.
    pub(crate) fn new(
        dir: &Path,
        base: u64,
        end: u64,
        committed_bytes: u64,
        sealed: bool,
        index: Option<SparseIndex>,
    ) -> Self {
        assert!(end >= base, "a segment cannot end before it starts");
        assert!(committed_bytes >= SEGMENT_HEADER_BYTES, "a segment holds at least its header");
        Self {
            base,
            path: dir.join(segment_file_name(base)),
            index_path: dir.join(index_file_name(base)),
            end: AtomicU64::new(end),
            committed_bytes: AtomicU64::new(committed_bytes),
            sealed: AtomicBool::new(sealed),
            index: RwLock::new(index),
            read_handle: Mutex::new(None),
        }
    }

    /// One past the last committed position.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Bytes that hold committed records.
    pub(crate) fn committed_bytes(&self) -> u64 {
        self.committed_bytes.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.end() == self.base
    }

    /// Publishes newly durable records. Extents only grow: publishing an older extent (a
    /// request a syncer finishes after the writer sealed the segment, or after the other syncer
    /// published more) changes nothing.
    pub(crate) fn publish(&self, end: u64, committed_bytes: u64) {
        assert!(end >= self.base && committed_bytes >= SEGMENT_HEADER_BYTES, "extent in segment");
        self.committed_bytes.fetch_max(committed_bytes, Ordering::AcqRel);
        self.end.fetch_max(end, Ordering::AcqRel);
    }

    /// Marks the segment sealed (writer only, after its final fsync).
    pub(crate) fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Adds index entries for records the writer just wrote (active segment only).
    pub(crate) fn extend_index(&self, entries: &[(u64, u64)]) {
        if entries.is_empty() {
            return;
        }
        let mut index = self.index.write();
        index.get_or_insert_with(|| SparseIndex::new(self.base)).extend(entries);
    }

    /// A copy of the index, if loaded.
    pub(crate) fn index_snapshot(&self) -> Option<SparseIndex> {
        self.index.read().clone()
    }

    /// The byte offset of the last indexed record at or before `position` and its position,
    /// loading (or rebuilding) the index of a sealed segment on first use.
    pub(crate) fn seek(&self, vfs: &dyn Vfs, position: u64) -> Result<(u64, u64)> {
        if let Some(index) = self.index.read().as_ref() {
            return Ok(index.seek(position));
        }
        let loaded = SparseIndex::load_or_rebuild(vfs, self)?;
        let found = loaded.seek(position);
        *self.index.write() = Some(loaded);
        Ok(found)
    }

    /// The shared read handle, opening it if needed.
    pub(crate) fn reader_file(&self, vfs: &dyn Vfs) -> Result<Arc<dyn VfsFile>> {
        let mut handle = self.read_handle.lock();
        if let Some(file) = handle.as_ref() {
            return Ok(Arc::clone(file));
        }
        let file = vfs
            .open(&self.path, OpenMode::Read)
            .map_err(|e| Error::io("open segment", &self.path, e))?;
        *handle = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Releases the cached read handle and, if sealed, the in-memory index.
    pub(crate) fn release(&self) {
        *self.read_handle.lock() = None;
        if self.is_sealed() {
            *self.index.write() = None;
        }
    }
}

/// The segments of a log by base position. The last one is the active segment.
pub(crate) type SegmentMap = BTreeMap<u64, Arc<Segment>>;

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
        assert_eq!(check_segment_header(&header, 77), Ok(()));
        assert_eq!(check_segment_header(&header, 78), Err(CorruptReason::BaseMismatch));
        assert_eq!(check_segment_header(&header[..31], 77), Err(CorruptReason::BadHeader));
        for byte in 0..28 {
            let mut bad = header;
            bad[byte] ^= 0x10;
            assert!(check_segment_header(&bad, 77).is_err(), "flip in byte {byte}");
        }
    }
}
