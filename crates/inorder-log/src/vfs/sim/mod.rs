//! `SimVfs`: an in-memory file system that remembers what was made durable.
//!
//! Every file keeps two images: what was *written* and what was *durable* at its last
//! `sync_data`. Every directory keeps two name tables: the visible one and the one made durable
//! by its last `sync_dir` — for files and for subdirectories alike, so a directory whose parent
//! was never fsynced after its creation disappears, with everything in it, in a power loss. From
//! that state the double can produce what a crash leaves:
//!
//! - [`SimVfs::crash_process`]: a `kill -9`: the page cache survives, so everything written is
//!   kept (durable or not).
//! - [`SimVfs::crash_power`]: a power loss: only durable directories, names and bytes are
//!   certain; of the bytes written past a file's durable length, a random prefix survives, and
//!   that prefix may be garbled (a torn sector or page written out of order).
//!
//! It can also fail chosen calls with a chosen error ([`SimVfs::inject_error`]: `StorageFull`
//! for ENOSPC, `Other` for EIO), run out of space ([`SimVfs::set_capacity`]: a write that does
//! not fit writes what fits and fails with `StorageFull`, as `write(2)` does), and counts syncs
//! and open handles, so tests can see that group commit shares one fsync and that an idle log
//! closes its files.

mod crash;
mod state;

use std::{
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};

pub use self::state::FaultOp;
use self::state::{Inode, State, child_dirs, children};
use super::{OpenMode, Vfs, VfsFile, VfsLock};
use crate::limits::{u64_from, usize_from};

/// The in-memory, crash-simulating file system. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
    handles: Arc<AtomicUsize>,
    holds: Arc<SyncHolds>,
}

/// Directories whose files' `sync_data` waits (see [`SimVfs::hold_syncs`]).
#[derive(Debug, Default)]
struct SyncHolds {
    dirs: Mutex<Vec<PathBuf>>,
    released: parking_lot::Condvar,
}

/// Holds the syncs of one directory until dropped (see [`SimVfs::hold_syncs`]).
#[derive(Debug)]
#[must_use = "the syncs are released when this is dropped"]
pub struct SyncHold {
    holds: Arc<SyncHolds>,
    dir: PathBuf,
}

impl Drop for SyncHold {
    fn drop(&mut self) {
        let mut dirs = self.holds.dirs.lock();
        if let Some(at) = dirs.iter().position(|dir| *dir == self.dir) {
            dirs.remove(at);
        }
        self.holds.released.notify_all();
    }
}

impl SimVfs {
    /// An empty file system: only the root directory `/`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn from_state(state: State) -> Self {
        Self { state: Arc::new(Mutex::new(state)), handles: Arc::default(), holds: Arc::default() }
    }

    /// Makes every `sync_data` of a file under `dir` wait until the returned guard is dropped —
    /// a disk slow for some files only, so that tests can make appends of one log durable long
    /// after those of another. Other calls do not wait.
    pub fn hold_syncs(&self, dir: impl Into<PathBuf>) -> SyncHold {
        let dir = dir.into();
        self.holds.dirs.lock().push(dir.clone());
        SyncHold { holds: Arc::clone(&self.holds), dir }
    }

    /// Makes the `skip + 1`-th next call of `op` fail once (with an EIO-like `Other` error).
    pub fn inject(&self, op: FaultOp, skip: usize) {
        self.inject_error(op, skip, ErrorKind::Other);
    }

    /// Makes the `skip + 1`-th next call of `op` fail once with an error of `kind`
    /// (`StorageFull` for ENOSPC).
    pub fn inject_error(&self, op: FaultOp, skip: usize, kind: ErrorKind) {
        self.lock().faults.insert(op, (skip, kind));
    }

    /// Limits the bytes all files together may hold (`None`: no limit). A write that does not
    /// fit writes the part that fits and fails with `StorageFull`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity_bytes = bytes;
    }

    /// Bytes held by the files that exist.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Makes every `sync_data` take this long (a slow disk), without blocking other calls.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.lock().sync_delay = delay;
    }

    /// How many `sync_data` calls succeeded so far.
    #[must_use]
    pub fn data_syncs(&self) -> usize {
        self.lock().data_syncs
    }

    /// How many file handles are open.
    #[must_use]
    pub fn open_handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    /// The written bytes of a file, if it exists.
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.entries.get(path)?;
        Some(state.inodes[id].data.clone())
    }

    /// Whether `path` is an existing directory.
    #[must_use]
    pub fn is_dir(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    /// Changes a file's bytes in place, written and durable images alike (bit rot, a bad disk).
    ///
    /// # Panics
    /// If the file does not exist.
    pub fn mutate_file(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.lock();
        let id = *state.entries.get(path).expect("mutate_file: no such file");
        let inode = state.inode(id);
        change(&mut inode.data);
        inode.durable = inode.data.clone();
    }

    /// Names of files that exist (visible), sorted.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().entries.keys().cloned().collect()
    }

    /// The file system a `kill -9` leaves: everything written survives, locks are released.
    #[must_use]
    pub fn crash_process(&self) -> Self {
        Self::from_state(crash::process_crash(&self.lock()))
    }

    /// The file system a power loss leaves, with randomness from `seed`: durable directories and
    /// names only; per file the durable bytes plus a random, possibly garbled, prefix of the
    /// unsynced rest.
    #[must_use]
    pub fn crash_power(&self, seed: u64) -> Self {
        Self::from_state(crash::power_loss(&self.lock(), seed))
    }
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    inode: u64,
    writable: bool,
    path: PathBuf,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        self.vfs.handles.fetch_sub(1, Ordering::SeqCst);
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.vfs.lock();
        let data = &state.inode(self.inode).data;
        let start = usize_from(offset).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(ErrorKind::PermissionDenied.into());
        }
        let mut state = self.vfs.lock();
        state.trip(FaultOp::Write)?;
        let free = state.free_bytes();
        let data = &mut state.inode(self.inode).data;
        let start = usize_from(offset);
        let growth = u64_from((start + buf.len()).saturating_sub(data.len()));
        // What fits: everything, or the bytes up to the old end plus the free space.
        let fits = if growth <= free {
            buf.len()
        } else {
            (data.len() + usize_from(free)).saturating_sub(start).min(buf.len())
        };
        if data.len() < start + fits {
            data.resize(start + fits, 0);
        }
        data[start..start + fits].copy_from_slice(&buf[..fits]);
        if fits < buf.len() {
            return Err(io::Error::new(ErrorKind::StorageFull, "simulated disk is full"));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let holds = &self.vfs.holds;
        let mut dirs = holds.dirs.lock();
        while dirs.iter().any(|dir| self.path.starts_with(dir)) {
            holds.released.wait(&mut dirs);
        }
        drop(dirs);
        let delay = self.vfs.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.vfs.lock();
        state.trip(FaultOp::SyncData)?;
        let inode = state.inode(self.inode);
        inode.durable = inode.data.clone();
        state.data_syncs += 1;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.vfs.lock();
        state.inode(self.inode).data.resize(usize_from(len), 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut state = self.vfs.lock();
        Ok(u64_from(state.inode(self.inode).data.len()))
    }
}

#[derive(Debug)]
struct SimLock {
    vfs: SimVfs,
    path: PathBuf,
}

impl VfsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.vfs.lock().locks.remove(&self.path);
    }
}

impl Vfs for SimVfs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.exists(path) {
            return Err(ErrorKind::AlreadyExists.into());
        }
        if !path.parent().is_some_and(|parent| state.dirs.contains(parent)) {
            return Err(ErrorKind::NotFound.into());
        }
        state.dirs.insert(path.to_path_buf());
        state.touch(path);
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(path) {
            return Err(ErrorKind::NotFound.into());
        }
        let files = children(&state.entries, path);
        let dirs = child_dirs(&state.dirs, path);
        Ok(files
            .into_iter()
            .chain(dirs)
            .filter_map(|child| child.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut state = self.lock();
        let inode = match (mode, state.entries.get(path)) {
            (OpenMode::CreateNew, Some(_)) => return Err(ErrorKind::AlreadyExists.into()),
            (OpenMode::CreateNew, None) => {
                state.trip(FaultOp::Create)?;
                if state.dirs.contains(path) {
                    return Err(ErrorKind::AlreadyExists.into());
                }
                if !path.parent().is_some_and(|p| state.dirs.contains(p)) {
                    return Err(ErrorKind::NotFound.into());
                }
                state.next_inode += 1;
                let id = state.next_inode;
                state.inodes.insert(id, Inode::default());
                state.entries.insert(path.to_path_buf(), id);
                state.touch(path);
                id
            }
            (_, Some(id)) => *id,
            (_, None) => return Err(ErrorKind::NotFound.into()),
        };
        drop(state);
        self.handles.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(SimFile {
            vfs: self.clone(),
            inode,
            writable: mode != OpenMode::Read,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.trip(FaultOp::Rename)?;
        if !to.parent().is_some_and(|p| state.dirs.contains(p)) {
            return Err(ErrorKind::NotFound.into());
        }
        let id = state.entries.remove(from).ok_or(ErrorKind::NotFound)?;
        state.entries.insert(to.to_path_buf(), id);
        state.touch(from);
        state.touch(to);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.trip(FaultOp::Remove)?;
        state.entries.remove(path).ok_or(ErrorKind::NotFound)?;
        state.touch(path);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.trip(FaultOp::SyncDir)?;
        if !state.dirs.contains(path) {
            return Err(ErrorKind::NotFound.into());
        }
        state.sync_dir(path);
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        let mut state = self.lock();
        if !path.parent().is_some_and(|dir| state.dirs.contains(dir)) {
            return Err(ErrorKind::NotFound.into());
        }
        if !state.locks.insert(path.to_path_buf()) {
            return Err(ErrorKind::WouldBlock.into());
        }
        drop(state);
        Ok(Box::new(SimLock { vfs: self.clone(), path: path.to_path_buf() }))
    }
}

#[cfg(test)]
mod tests;
