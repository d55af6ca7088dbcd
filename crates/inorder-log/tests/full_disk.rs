//! A real full file system, end to end: a 2 MiB tmpfs is filled until an append fails. The log
//! latches with the operating system's error (`StorageFull`, ENOSPC) and refuses later appends;
//! with space freed (a filler file deleted) it reopens with every acknowledged record and takes
//! appends again.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`). Where the mount is refused the test says so loudly on
//! stderr and returns: it cannot be checked there, and pretending would be worse.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use common::{payload, read_all};
use inorder_log::{Error, FsyncPolicy, Log, LogOptions};

/// Size of the file system: small enough to fill in a moment.
const TMPFS_SIZE: &str = "size=2m";

/// Bytes of the filler file written before the log: most of the file system.
const FILLER_BYTES: usize = 1536 * 1024;

/// A tmpfs mounted on a temporary directory; unmounted when dropped (lazily, so a panic with the
/// log still open does not leave it mounted).
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs -o {TMPFS_SIZE} refused ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Group,
        segment_bytes: 64 * 1024,
        record_payload_bytes_max: 4096,
        ..LogOptions::default()
    }
}

/// Appends batches of ten 1000-byte records until one fails; returns the acknowledged payloads,
/// the failed batch and the error.
fn fill(log: &Log) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Error) {
    let mut acknowledged = Vec::new();
    for i in 0.. {
        let batch: Vec<_> = (0..10).map(|j| payload("full", i * 10 + j, 1000)).collect();
        match log.append_blocking(batch.clone()) {
            Ok(_) => acknowledged.extend(batch),
            Err(error) => return (acknowledged, batch, error),
        }
    }
    unreachable!("a 2 MiB file system fills up")
}

fn storage_full(error: &Error) -> bool {
    matches!(error, Error::Latched { source } if source.kind() == ErrorKind::StorageFull)
}

#[test]
fn a_full_tmpfs_latches_the_log_and_with_space_freed_it_takes_appends_again() {
    let tmpfs = match SmallTmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!(
                "\n!!!!!!!!!!\n!!! full_disk: NOT RUN: {why}\n!!! (needs root to mount a tmpfs)\n!!!!!!!!!!\n"
            );
            return;
        }
    };
    let filler: PathBuf = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![0u8; FILLER_BYTES]).unwrap();
    let dir = tmpfs.path().join("topics/orders");
    let log = Log::open(&dir, options()).unwrap();

    let (acknowledged, failed, error) = fill(&log);
    assert!(!acknowledged.is_empty(), "some appends fit");
    assert!(storage_full(&error), "the typed error carries ENOSPC: {error}");
    let later = log.append_blocking(["refused"]).unwrap_err();
    assert!(storage_full(&later), "later appends are refused with the same error: {later}");
    assert!(log.stats().latched);
    drop(log);

    std::fs::remove_file(&filler).unwrap();
    let log = Log::open(&dir, options()).unwrap();
    let records = read_all(&log, 1);
    // Every acknowledged record; the failed batch only whole, if at all.
    let extra = records.len() - acknowledged.len();
    assert!(extra == 0 || extra == failed.len(), "{extra} records of the failed batch survived");
    for (record, want) in records.iter().zip(acknowledged.iter().chain(&failed)) {
        assert_eq!(record.payload.as_ref(), want.as_slice(), "at {}", record.position);
    }
    let next = u64::try_from(records.len()).unwrap() + 1;
    assert_eq!(log.append_blocking(["space again"]).unwrap(), next..=next);
    log.verify().unwrap();
}
