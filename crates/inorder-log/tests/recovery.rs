//! Recovery against what a crash or a bad disk leaves on disk: torn tails and incomplete batches
//! are cut and reported, damage anywhere else — also in the middle of the last segment — is an
//! error naming file and offset. Some cases are checked-in segment files (format 1, as written by
//! earlier versions; format 2, written from FORMAT.md by an independent encoder), so the format
//! cannot drift unnoticed.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
};

use common::{check_contents, payload, segment_path};
use inorder_log::{
    CorruptReason, Error, FsyncPolicy, Log, LogOptions, ReadLimits, TornReason,
    record::encode_record,
};

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Always,
        segment_bytes: 4096,
        record_payload_bytes_max: 1024,
        ..LogOptions::default()
    }
}

/// A temporary copy of a checked-in fixture directory.
fn fixture(name: &str) -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// A log of `n` records in a fresh directory; returns the directory and the payloads.
fn written_log(n: usize) -> (tempfile::TempDir, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..n).map(|i| payload("rec", i, 90)).collect();
    let log = Log::open(dir.path(), options()).unwrap();
    for record in &records {
        log.append_blocking([record.clone()]).unwrap();
    }
    (dir, records)
}

fn change_file(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    change(&mut bytes);
    fs::write(path, bytes).unwrap();
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

#[test]
fn the_checked_in_torn_tail_is_cut_and_reported() {
    let dir = fixture("v1-torn-tail");
    let log = Log::open(dir.path(), options()).unwrap();
    let truncation = log.recovery_report().truncation.clone().expect("a truncation");
    assert_eq!(truncation.segment, segment_path(dir.path(), 1));
    assert_eq!(
        (truncation.offset, truncation.bytes_removed, truncation.position, truncation.reason),
        (74, 29, 3, TornReason::LengthOutOfBounds)
    );
    check_contents(&log, 1, &[b"alpha".to_vec(), b"bravo".to_vec()]);
    assert_eq!(log.append_blocking(["charlie"]).unwrap(), 3..=3);
    drop(log);
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.recovery_report().truncation, None, "the cut was made durable");
    assert_eq!(log.read(3, ReadLimits::default()).unwrap()[0].payload, "charlie");
}

#[test]
fn a_format_1_log_is_read_and_written_on_in_a_new_format_2_segment() {
    let dir = fixture("v1-torn-tail");
    let log = Log::open(dir.path(), options()).unwrap();
    // The format-1 segment was sealed at the cut; appends go to a new segment of format 2.
    let old = segment_path(dir.path(), 1);
    let new = segment_path(dir.path(), 3);
    assert_eq!(fs::read(&old).unwrap()[8..12], 1u32.to_le_bytes());
    assert_eq!(fs::read(&new).unwrap()[8..12], 2u32.to_le_bytes());
    assert_eq!(log.append_blocking(["charlie", "delta"]).unwrap(), 3..=4);
    log.verify().unwrap();
    drop(log);
    let log = Log::open(dir.path(), options()).unwrap();
    let want: Vec<Vec<u8>> = ["alpha", "bravo", "charlie", "delta"].map(|s| s.into()).into();
    check_contents(&log, 1, &want);
}

#[test]
fn the_checked_in_incomplete_batch_is_cut_whole() {
    // "alpha" (a batch of one), then "bravo" and "charlie" of a batch whose last record is missing.
    let dir = fixture("v2-incomplete-batch");
    let log = Log::open(dir.path(), options()).unwrap();
    let truncation = log.recovery_report().truncation.clone().expect("a truncation");
    assert_eq!(truncation.reason, TornReason::IncompleteBatch);
    assert_eq!((truncation.offset, truncation.bytes_removed, truncation.position), (53, 44, 2));
    assert_eq!(truncation.records_removed, 2, "both sound records of the batch go");
    check_contents(&log, 1, &[b"alpha".to_vec()]);
    assert_eq!(log.append_blocking(["bravo"]).unwrap(), 2..=2);
}

#[test]
fn the_checked_in_mid_segment_corruption_refuses_to_open_and_nothing_is_cut() {
    // Five records of their own batch each; a bit of record 3 is flipped.
    let dir = fixture("v2-corrupt-mid-segment");
    let segment = segment_path(dir.path(), 1);
    let before = fs::read(&segment).unwrap();
    let err = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { file, offset: 80, reason: CorruptReason::ChecksumMismatch } if *file == segment),
        "{err}"
    );
    assert_eq!(fs::read(&segment).unwrap(), before, "refusing changes nothing");
}

#[test]
fn the_checked_in_sealed_corruption_is_an_error_naming_file_and_offset() {
    let dir = fixture("v1-sealed-corrupt");
    let segment = segment_path(dir.path(), 1);
    // Default open scans only the last segment, so it succeeds; reading the damage fails.
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.last_position(), 40);
    let err = log.read(1, ReadLimits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { file, offset: 536, reason: CorruptReason::ChecksumMismatch } if *file == segment),
        "{err}"
    );
    let records = log.read(33, ReadLimits::default()).unwrap();
    assert_eq!(records[0].payload, "record-033-".repeat(10), "the next segment is intact");
    let err = log.verify().unwrap_err();
    assert!(matches!(err, Error::Corrupt { offset: 536, .. }), "{err}");
    drop(log);
    // With verification on open, the log refuses to open at all.
    let strict = LogOptions { verify_on_open: true, ..options() };
    let err = Log::open(dir.path(), strict).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { file, offset: 536, .. } if *file == segment), "{err}");
    assert!(err.to_string().contains("00000000000000000001.seg"), "message names the file: {err}");
}

#[test]
fn a_bit_flip_in_the_last_record_is_cut_as_a_torn_tail() {
    let (dir, records) = written_log(5);
    let segment = last_segment(dir.path());
    let len = fs::metadata(&segment).unwrap().len();
    change_file(&segment, |bytes| {
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
    });
    let log = Log::open(dir.path(), options()).unwrap();
    let truncation = log.recovery_report().truncation.clone().unwrap();
    assert_eq!(truncation.reason, TornReason::ChecksumMismatch);
    assert_eq!(truncation.offset, len - 106);
    check_contents(&log, 1, &records[..4]);
}

#[test]
fn garbage_or_zeroes_after_the_last_record_are_cut() {
    for tail in [vec![0u8; 100], vec![0xAB; 7], vec![0x5A; 4000]] {
        let (dir, records) = written_log(3);
        let segment = last_segment(dir.path());
        change_file(&segment, |bytes| bytes.extend_from_slice(&tail));
        let log = Log::open(dir.path(), options()).unwrap();
        assert_eq!(
            log.recovery_report().truncation.as_ref().unwrap().bytes_removed,
            tail.len() as u64
        );
        check_contents(&log, 1, &records);
    }
}

#[test]
fn a_sound_record_with_the_wrong_position_is_never_cut_silently() {
    let (dir, _) = written_log(3);
    let segment = last_segment(dir.path());
    change_file(&segment, |bytes| {
        encode_record(bytes, 9, b"from another log");
    });
    let err = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { reason: CorruptReason::PositionOutOfSequence, .. }),
        "{err}"
    );
}

#[test]
fn a_damaged_segment_header_is_an_error() {
    let (dir, _) = written_log(3);
    let segment = last_segment(dir.path());
    change_file(&segment, |bytes| bytes[3] ^= 0xff);
    let err = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { offset: 0, reason: CorruptReason::BadHeader, .. }),
        "{err}"
    );
}

#[test]
fn a_segment_renamed_to_another_position_is_an_error() {
    let (dir, _) = written_log(3);
    fs::rename(segment_path(dir.path(), 1), segment_path(dir.path(), 2)).unwrap();
    let err = Log::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { reason: CorruptReason::BaseMismatch, .. }), "{err}");
}

#[test]
fn leftover_temporary_files_are_removed() {
    let (dir, records) = written_log(2);
    fs::write(dir.path().join("00000000000000000099.seg.tmp"), b"half a segment").unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.recovery_report().temp_files_removed, 1);
    assert!(!dir.path().join("00000000000000000099.seg.tmp").exists());
    check_contents(&log, 1, &records);
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt_from_the_segment() {
    let (dir, records) = written_log(120);
    let index = dir.path().join("00000000000000000001.idx");
    assert!(index.exists(), "a sealed segment has its index written");
    for damage in [0, 1] {
        if damage == 0 {
            fs::remove_file(&index).unwrap();
        } else {
            change_file(&index, |bytes| bytes[40] ^= 0x10);
        }
        let log = Log::open(dir.path(), options()).unwrap();
        check_contents(&log, 20, &records[19..]);
        assert!(index.exists(), "the rebuilt index is saved");
    }
}

#[test]
fn verify_on_open_checks_that_segments_continue_each_other() {
    let (dir, _) = written_log(120);
    // Remove the last record of the first (sealed) segment: its successor no longer continues it.
    let first = segment_path(dir.path(), 1);
    change_file(&first, |bytes| bytes.truncate(bytes.len() - 106));
    let strict = LogOptions { verify_on_open: true, ..options() };
    let err = Log::open(dir.path(), strict).unwrap_err();
    assert!(matches!(err, Error::Corrupt { reason: CorruptReason::SegmentGap, .. }), "{err}");
    // Without verification on open the gap is found by the reader that reaches it.
    let log = Log::open(dir.path(), options()).unwrap();
    let result = common::read_all_checked(&log, 1);
    assert!(
        matches!(result, Err(Error::Corrupt { reason: CorruptReason::SegmentGap, .. })),
        "{result:?}"
    );
}
