//! A batch — one `append` call — is all or nothing across power loss, and every acknowledged
//! batch survives it. Each seed appends acknowledged batches, then batches that are written but
//! never made durable, cuts the power (`SimVfs::crash_power` keeps a random, possibly garbled,
//! part of the unsynced bytes), and checks that the log holds whole batches only: all the
//! acknowledged ones, then perhaps some of the others, each complete.
//!
//! Two ways to leave written, unsynced batches: appends under `fsync = never` after a clean
//! reopen, and an append under `group` whose fsync fails (the log latches; the batch is in the
//! page cache). When the garbled byte has sound records after it, the open refuses it as
//! corruption; it can only lie past every acknowledged record, so `repair` then keeps them all.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::sync::Arc;

use common::{DIR, open_sim, read_all};
use inorder_log::{
    Error, FsyncPolicy, Log, LogOptions, OfflineLog,
    vfs::sim::{FaultOp, SimVfs},
};

/// Power losses per variant.
const SEEDS: u64 = 1000;

/// Records of the batch whose fsync fails (the case).
const FAILED_BATCH_RECORDS: usize = 200;

fn options(fsync: FsyncPolicy, segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes, ..common::small_options(fsync) }
}

fn random_batch(rng: &mut fastrand::Rng, tag: &str, records_max: usize) -> Vec<Vec<u8>> {
    let records = rng.usize(1..=records_max);
    (0..records)
        .map(|i| {
            let mut bytes = format!("{tag}-{i}:").into_bytes();
            bytes.resize(bytes.len() + rng.usize(0..60), rng.u8(..));
            bytes
        })
        .collect()
}

/// What became of one power loss.
#[derive(Debug, Default)]
struct Tally {
    /// The first open refused a garbled unsynced byte and the log was repaired.
    repaired: usize,
    /// Unacknowledged batches that survived whole.
    unacknowledged_kept: usize,
}

/// Opens the log after the power loss (repairing refused corruption, which must lie past the
/// acknowledged records) and checks that it holds a whole-batch prefix of `batches` with at
/// least the first `acknowledged` of them.
fn check_after_power_loss(
    vfs: &SimVfs,
    options: LogOptions,
    batches: &[Vec<Vec<u8>>],
    acknowledged: usize,
    tally: &mut Tally,
    case: &str,
) {
    let acknowledged_records: usize = batches[..acknowledged].iter().map(Vec::len).sum();
    let log = match Log::open_with_vfs(Arc::new(vfs.clone()), DIR, options) {
        Ok(log) => log,
        Err(Error::Corrupt { offset, .. }) => {
            let offline = OfflineLog::open_with_vfs(Arc::new(vfs.clone()), DIR).unwrap();
            let plan = offline.plan_repair(&offline.inspect().unwrap()).unwrap().unwrap();
            assert!(
                plan.next_position > u64::try_from(acknowledged_records).unwrap(),
                "{case}: refused acknowledged data at byte {offset}: {plan:?}"
            );
            offline.repair(&plan).unwrap();
            tally.repaired += 1;
            drop(offline);
            Log::open_with_vfs(Arc::new(vfs.clone()), DIR, options).unwrap()
        }
        Err(other) => panic!("{case}: {other}"),
    };
    let records = read_all(&log, 1);
    let mut whole = 0;
    let mut end = 0;
    while whole < batches.len() && end + batches[whole].len() <= records.len() {
        end += batches[whole].len();
        whole += 1;
    }
    assert_eq!(end, records.len(), "{case}: {} records are not whole batches", records.len());
    assert!(whole >= acknowledged, "{case}: kept {whole} batches, {acknowledged} acknowledged");
    for (i, (record, want)) in records.iter().zip(batches.concat()).enumerate() {
        assert_eq!(record.position, u64::try_from(i + 1).unwrap(), "{case}");
        assert_eq!(record.payload.as_ref(), want.as_slice(), "{case}: at {}", record.position);
    }
    tally.unacknowledged_kept += whole - acknowledged;
}

#[test]
fn unsynced_batches_under_never_are_whole_or_absent_after_a_power_loss() {
    let mut tally = Tally::default();
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let vfs = SimVfs::new();
        let acknowledged_policy =
            if seed % 2 == 0 { FsyncPolicy::Group } else { FsyncPolicy::Always };
        let mut batches = Vec::new();
        let log = open_sim(&vfs, options(acknowledged_policy, 4096));
        for _ in 0..rng.usize(0..6) {
            let batch = random_batch(&mut rng, "acked", 40);
            log.append_blocking(batch.clone()).unwrap();
            batches.push(batch);
        }
        drop(log);
        let acknowledged = batches.len();
        // Written to the page cache only; small segments so that some of them roll (a roll
        // fsyncs the sealed segment, so a batch is never split across a sealed segment).
        let log = open_sim(&vfs, options(FsyncPolicy::Never, 4096));
        for _ in 0..rng.usize(1..5) {
            let batch = random_batch(&mut rng, "unsynced", 200);
            log.append_blocking(batch.clone()).unwrap();
            batches.push(batch);
        }
        let after = vfs.crash_power(seed);
        drop(log);
        let case = format!("seed {seed}");
        let options = options(FsyncPolicy::Group, 4096);
        check_after_power_loss(&after, options, &batches, acknowledged, &mut tally, &case);
    }
    eprintln!("{SEEDS} power losses: {tally:?}");
}

#[test]
fn a_batch_whose_fsync_failed_is_whole_or_absent_after_a_power_loss() {
    let mut tally = Tally::default();
    for seed in 0..SEEDS {
        let mut rng = fastrand::Rng::with_seed(seed);
        let vfs = SimVfs::new();
        // Segments large enough that the failing batch is written, not stopped by a roll's fsync.
        let options = options(FsyncPolicy::Group, 64 * 1024);
        let log = open_sim(&vfs, options);
        let mut batches = Vec::new();
        for _ in 0..rng.usize(1..6) {
            let batch = random_batch(&mut rng, "acked", 40);
            log.append_blocking(batch.clone()).unwrap();
            batches.push(batch);
        }
        let acknowledged = batches.len();
        vfs.inject(FaultOp::SyncData, 0);
        let batch: Vec<Vec<u8>> = (0..FAILED_BATCH_RECORDS)
            .map(|i| common::payload("failed", i, rng.usize(0..60)))
            .collect();
        let err = log.append_blocking(batch.clone()).unwrap_err();
        assert!(matches!(err, Error::Latched { .. }), "seed {seed}: {err}");
        batches.push(batch);
        let after = vfs.crash_power(seed);
        drop(log);
        let case = format!("seed {seed}");
        check_after_power_loss(&after, options, &batches, acknowledged, &mut tally, &case);
    }
    eprintln!("{SEEDS} power losses: {tally:?}");
}
