//! Named consumer cursors: "consumer X has handled everything up to position N".
//!
//! A cursor stores its acknowledged position (`ack: N` — the consumer resumes at N + 1) in its
//! own small file under `cursors/`, replaced atomically: write a temporary file, fsync it,
//! rename it over the old one, fsync the directory. A crash leaves the old or the new value,
//! never a mix, and an `ack` that returned is durable.
//!
//! A cursor only moves forward through [`CursorStore::ack`]; moving it back needs the explicit
//! [`CursorStore::reset`]. Updates of all cursors of a log are serialised by one lock held
//! across the file write, so two concurrent acks cannot land out of order.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{
    error::{CorruptReason, Error, Result},
    name::Name,
    recovery::remove_if_present,
    vfs::{OpenMode, Vfs},
};

const CURSOR_MAGIC: [u8; 8] = *b"INORDCUR";
const CURSOR_VERSION: u32 = 1;
const CURSOR_FILE_BYTES: usize = 32;
const CURSOR_SUFFIX: &str = ".cursor";

/// The cursors of one log.
#[derive(Debug)]
pub(crate) struct CursorStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    acks: Mutex<BTreeMap<Name, u64>>,
}

/// How [`CursorStore::write`] treats a move backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ForwardOnly,
    Any,
}

impl CursorStore {
    /// Loads every cursor under `dir` (created if missing), removing leftover temporary files.
    pub(crate) fn open(vfs: Arc<dyn Vfs>, dir: PathBuf) -> Result<Self> {
        vfs.create_dir_all(&dir).map_err(|e| Error::io("create cursor directory", &dir, e))?;
        let names = vfs.read_dir(&dir).map_err(|e| Error::io("list cursors", &dir, e))?;
        let mut acks = BTreeMap::new();
        for file_name in names {
            let path = dir.join(&file_name);
            if file_name.ends_with(".tmp") {
                remove_if_present(vfs.as_ref(), &path)?;
            } else if let Some(stem) = file_name.strip_suffix(CURSOR_SUFFIX) {
                let name = Name::new("cursor", stem)?;
                acks.insert(name, read_cursor_file(vfs.as_ref(), &path)?);
            }
        }
        Ok(Self { vfs, dir, acks: Mutex::new(acks) })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Name, u64>> {
        self.acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The acknowledged position of a cursor.
    pub(crate) fn get(&self, name: &Name) -> Option<u64> {
        self.lock().get(name).copied()
    }

    /// Every cursor with its acknowledged position.
    pub(crate) fn list(&self) -> Vec<(Name, u64)> {
        self.lock().iter().map(|(name, ack)| (name.clone(), *ack)).collect()
    }

    /// The lowest acknowledged position over all cursors.
    pub(crate) fn slowest(&self) -> Option<u64> {
        self.lock().values().min().copied()
    }

    /// Moves a cursor forward to `ack` (creating it). A lower `ack` is refused.
    pub(crate) fn ack(&self, name: &Name, ack: u64) -> Result<()> {
        self.write(name, ack, Direction::ForwardOnly)
    }

    /// Sets a cursor to `ack` in either direction (creating it).
    pub(crate) fn reset(&self, name: &Name, ack: u64) -> Result<()> {
        self.write(name, ack, Direction::Any)
    }

    /// Removes a cursor.
    pub(crate) fn remove(&self, name: &Name) -> Result<bool> {
        let mut acks = self.lock();
        if acks.remove(name).is_none() {
            return Ok(false);
        }
        remove_if_present(self.vfs.as_ref(), &self.path(name))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync cursor directory", &self.dir, e))?;
        Ok(true)
    }

    fn path(&self, name: &Name) -> PathBuf {
        self.dir.join(format!("{name}{CURSOR_SUFFIX}"))
    }

    fn write(&self, name: &Name, ack: u64, direction: Direction) -> Result<()> {
        let mut acks = self.lock();
        let current = acks.get(name).copied();
        if let Some(current) = current {
            if current == ack {
                return Ok(());
            }
            if direction == Direction::ForwardOnly && ack < current {
                return Err(Error::CursorRegression {
                    cursor: name.to_string(),
                    current,
                    requested: ack,
                });
            }
        }
        let path = self.path(name);
        let tmp = self.dir.join(format!("{name}{CURSOR_SUFFIX}.tmp"));
        remove_if_present(self.vfs.as_ref(), &tmp)?;
        let file = self
            .vfs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| Error::io("create cursor file", &tmp, e))?;
        file.write_all_at(&encode_cursor(ack), 0)
            .map_err(|e| Error::io("write cursor file", &tmp, e))?;
        file.sync_data().map_err(|e| Error::io("fsync cursor file", &tmp, e))?;
        drop(file);
        self.vfs.rename(&tmp, &path).map_err(|e| Error::io("rename cursor file", &path, e))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync cursor directory", &self.dir, e))?;
        acks.insert(name.clone(), ack);
        Ok(())
    }
}

fn encode_cursor(ack: u64) -> [u8; CURSOR_FILE_BYTES] {
    let mut bytes = [0u8; CURSOR_FILE_BYTES];
    bytes[..8].copy_from_slice(&CURSOR_MAGIC);
    bytes[8..12].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
    bytes[16..24].copy_from_slice(&ack.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_cursor(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; CURSOR_FILE_BYTES] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    if bytes[..8] != CURSOR_MAGIC
        || bytes[8..12] != CURSOR_VERSION.to_le_bytes()
        || crc32c::crc32c(&bytes[16..]) != crc
    {
        return None;
    }
    Some(u64::from_le_bytes(bytes[16..24].try_into().ok()?))
}

fn read_cursor_file(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    let file =
        vfs.open(path, OpenMode::Read).map_err(|e| Error::io("open cursor file", path, e))?;
    let mut bytes = [0u8; CURSOR_FILE_BYTES + 1];
    let got =
        file.read_full_at(&mut bytes, 0).map_err(|e| Error::io("read cursor file", path, e))?;
    decode_cursor(&bytes[..got]).ok_or_else(|| Error::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        reason: CorruptReason::BadHeader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::sim::SimVfs;

    fn store(vfs: &SimVfs) -> CursorStore {
        CursorStore::open(Arc::new(vfs.clone()), PathBuf::from("/log/cursors")).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::new("cursor", s).unwrap()
    }

    #[test]
    fn an_ack_is_durable_once_it_returns() {
        let vfs = SimVfs::new();
        store(&vfs).ack(&name("billing"), 41).unwrap();
        for seed in 0..20 {
            let reopened = store(&vfs.crash_power(seed));
            assert_eq!(reopened.get(&name("billing")), Some(41), "seed {seed}");
        }
    }

    #[test]
    fn a_cursor_never_moves_backwards_by_accident() {
        let vfs = SimVfs::new();
        let cursors = store(&vfs);
        cursors.ack(&name("c"), 10).unwrap();
        let err = cursors.ack(&name("c"), 9).unwrap_err();
        assert!(matches!(err, Error::CursorRegression { current: 10, requested: 9, .. }));
        assert_eq!(store(&vfs.crash_process()).get(&name("c")), Some(10));
        cursors.reset(&name("c"), 3).unwrap();
        assert_eq!(store(&vfs.crash_process()).get(&name("c")), Some(3));
    }

    #[test]
    fn a_failed_write_keeps_the_old_value() {
        let vfs = SimVfs::new();
        let cursors = store(&vfs);
        cursors.ack(&name("c"), 5).unwrap();
        vfs.inject(crate::vfs::sim::FaultOp::Rename, 0);
        assert!(cursors.ack(&name("c"), 6).is_err());
        assert_eq!(cursors.get(&name("c")), Some(5));
        assert_eq!(store(&vfs.crash_power(7)).get(&name("c")), Some(5));
    }

    #[test]
    fn a_damaged_cursor_file_is_an_error_not_a_reset() {
        let vfs = SimVfs::new();
        store(&vfs).ack(&name("c"), 5).unwrap();
        vfs.mutate_file(Path::new("/log/cursors/c.cursor"), |bytes| bytes[17] ^= 1);
        let err = CursorStore::open(Arc::new(vfs), PathBuf::from("/log/cursors")).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn slowest_is_the_minimum_and_removal_forgets() {
        let vfs = SimVfs::new();
        let cursors = store(&vfs);
        cursors.ack(&name("fast"), 90).unwrap();
        cursors.ack(&name("slow"), 12).unwrap();
        assert_eq!(cursors.slowest(), Some(12));
        assert!(cursors.remove(&name("slow")).unwrap());
        assert_eq!(cursors.slowest(), Some(90));
        assert_eq!(store(&vfs.crash_power(3)).list(), vec![(name("fast"), 90)]);
    }
}
