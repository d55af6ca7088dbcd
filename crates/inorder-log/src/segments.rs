//! [`Segment`]: what the process knows about one segment file, shared by the writer, the
//! syncers and every reader.
//!
//! Only the last segment is written to; the others are *sealed*: fsynced once when the writer
//! moved on, and never modified again until purge deletes them whole. An empty segment (header
//! only) carries the next position through a purge of everything.
//!
//! **Guarantee.** A segment's committed extent (end position, bytes) only grows, and it is
//! published through atomics *before* the log's committed position, so a reader that saw a
//! committed position always sees the bytes that back it. The sparse index of a sealed segment is
//! a cache: loaded on first use, rebuilt by a scan when missing or bad, dropped when the log goes
//! idle.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use parking_lot::{Mutex, RwLock};

use crate::{
    error::{Error, Result},
    format::{
        index::{SparseIndex, read_index_file, write_index_file},
        segment::{index_file_name, segment_file_name},
    },
    limits::SEGMENT_HEADER_BYTES,
    scan::scan_segment,
    vfs::{OpenMode, Vfs, VfsFile},
};

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

    /// Publishes newly durable records. Extents only grow: publishing an older extent (a request
    /// the sync stage finishes after the writer sealed the segment, which published its whole
    /// extent) changes nothing.
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
        let loaded = self.load_or_rebuild_index(vfs)?;
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

    /// Loads the index file of this (sealed) segment, or rebuilds it by scanning the segment and
    /// writes the rebuilt index back, best effort: it is only a cache.
    fn load_or_rebuild_index(&self, vfs: &dyn Vfs) -> Result<SparseIndex> {
        match read_index_file(vfs, &self.index_path, self.base) {
            Ok(Some(index)) => return Ok(index),
            Ok(None) => {
                tracing::warn!(index = %self.index_path.display(), "invalid index file, rebuilding");
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, index = %self.index_path.display(), "unreadable index");
            }
        }
        let scan = scan_segment(vfs, self.base, &self.path, false, false)?;
        if let Err(error) = write_index_file(vfs, &self.index_path, &scan.index) {
            tracing::warn!(%error, segment = %self.path.display(), "could not save rebuilt index");
        }
        Ok(scan.index)
    }

    /// Writes the in-memory index of this segment to its index file (when it is sealed). The
    /// index is a cache, but a failed write means the disk refuses writes: the writer latches.
    pub(crate) fn save_index(&self, vfs: &dyn Vfs) -> Result<()> {
        let index = self.index_snapshot().unwrap_or_else(|| SparseIndex::new(self.base));
        write_index_file(vfs, &self.index_path, &index)
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
