//! `SimVfs`: an in-memory file system that remembers what was made durable.
//!
//! Every file keeps two images: what was *written* and what was *durable* at its last
//! `sync_data`. Every directory keeps two name tables: the visible one and the one made durable
//! by its last `sync_dir`. From that state the double can produce what a crash leaves:
//!
//! - [`SimVfs::crash_process`]: a `kill -9`: the page cache survives, so everything written is
//!   kept (durable or not).
//! - [`SimVfs::crash_power`]: a power loss: only durable names and bytes are certain; of the bytes
//!   written past a file's durable length, a random prefix survives, and that prefix may be
//!   garbled (a torn sector or page written out of order).
//!
//! It can also fail chosen calls ([`SimVfs::inject`]) and counts syncs and open handles, so
//! tests can see that group commit shares one fsync and that an idle log closes its files.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{self, ErrorKind},
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};

use super::{OpenMode, Vfs, VfsFile, VfsLock};
use crate::limits::{u64_from, usize_from};

/// A call of the file system that [`SimVfs::inject`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `VfsFile::write_all_at`.
    Write,
    /// `VfsFile::sync_data`.
    SyncData,
    /// `Vfs::sync_dir`.
    SyncDir,
    /// `Vfs::rename`.
    Rename,
    /// `Vfs::open` with `CreateNew`.
    Create,
}

/// The in-memory, crash-simulating file system. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
    handles: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, u64>,
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    faults: HashMap<FaultOp, usize>,
    locks: BTreeSet<PathBuf>,
    data_syncs: usize,
    sync_delay: Duration,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

impl State {
    /// Consumes an armed fault for `op`, if its countdown reached zero.
    fn trip(&mut self, op: FaultOp) -> io::Result<()> {
        match self.faults.get_mut(&op) {
            Some(0) => {
                self.faults.remove(&op);
                Err(io::Error::other(format!("injected {op:?} failure")))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn inode(&mut self, id: u64) -> &mut Inode {
        self.inodes.get_mut(&id).expect("an open handle keeps its inode")
    }
}

impl SimVfs {
    /// An empty file system.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Makes the `skip + 1`-th next call of `op` fail once.
    pub fn inject(&self, op: FaultOp, skip: usize) {
        self.lock().faults.insert(op, skip);
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
        let state = self.lock();
        let inodes = state
            .entries
            .values()
            .map(|id| {
                let data = state.inodes[id].data.clone();
                (*id, Inode { durable: data.clone(), data })
            })
            .collect();
        Self::from_parts(&state, state.entries.clone(), inodes)
    }

    /// The file system a power loss leaves, with randomness from `seed`: durable names only;
    /// per file the durable bytes plus a random, possibly garbled, prefix of the unsynced rest.
    #[must_use]
    pub fn crash_power(&self, seed: u64) -> Self {
        let state = self.lock();
        let mut rng = SplitMix64(seed);
        let mut inodes = HashMap::new();
        for id in state.durable_entries.values() {
            let inode = &state.inodes[id];
            let image = torn_image(inode, &mut rng);
            inodes.insert(*id, Inode { durable: image.clone(), data: image });
        }
        Self::from_parts(&state, state.durable_entries.clone(), inodes)
    }

    fn from_parts(
        state: &State,
        entries: BTreeMap<PathBuf, u64>,
        inodes: HashMap<u64, Inode>,
    ) -> Self {
        let next = State {
            dirs: state.dirs.clone(),
            durable_entries: entries.clone(),
            entries,
            inodes,
            next_inode: state.next_inode,
            ..State::default()
        };
        Self { state: Arc::new(Mutex::new(next)), handles: Arc::default() }
    }
}

/// The entries strictly below directory `dir` (its children and their descendants). Paths order
/// component by component, so they are one contiguous range: a look-up costs what the directory
/// holds, not what the whole file system holds.
fn below<'a, V>(
    map: &'a BTreeMap<PathBuf, V>,
    dir: &'a Path,
) -> impl Iterator<Item = (&'a PathBuf, &'a V)> {
    map.range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
        .take_while(move |(p, _)| p.starts_with(dir))
}

/// [`below`] for a set of paths.
fn below_set<'a>(set: &'a BTreeSet<PathBuf>, dir: &'a Path) -> impl Iterator<Item = &'a PathBuf> {
    set.range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
        .take_while(move |p| p.starts_with(dir))
}

/// The bytes of `inode` after a power loss.
fn torn_image(inode: &Inode, rng: &mut SplitMix64) -> Vec<u8> {
    let (data, durable) = (&inode.data, &inode.durable);
    if !data.starts_with(durable) {
        // Truncated or rewritten since the last sync: either image may be what the disk holds.
        return if rng.below(2) == 0 { durable.clone() } else { data.clone() };
    }
    let unsynced = &data[durable.len()..];
    let kept = usize_from(rng.below(u64_from(unsynced.len()) + 1));
    let mut image = durable.clone();
    image.extend_from_slice(&unsynced[..kept]);
    if kept > 0 && rng.below(3) == 0 {
        // Garble one byte of the surviving unsynced part: a torn sector.
        let at = durable.len() + usize_from(rng.below(u64_from(kept)));
        image[at] ^= 1 << rng.below(8);
    }
    image
}

/// A tiny deterministic generator, so crash images are reproducible from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    inode: u64,
    writable: bool,
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
        let data = &mut state.inode(self.inode).data;
        let start = usize_from(offset);
        if data.len() < start + buf.len() {
            data.resize(start + buf.len(), 0);
        }
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
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
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for dir in path.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            state.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(path) {
            return Err(ErrorKind::NotFound.into());
        }
        let files = below(&state.entries, path).map(|(child, _)| child);
        let dirs = below_set(&state.dirs, path);
        Ok(files
            .chain(dirs)
            .filter(|child| child.parent() == Some(path))
            .filter_map(|child| child.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut state = self.lock();
        let inode = match (mode, state.entries.get(path)) {
            (OpenMode::CreateNew, Some(_)) => return Err(ErrorKind::AlreadyExists.into()),
            (OpenMode::CreateNew, None) => {
                state.trip(FaultOp::Create)?;
                if !path.parent().is_some_and(|p| state.dirs.contains(p)) {
                    return Err(ErrorKind::NotFound.into());
                }
                state.next_inode += 1;
                let id = state.next_inode;
                state.inodes.insert(id, Inode::default());
                state.entries.insert(path.to_path_buf(), id);
                id
            }
            (_, Some(id)) => *id,
            (_, None) => return Err(ErrorKind::NotFound.into()),
        };
        drop(state);
        self.handles.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(SimFile { vfs: self.clone(), inode, writable: mode != OpenMode::Read }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.trip(FaultOp::Rename)?;
        let id = state.entries.remove(from).ok_or(ErrorKind::NotFound)?;
        state.entries.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.entries.remove(path).ok_or(ErrorKind::NotFound)?;
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.trip(FaultOp::SyncDir)?;
        let in_dir = |p: &&PathBuf| p.parent() == Some(path);
        let forgotten: Vec<PathBuf> =
            below(&state.durable_entries, path).map(|(p, _)| p).filter(in_dir).cloned().collect();
        for p in forgotten {
            state.durable_entries.remove(&p);
        }
        let visible: Vec<_> = below(&state.entries, path)
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        state.durable_entries.extend(visible);
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        if !self.lock().locks.insert(path.to_path_buf()) {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock { vfs: self.clone(), path: path.to_path_buf() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(vfs: &SimVfs, path: &str) -> Arc<dyn VfsFile> {
        vfs.create_dir_all(Path::new("/d")).unwrap();
        vfs.open(Path::new(path), OpenMode::CreateNew).unwrap()
    }

    #[test]
    fn power_loss_keeps_durable_bytes_and_names_only() {
        let vfs = SimVfs::new();
        let f = file(&vfs, "/d/a");
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b"-unsynced", 7).unwrap();
        let _g = file(&vfs, "/d/b"); // never dir-synced
        for seed in 0..50 {
            let after = vfs.crash_power(seed);
            let data = after.read_file(Path::new("/d/a")).unwrap();
            assert!(data.starts_with(b"durable"), "seed {seed}: {data:?}");
            assert!(data.len() <= 16);
            assert_eq!(after.read_file(Path::new("/d/b")), None);
        }
    }

    #[test]
    fn process_crash_keeps_everything_written() {
        let vfs = SimVfs::new();
        let f = file(&vfs, "/d/a");
        f.write_all_at(b"page cache", 0).unwrap();
        let after = vfs.crash_process();
        assert_eq!(after.read_file(Path::new("/d/a")).unwrap(), b"page cache");
    }

    #[test]
    fn an_unsynced_rename_is_undone_by_power_loss() {
        let vfs = SimVfs::new();
        let f = file(&vfs, "/d/tmp");
        f.sync_data().unwrap();
        vfs.sync_dir(Path::new("/d")).unwrap();
        vfs.rename(Path::new("/d/tmp"), Path::new("/d/final")).unwrap();
        let after = vfs.crash_power(1);
        assert!(after.read_file(Path::new("/d/tmp")).is_some());
        assert!(after.read_file(Path::new("/d/final")).is_none());
    }

    #[test]
    fn injected_faults_fire_once_after_the_skip_count() {
        let vfs = SimVfs::new();
        let f = file(&vfs, "/d/a");
        vfs.inject(FaultOp::SyncData, 1);
        assert!(f.sync_data().is_ok());
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
        assert_eq!(vfs.data_syncs(), 2);
    }

    #[test]
    fn handles_and_locks_are_released_on_drop() {
        let vfs = SimVfs::new();
        let f = file(&vfs, "/d/a");
        assert_eq!(vfs.open_handles(), 1);
        drop(f);
        assert_eq!(vfs.open_handles(), 0);
        let lock = vfs.lock_exclusive(Path::new("/d/LOCK")).unwrap();
        assert!(vfs.lock_exclusive(Path::new("/d/LOCK")).is_err());
        drop(lock);
        assert!(vfs.lock_exclusive(Path::new("/d/LOCK")).is_ok());
    }
}
