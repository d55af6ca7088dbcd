//! Fixtures shared by the integration tests of `inorder-log`.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

use std::{path::Path, sync::Arc, time::Duration};

use inorder_log::{
    FsyncPolicy, Log, LogOptions, ReadLimits, Record,
    vfs::{Vfs, sim::SimVfs},
};

/// The directory every simulated log lives in.
pub const DIR: &str = "/data/topic";

/// Small segments, so a few kilobytes of records span many of them.
pub fn small_options(fsync: FsyncPolicy) -> LogOptions {
    LogOptions {
        fsync,
        segment_bytes: 4096,
        record_payload_bytes_max: 1024,
        idle_after: Duration::from_secs(3600),
        verify_on_open: false,
    }
}

/// Opens the log at [`DIR`] on a simulated file system.
pub fn open_sim(vfs: &SimVfs, options: LogOptions) -> Log {
    Log::open_with_vfs(Arc::new(vfs.clone()) as Arc<dyn Vfs>, DIR, options).expect("open log")
}

/// A payload that names its author, so a misplaced record is obvious in a failure message.
pub fn payload(tag: &str, n: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}-{n}:").into_bytes();
    bytes.resize(len.max(bytes.len()), b'a' + u8::try_from(n % 26).unwrap());
    bytes
}

/// Every record from `from` to the end.
pub fn read_all(log: &Log, from: u64) -> Vec<Record> {
    let mut reader = log.reader(from);
    let mut records = Vec::new();
    loop {
        let batch = reader.read(ReadLimits::default()).expect("read");
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

/// Asserts the log holds exactly `expected` from position `first` on, contiguously.
pub fn check_contents(log: &Log, first: u64, expected: &[Vec<u8>]) {
    let records = read_all(log, first);
    assert_eq!(records.len(), expected.len(), "record count from position {first}");
    for (i, (record, want)) in records.iter().zip(expected).enumerate() {
        let position = first + u64::try_from(i).unwrap();
        assert_eq!(record.position, position, "positions must be contiguous");
        assert_eq!(record.payload.as_ref(), want.as_slice(), "payload at position {position}");
    }
    assert_eq!(log.last_position(), first - 1 + u64::try_from(expected.len()).unwrap());
}

/// Path of the segment file whose first position is `base`.
pub fn segment_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Every record from `from` to the end, or the first read error.
pub fn read_all_checked(log: &Log, from: u64) -> Result<Vec<Record>, inorder_log::Error> {
    let mut reader = log.reader(from);
    let mut records = Vec::new();
    loop {
        let batch = reader.read(ReadLimits::default())?;
        if batch.is_empty() {
            return Ok(records);
        }
        records.extend(batch);
    }
}
