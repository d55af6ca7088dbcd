//! The state behind a [`SimVfs`](super::SimVfs): directories, names and file bodies, each kept
//! twice — as visible and as made durable — plus the armed faults and the capacity.
//!
//! A directory is durable once the directory holding it was fsynced after its creation (the
//! root always is). A name is durable once its directory was fsynced after it appeared. A file's
//! bytes are durable up to its last `sync_data`. A power loss keeps only durable directories,
//! the durable names inside them, and the durable bytes plus a torn part of the rest
//! ([`super::crash`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{self, ErrorKind},
    ops::Bound,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::limits::u64_from;

/// A call of the file system that [`SimVfs::inject`](super::SimVfs::inject) can make fail.
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
    /// `Vfs::remove_file`.
    Remove,
}

/// The simulated file system's state.
#[derive(Debug)]
pub(super) struct State {
    /// Directories that exist.
    pub dirs: BTreeSet<PathBuf>,
    /// Directories whose entry in their parent is durable (the root always is).
    pub durable_dirs: BTreeSet<PathBuf>,
    /// File names that exist, with their inode.
    pub entries: BTreeMap<PathBuf, u64>,
    /// File names made durable by an fsync of their directory.
    pub durable_entries: BTreeMap<PathBuf, u64>,
    /// Per directory, the children (files or directories) created, renamed or removed since its
    /// last fsync: what its next fsync makes durable.
    pub dirty: HashMap<PathBuf, BTreeSet<PathBuf>>,
    pub inodes: HashMap<u64, Inode>,
    pub next_inode: u64,
    /// Armed faults: how many calls of the operation still succeed, and the error then.
    pub faults: HashMap<FaultOp, (usize, ErrorKind)>,
    pub locks: BTreeSet<PathBuf>,
    pub data_syncs: usize,
    pub sync_delay: Duration,
    /// Most bytes all files together may hold; `None` for no limit.
    pub capacity_bytes: Option<u64>,
}

/// One file's bytes: as written, and as of its last `sync_data`.
#[derive(Debug, Clone, Default)]
pub(super) struct Inode {
    pub data: Vec<u8>,
    pub durable: Vec<u8>,
}

/// The root directory every simulated file system starts with.
pub(super) fn root() -> PathBuf {
    PathBuf::from("/")
}

impl Default for State {
    fn default() -> Self {
        Self {
            dirs: BTreeSet::from([root()]),
            durable_dirs: BTreeSet::from([root()]),
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            dirty: HashMap::new(),
            inodes: HashMap::new(),
            next_inode: 0,
            faults: HashMap::new(),
            locks: BTreeSet::new(),
            data_syncs: 0,
            sync_delay: Duration::ZERO,
            capacity_bytes: None,
        }
    }
}

impl State {
    /// Consumes an armed fault for `op`, if its countdown reached zero.
    pub fn trip(&mut self, op: FaultOp) -> io::Result<()> {
        match self.faults.get_mut(&op) {
            Some((0, kind)) => {
                let kind = *kind;
                self.faults.remove(&op);
                Err(io::Error::new(kind, format!("injected {op:?} failure ({kind})")))
            }
            Some((n, _)) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn inode(&mut self, id: u64) -> &mut Inode {
        self.inodes.get_mut(&id).expect("an open handle keeps its inode")
    }

    /// Bytes held by the files that have a name.
    pub fn used_bytes(&self) -> u64 {
        self.entries.values().map(|id| u64_from(self.inodes[id].data.len())).sum()
    }

    /// How many more bytes files may grow by (unbounded without a capacity).
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes.map_or(u64::MAX, |capacity| capacity.saturating_sub(self.used_bytes()))
    }

    /// Whether `path` is a directory or a file.
    pub fn exists(&self, path: &Path) -> bool {
        self.dirs.contains(path) || self.entries.contains_key(path)
    }

    /// Notes that the entry `path` changed in its directory (created, renamed, removed).
    pub fn touch(&mut self, path: &Path) {
        if let Some(dir) = path.parent() {
            self.dirty.entry(dir.to_path_buf()).or_default().insert(path.to_path_buf());
        }
    }

    /// Makes the entries of directory `dir` durable: its files and its subdirectories. Costs what
    /// changed in it since its last fsync.
    pub fn sync_dir(&mut self, dir: &Path) {
        for path in self.dirty.remove(dir).unwrap_or_default() {
            match self.entries.get(&path) {
                Some(id) => self.durable_entries.insert(path.clone(), *id),
                None => self.durable_entries.remove(&path),
            };
            if self.dirs.contains(&path) {
                self.durable_dirs.insert(path);
            }
        }
    }

    /// The directories a power loss keeps: durable ones whose every ancestor is durable too.
    pub fn surviving_dirs(&self) -> BTreeSet<PathBuf> {
        self.durable_dirs
            .iter()
            .filter(|dir| dir.ancestors().skip(1).all(|a| self.durable_dirs.contains(a)))
            .cloned()
            .collect()
    }
}

/// The direct children of `dir` among `keys` (an ordered set of paths), found in a number of
/// look-ups that grows with the children, not with everything below them: paths order component by
/// component, so after a child `c` the range restarts at `c` + NUL — past every path inside `c`,
/// before any sibling (no file name holds NUL).
fn children_by<'a>(
    dir: &Path,
    mut next_after: impl FnMut(Bound<&Path>) -> Option<&'a PathBuf>,
) -> Vec<&'a PathBuf> {
    let mut found = Vec::new();
    let mut from = dir.to_path_buf();
    let mut bound_is_dir = true;
    loop {
        let bound = if bound_is_dir {
            Bound::Excluded(from.as_path())
        } else {
            Bound::Included(from.as_path())
        };
        let Some(path) = next_after(bound) else { break };
        let Ok(inside) = path.strip_prefix(dir) else { break };
        let Some(first) = inside.components().next() else { break };
        let mut past = first.as_os_str().to_os_string();
        if inside.components().count() == 1 {
            found.push(path);
        }
        past.push("\0");
        from = dir.join(past);
        bound_is_dir = false;
    }
    found
}

/// The direct children of `dir` in `map`.
pub(super) fn children<'a, V>(map: &'a BTreeMap<PathBuf, V>, dir: &Path) -> Vec<&'a PathBuf> {
    children_by(dir, |bound| map.range::<Path, _>((bound, Bound::Unbounded)).next().map(|(p, _)| p))
}

/// The direct children of `dir` in `set`.
pub(super) fn child_dirs<'a>(set: &'a BTreeSet<PathBuf>, dir: &Path) -> Vec<&'a PathBuf> {
    children_by(dir, |bound| set.range::<Path, _>((bound, Bound::Unbounded)).next())
}
