//! I/O errors, full disks and new directories, through `SimVfs`.
//!
//! A failed write, fsync, rename, directory fsync, file creation or removal — ENOSPC or EIO —
//! latches the log: that append and every later one get `Error::Latched`, whose source keeps the
//! operating system's error kind. Nothing acknowledged is lost: reopened (with space back) the
//! log holds every acknowledged record and takes appends again. And every directory the log
//! creates survives a power loss.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{io::ErrorKind, path::Path, sync::Arc};

use common::{open_sim, payload, read_all, small_options};
use inorder_log::{
    Error, FsyncPolicy, Log,
    vfs::{
        Vfs,
        sim::{FaultOp, SimVfs},
    },
};

/// Appends batches of three 100-byte records until one fails (a 4 KiB segment rolls every
/// dozen records, so rolls come soon); returns the acknowledged payloads and the error.
fn append_until_error(log: &Log, tag: &str) -> (Vec<Vec<u8>>, Error) {
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let batch: Vec<_> = (0..3).map(|j| payload(tag, i * 3 + j, 100)).collect();
        match log.append_blocking(batch.clone()) {
            Ok(_) => acknowledged.extend(batch),
            Err(error) => return (acknowledged, error),
        }
    }
    panic!("{tag}: no append failed")
}

/// The error's I/O kind, if the log latched.
fn latched_kind(error: &Error) -> Option<ErrorKind> {
    match error {
        Error::Latched { source } => Some(source.kind()),
        _ => None,
    }
}

/// Reopens after the process died and checks that the log starts with every acknowledged
/// record (the failed append may or may not be there: it was never acknowledged) and appends.
fn check_reopened(vfs: &SimVfs, fsync: FsyncPolicy, acknowledged: &[Vec<u8>], failed: usize) {
    let log = open_sim(vfs, small_options(fsync));
    let records = read_all(&log, 1);
    assert!(records.len() >= acknowledged.len(), "lost acknowledged records");
    assert!(records.len() <= acknowledged.len() + failed, "records nobody appended");
    for (record, want) in records.iter().zip(acknowledged) {
        assert_eq!(record.payload.as_ref(), want.as_slice(), "at {}", record.position);
    }
    let next = u64::try_from(records.len()).unwrap() + 1;
    assert_eq!(log.append_blocking(["after"]).unwrap(), next..=next);
}

/// One fault: armed after `skip` good calls of `op`, failing with `kind`.
fn check_latch(op: FaultOp, kind: ErrorKind, skip: usize, fsync: FsyncPolicy) {
    let case = format!("{op:?} {kind} after {skip} under {fsync}");
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(fsync));
    let (acknowledged, error) = if op == FaultOp::Remove {
        // Fill a few segments, then purge them.
        let records: Vec<_> = (0..40).map(|i| payload("purged", i, 100)).collect();
        for chunk in records.chunks(3) {
            log.append_blocking(chunk.to_vec()).unwrap();
        }
        vfs.inject_error(op, skip, kind);
        (records, log.purge_blocking(u64::MAX).unwrap_err())
    } else {
        vfs.inject_error(op, skip, kind);
        append_until_error(&log, "r")
    };
    assert_eq!(latched_kind(&error), Some(kind), "{case}: {error}");
    let later = log.append_blocking(["refused"]).unwrap_err();
    assert_eq!(latched_kind(&later), Some(kind), "{case}: later appends are refused: {later}");
    assert!(log.stats().latched, "{case}");
    assert_eq!(log.last_position(), u64::try_from(acknowledged.len()).unwrap(), "{case}");
    drop(log);
    check_reopened(&vfs.crash_process(), fsync, &acknowledged, 3);
}

#[test]
fn enospc_and_eio_on_every_call_of_the_write_path_latch_the_log() {
    for fsync in [FsyncPolicy::Group, FsyncPolicy::Always] {
        for kind in [ErrorKind::StorageFull, ErrorKind::Other] {
            // The first call of each kind fails, and one a few segments in.
            for skip in [0, 7] {
                check_latch(FaultOp::Write, kind, skip, fsync);
                check_latch(FaultOp::SyncData, kind, skip, fsync);
                check_latch(FaultOp::Rename, kind, skip, fsync);
                check_latch(FaultOp::SyncDir, kind, skip, fsync);
                check_latch(FaultOp::Create, kind, skip, fsync);
            }
        }
    }
}

#[test]
fn a_failed_removal_during_purge_latches_the_log() {
    for kind in [ErrorKind::StorageFull, ErrorKind::Other] {
        check_latch(FaultOp::Remove, kind, 0, FsyncPolicy::Group);
    }
}

#[test]
fn a_full_disk_latches_and_with_space_back_the_log_takes_appends_again() {
    for fsync in [FsyncPolicy::Group, FsyncPolicy::Always] {
        let vfs = SimVfs::new();
        let log = open_sim(&vfs, small_options(fsync));
        log.append_blocking(["first"]).unwrap();
        vfs.set_capacity(Some(vfs.used_bytes() + 10_000));
        let (mut acknowledged, error) = append_until_error(&log, "full");
        acknowledged.insert(0, b"first".to_vec());
        assert_eq!(latched_kind(&error), Some(ErrorKind::StorageFull), "{fsync}: {error}");
        drop(log);
        // Restarted with the disk still full: the log opens with every acknowledged record
        // (the partial write is cut) and latches again at the next append.
        let still_full = vfs.crash_process();
        let log = open_sim(&still_full, small_options(fsync));
        assert_eq!(log.last_position(), u64::try_from(acknowledged.len()).unwrap());
        let big = vec![payload("big", 0, 1000); 20];
        let error = log.append_blocking(big).unwrap_err();
        assert_eq!(latched_kind(&error), Some(ErrorKind::StorageFull), "{fsync}: {error}");
        drop(log);
        // Space back: everything acknowledged is there, and appends go on.
        let freed = still_full.crash_process();
        freed.set_capacity(None);
        check_reopened(&freed, fsync, &acknowledged, 20);
    }
}

#[test]
fn a_new_log_survives_a_power_loss_with_every_directory_it_created() {
    for seed in 0..20 {
        let vfs = SimVfs::new();
        let dir = Path::new("/srv/inorder/topics/orders");
        let log = Log::open_with_vfs(Arc::new(vfs.clone()), dir, small_options(FsyncPolicy::Group))
            .unwrap();
        log.append_blocking(["acknowledged"]).unwrap();
        let after = vfs.crash_power(seed);
        drop(log);
        let log =
            Log::open_with_vfs(Arc::new(after), dir, small_options(FsyncPolicy::Group)).unwrap();
        assert_eq!(read_all(&log, 1)[0].payload, "acknowledged", "seed {seed}");
    }
}

#[test]
fn a_log_directory_left_by_a_crash_before_its_parent_was_synced_is_made_durable() {
    let vfs = SimVfs::new();
    // An earlier open created the directory and died before fsyncing its parent.
    vfs.create_dir(Path::new("/data")).unwrap();
    vfs.sync_dir(Path::new("/")).unwrap();
    vfs.create_dir(Path::new(common::DIR)).unwrap();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Always));
    log.append_blocking(["acknowledged"]).unwrap();
    let after = vfs.crash_power(3);
    drop(log);
    assert_eq!(read_all(&open_sim(&after, small_options(FsyncPolicy::Always)), 1).len(), 1);
}

#[test]
fn rolls_and_purges_survive_power_loss_with_every_acknowledged_record() {
    for seed in 0..20 {
        let vfs = SimVfs::new();
        let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
        let records: Vec<_> = (0..120).map(|i| payload("roll", i, 150)).collect();
        for chunk in records.chunks(4) {
            log.append_blocking(chunk.to_vec()).unwrap();
        }
        let first = log.purge_blocking(60).unwrap().first_position;
        let after = vfs.crash_power(seed);
        drop(log);
        let log = open_sim(&after, small_options(FsyncPolicy::Group));
        assert_eq!(log.first_position(), first, "seed {seed}: the purge was durable");
        let skip = usize::try_from(first - 1).unwrap();
        common::check_contents(&log, first, &records[skip..]);
        log.verify().unwrap();
    }
}
