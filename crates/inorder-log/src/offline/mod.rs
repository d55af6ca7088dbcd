//! Operator tools for a log that is not open: inspect every segment, and repair damage by moving
//! it aside. They back `inorder log verify` and `inorder log repair`.
//!
//! An [`OfflineLog`] holds the log directory's lock for as long as it lives, like an open
//! [`Log`](crate::Log) does: it cannot be made while a `Log` (a running server) has the directory
//! open, and no `Log` can open the directory while it lives. Inspection only reads; a repair
//! writes, and only what its plan says.
//!
//! - [`inspect`]: every segment scanned whole through the recovery decision table — what is
//!   damaged, what the next open would cut, what sound records lie beyond the damage.
//! - [`repair`]: the plan for the first damage (cut at the damaged batch, everything after it into
//!   quarantine files next to the segments) and carrying it out.

pub(crate) mod inspect;
pub(crate) mod repair;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use self::{inspect::Inspection, repair::RepairPlan};
use crate::{
    error::Result,
    open::lock_log_dir,
    vfs::{StdVfs, Vfs, VfsLock},
};

/// A log directory held for an operator, offline (see the module docs).
#[derive(Debug)]
pub struct OfflineLog {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    _lock: Box<dyn VfsLock>,
}

impl OfflineLog {
    /// Takes the lock of the log in `dir` on the real file system. Creates nothing but the `LOCK`
    /// file.
    ///
    /// # Errors
    /// [`Error::Locked`](crate::Error::Locked) while a `Log` (a running server) or another
    /// offline tool holds it; [`Error::Io`](crate::Error::Io), e.g. when `dir` does not exist.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_vfs(Arc::new(StdVfs), dir)
    }

    /// [`OfflineLog::open`] on the given file system.
    ///
    /// # Errors
    /// As [`OfflineLog::open`].
    pub fn open_with_vfs(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let lock = lock_log_dir(vfs.as_ref(), &dir)?;
        Ok(Self { vfs, dir, _lock: lock })
    }

    /// The log directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Scans every segment; changes nothing.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) only: damage is reported, not an error.
    pub fn inspect(&self) -> Result<Inspection> {
        inspect::inspect(self.vfs.as_ref(), &self.dir)
    }

    /// What a repair of the first damage found by `inspection` (of this log) would do; `None`
    /// when nothing is damaged. Changes nothing.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io).
    ///
    /// # Panics
    /// If `inspection` is of another directory.
    pub fn plan_repair(&self, inspection: &Inspection) -> Result<Option<RepairPlan>> {
        assert_eq!(inspection.dir, self.dir, "an inspection of this log");
        repair::plan(self.vfs.as_ref(), inspection)
    }

    /// Carries out `plan`: moves the damaged batch and everything after it into quarantine files
    /// and cuts the log there, leaving a log that opens. Nothing is deleted.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io); after one, inspect again (a repair interrupted at any
    /// point leaves either the damage, to repair again, or the repaired log).
    ///
    /// # Panics
    /// If `plan` is for another directory.
    pub fn repair(&self, plan: &RepairPlan) -> Result<()> {
        assert_eq!(plan.dir, self.dir, "a plan for this log");
        repair::execute(self.vfs.as_ref(), plan)
    }
}
