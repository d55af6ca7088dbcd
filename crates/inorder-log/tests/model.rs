//! A proptest model of the log: random batches, syncs, purges, reads, clean reopens,
//! process crashes and power losses (which tear or garble the unsynced tail at a random byte).
//!
//! The model is a plain `Vec` of payloads, where each batch ends, and how many records are known
//! durable. After every step the log must hold exactly the model from its first position on,
//! contiguously and byte-equal. After a power loss it may have lost only records that were never
//! made durable, and only whole batches. A garbled byte with sound records after it is refused as
//! corruption; it can only lie in bytes never made durable, so `repair` keeps every durable
//! record.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::sync::Arc;

use common::{DIR, check_contents, open_sim, small_options};
use inorder_log::{Error, FsyncPolicy, Log, OfflineLog, vfs::sim::SimVfs};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Sync,
    Reopen(FsyncPolicy),
    CrashProcess(FsyncPolicy),
    CrashPower(u64, FsyncPolicy),
    Purge(u8),
    ReadFrom(u8),
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![Just(FsyncPolicy::Always), Just(FsyncPolicy::Group), Just(FsyncPolicy::Never)]
}

fn op() -> impl Strategy<Value = Op> {
    let record = prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        6 => prop::collection::vec(record, 1..8).prop_map(Op::Append),
        1 => Just(Op::Sync),
        1 => policy().prop_map(Op::Reopen),
        1 => policy().prop_map(Op::CrashProcess),
        2 => (any::<u64>(), policy()).prop_map(|(seed, p)| Op::CrashPower(seed, p)),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => any::<u8>().prop_map(Op::ReadFrom),
    ]
}

/// What the log must contain.
struct Model {
    records: Vec<Vec<u8>>,
    /// Record counts at the end of each batch.
    batch_ends: Vec<usize>,
    durable: usize,
    first: u64,
    policy: FsyncPolicy,
}

impl Model {
    fn last(&self) -> u64 {
        u64::try_from(self.records.len()).unwrap()
    }

    fn scaled(&self, fraction: u8, range: u64) -> u64 {
        range * u64::from(fraction) / 255
    }
}

fn run(initial: FsyncPolicy, ops: Vec<Op>) {
    let mut vfs = SimVfs::new();
    let mut log = Some(open_sim(&vfs, small_options(initial)));
    let mut model =
        Model { records: Vec::new(), batch_ends: vec![0], durable: 0, first: 1, policy: initial };
    for op in ops {
        let current: &Log = log.as_ref().unwrap();
        match op {
            Op::Append(batch) => {
                let range = current.append_blocking(batch.clone()).unwrap();
                assert_eq!(
                    range,
                    model.last() + 1..=model.last() + u64::try_from(batch.len()).unwrap()
                );
                model.records.extend(batch);
                model.batch_ends.push(model.records.len());
                if model.policy != FsyncPolicy::Never {
                    model.durable = model.records.len();
                }
            }
            Op::Sync => {
                current.sync_blocking().unwrap();
                model.durable = model.records.len();
            }
            Op::Reopen(policy) => {
                drop(log.take());
                log = Some(open_sim(&vfs, small_options(policy)));
                assert_eq!(log.as_ref().unwrap().recovery_report().truncation, None);
                model.policy = policy;
            }
            Op::CrashProcess(policy) => {
                let after = vfs.crash_process();
                drop(log.take());
                vfs = after;
                log = Some(open_sim(&vfs, small_options(policy)));
                model.policy = policy;
            }
            Op::CrashPower(seed, policy) => {
                let after = vfs.crash_power(seed);
                drop(log.take());
                vfs = after;
                drop(open_or_repair(&vfs, policy, model.durable));
                let reopened = open_sim(&vfs, small_options(policy));
                assert_eq!(
                    reopened.recovery_report().truncation,
                    None,
                    "the first open after the crash must have cut the torn tail durably"
                );
                let kept = usize::try_from(reopened.last_position()).unwrap();
                assert!(
                    kept >= model.durable && kept <= model.records.len(),
                    "kept {kept} records; {} were durable, {} appended",
                    model.durable,
                    model.records.len()
                );
                assert!(model.batch_ends.contains(&kept), "kept {kept}: part of a batch");
                model.records.truncate(kept);
                model.batch_ends.retain(|end| *end <= kept);
                model.durable = kept;
                log = Some(reopened);
                model.policy = policy;
            }
            Op::Purge(fraction) => {
                let before = model.scaled(fraction, model.last() + 2);
                let bound = before.min(model.last() + 1);
                let report = current.purge_blocking(before).unwrap();
                assert!(report.first_position >= model.first, "purge never resurrects");
                assert!(
                    report.first_position <= bound.max(model.first),
                    "purge removed position {} beyond its bound {bound}",
                    report.first_position - 1
                );
                model.first = report.first_position;
            }
            Op::ReadFrom(fraction) => {
                let span = model.last() + 1 - model.first;
                let from = model.first + model.scaled(fraction, span);
                let skip = usize::try_from(from - 1).unwrap();
                check_contents(current, from, &model.records[skip..]);
            }
        }
        let current = log.as_ref().unwrap();
        assert_eq!(current.first_position(), model.first);
        let skip = usize::try_from(model.first - 1).unwrap();
        check_contents(current, model.first, &model.records[skip..]);
    }
    let current = log.as_ref().unwrap();
    assert_eq!(current.verify().unwrap(), model.last() + 1 - model.first);
}

/// Opens the log after a power loss; if it refuses corruption, checks that the damage lies past
/// every durable record and repairs it.
fn open_or_repair(vfs: &SimVfs, policy: FsyncPolicy, durable: usize) -> Log {
    match Log::open_with_vfs(Arc::new(vfs.clone()), DIR, small_options(policy)) {
        Ok(log) => log,
        Err(Error::Corrupt { .. }) => {
            let offline = OfflineLog::open_with_vfs(Arc::new(vfs.clone()), DIR).unwrap();
            let inspection = offline.inspect().unwrap();
            let plan = offline.plan_repair(&inspection).unwrap().expect("damage to repair");
            assert!(
                plan.next_position > u64::try_from(durable).unwrap(),
                "refused durable data: {plan:?}"
            );
            offline.repair(&plan).unwrap();
            drop(offline);
            open_sim(vfs, small_options(policy))
        }
        Err(other) => panic!("unexpected error after a power loss: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_matches_its_model_through_crashes(
        initial in policy(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(initial, ops);
    }
}

/// Arbitrary bytes as the last segment must never panic recovery: they open (cut) or fail
/// with a typed error.
fn recover_from_garbage(garbage: &[u8], keep: usize) -> Result<(), TestCaseError> {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(FsyncPolicy::Group));
    log.append_blocking([vec![7u8; 100], vec![8u8; 100]]).unwrap();
    drop(log);
    let path = common::segment_path(std::path::Path::new(common::DIR), 1);
    vfs.mutate_file(&path, |bytes| {
        bytes.truncate(keep.max(32));
        bytes.extend_from_slice(garbage);
    });
    let options = small_options(FsyncPolicy::Group);
    match Log::open_with_vfs(std::sync::Arc::new(vfs), common::DIR, options) {
        Ok(log) => {
            let records = common::read_all(&log, 1);
            prop_assert_eq!(records.len(), usize::try_from(log.last_position()).unwrap());
        }
        Err(Error::Corrupt { .. }) => {}
        Err(other) => prop_assert!(false, "unexpected error {}", other),
    }
    Ok(())
}

proptest! {
    #[test]
    fn recovery_survives_arbitrary_bytes_in_the_last_segment(
        garbage in prop::collection::vec(any::<u8>(), 0..600),
        keep in 0usize..400,
    ) {
        recover_from_garbage(&garbage, keep)?;
    }
}
