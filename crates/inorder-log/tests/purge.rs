//! Purge deletes whole segments, never what a cursor still needs, and never lets a position be
//! reused — not even after everything was purged and the log reopened.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use common::{check_contents, cursor, open_sim, payload, small_options};
use inorder_log::{Error, FsyncPolicy, ReadLimits, vfs::sim::SimVfs};

fn filled(vfs: &SimVfs, n: usize) -> (inorder_log::Log, Vec<Vec<u8>>) {
    let log = open_sim(vfs, small_options(FsyncPolicy::Group));
    let records: Vec<_> = (0..n).map(|i| payload("purge", i, 150)).collect();
    for chunk in records.chunks(10) {
        log.append_blocking(chunk.to_vec()).unwrap();
    }
    (log, records)
}

#[test]
fn purge_removes_only_whole_segments_below_the_bound() {
    let vfs = SimVfs::new();
    let (log, records) = filled(&vfs, 200);
    let segments_before = log.stats().segments;
    let report = log.purge_blocking(100).unwrap();
    assert!(report.segments_removed > 0);
    assert_eq!(log.stats().segments, segments_before - report.segments_removed);
    let first = log.first_position();
    assert_eq!(first, report.first_position);
    assert!(first <= 100, "records at or above the bound survive (first is {first})");
    check_contents(&log, first, &records[usize::try_from(first - 1).unwrap()..]);
    let err = log.read(first - 1, ReadLimits::default()).unwrap_err();
    assert!(
        matches!(err, Error::Purged { first_available, .. } if first_available == first),
        "{err}"
    );
}

#[test]
fn purge_never_passes_the_slowest_cursor() {
    let vfs = SimVfs::new();
    let (log, records) = filled(&vfs, 200);
    log.ack(&cursor("fast"), 200).unwrap();
    log.ack(&cursor("slow"), 30).unwrap();
    log.purge_blocking(u64::MAX).unwrap();
    let first = log.first_position();
    assert!(first <= 31, "slow resumes at 31, which must still be there (first is {first})");
    check_contents(&log, 31, &records[30..]);
    log.ack(&cursor("slow"), 200).unwrap();
    log.purge_blocking(u64::MAX).unwrap();
    assert_eq!(log.first_position(), 201);
}

#[test]
fn purging_everything_keeps_the_next_position_across_reopen_and_crash() {
    let vfs = SimVfs::new();
    let (log, _) = filled(&vfs, 120);
    let report = log.purge_blocking(u64::MAX).unwrap();
    assert_eq!(report.first_position, 121);
    assert_eq!(log.stats().segments, 1, "only the empty segment carrying position 121 remains");
    drop(log);
    for after in [vfs.crash_process(), vfs.crash_power(5)] {
        let log = open_sim(&after, small_options(FsyncPolicy::Group));
        assert_eq!((log.first_position(), log.last_position()), (121, 120));
        assert_eq!(log.append_blocking(["after purge"]).unwrap(), 121..=121);
        check_contents(&log, 121, &[b"after purge".to_vec()]);
    }
}

#[test]
fn a_cursor_cannot_be_reset_into_purged_records() {
    let vfs = SimVfs::new();
    let (log, _) = filled(&vfs, 120);
    log.purge_blocking(u64::MAX).unwrap();
    let err = log.reset_cursor(&cursor("replay"), 10).unwrap_err();
    assert!(matches!(err, Error::Purged { requested: 11, first_available: 121 }), "{err}");
    log.reset_cursor(&cursor("replay"), 120).unwrap();
}

#[test]
fn purge_below_the_first_position_is_a_no_op() {
    let vfs = SimVfs::new();
    let (log, records) = filled(&vfs, 50);
    let report = log.purge_blocking(1).unwrap();
    assert_eq!(report.segments_removed, 0);
    check_contents(&log, 1, &records);
}
