//! The log's contract as seen by a user: positions, reads, the last-position watch, bad input,
//! locking, idling, group commit, the latch after an I/O error, and directories left by older
//! versions.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::{DIR, check_contents, open_sim, payload, read_all, small_options};
use inorder_log::{
    Error, FsyncPolicy, Log, LogOptions, ReadLimits,
    limits::APPEND_RECORDS_MAX,
    vfs::{
        OpenMode, Vfs,
        sim::{FaultOp, SimVfs},
    },
};

#[test]
fn positions_start_at_one_and_continue_across_reopen() {
    let vfs = SimVfs::new();
    let mut expected = Vec::new();
    for round in 0..3 {
        let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
        let batch: Vec<_> = (0..5).map(|i| payload("round", round * 5 + i, 40)).collect();
        let range = log.append_blocking(batch.clone()).unwrap();
        let first = u64::try_from(round * 5 + 1).unwrap();
        assert_eq!(range, first..=first + 4);
        expected.extend(batch);
        check_contents(&log, 1, &expected);
    }
}

#[test]
fn records_span_segments_and_read_back_from_any_position() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let records: Vec<_> = (0..300).map(|i| payload("r", i, i % 200)).collect();
    for chunk in records.chunks(7) {
        log.append_blocking(chunk.to_vec()).unwrap();
    }
    assert!(log.stats().segments > 5, "small segments must have rolled");
    for from in [1u64, 2, 57, 150, 299, 300] {
        check_contents(&log, from, &records[usize::try_from(from - 1).unwrap()..]);
    }
    assert!(log.read(301, ReadLimits::default()).unwrap().is_empty());
    drop(log);
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    check_contents(&log, 1, &records);
}

#[test]
fn a_read_respects_its_limits_but_always_makes_progress() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Never));
    log.append_blocking((0..10).map(|i| payload("x", i, 500))).unwrap();
    assert_eq!(log.read(1, ReadLimits::records(3)).unwrap().len(), 3);
    let one = log.read(1, ReadLimits { records_max: 100, bytes_max: 1 }).unwrap();
    assert_eq!(one.len(), 1, "a record larger than bytes_max is still returned alone");
}

#[test]
fn seeking_uses_the_sparse_index_instead_of_scanning_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_bytes: 64 * 1024,
        record_payload_bytes_max: 1024,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), options).unwrap();
    let records: Vec<_> = (0..2000).map(|i| payload("p", i, 100)).collect();
    for batch in records.chunks(100) {
        log.append_blocking(batch.to_vec()).unwrap(); // a batch never spans segments
    }
    drop(log);
    // Damage the first record of sealed segment 1. A reader that scanned the segment from its
    // start would trip over it; one that seeks through the index never reads those bytes.
    let path = common::segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[32 + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    check_contents(&log, 400, &records[399..]);
    let err = log.read(1, ReadLimits::default()).unwrap_err();
    let Error::Corrupt { file, offset, .. } = err else { panic!("expected corruption: {err}") };
    assert_eq!((file, offset), (path, 32));
}

#[tokio::test]
async fn the_last_position_watch_wakes_on_commit_without_polling() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let mut watch = log.watch_last_position();
    assert_eq!(*watch.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move { watch.changed().await.map(|()| *watch.borrow()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "nothing was committed yet");
    log.append(["first"]).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(seen.unwrap(), 1);
    assert_eq!(log.read(1, ReadLimits::default()).unwrap()[0].payload, "first");
}

#[tokio::test]
async fn a_waiting_watcher_wakes_when_the_log_closes() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let mut watch = log.watch_last_position();
    watch.borrow_and_update();
    let waiter = tokio::spawn(async move {
        let _ = watch.changed().await;
        *watch.borrow()
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "nothing happened yet");
    drop(log);
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(seen, 0, "woken by the close, not by a commit");
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    log.append_blocking(["kept"]).unwrap();
    let empty: Vec<Vec<u8>> = Vec::new();
    let too_big = vec![vec![0u8; 1025]];
    let too_many = vec![vec![1u8]; APPEND_RECORDS_MAX + 1];
    for bad in [empty, too_big, too_many] {
        let err = log.append_blocking(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidBatch { .. }), "{err}");
    }
    check_contents(&log, 1, &[b"kept".to_vec()]);
    assert_eq!(log.append_blocking(["next"]).unwrap(), 2..=2, "no position was consumed");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let err = Log::open_with_vfs(Arc::new(vfs.clone()), DIR, small_options(FsyncPolicy::Group))
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(log);
    open_sim(&vfs, small_options(FsyncPolicy::Group));
}

#[test]
fn the_real_file_lock_keeps_a_second_log_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(log);
    Log::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn invalid_options_are_refused_before_touching_the_disk() {
    let vfs = SimVfs::new();
    let options = LogOptions { segment_bytes: 100, ..LogOptions::default() };
    let err = Log::open_with_vfs(Arc::new(vfs.clone()), DIR, options).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
    assert!(vfs.files().is_empty());
}

#[test]
fn an_idle_log_releases_its_files_and_reopens_them_on_demand() {
    let vfs = SimVfs::new();
    let options =
        LogOptions { idle_after: Duration::from_millis(30), ..small_options(FsyncPolicy::Group) };
    let log = open_sim(&vfs, options);
    log.append_blocking((0..50).map(|i| payload("idle", i, 200))).unwrap();
    let _ = read_all(&log, 1); // opens read handles on several segments
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.stats().hibernations == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.stats().hibernations >= 1, "the writer must notice it is idle");
    assert_eq!(vfs.open_handles(), 0, "no file stays open while idle");
    log.append_blocking(["awake"]).unwrap();
    assert_eq!(read_all(&log, 51)[0].payload, "awake");
}

#[test]
fn group_commit_shares_one_fsync_among_concurrent_appenders() {
    let vfs = SimVfs::new();
    // A slow disk: appenders that arrive during one fsync must all ride on the next one.
    vfs.set_sync_delay(Duration::from_millis(20));
    let log =
        open_sim(&vfs, LogOptions { segment_bytes: 1 << 20, ..small_options(FsyncPolicy::Group) });
    std::thread::scope(|scope| {
        for t in 0..8 {
            let log = log.clone();
            scope.spawn(move || {
                for i in 0..10 {
                    log.append_blocking([payload("t", t * 1000 + i, 30)]).unwrap();
                }
            });
        }
    });
    let stats = log.stats();
    assert_eq!((stats.appends, stats.records), (80, 80));
    assert!(
        stats.data_syncs <= 40,
        "80 appends from 8 threads took {} fsyncs: they were not shared",
        stats.data_syncs
    );
    // Every append was durable when it returned: a power loss keeps all 80.
    drop(log);
    let after = vfs.crash_power(99);
    assert_eq!(open_sim(&after, small_options(FsyncPolicy::Group)).last_position(), 80);
}

#[tokio::test]
async fn dropping_a_log_waits_for_the_appends_it_accepted() {
    let vfs = SimVfs::new();
    vfs.set_sync_delay(Duration::from_millis(50));
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    // An appender that stops waiting: its append was accepted (queued), not yet answered.
    let gave_up = tokio::time::timeout(Duration::from_millis(5), log.append(["accepted"])).await;
    assert!(gave_up.is_err(), "its fsync takes 50 ms");
    let syncs_before_drop = vfs.data_syncs();
    drop(log);
    assert!(vfs.data_syncs() > syncs_before_drop, "the drop waited for the fsync in flight");
    for seed in 0..20 {
        let log = open_sim(&vfs.crash_power(seed), small_options(FsyncPolicy::Group));
        check_contents(&log, 1, &[b"accepted".to_vec()]);
    }
}

#[test]
fn always_gives_every_append_its_own_fsync() {
    let vfs = SimVfs::new();
    let log =
        open_sim(&vfs, LogOptions { segment_bytes: 1 << 20, ..small_options(FsyncPolicy::Always) });
    let before = vfs.data_syncs();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let log = log.clone();
            scope.spawn(move || {
                for i in 0..10 {
                    log.append_blocking([payload("a", t * 100 + i, 10)]).unwrap();
                }
            });
        }
    });
    assert_eq!(vfs.data_syncs() - before, 40);
    assert_eq!(log.stats().group_commits, 40);
}

#[test]
fn after_a_failed_fsync_the_log_stops_writing_until_reopened() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    log.append_blocking(["before"]).unwrap();
    vfs.inject(FaultOp::SyncData, 0);
    let err = log.append_blocking(["lost"]).unwrap_err();
    assert!(matches!(err, Error::Latched { .. }), "{err}");
    let err = log.append_blocking(["refused"]).unwrap_err();
    assert!(matches!(err, Error::Latched { .. }), "later appends are refused too: {err}");
    assert!(log.stats().latched);
    assert_eq!(log.last_position(), 1, "the failed append never became visible");
    drop(log);
    // Reopening recovers from what is on disk; the unacknowledged record may or may not be there.
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let next = log.append_blocking(["after"]).unwrap();
    assert!(*next.start() == 2 || *next.start() == 3);
    assert_eq!(read_all(&log, 1)[0].payload, "before");
}

#[test]
fn a_failed_write_latches_too() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Never));
    vfs.inject(FaultOp::Write, 0);
    assert!(matches!(log.append_blocking(["x"]), Err(Error::Latched { .. })));
    assert!(matches!(log.sync_blocking(), Err(Error::Latched { .. })));
    assert!(matches!(log.purge_blocking(10), Err(Error::Latched { .. })));
}

#[test]
fn a_directory_with_cursors_from_an_older_version_still_opens() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    log.append_blocking(["a", "b"]).unwrap();
    drop(log);
    // What the cursor store of older versions left: a directory, a cursor file, a temp file.
    let cursors = Path::new(DIR).join("cursors");
    vfs.create_dir(&cursors).unwrap();
    for name in ["billing.cursor", "billing.cursor.tmp"] {
        let file = vfs.open(&cursors.join(name), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"INORDCUR", 0).unwrap();
    }
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    assert_eq!(log.recovery_report().temp_files_removed, 0, "cursors/ is not looked into");
    assert_eq!(log.append_blocking(["c"]).unwrap(), 3..=3);
    check_contents(&log, 1, &[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(log.purge_blocking(4).unwrap().first_position, 4);
    assert!(vfs.read_file(&cursors.join("billing.cursor")).is_some(), "ignored, not deleted");
}

/// `submit` is the first half of `append`: batches get positions in the order their submits
/// returned, without waiting for each fsync in between, and a batch is appended even when its
/// `Appending` is dropped unawaited.
#[tokio::test]
async fn submitted_batches_get_positions_in_submit_order_and_land_even_if_not_awaited() {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let first = log.submit([payload("a", 0, 10), payload("a", 1, 10)]).await.unwrap();
    let dropped = log.submit([payload("b", 0, 10)]).await.unwrap();
    let third = log.submit([payload("c", 0, 10)]).await.unwrap();
    drop(dropped);
    assert_eq!(third.await.unwrap(), 4..=4);
    assert_eq!(first.await.unwrap(), 1..=2);
    let read: Vec<_> = read_all(&log, 1).into_iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(
        read,
        [payload("a", 0, 10), payload("a", 1, 10), payload("b", 0, 10), payload("c", 0, 10)]
    );
}
