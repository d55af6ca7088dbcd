//! Purge deletes whole segments below its bound, never a record at or above it, never the segment
//! being written, and never lets a position be reused — not even after everything was purged and
//! the log reopened.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use common::{check_contents, open_sim, payload, small_options};
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
fn purge_keeps_every_record_at_or_above_its_bound() {
    let vfs = SimVfs::new();
    let (log, records) = filled(&vfs, 200);
    for before in [31u64, 32, 90, 150, 199] {
        log.purge_blocking(before).unwrap();
        let first = log.first_position();
        assert!(first <= before, "purge({before}) removed position {}", first - 1);
        check_contents(&log, before, &records[usize::try_from(before - 1).unwrap()..]);
    }
    assert!(log.first_position() > 31, "the purges removed whole segments");
}

#[test]
fn purge_never_removes_what_was_not_appended_yet() {
    let vfs = SimVfs::new();
    let (log, _) = filled(&vfs, 120);
    let report = log.purge_blocking(10_000).unwrap();
    assert_eq!(report.first_position, 121, "a bound past the end purges up to the end only");
    assert_eq!(log.append_blocking(["next"]).unwrap(), 121..=121);
    check_contents(&log, 121, &[b"next".to_vec()]);
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
fn purge_below_the_first_position_is_a_no_op() {
    let vfs = SimVfs::new();
    let (log, records) = filled(&vfs, 50);
    let report = log.purge_blocking(1).unwrap();
    assert_eq!(report.segments_removed, 0);
    check_contents(&log, 1, &records);
}
