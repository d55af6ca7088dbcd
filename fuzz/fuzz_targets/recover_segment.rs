//! Recovery on an arbitrary last segment: opening never panics; it either fails with a typed
//! error or yields a log whose every record reads back with contiguous positions.
#![no_main]

use std::{path::Path, sync::Arc};

use inorder_log::{
    FsyncPolicy, Log, LogOptions, ReadLimits,
    vfs::{OpenMode, Vfs, sim::SimVfs},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|tail: &[u8]| {
    let vfs = SimVfs::new();
    let dir = Path::new("/fuzz/topic");
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes: 64 * 1024,
        record_payload_bytes_max: 4096,
        ..LogOptions::default()
    };
    let log = Log::open_with_vfs(Arc::new(vfs.clone()), dir, options).expect("fresh log");
    log.append_blocking([&b"first"[..], &b"second"[..]]).expect("append");
    drop(log);
    let segment = dir.join("00000000000000000001.seg");
    let file = vfs.open(&segment, OpenMode::ReadWrite).expect("segment");
    let len = file.size().expect("size");
    file.write_all_at(tail, len).expect("write tail");
    drop(file);
    if let Ok(log) = Log::open_with_vfs(Arc::new(vfs), dir, options) {
        let records = log.read(1, ReadLimits::default()).expect("records read back");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.position, i as u64 + 1);
        }
        assert!(log.last_position() >= 2, "the two synced records survive any tail");
    }
});
