//! The offline tools behind `inorder log verify` and `inorder log repair`: inspection reports
//! what is damaged and what the next open would cut; a repair cuts the log at the damaged batch,
//! moves everything after it into quarantine files (never deleting a byte), and leaves a log that
//! opens with contiguous positions; both hold the log's lock.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use common::{DIR, check_contents, open_sim, payload, read_all, segment_path, small_options};
use inorder_log::{
    CorruptReason, Error, FsyncPolicy, Log, OfflineLog, Problem, TornReason,
    vfs::{
        Vfs,
        sim::{FaultOp, SimVfs},
    },
};

/// Records of a 4 KiB segment written by [`written`]: eight batches of three 166-byte frames
/// (a ninth does not fit: a batch never spans segments).
const RECORDS_PER_SEGMENT: usize = 24;

/// A log of `batches` batches of three 150-byte records: segment N holds positions
/// 24(N-1)+1 ..= 24N.
fn written(vfs: &SimVfs, batches: usize) -> Vec<Vec<u8>> {
    let log = open_sim(vfs, small_options(FsyncPolicy::Group));
    let records: Vec<_> = (0..batches * 3).map(|i| payload("rec", i, 150)).collect();
    for batch in records.chunks(3) {
        log.append_blocking(batch.to_vec()).unwrap();
    }
    records
}

fn offline(vfs: &SimVfs) -> OfflineLog {
    OfflineLog::open_with_vfs(Arc::new(vfs.clone()), DIR).unwrap()
}

fn segments(vfs: &SimVfs) -> Vec<PathBuf> {
    vfs.files().into_iter().filter(|p| p.extension().is_some_and(|x| x == "seg")).collect()
}

/// A log of 20 batches ([`written`]) with one bit flipped in the second record of the second
/// batch of segment 2 (position 29): its records, segment 2's path and the damaged offset.
fn damaged_log(vfs: &SimVfs) -> (Vec<Vec<u8>>, PathBuf, usize) {
    let records = written(vfs, 20);
    let second = segments(vfs)[1].clone();
    let damaged = usize::try_from(record_offset(4)).unwrap();
    vfs.mutate_file(&second, |bytes| bytes[damaged + 30] ^= 1);
    (records, second, damaged)
}

/// Offset of the `n`-th record (0-based) of a segment of 166-byte records.
fn record_offset(n: u64) -> u64 {
    32 + 166 * n
}

#[test]
fn a_sound_log_inspects_clean() {
    let vfs = SimVfs::new();
    let records = written(&vfs, 20);
    let inspection = offline(&vfs).inspect().unwrap();
    assert!(!inspection.is_damaged());
    assert_eq!((inspection.first_position(), inspection.last_position()), (1, 60));
    assert_eq!(inspection.torn_tail, None);
    assert_eq!(inspection.segments.len(), segments(&vfs).len());
    let total: u64 = inspection.segments.iter().map(|s| s.records).sum();
    assert_eq!(total, u64::try_from(records.len()).unwrap());
    assert!(inspection.segments.iter().all(|s| s.finding.is_none() && s.format_version == Some(2)));
    assert_eq!(offline(&vfs).plan_repair(&inspection).unwrap(), None);
}

#[test]
fn a_torn_tail_is_reported_as_what_the_next_open_cuts_not_as_damage() {
    let vfs = SimVfs::new();
    written(&vfs, 2);
    let last = segment_path(Path::new(DIR), 1);
    vfs.mutate_file(&last, |bytes| bytes.extend_from_slice(&[0xAB; 40]));
    let inspection = offline(&vfs).inspect().unwrap();
    assert!(!inspection.is_damaged());
    let torn = inspection.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes_removed, torn.position), (record_offset(6), 40, 7));
    assert_eq!(torn.reason, TornReason::LengthOutOfBounds);
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    assert_eq!(log.recovery_report().truncation.as_ref().unwrap().offset, torn.offset);
}

#[test]
fn damage_in_a_sealed_segment_is_cut_at_its_batch_and_the_rest_quarantined() {
    let vfs = SimVfs::new();
    let records = written(&vfs, 20);
    let all = segments(&vfs);
    let (second, later) = (all[1].clone(), all[2..].to_vec());
    let second_bytes = vfs.read_file(&second).unwrap();
    // Damage the second record of the second batch of segment 2.
    let damaged = record_offset(4);
    vfs.mutate_file(&second, |bytes| bytes[usize::try_from(damaged).unwrap() + 30] ^= 1);

    let offline = offline(&vfs);
    let inspection = offline.inspect().unwrap();
    let damage = inspection.damage.clone().unwrap();
    assert_eq!((&damage.segment, damage.offset), (&second, damaged));
    assert_eq!((damage.position, damage.reason), (29, CorruptReason::ChecksumMismatch));
    let finding = inspection.segments[1].finding.unwrap();
    assert_eq!(finding.problem, Problem::Corrupt(CorruptReason::ChecksumMismatch));
    assert_eq!(finding.sound_records_after, 19, "the rest of segment 2");

    let plan = offline.plan_repair(&inspection).unwrap().unwrap();
    let batch_start = record_offset(3);
    assert_eq!((&plan.segment, plan.offset, plan.next_position), (&second, batch_start, 28));
    assert!(!plan.rewrite_header);
    assert_eq!(plan.records_quarantined, 60 - 27 - 1, "all but the damaged record");
    assert_eq!(plan.last_position_quarantined, Some(60));
    assert_eq!(plan.moves.len(), 1 + later.len());
    let tail = &plan.moves[0];
    assert_eq!((&tail.from, tail.from_offset, tail.whole_file), (&second, batch_start, false));
    let expected_name = format!("{}.at-{batch_start}.quarantine", second.display());
    assert_eq!(tail.to, PathBuf::from(expected_name));
    offline.repair(&plan).unwrap();
    drop(offline);

    // Nothing is deleted: the tail and every later segment are in quarantine, byte for byte.
    let mut kept_tail = second_bytes[usize::try_from(batch_start).unwrap()..].to_vec();
    kept_tail[usize::try_from(damaged - batch_start).unwrap() + 30] ^= 1;
    assert_eq!(vfs.read_file(&tail.to).unwrap(), kept_tail);
    for (segment, moved) in later.iter().zip(&plan.moves[1..]) {
        assert!(moved.whole_file && vfs.read_file(segment).is_none());
        assert_eq!(moved.to, PathBuf::from(format!("{}.at-0.quarantine", segment.display())));
        assert!(vfs.read_file(&moved.to).is_some());
    }
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    check_contents(&log, 1, &records[..27]);
    assert_eq!(log.append_blocking(["after repair"]).unwrap(), 28..=28);
    log.verify().unwrap();
    drop(log);
    let inspection = self::offline(&vfs).inspect().unwrap();
    assert!(!inspection.is_damaged());
    assert_eq!(inspection.quarantine_files.len(), plan.moves.len());
}

#[test]
fn corruption_in_the_last_segment_refuses_to_open_until_repaired() {
    let vfs = SimVfs::new();
    let records = written(&vfs, 4); // one segment: positions 1..=12
    let first = segment_path(Path::new(DIR), 1);
    vfs.mutate_file(&first, |bytes| bytes[usize::try_from(record_offset(7)).unwrap() + 8] ^= 0x40);
    let err = Log::open_with_vfs(Arc::new(vfs.clone()), DIR, small_options(FsyncPolicy::Group))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { file, offset, .. } if *file == first && *offset == record_offset(7)),
        "{err}"
    );
    let offline = offline(&vfs);
    let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
    assert_eq!(
        (plan.offset, plan.next_position, plan.records_quarantined),
        (record_offset(6), 7, 5)
    );
    offline.repair(&plan).unwrap();
    drop(offline);
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    check_contents(&log, 1, &records[..6]);
}

#[test]
fn a_damaged_header_of_the_first_segment_is_replaced_by_an_empty_segment_of_its_base() {
    let vfs = SimVfs::new();
    written(&vfs, 20);
    let first = segment_path(Path::new(DIR), 1);
    let original = vfs.read_file(&first).unwrap();
    vfs.mutate_file(&first, |bytes| bytes[2] ^= 0xff);
    let offline = offline(&vfs);
    let inspection = offline.inspect().unwrap();
    assert_eq!(inspection.damage.as_ref().unwrap().reason, CorruptReason::BadHeader);
    let plan = offline.plan_repair(&inspection).unwrap().unwrap();
    assert!(plan.rewrite_header);
    assert_eq!((plan.next_position, plan.records_quarantined), (1, 60));
    offline.repair(&plan).unwrap();
    drop(offline);
    let mut damaged = original;
    damaged[2] ^= 0xff;
    assert_eq!(vfs.read_file(&plan.moves[0].to).unwrap(), damaged, "the whole file kept aside");
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    assert_eq!((log.first_position(), log.last_position()), (1, 0));
    assert_eq!(log.append_blocking(["again"]).unwrap(), 1..=1);
}

#[test]
fn a_missing_segment_is_a_gap_and_the_segments_after_it_are_quarantined() {
    let vfs = SimVfs::new();
    let records = written(&vfs, 40);
    let all = segments(&vfs);
    assert_eq!(all.len(), 5);
    vfs.remove_file(&all[2]).unwrap();
    let offline = offline(&vfs);
    let inspection = offline.inspect().unwrap();
    let damage = inspection.damage.clone().unwrap();
    assert_eq!((&damage.segment, damage.reason), (&all[1], CorruptReason::SegmentGap));
    let plan = offline.plan_repair(&inspection).unwrap().unwrap();
    assert_eq!((plan.next_position, plan.moves.len()), (49, 2));
    assert_eq!(plan.records_quarantined, 48, "the two segments after the gap");
    offline.repair(&plan).unwrap();
    drop(offline);
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    check_contents(&log, 1, &records[..2 * RECORDS_PER_SEGMENT]);
}

#[test]
fn a_second_repair_at_the_same_offset_gets_a_numbered_quarantine_file() {
    let vfs = SimVfs::new();
    written(&vfs, 4);
    let first = segment_path(Path::new(DIR), 1);
    let mut names = Vec::new();
    for round in 0..2 {
        // Damage the middle record of the fourth batch; the cut is at the batch's start.
        vfs.mutate_file(&first, |bytes| bytes[usize::try_from(record_offset(10)).unwrap()] ^= 1);
        let offline = offline(&vfs);
        let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
        assert_eq!(plan.offset, record_offset(9));
        offline.repair(&plan).unwrap();
        names.push(plan.moves[0].to.clone());
        drop(offline);
        if round == 0 {
            let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
            for batch in 0..2 {
                log.append_blocking((0..3).map(|i| payload("again", batch * 3 + i, 150))).unwrap();
            }
        }
    }
    assert!(names[0].to_string_lossy().ends_with(".seg.at-1526.quarantine"), "{:?}", names[0]);
    assert!(names[1].to_string_lossy().ends_with(".seg.at-1526.2.quarantine"), "{:?}", names[1]);
}

#[test]
fn offline_tools_and_an_open_log_keep_each_other_out() {
    let vfs = SimVfs::new();
    written(&vfs, 1);
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    let err = OfflineLog::open_with_vfs(Arc::new(vfs.clone()), DIR).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(log);
    let offline = offline(&vfs);
    let err = Log::open_with_vfs(Arc::new(vfs.clone()), DIR, small_options(FsyncPolicy::Group))
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(offline);
    let missing = OfflineLog::open_with_vfs(Arc::new(vfs), "/no/such/log").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

/// A repair that fails at any step, followed by a power loss, leaves either the damage (and a
/// second repair finishes the job) or the repaired log — never less than the sound prefix, and
/// the damaged record's bytes are always somewhere.
#[test]
fn a_repair_interrupted_at_any_step_can_be_run_again() {
    let ops = [
        FaultOp::Write,
        FaultOp::SyncData,
        FaultOp::SyncDir,
        FaultOp::Rename,
        FaultOp::Create,
        FaultOp::Remove,
    ];
    for op in ops {
        for skip in 0..6 {
            for seed in 0..4 {
                let vfs = SimVfs::new();
                let (records, second, damaged) = damaged_log(&vfs);
                let marker = vfs.read_file(&second).unwrap()[damaged..damaged + 166].to_vec();
                let offline = offline(&vfs);
                let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
                vfs.inject(op, skip);
                let _ = offline.repair(&plan); // may fail
                drop(offline);
                let after = vfs.crash_power(seed);
                let offline = self::offline(&after);
                let inspection = offline.inspect().unwrap();
                if let Some(plan) = offline.plan_repair(&inspection).unwrap() {
                    offline.repair(&plan).unwrap();
                }
                drop(offline);
                let case = format!("{op:?} after {skip}, seed {seed}");
                let log = Log::open_with_vfs(
                    Arc::new(after.clone()),
                    DIR,
                    small_options(FsyncPolicy::Group),
                )
                .unwrap_or_else(|e| panic!("{case}: {e}"));
                check_contents(&log, 1, &records[..27]);
                let kept_somewhere = after.files().iter().any(|file| {
                    let bytes = after.read_file(file).unwrap();
                    bytes.windows(marker.len()).any(|w| w == marker.as_slice())
                });
                assert!(kept_somewhere, "{case}: the damaged record's bytes are gone");
            }
        }
    }
}

/// What a repair that retires the quarantined positions leaves: the sound prefix, then one filler
/// record per quarantined position, and the log continuing after the highest of them.
fn check_retired(log: &Log, records: &[Vec<u8>], last: u64, case: &str) {
    assert_eq!(log.last_position(), last, "{case}");
    let read = read_all(log, 1);
    let kept = records.len();
    let positions: Vec<_> = read.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=last).collect::<Vec<_>>(), "{case}");
    for (record, want) in read.iter().zip(records) {
        assert_eq!(record.payload.as_ref(), want.as_slice(), "{case}");
    }
    assert!(read[kept..].iter().all(|r| r.payload.as_ref() == b"lost"), "{case}");
}

#[test]
fn a_repair_can_retire_the_quarantined_positions_so_none_is_handed_out_again() {
    let vfs = SimVfs::new();
    let (records, _, _) = damaged_log(&vfs);

    let offline = offline(&vfs);
    let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
    let plan = plan.retire_with(Bytes::from_static(b"lost")).unwrap();
    assert_eq!(plan.retired(), Some(28..=60));
    offline.repair(&plan).unwrap();
    assert!(!offline.inspect().unwrap().is_damaged());
    drop(offline);

    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    check_retired(&log, &records[..27], 60, "retired");
    assert_eq!(log.append_blocking(["after repair"]).unwrap(), 61..=61);
    log.verify().unwrap();
}

#[test]
fn a_filler_larger_than_a_record_may_be_is_refused() {
    let vfs = SimVfs::new();
    damaged_log(&vfs);
    let offline = offline(&vfs);
    let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
    let huge = Bytes::from(vec![0; 17 * 1024 * 1024]);
    assert!(matches!(plan.retire_with(huge), Err(Error::InvalidBatch { .. })));
}

/// Retiring positions, interrupted at any step and followed by a power loss: a second repair
/// always ends with the quarantined positions retired — the highest one is never forgotten.
#[test]
fn a_retiring_repair_interrupted_at_any_step_still_retires_every_quarantined_position() {
    let ops = [FaultOp::Write, FaultOp::SyncData, FaultOp::SyncDir, FaultOp::Rename];
    for op in ops {
        for skip in 0..8 {
            for seed in 0..3 {
                let vfs = SimVfs::new();
                let (records, _, _) = damaged_log(&vfs);
                let offline = offline(&vfs);
                let retire = |plan: inorder_log::RepairPlan| {
                    plan.retire_with(Bytes::from_static(b"lost")).unwrap()
                };
                let plan =
                    retire(offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap());
                vfs.inject(op, skip);
                let _ = offline.repair(&plan); // may fail
                drop(offline);
                let after = vfs.crash_power(seed);
                let offline = self::offline(&after);
                if let Some(plan) = offline.plan_repair(&offline.inspect().unwrap()).unwrap() {
                    offline.repair(&retire(plan)).unwrap();
                }
                drop(offline);
                let case = format!("{op:?} after {skip}, seed {seed}");
                let log = Log::open_with_vfs(
                    Arc::new(after.clone()),
                    DIR,
                    small_options(FsyncPolicy::Group),
                )
                .unwrap_or_else(|e| panic!("{case}: {e}"));
                check_retired(&log, &records[..27], 60, &case);
            }
        }
    }
}
