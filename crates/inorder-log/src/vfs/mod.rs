//! The storage seam: every file system call the log makes goes through [`Vfs`].
//!
//! Production uses [`StdVfs`] (plain `std::fs`, positional I/O, `fdatasync`, directory fsync,
//! `flock`). Tests use `SimVfs` (feature `sim`), an in-memory file system that keeps what was
//! *written* apart from what was made *durable* by `sync_data` / `sync_dir`, and can produce the
//! image a crash would leave (unsynced bytes torn, garbled or lost; unsynced renames undone), or
//! fail chosen calls. The seam is small on purpose: it is exactly the set of calls whose
//! durability semantics the log relies on (see FORMAT.md, "What we assume of the file system").

#[cfg(feature = "sim")]
pub mod sim;

use std::{
    fmt, fs,
    io::{self, ErrorKind},
    os::unix::fs::FileExt,
    path::Path,
    sync::Arc,
};

/// How [`Vfs::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, read only.
    Read,
    /// Existing file, read and write.
    ReadWrite,
    /// New file (fails if it exists), read and write.
    CreateNew,
}

/// An open file: positional reads and writes, so one handle serves many readers.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    ///
    /// # Errors
    /// The operating system's error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// The operating system's error; part of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data and size durable (`fdatasync`).
    ///
    /// # Errors
    /// The operating system's error. After a failure the durable state is unknown.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    ///
    /// # Errors
    /// The operating system's error.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    ///
    /// # Errors
    /// The operating system's error.
    fn size(&self) -> io::Result<u64>;

    /// Reads until `buf` is full or the file ends; returns how many bytes were read.
    ///
    /// # Errors
    /// The operating system's error.
    fn read_full_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + crate::limits::u64_from(done)) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Creates `path` and every missing parent, top down, and makes each new level durable by an
/// fsync of the directory that holds it, so a directory the log created survives a power loss.
/// Returns how many levels were created (0 if `path` existed).
///
/// # Errors
/// The operating system's error (also when `path` exists but is not a directory: the caller's
/// next `read_dir` fails).
pub fn create_dir_durable(vfs: &dyn Vfs, path: &Path) -> io::Result<usize> {
    let mut created = 0;
    match vfs.create_dir(path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(0),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
                return Err(e);
            };
            created += create_dir_durable(vfs, parent)?;
            match vfs.create_dir(path) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(created),
                other => other?,
            }
        }
        other => other?,
    }
    sync_parent(vfs, path)?;
    Ok(created + 1)
}

/// Fsyncs the directory holding `path` (nothing for a path without one: the root, or a bare
/// relative name, whose directory is the working directory — synced as `.`).
pub(crate) fn sync_parent(vfs: &dyn Vfs, path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => vfs.sync_dir(Path::new(".")),
        Some(parent) => vfs.sync_dir(parent),
        None => Ok(()),
    }
}

/// Removes a file, treating "already gone" as done.
///
/// # Errors
/// The operating system's error, other than `NotFound`.
pub(crate) fn remove_if_present(vfs: &dyn Vfs, path: &Path) -> io::Result<()> {
    match vfs.remove_file(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A held exclusive lock on a directory; dropping it releases the lock.
pub trait VfsLock: Send + Sync + fmt::Debug {}

/// The file system calls of the log.
pub trait Vfs: Send + Sync + fmt::Debug + 'static {
    /// Creates one directory, whose parent must exist. Durable only after [`Vfs::sync_dir`] of
    /// the parent ([`create_dir_durable`] does both, level by level).
    ///
    /// # Errors
    /// `AlreadyExists` if `path` exists, `NotFound` if its parent does not; otherwise the
    /// operating system's error.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    ///
    /// # Errors
    /// The operating system's error.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    ///
    /// # Errors
    /// The operating system's error (`NotFound`, `AlreadyExists`, …).
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>>;
    /// Renames a file, replacing `to` if it exists. Durable only after [`Vfs::sync_dir`].
    ///
    /// # Errors
    /// The operating system's error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable only after [`Vfs::sync_dir`].
    ///
    /// # Errors
    /// The operating system's error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    ///
    /// # Errors
    /// The operating system's error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (a lock file, created if missing) without waiting.
    ///
    /// # Errors
    /// `WouldBlock` if another holder has it; otherwise the operating system's error.
    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn VfsLock>>;
    /// Removes an empty directory. Durable only after [`Vfs::sync_dir`] of its parent.
    ///
    /// # Errors
    /// The operating system's error, or `Unsupported` on file systems that cannot.
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(ErrorKind::Unsupported.into())
    }
    /// When a file was last modified (retention by age). File systems that keep no such time
    /// answer `Unsupported`, and age-based retention keeps their segments.
    ///
    /// # Errors
    /// The operating system's error, or `Unsupported`.
    fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime> {
        let _ = path;
        Err(ErrorKind::Unsupported.into())
    }
}

/// The real file system (Unix).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile(fs::File);

impl VfsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

#[derive(Debug)]
struct StdLock(#[allow(dead_code)] fs::File);

impl VfsLock for StdLock {}

impl Vfs for StdVfs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut options = fs::OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(StdFile(options.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }

    fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime> {
        fs::metadata(path)?.modified()
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock(file))),
            Err(fs::TryLockError::WouldBlock) => Err(ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
